"""How a branch's training starts, the same for ``asd train-branch`` and ``asd freeze-debug``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from asdcli.config import AsdConfig
from asdcli.models.base import Branch
from asdcli.models.registry import build_branch
from asdcli.services.background import background_features
from asdcli.services.dataset import ClipSet
from asdcli.services.embeddings import model_batches, with_embeddings
from asdcli.services.runs import Run, branch_context


def fresh_branch(name: str, config: AsdConfig, run: Run, clipset: ClipSet, upstream: dict[str, Branch],
                 trained: list[int], device, cache_dir: Path | None,
                 embedded: dict[str, Tensor] | None = None) -> Branch:
    """Branch ``name`` as its training starts it (asd train-branch and freeze-debug alike): seeded
    new weights, the training clips' input statistics, the background clips its config names,
    and its own preparation on the clips ``trained`` (indices of ``clipset``). ``upstream``: the
    trained branches whose embeddings it takes (``embedded``: every clip's, where computed already)."""
    if embedded is None:
        probe = with_embeddings(clipset.batch([0]).to(device), upstream)
        dims = {n: int(e.shape[1]) for n, e in probe.embeddings.items()}
    else:
        dims = {n: int(e.shape[1]) for n, e in embedded.items()}
    torch.manual_seed(config.seed)
    branch = build_branch(name, config, branch_context(run, config, dims)).to(device)
    branch.set_input_stats(clipset.mean.to(device), clipset.std.to(device))
    if branch.background_spec() != "none":
        machines = {c.machine for c in clipset.clips}
        feats, kinds, _ = background_features(branch.background_spec(), machines, config, cache_dir)
        branch.set_background(feats.to(device), kinds.to(device))
    branch.prepare_training(model_batches(clipset, config.train.batch_size, device, upstream, order=trained,
                                          embedded=embedded))
    return branch
