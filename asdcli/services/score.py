"""Per-branch anomaly scores of any clips with a trained run (the base of `asd score`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asdcli.checkpoints import read_json
from asdcli.config import validate_config
from asdcli.data.layout import Clip
from asdcli.metrics import fpr_threshold, gamma_threshold
from asdcli.models.base import Branch
from asdcli.errors import CheckpointError
from asdcli.models.registry import BRANCHES, canonical_name
from asdcli.services.dataset import ClipSet
from asdcli.services.embeddings import EmbeddingCaches
from asdcli.services.features import make_extractor
from asdcli.services.runs import Run, load_branch, open_run, read_branch_meta
from asdcli.services.train import model_batches


@dataclass
class BranchScores:
    """Raw scores (N,) per branch for ``clips``, in order; unreadable clips are in ``skipped``."""

    clips: list[Clip]
    scores: dict[str, np.ndarray]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _load_with_upstream(run: Run, names: list[str], device) -> tuple[dict[str, Branch], dict[str, Branch]]:
    branches = {n: load_branch(run, n, device) for n in names}
    upstream: dict[str, Branch] = {}
    for name, branch in branches.items():
        for up in BRANCHES[name].upstream(branch.cfg):
            up = canonical_name(up)
            upstream[up] = branches.get(up) or upstream.get(up) or load_branch(run, up, device)
    return branches, upstream


def score_branches(run_dir: Path, names: list[str], clips: list[Clip], cache_dir: Path | None,
                   device: torch.device | str = "cpu", batch_size: int = 32) -> BranchScores:
    """Score ``clips`` with each named branch of the run (features as the run was trained with)."""
    run = open_run(run_dir)
    names = [canonical_name(n) for n in names]
    config = validate_config(read_branch_meta(run, names[0])["config"], source=str(run.meta_path(names[0])))
    branches, upstream = _load_with_upstream(run, names, device)
    needs_wave = any(b.needs_wave for b in (*branches.values(), *upstream.values()))
    clipset = ClipSet(clips, config, make_extractor(config, cache_dir), run.vocab, with_wave=needs_wave)
    caches = EmbeddingCaches(cache_dir, {**upstream, **branches})
    scores: dict[str, list] = {n: [] for n in names}
    with torch.no_grad():
        for batch in model_batches(clipset, batch_size, device, upstream, caches):
            for name, branch in branches.items():
                scores[name].append(branch.score(batch).cpu().numpy())
    return BranchScores(clipset.clips, {n: np.concatenate(v) for n, v in scores.items()}, clipset.report.failures)


def trained_branches(run_dir: Path) -> list[str]:
    """Names of the branches whose training finished in the run, in registry order."""
    run = open_run(run_dir)
    done = []
    for name in BRANCHES:
        try:
            read_branch_meta(run, name)
        except CheckpointError:  # missing or unfinished: not usable for scoring
            continue
        done.append(name)
    return done


@dataclass
class ScoreResult:
    """Final scores of ``clips`` (N,), decisions (N,) and how they were made."""

    clips: list[Clip]
    score: np.ndarray
    decision: np.ndarray
    normalized: dict[str, np.ndarray]
    thresholds: dict[str, float]
    branches: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _stats(meta: dict, group: str) -> tuple[float, float] | None:
    entry = meta["score_stats"].get(group)
    return None if entry is None else (entry["mean"], max(entry["std"], 1e-6))


def _pooled_stats(meta: dict) -> tuple[float, float]:
    entries = list(meta["score_stats"].values())
    return float(np.median([e["mean"] for e in entries])), float(max(np.median([e["std"] for e in entries]), 1e-6))


def _normalize(values: np.ndarray, groups: list[str], meta: dict) -> np.ndarray:
    """Standardise a branch's raw scores with its training statistics of each clip's section."""
    out = np.empty_like(values, dtype=float)
    for i, (value, group) in enumerate(zip(values, groups)):
        mean, std = _stats(meta, group) or _pooled_stats(meta)
        out[i] = (value - mean) / std
    return out


def _train_ensemble(run: Run, names: list[str], metas: dict[str, dict]) -> dict[str, np.ndarray]:
    """Ensemble scores of the training clips per section (clips scored by every branch)."""
    per_branch = {n: read_json(run.train_scores(n), f"{n} training scores")["scores"] for n in names}
    keys = sorted(set.intersection(*(set(v) for v in per_branch.values())))
    groups = [k.split("/", 1)[0] for k in keys]
    z = np.mean([_normalize(np.array([per_branch[n][k] for k in keys]), groups, metas[n]) for n in names], axis=0)
    return {g: z[[i for i, x in enumerate(groups) if x == g]] for g in sorted(set(groups))}


def score_clips(run_dir: Path, clips: list[Clip], cache_dir: Path | None, names: list[str] | None = None,
                fpr: float | None = None, device: torch.device | str = "cpu") -> ScoreResult:
    """Score clips with the run's trained branches: each branch's score standardised per section
    with its training statistics, averaged over the branches; decisions from a gamma fit (90th
    percentile, as the DCASE baselines) or at false-positive rate ``fpr`` of the training clips."""
    run = open_run(run_dir)
    names = [canonical_name(n) for n in names] if names else trained_branches(run_dir)
    if not names:
        raise CheckpointError(f"no trained branch in {run_dir}; run asd train-branch NAME --run {run_dir} first")
    metas = {n: read_branch_meta(run, n) for n in names}
    raw = score_branches(run_dir, names, clips, cache_dir, device)
    groups = [c.group for c in raw.clips]
    normalized = {n: _normalize(raw.scores[n], groups, metas[n]) for n in names}
    final = np.mean([normalized[n] for n in names], axis=0)
    train = _train_ensemble(run, names, metas)
    rule = (lambda s: fpr_threshold(s, fpr)) if fpr is not None else gamma_threshold
    thresholds = {g: rule(v) for g, v in train.items() if v.size >= 2}
    pooled = rule(np.concatenate(list(train.values())))
    notices = [f"section {g} was not in the training data of {run_dir}: scored against all sections' statistics"
               for g in sorted(set(groups) - set(run.vocab.groups))]
    decision = np.array([int(s > thresholds.get(g, pooled)) for s, g in zip(final, groups)])
    return ScoreResult(raw.clips, final, decision, normalized, thresholds, names, raw.skipped, notices)
