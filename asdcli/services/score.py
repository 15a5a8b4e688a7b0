"""Per-branch anomaly scores of any clips with a trained run (the base of `asd score`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asdcli.config import validate_config
from asdcli.data.layout import Clip
from asdcli.models.base import Branch
from asdcli.errors import CheckpointError
from asdcli.models.registry import BRANCHES, canonical_name
from asdcli.services.dataset import ClipSet
from asdcli.services.features import make_extractor
from asdcli.services.runs import Run, load_branch, open_run, read_branch_meta
from asdcli.services.train import with_embeddings


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
    scores: dict[str, list] = {n: [] for n in names}
    with torch.no_grad():
        for batch in clipset.batches(batch_size):
            batch = with_embeddings(batch.to(device), upstream)
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
