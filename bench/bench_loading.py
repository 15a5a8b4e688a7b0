"""Whether the batch loader keeps a fast device fed, in one command.

    python bench/bench_loading.py                        # default synthetic data
    python bench/bench_loading.py --data ../shared/data/dcase2020-mini/slider --config large

Training reads every batch's features from the feature cache (the clips are not held in memory,
so that memory stays flat in their number). Three measurements on the training clips of the
data, their features already cached, as in every epoch of a training:

1. Assembly rate: clips/s of batches read from the cache by the previous loader (each batch when
   the model asks for it, one array per clip, stacked), with ``loader.prefetch 0`` (each batch
   when asked for, read straight into it) and with batches assembled ahead by 1, 2 and 4
   ``loader.workers`` threads.
2. A device that never waits for the host: each step takes STEP ms during which the host holds
   no lock (``time.sleep``, as a host waits for a GPU). Busy = the steps' time / wall time: the
   share of the time a GPU of that speed would compute rather than wait for the next batch.
   This is a model of a GPU, not a GPU: none was measured.
3. Real training on this CPU: clips/s of one-epoch b2 and b3 trainings with ``loader.prefetch``
   0 and the default (median of ``--repeats``), to show what the loader threads cost where the
   model is slow (the weights are the same either way: tests/services/test_train.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from asdcli.config import load_config
from asdcli.models.base import Batch
from asdcli.services.inputs.dataset import ClipSet, Vocabulary, training_clips
from asdcli.services.inputs.features import make_extractor
from asdcli.services.training.train import train_branch
from common import bench_data, train_rate

LOADERS = [(-1, 1), (0, 1), (2, 1), (2, 2), (4, 4)]  # (loader.prefetch, loader.workers); -1: the previous loader
STEPS_MS = [2.0, 5.0, 20.0]


def _chunks(clipset: ClipSet, batch_size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(len(clipset), generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def previous_batches(clipset: ClipSet, chunks: list[list[int]]) -> Iterator[Batch]:
    """The loader before this bench: each batch when it is needed, every clip's cache file found
    and read into an array of its own, the arrays stacked, the labels looked up per clip."""
    for indices in chunks:
        clips = [clipset.clips[i] for i in indices]
        feats = np.stack([clipset.extractor(c.path)[0] for c in clips])  # (B, n_mels, frames)
        yield Batch(feats=torch.from_numpy(feats), group=torch.tensor([clipset.vocab.group_index(c) for c in clips]),
                    domain=torch.tensor([int(c.domain == "target") for c in clips]),
                    label=torch.tensor([clipset.vocab.label_index(c) for c in clips]), index=torch.as_tensor(indices))


def _pass(clipset: ClipSet, prefetch: int, workers: int, step_s: float, epochs: int) -> tuple[float, int]:
    """(wall seconds, clips) of ``epochs`` passes over the clips, each step taking ``step_s`` without the GIL."""
    clipset.config = clipset.config.with_overrides(**{"loader.prefetch": max(prefetch, 0), "loader.workers": workers})
    start, clips = time.perf_counter(), 0
    for epoch in range(epochs):
        chunks = _chunks(clipset, clipset.config.train.batch_size, epoch)
        for batch in previous_batches(clipset, chunks) if prefetch < 0 else clipset.on_device(chunks, "cpu"):
            clips += len(batch)
            if step_s:
                time.sleep(step_s)
    return time.perf_counter() - start, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--config", default="default")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the clips per loader measurement")
    parser.add_argument("--repeats", type=int, default=3, help="trainings per branch and loader setting")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = bench_data(args.data, config, Path(tmp))
        clips = training_clips(str(data))
        clipset = ClipSet(clips, config, make_extractor(config, Path(tmp) / "cache"), Vocabulary.from_clips(clips))
        shape = tuple(clipset.batch([0]).feats.shape[1:])
        _pass(clipset, 0, 1, 0.0, 1)  # the page cache holds the feature files, as after a training's first epoch
        rates = {}
        for prefetch, workers in LOADERS:
            seconds, n = _pass(clipset, prefetch, workers, 0.0, args.epochs)
            rates[prefetch, workers] = n / seconds
        busy = {}
        for step_ms in STEPS_MS:
            for prefetch, workers in LOADERS:
                seconds, n = _pass(clipset, prefetch, workers, step_ms / 1000, 1)
                steps = -(-n // config.train.batch_size) if n else 0
                busy[step_ms, prefetch, workers] = steps * step_ms / 1000 / seconds
        training: dict[tuple[str, int], list[float]] = {}
        for name in ("b2", "b3"):
            for repeat in range(args.repeats):  # alternated, so that a slow spell of the machine hits both
                for prefetch in (0, config.loader.prefetch):
                    run = Path(tmp) / f"{name}-{prefetch}-{repeat}"
                    overrides = {"loader.prefetch": prefetch, "train.epochs": 1}
                    train_branch(name, data, run, config.with_overrides(**overrides), cache_dir=Path(tmp) / "cache")
                    rate = train_rate(run, {"b2": "transformer-ae", "b3": "contrastive"}[name])
                    training.setdefault((name, prefetch), []).append(rate)
    print(f"\nconfig {args.config}: {len(clipset)} training clips, batch size {config.train.batch_size}, "
          f"features {shape}, {args.epochs} passes per loader, 2 CPU threads\n")
    print("| loader | assembled clips/s | " + " | ".join(f"busy at {s:g} ms/step" for s in STEPS_MS) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in STEPS_MS) + " |")
    for prefetch, workers in LOADERS:
        what = {-1: "previous: each batch when needed, arrays stacked", 0: "each batch when needed (prefetch 0)"}.get(
            prefetch, f"prefetch {prefetch}, {workers} worker(s)")
        print(f"| {what} | {rates[prefetch, workers]:,.0f} | "
              + " | ".join(f"{busy[s, prefetch, workers]:.0%}" for s in STEPS_MS) + " |")
    print("\n| branch | train clips/s, prefetch 0 | train clips/s, prefetch "
          f"{config.loader.prefetch} | ratio |\n| --- | ---: | ---: | ---: |")
    for name in ("b2", "b3"):
        a, b = np.median(training[name, 0]), np.median(training[name, config.loader.prefetch])
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    print(f"\n(training: median of {args.repeats} one-epoch trainings each, alternated)")


if __name__ == "__main__":
    main()
