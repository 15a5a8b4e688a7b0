"""The branches a command works with (:class:`BranchSet`): loaded from a run for scoring, or
fresh as their training starts them (the same for ``asd train-branch`` and ``asd freeze-debug``),
each after the branches whose embeddings it takes, and the batches they are fed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from asdcli.config import AsdConfig
from asdcli.models.base import Batch, Branch
from asdcli.models.registry import BRANCHES, build_branch, canonical_name, training_order, upstream_names
from asdcli.services.inputs.background import background_features
from asdcli.services.inputs.dataset import ClipSet
from asdcli.services.inputs.embeddings import EmbeddingCaches, model_batches, with_embeddings
from asdcli.services.store.runs import Run, branch_context, load_branch


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


@dataclass
class BranchSet:
    """``branches`` by name, each after the branches whose embeddings it takes, and ``upstream``:
    the branches whose embeddings they take (loaded too where not named)."""

    branches: dict[str, Branch]
    upstream: dict[str, Branch]

    @classmethod
    def load(cls, run: Run, names: list[str], device) -> "BranchSet":
        """The named trained branches of ``run`` and their upstream branches, from its checkpoints."""
        branches = {canonical_name(n): load_branch(run, n, device) for n in names}
        upstream: dict[str, Branch] = {}
        for name, branch in branches.items():
            for up in BRANCHES[name].upstream(branch.cfg):
                up = canonical_name(up)
                upstream[up] = branches.get(up) or upstream.get(up) or load_branch(run, up, device)
        return cls(branches, upstream)

    @classmethod
    def fresh(cls, config: AsdConfig, run: Run, clipset: ClipSet, trained: list[int], device,
              cache_dir: Path | None, keep: tuple[str, ...] = ()) -> "BranchSet":
        """Every registered branch as its training starts it (:func:`fresh_branch`), upstream
        first; those in ``keep`` that ``run`` has finished are its trained ones instead."""
        branches: dict[str, Branch] = {}
        for name in training_order(config):
            upstream = {u: branches[u] for u in upstream_names(config, name)}
            if name in keep and run.record(name).exists():
                branches[name] = load_branch(run, name, device)
            else:
                branches[name] = fresh_branch(name, config, run, clipset, upstream, trained, device, cache_dir)
        return cls(branches, {u: branches[u] for n in branches for u in upstream_names(config, n)})

    @property
    def all(self) -> dict[str, Branch]:
        return {**self.upstream, **self.branches}

    def wave_users(self) -> set[str]:
        """The branches (named or upstream) that take the raw audio, not only the log-mel."""
        return {n for n, b in self.all.items() if b.needs_wave}

    def batches(self, clipset: ClipSet, batch_size: int, device, caches: EmbeddingCaches | None = None,
                order: list[int] | None = None, embedded: dict[str, Tensor] | None = None) -> Iterator[Batch]:
        """The clip set's batches with every upstream embedding filled (:func:`model_batches`)."""
        return model_batches(clipset, batch_size, device, self.upstream, caches, order, embedded)
