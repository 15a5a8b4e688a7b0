"""Feature extraction over a dataset: parallel, streaming, cached, skipping bad clips."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from asdcli.config import AsdConfig
from asdcli.data.audio import load_audio
from asdcli.data.features import FeatureCache, FeatureExtractor
from asdcli.data.layout import Clip
from asdcli.errors import DataError, OutputError


def default_cache_dir() -> Path:
    """``$ASD_CACHE_DIR``, else ``$XDG_CACHE_HOME/asd/features``, else ``~/.cache/asd/features``."""
    if os.environ.get("ASD_CACHE_DIR"):
        return Path(os.environ["ASD_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "asd" / "features"


@dataclass(frozen=True)
class FeatureItem:
    """Outcome for one clip: ``features`` ``(n_mels, frames)`` or the ``error`` that skipped it."""

    clip: Clip
    features: np.ndarray | None
    cached: bool = False
    error: str | None = None
    wave: torch.Tensor | None = None  # (samples,) the decoded clip, when asked for


@dataclass
class FeatureReport:
    """Summary of a feature pass."""

    total: int = 0
    computed: int = 0
    cached: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, item: FeatureItem) -> None:
        """Count one clip's outcome."""
        self.total += 1
        if item.error is not None:
            self.failures.append((item.clip.path, item.error))
        elif item.cached:
            self.cached += 1
        else:
            self.computed += 1


def make_extractor(config: AsdConfig, cache_dir: str | Path | None) -> FeatureExtractor:
    """Extractor for ``config``; ``cache_dir=None`` disables the cache."""
    cache = None if cache_dir is None else FeatureCache(cache_dir, config.audio, config.features)
    return FeatureExtractor(config.audio, config.features, cache)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads for a block (``None``: leave as is), then restore them.

    The clip-level thread pool already fills the cores; intra-op threads on top oversubscribe them.
    """
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compute(extractor: FeatureExtractor, clip: Clip, with_wave: bool = False,
             cached: np.ndarray | None = None) -> FeatureItem:
    try:
        if not with_wave:
            return FeatureItem(clip, extractor.compute_and_store(clip.path))
        wave = load_audio(clip.path, extractor.audio)  # decoded once, for the features and the caller
        feats = cached if cached is not None else extractor.compute_and_store(clip.path, wave)
        return FeatureItem(clip, feats, cached=cached is not None, wave=wave)
    except DataError as error:
        return FeatureItem(clip, None, error=str(error))
    except OSError as error:  # a path the system refuses (too long, a name it cannot take): this clip only
        return FeatureItem(clip, None, error=f"{clip.path}: cannot read ({error.strerror or error})")


def iter_features(clips: Iterable[Clip], extractor: FeatureExtractor, workers: int = 2,
                  with_wave: bool = False) -> Iterator[FeatureItem]:
    """Features of each clip, in input order; cache misses are computed by ``workers`` threads.

    Cache hits are read on the calling thread (a thread hop costs more than the read). At most
    ``2 * workers`` clips are in flight, so memory stays flat however many clips there are. A
    bad clip yields an item with ``error`` set instead of raising. ``with_wave``: each item also
    carries the decoded clip (decoded once: a cache miss computes its features from it).
    """
    window: deque[FeatureItem | Future] = deque()
    with torch_threads(1 if workers > 1 else None), \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asd-features") as pool:
        for clip in clips:
            cached = extractor.lookup(clip.path)
            if with_wave:
                window.append(pool.submit(_compute, extractor, clip, True, cached) if workers > 1
                              else _compute(extractor, clip, True, cached))
            elif cached is not None:
                window.append(FeatureItem(clip, cached, cached=True))
            elif workers <= 1:
                window.append(_compute(extractor, clip))
            else:
                window.append(pool.submit(_compute, extractor, clip))
            while window and (isinstance(window[0], FeatureItem) or len(window) >= 2 * workers):
                head = window.popleft()
                yield head if isinstance(head, FeatureItem) else head.result()
        while window:
            head = window.popleft()
            yield head if isinstance(head, FeatureItem) else head.result()


def extract_features(clips: list[Clip], config: AsdConfig, cache_dir: str | Path,
                     on_item: Callable[[FeatureItem], None] | None = None) -> FeatureReport:
    """Compute and cache the features of every clip (``asd features``); report failures at the end."""
    report = FeatureReport()
    extractor = make_extractor(config, cache_dir)
    for item in iter_features(clips, extractor, config.loader.workers):
        report.add(item)
        if on_item is not None:
            on_item(item)
    if extractor.cache is not None and extractor.cache.problem:  # filling the cache is this command's job
        raise OutputError(extractor.cache.problem.replace("; going on without it", ""))
    return report
