"""Clips as model batches: labels from the run's vocabulary, features through the cache."""

from __future__ import annotations

import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from asdcli.config import AsdConfig
from asdcli.data.audio import load_audio
from asdcli.data.features import FeatureExtractor
from asdcli.data.layout import NAMINGS_2020, Clip, discover
from asdcli.errors import DataError
from asdcli.models.base import Batch
from asdcli.services.inputs.features import FeatureReport, iter_features


def label_key(clip: Clip, group: str | None = None) -> str:
    """The contrastive / ID class of a clip: its machine section (``group``: the run's name for
    it, default its own) and attribute values."""
    return f"{group or clip.group}|{clip.attributes_raw}"


def clip_key(clip: Clip, group: str | None = None) -> str:
    """A clip's identity within a run: ``<group>/<file name>`` (``group``: the run's name for
    its section, default its own)."""
    return f"{group or clip.group}/{clip.name}"


def holdout_keys(clips: Sequence[Clip], share: float, seed: int) -> list[str]:
    """Keys of the normal training clips kept out of every branch's network training: ``share`` of
    each section's clips (at least one where a section has three or more; never fewer than two
    left to train on), drawn per section with a generator seeded by ``seed`` and the section name.
    Scored like unseen normal clips, they tell whether a branch generalises from its training clips."""
    by_group: dict[str, list[str]] = {}
    for clip in clips:
        by_group.setdefault(clip.group, []).append(clip_key(clip))
    chosen: list[str] = []
    for group, keys in sorted(by_group.items()):
        keys, n = sorted(keys), len(keys)
        count = 0 if share <= 0 or n < 3 else min(n - 2, max(1, round(share * n)))
        rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
        chosen += [keys[i] for i in rng.permutation(n)[:count]]
    return sorted(chosen)


def training_clips(data: str) -> list[Clip]:
    """Normal training clips under ``data`` (``*/train/*``; anomalous names are left out)."""
    clips = [c for c in discover(data, split="train") if c.label != "anomaly"]
    if not clips:
        raise DataError(f"no normal training clips under {data}; expected <machine>/train/*.wav")
    return clips


def untrained_machines(data: str) -> list[str]:
    """Machine types under ``data`` with clips but no normal training clip: a run trained on
    ``data`` knows nothing of them, so ``asd train`` leaves them out (and says so)."""
    clips = discover(data)
    trained = {c.machine for c in clips if c.split == "train" and c.label != "anomaly"}
    return sorted({c.machine for c in clips} - trained)


@dataclass
class Vocabulary:
    """Machine sections (groups) and classes of a run, in a fixed order. ``legacy_2020``: the run
    was made before DCASE 2020 machine IDs got groups of their own (``<machine>_id_<XX>``), so its
    2020 IDs are named ``<machine>_section_<XX>``."""

    groups: list[str]
    labels: list[str]
    legacy_2020: bool = False

    @classmethod
    def from_clips(cls, clips: Sequence[Clip]) -> "Vocabulary":
        return cls(sorted({c.group for c in clips}), sorted({label_key(c) for c in clips}))

    def __post_init__(self) -> None:
        self._groups = {g: i for i, g in enumerate(self.groups)}
        self._labels = {k: i for i, k in enumerate(self.labels)}

    def group_name(self, clip: Clip) -> str:
        """The run's name for the clip's section: its own group where the run has it; for a clip
        whose name follows no DCASE scheme (its machine and section given on the command line),
        the same machine and number under whichever scheme the run has; for a 2020 clip and a run
        made before 2020 IDs had groups of their own, the old name."""
        if clip.group in self._groups:
            return clip.group
        machine, number = clip.machine, clip.section or "00"
        if clip.naming == "unknown":
            alternatives = [f"{machine}_section_{number}", f"{machine}_id_{number}"]
        elif self.legacy_2020 and clip.naming in NAMINGS_2020:
            alternatives = [f"{machine}_section_{number}"]
        else:
            alternatives = []
        return next((g for g in alternatives if g in self._groups), clip.group)

    def group_index(self, clip: Clip) -> int:
        """Index of the clip's section in the run, -1 if the run never saw it."""
        return self._groups.get(self.group_name(clip), -1)

    def label_index(self, clip: Clip) -> int:
        """Index of the clip's section-and-attributes class, -1 if unknown."""
        return self._labels.get(label_key(clip, self.group_name(clip)), -1)


class ClipSet:
    """Usable clips with their features' statistics; yields :class:`Batch` objects.

    The constructor makes one streaming pass over the clips (computing and caching features,
    skipping unreadable clips, which are listed in ``report``); batches then read the cache.
    """

    def __init__(self, clips: Sequence[Clip], config: AsdConfig, extractor: FeatureExtractor,
                 vocab: Vocabulary, with_wave: bool = False, on_item: Callable[[], None] | None = None,
                 keep_features: bool = False, require_any: bool = True):
        self.config, self.extractor, self.vocab, self.with_wave = config, extractor, vocab, with_wave
        self.report = FeatureReport()
        total = sq = None
        self.clips: list[Clip] = []
        self._kept: list[np.ndarray] | None = [] if keep_features else None  # batches then read no file again
        self._waves: list[torch.Tensor] | None = [] if keep_features and with_wave else None  # nor decode one
        frames = 0
        for item in iter_features(clips, extractor, config.loader.workers, with_wave=self._waves is not None):
            self.report.add(item)
            if on_item is not None:
                on_item()
            if item.error is not None:
                continue
            f = item.features.astype(np.float64)  # (n_mels, frames)
            total = f.sum(axis=1) if total is None else total + f.sum(axis=1)
            sq = (f**2).sum(axis=1) if sq is None else sq + (f**2).sum(axis=1)
            frames += f.shape[1]
            self.clips.append(item.clip)
            if self._kept is not None:
                self._kept.append(item.features)
            if self._waves is not None:
                self._waves.append(item.wave)
        if not self.clips:
            if require_any:
                raise DataError("none of the clips could be read: " + "; ".join(m for _, m in self.report.failures[:3]))
            total, sq, frames = np.zeros(1), np.zeros(1), 1
        mean = total / frames
        self.mean = torch.from_numpy(mean).float()  # (n_mels,)
        self.std = torch.from_numpy(np.sqrt(np.maximum(sq / frames - mean**2, 0.0))).float()
        # What a batch needs of each clip besides its features, found once: a batch is then little
        # more than its reads, which hold no lock (a loader thread slowed the model's thread).
        self._entries = [extractor.entry(c.path) for c in self.clips] if self._kept is None else None
        self._ids = np.array([[vocab.group_index(c), int(c.domain == "target"), vocab.label_index(c)]
                              for c in self.clips], dtype=np.int64).reshape(-1, 3)  # (N, 3)

    def __len__(self) -> int:
        return len(self.clips)

    def batch(self, indices: Sequence[int], feats: torch.Tensor | None = None,
              wave: torch.Tensor | None = None) -> Batch:
        """The clips at ``indices`` as one batch, features read from the cache into it. ``feats``
        (B, n_mels, frames) and ``wave`` (B, samples): float32 tensors to fill instead of new
        ones (page-locked, for a CUDA copy that does not block)."""
        # numpy only: a torch operation in a loader thread (even torch.empty, which fills the
        # memory under deterministic algorithms) starts a second OpenMP team there, whose
        # spinning threads take the cores from the model's (b2 trained 0.8x as fast)
        index = np.asarray(indices, dtype=np.int64)
        rows = np.empty((len(index), *self.extractor.shape), np.float32) if feats is None else feats.numpy()
        for row, i in zip(rows, index.tolist()):  # row: (n_mels, frames)
            if self._kept is not None:
                row[...] = self._kept[i]
            else:
                self.extractor.fill(self.clips[i].path, row, self._entries[i])
        if self.with_wave:
            waves = np.empty((len(index), self.config.audio.num_samples), np.float32) if wave is None else wave.numpy()
            for row, i in zip(waves, index.tolist()):  # row: (samples,)
                row[...] = (self._waves[i] if self._waves is not None
                            else load_audio(self.clips[i].path, self.config.audio)).numpy()
            wave = torch.from_numpy(waves)
        group, domain, label = (torch.from_numpy(column) for column in np.ascontiguousarray(self._ids[index].T))
        return Batch(feats=torch.from_numpy(rows), group=group, domain=domain, label=label, wave=wave,
                     index=torch.from_numpy(index))

    def on_device(self, chunks: Iterable[Sequence[int]], device: torch.device | str) -> Iterator[Batch]:
        """The batch of each chunk of clip indices on ``device``, in order. ``loader.prefetch``
        batches are assembled ahead by ``loader.workers`` threads (features read from the cache;
        on CUDA into page-locked memory, copied without blocking) while the caller computes on
        the one before, so that a GPU does not wait for the files. At most that many batches are
        held at once; the batches are those of :meth:`batch`, whatever the settings."""
        device = torch.device(device)
        pin = device.type == "cuda"
        ahead, workers = self.config.loader.prefetch, self.config.loader.workers
        if ahead == 0:
            for indices in chunks:
                yield self.batch(indices, *self._pinned(len(indices), pin)).to(device, non_blocking=pin)
            return
        pool = ThreadPoolExecutor(max_workers=min(workers, ahead), thread_name_prefix="asd-batches")
        window: deque[Future] = deque()
        try:
            for indices in chunks:  # page-locked memory is taken on this thread: see batch()
                window.append(pool.submit(self.batch, list(indices), *self._pinned(len(indices), pin)))
                if len(window) > ahead:
                    yield window.popleft().result().to(device, non_blocking=pin)
            while window:
                yield window.popleft().result().to(device, non_blocking=pin)
        finally:  # also when the caller stops early or fails: nothing is left running
            pool.shutdown(wait=True, cancel_futures=True)

    def _pinned(self, count: int, pin: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Page-locked tensors for a batch of ``count`` clips' features and waves (None, None
        unless ``pin``)."""
        if not pin:
            return None, None
        feats = torch.empty((count, *self.extractor.shape), dtype=torch.float32, pin_memory=True)
        wave = torch.empty((count, self.config.audio.num_samples), dtype=torch.float32,
                           pin_memory=True) if self.with_wave else None
        return feats, wave
