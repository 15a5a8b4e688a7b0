import threading

import pytest
import torch

from asdcli.errors import DataError
from asdcli.services.inputs.dataset import ClipSet, Vocabulary, training_clips
from asdcli.services.inputs.features import make_extractor


@pytest.fixture(scope="module")
def clipset(synth_root, tiny, tmp_path_factory):
    clips = training_clips(str(synth_root))
    return ClipSet(clips, tiny, make_extractor(tiny, tmp_path_factory.mktemp("cache")), Vocabulary.from_clips(clips))


def _chunks(n: int, size: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3)).tolist()
    return [order[i : i + size] for i in range(0, n, size)]


def _with_loader(clipset: ClipSet, prefetch: int, workers: int) -> ClipSet:
    clipset.config = clipset.config.with_overrides(**{"loader.prefetch": prefetch, "loader.workers": workers})
    return clipset


@pytest.mark.parametrize("prefetch,workers", [(0, 1), (1, 1), (3, 2), (8, 4)])
def test_prefetched_batches_are_the_batches_in_order(clipset, prefetch, workers):
    chunks = _chunks(len(clipset), 5)
    expected = [clipset.batch(c) for c in chunks]
    got = list(_with_loader(clipset, prefetch, workers).on_device(chunks, "cpu"))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a.feats, b.feats) and torch.equal(a.index, b.index)
        assert torch.equal(a.group, b.group) and torch.equal(a.label, b.label) and torch.equal(a.domain, b.domain)


def test_at_most_prefetch_batches_wait_ahead_and_an_early_stop_leaves_no_thread(clipset):
    loader, pulled = _with_loader(clipset, 2, 2), []

    def chunks():
        for chunk in _chunks(len(clipset), 2):
            pulled.append(chunk)
            yield chunk

    batches = loader.on_device(chunks(), "cpu")
    next(batches)  # the consumer holds the first batch: the loader is suspended behind it
    assert len(pulled) == 3  # that one and two ahead, not the whole epoch
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("asd-batches")]


def test_a_failing_batch_reaches_the_consumer(clipset, monkeypatch):
    original = ClipSet.batch

    def batch(self, indices, *args):
        if 0 in indices:
            raise DataError("clip 0: gone")
        return original(self, indices, *args)

    monkeypatch.setattr(ClipSet, "batch", batch)
    with pytest.raises(DataError, match="clip 0: gone"):
        list(_with_loader(clipset, 2, 2).on_device([[1], [2], [0], [3]], "cpu"))
