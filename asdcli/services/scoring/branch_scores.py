"""Per-branch anomaly scores of any clips with a trained run, and their per-section normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from asdcli.checkpoints import training_progress
from asdcli.data.layout import Clip
from asdcli.errors import DataError
from asdcli.models.registry import BRANCHES, canonical_name
from asdcli.services.inputs.dataset import ClipSet
from asdcli.services.scoring.branch_setup import BranchSet
from asdcli.services.inputs.embeddings import EmbeddingCaches
from asdcli.services.inputs.features import make_extractor
from asdcli.services.store.runs import Run, open_run, run_config
from asdcli.services.store.records import BranchRecord, read_record


@dataclass
class BranchScores:
    """Raw scores (N,) per branch for ``clips``, in order; unreadable clips are in ``skipped``."""

    clips: list[Clip]
    scores: dict[str, np.ndarray]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


CHUNK = 256  # clips whose features are held in memory at once while scoring


def score_branches(run_dir: Path | Run, names: list[str], clips: list[Clip], cache_dir: Path | None,
                   device: torch.device | str = "cpu", batch_size: int = 32,
                   loaded: BranchSet | None = None,
                   progress: Callable[[int], None] | None = None) -> BranchScores:
    """Score ``clips`` with each named branch of the run (features as the run was trained with);
    ``loaded``: the branches already loaded (:meth:`BranchSet.load`);
    ``progress(n)`` after each clip's features and after each scored batch of n clips (2 x the
    clips in all)."""
    run = open_run(run_dir)
    names = [canonical_name(n) for n in names]
    config = run_config(run)
    loaded = loaded or BranchSet.load(run, names, device)
    branches, wave_users = loaded.branches, loaded.wave_users()
    extractor = make_extractor(config, cache_dir)
    caches = EmbeddingCaches(cache_dir, loaded.all)
    scores: dict[str, list] = {n: [] for n in names}
    scored: list[Clip] = []
    failures: list = []
    for start in range(0, len(clips), CHUNK):  # a chunk's features are read once and then dropped
        part = clips[start : start + CHUNK]
        needs_wave = bool(wave_users - caches.covered(part))  # audio only for embeddings not on disk yet
        clipset = ClipSet(part, config, extractor, run.vocab, with_wave=needs_wave, keep_features=True,
                          require_any=False, on_item=None if progress is None else lambda: progress(1))
        failures += clipset.report.failures
        if progress is not None:
            progress(len(part) - len(clipset))  # the skipped clips are not scored
        with torch.no_grad():
            for batch in loaded.batches(clipset, batch_size, device, caches):
                for name, branch in branches.items():
                    scores[name].append(branch.score(batch).cpu().numpy())
                if progress is not None:
                    progress(len(batch))
        scored += clipset.clips
    if not scored:
        raise DataError("none of the clips could be read: " + "; ".join(m for _, m in failures[:3]))
    problems = [c.problem for c in [extractor.cache, *(c for _, c in caches.caches.values())] if c and c.problem]
    return BranchScores(scored, {n: np.concatenate(v) for n, v in scores.items()}, failures, problems[:1])


def trained_branches(run_dir: Path | Run) -> list[str]:
    """Names of the branches whose training finished in the run, in registry order. A branch
    whose metadata is damaged or edited is an error, not a branch left out."""
    run = open_run(run_dir)
    done = []
    for name in BRANCHES:
        if not run.record(name).exists():
            continue
        if read_record(BranchRecord, run.record(name), f"{name} metadata").status != "complete":
            continue  # a format-1 run wrote it while training; a damaged or edited file is an error
        done.append(name)
    return done


def unfinished_branches(run_dir: Path | Run) -> dict[str, str]:
    """Branches with an interrupted training and no finished version: name -> why they are not
    used (a notice for the commands that score)."""
    run = open_run(run_dir)
    out = {}
    for name in BRANCHES:
        progress = training_progress(run.train_state(name))
        if progress is not None and not run.record(name).exists():
            out[name] = (f"{name}: its training stopped at epoch {progress.get('epochs_done')}/{progress.get('epochs')} "
                         f"and is not used; finish it: asd train DATA --run {run.path} (continues where it stopped)")
    return out


def _spread(meta: BranchRecord) -> float:
    """The median spread of the sections with at least two training scores (1 where none has)."""
    stds = [e.std for e in meta.score_stats.values() if e.count >= 2 and e.std > 0]
    return float(max(np.median(stds), 1e-6)) if stds else 1.0


def _stats(meta: BranchRecord, group: str) -> tuple[float, float] | None:
    entry = meta.score_stats.get(group)
    if entry is None:
        return None
    if entry.count < 2 or entry.std <= 1e-9 * max(1.0, abs(entry.mean)):
        return entry.mean, _spread(meta)  # one clip has no spread: borrow the other sections'
    return entry.mean, max(entry.std, 1e-6)


def thin_sections(meta: BranchRecord) -> list[str]:
    """Sections whose training scores have no spread of their own (fewer than two clips, or all
    equal): :func:`normalize` borrows the other sections' spread for them."""
    return [g for g, e in meta.score_stats.items() if e.count < 2 or e.std <= 1e-9 * max(1.0, abs(e.mean))]


def _pooled_stats(meta: BranchRecord) -> tuple[float, float]:
    entries = list(meta.score_stats.values())
    return float(np.median([e.mean for e in entries])), _spread(meta)


def section_stats(meta: BranchRecord, group: str) -> tuple[float, float]:
    """The mean and spread a branch's raw scores of section ``group`` are standardised with."""
    return _stats(meta, group) or _pooled_stats(meta)


def normalize(values: np.ndarray, groups: list[str], meta: BranchRecord) -> np.ndarray:
    """Standardise a branch's raw scores with its training statistics of each clip's section."""
    out = np.empty_like(values, dtype=float)
    for i, (value, group) in enumerate(zip(values, groups)):
        mean, std = section_stats(meta, group)
        out[i] = (value - mean) / std
    return out


@dataclass
class DomainShift:
    """Per section, where its target-domain normal training clips sit (K,) among the section's
    standardised scores. DCASE target domains have a handful of training clips and move some
    branches' scores by several standard deviations (the training statistics are almost all
    source clips); subtracting the shift from target-domain clips puts their normals back where
    the source normals are. The shift is shrunk toward 0 as if one more target clip sat at 0."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, z: np.ndarray, groups: list[str], domains: list[str | None]) -> "DomainShift":
        """From normal clips' standardised scores ``z`` (N, K), sections and domains."""
        shift = cls()
        for row, group, domain in zip(z, groups, domains):
            if domain == "target":
                shift.sums[group] = shift.sums.get(group, 0.0) + row
                shift.counts[group] = shift.counts.get(group, 0) + 1
        return shift

    def update(self, other: "DomainShift") -> None:
        """Add the sections of ``other`` (sections given as --support clips)."""
        self.sums.update(other.sums)
        self.counts.update(other.counts)

    def of(self, group: str) -> np.ndarray | float:
        """The shift (K,) subtracted from a target-domain clip of ``group`` (0 when it has none)."""
        return self.sums[group] / (self.counts[group] + 1) if group in self.sums else 0.0

    def apply(self, z: np.ndarray, groups: list[str], domains: list[str | None], fitted: bool = False) -> np.ndarray:
        """``z`` (N, K) with target-domain rows shifted; ``fitted``: the rows are the clips the
        shift was fitted on, each left out of its own shift (as the training scores leave it out)."""
        out = np.array(z, dtype=float, copy=True)
        for i, (group, domain) in enumerate(zip(groups, domains)):
            if domain == "target" and group in self.sums:
                # left out: the other count - 1 clips plus the one at 0
                out[i] -= (self.sums[group] - z[i]) / self.counts[group] if fitted else self.of(group)
        return out
