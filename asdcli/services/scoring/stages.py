"""The trained stages as scoring uses them: the fusion head and the meta-learner loaded back
(an error where one is missing or older than the stage it was built on), the digests that tell
whether a stage is current, and the fixed support set a section adapts from. Training them is
:mod:`~asdcli.services.training.fuse` and :mod:`~asdcli.services.training.meta`; scoring imports only this."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from asdcli.checkpoints import file_digest, load_weights
from asdcli.config import AsdConfig, MetaConfig
from asdcli.errors import CheckpointError
from asdcli.models.fusion_attention import AttentionFusion
from asdcli.models.meta_learner import MetaClassifier, adapted_copy, meta_features
from asdcli.services.scoring.branch_scores import trained_branches
from asdcli.services.store.commits import run_file
from asdcli.services.scoring.examples import Examples
from asdcli.services.store.migrate import older_digests
from asdcli.services.scoring.reliability import split_usable
from asdcli.services.store.records import FusionRecord, MetaLearnerRecord, read_record
from asdcli.services.store.runs import Run, read_branch_record


def stage_digest(meta_path: Path, weights_path: Path) -> str:
    """SHA-1 of a stage's metadata and weights together: it changes whenever the stage is
    retrained or its weights file is replaced, so a later stage that records it can tell it was
    built on another one."""
    return hashlib.sha1((file_digest(meta_path) + file_digest(weights_path)).encode()).hexdigest()


def is_current(recorded: str | None, meta_path: Path, weights_path: Path) -> bool:
    """Whether a digest a later stage recorded is that of this stage as it is now (or one an
    older format recorded of it, :func:`asdcli.services.store.migrate.older_digests`)."""
    return recorded in (stage_digest(meta_path, weights_path), *older_digests(meta_path))


def branch_digests(run: Run, names: list[str]) -> dict[str, str]:
    """:func:`stage_digest` of each branch."""
    return {n: stage_digest(run.record(n), run.weights(n)) for n in names}


def usable_branches(run: Run, names: list[str], config: AsdConfig) -> tuple[list[str], dict[str, str]]:
    """``names`` split into the branches to fuse and those left out, with why
    (:func:`~asdcli.services.scoring.reliability.split_usable`)."""
    metas = {n: read_branch_record(run, n) for n in {*names, *trained_branches(run)}}
    return split_usable(names, metas, config)


def stale_branches(run: Run, meta: FusionRecord) -> list[str]:
    """The fused branches (fusion metadata ``meta``) retrained after the fusion head."""
    return [n for n in meta.branches if not is_current(meta.branch_digests.get(n), run.record(n), run.weights(n))]


def load_fusion(run: Run) -> tuple[AttentionFusion, FusionRecord]:
    """The run's fusion head and metadata; an error when it is missing or older than a branch."""
    weights_path, meta_path = run.fusion_weights, run.fusion_record
    if not meta_path.exists():
        raise CheckpointError(f"no fusion head in {run.path}; train it: asd train DATA --run {run.path} (or this stage alone: "
                              f"asd train-fusion --data DATA --run {run.path})")
    meta = read_record(FusionRecord, meta_path, "fusion metadata")
    stale = stale_branches(run, meta)
    if stale:
        raise CheckpointError(f"{meta_path}: branch(es) {', '.join(stale)} were retrained after the fusion head; "
                              f"rerun: asd train DATA --run {run.path} (it retrains what is stale)")
    model = AttentionFusion(len(meta.branches), meta.hidden)
    load_weights(model, weights_path)
    return model.eval(), meta


def meta_examples(run: Run, meta: MetaLearnerRecord) -> Examples:
    """The examples the meta-learner (metadata ``meta``) was trained on and adapts from: its own
    (``meta-train --data``) or else the fusion head's."""
    return Examples.load(run.file(run_file(run.path, meta.examples, run.meta_learner_record, "examples").name))


def fused_features(fusion: AttentionFusion, z: np.ndarray) -> Tensor:
    """(N, K) standardised branch scores -> (N, 2K + 1) meta-learner inputs."""
    with torch.no_grad():
        return meta_features(fusion(torch.from_numpy(z).float()))


def support_sizes(n_normals: int, n_pseudo: int, cfg: MetaConfig) -> tuple[int, int]:
    """(normal, pseudo-anomalous) support clips of a section with ``n_normals`` normal training clips
    and ``n_pseudo`` pseudo-anomalies: the configured sizes, at most half of what the section has
    (at least one each), so that a machine with a handful of clips still leaves a query set."""
    return (max(1, min(cfg.support_normals, n_normals // 2)), max(1, min(cfg.support_anomalies, n_pseudo // 2)))


def support_rows(examples: Examples, group: int, cfg: MetaConfig, seed: int) -> np.ndarray:
    """The fixed support set a section adapts from at scoring time (seeded choice)."""
    rng = np.random.default_rng([seed, group])
    normals, pseudo = examples.rows(group, 0), examples.rows(group, 1)
    n_sup, a_sup = support_sizes(len(normals), len(pseudo), cfg)
    return np.concatenate([rng.permutation(normals)[:n_sup], rng.permutation(pseudo)[:a_sup]])


@dataclass
class MetaLearner:
    """A trained meta-learner (its classifier, not MAML-wrapped: scoring only adapts it) with what
    adapting it needs."""

    model: torch.nn.Module
    cfg: MetaConfig
    seed: int
    meta: MetaLearnerRecord

    def adapt(self, support_x: Tensor | None, support_y: Tensor | None) -> torch.nn.Module:
        """The classifier adapted on the support set (S, F) / (S,), or unadapted without one or
        when it abstained (too few sections to meta-learn from: it ranks as the fused score)."""
        if support_x is None or self.meta.abstained:
            return self.model
        return adapted_copy(self.model, support_x, support_y, self.cfg.inner_steps, self.cfg.inner_lr)

    def scores(self, x: Tensor, support_x: Tensor | None, support_y: Tensor | None) -> np.ndarray:
        """(N,) final logits of ``x`` (N, F), adapted on the support set when one is given."""
        learner = self.adapt(support_x, support_y)  # adapting needs gradients: outside no_grad
        with torch.no_grad():
            return learner(x).double().numpy()


def fusion_changed(run: Run, meta: MetaLearnerRecord) -> bool:
    """Whether the fusion head was retrained after the meta-learner (metadata ``meta``)."""
    fusion_meta = run.fusion_record
    recorded = meta.fusion_digest  # empty in format-1 runs made before it was recorded: not checked
    return bool(recorded) and fusion_meta.exists() and not is_current(recorded, fusion_meta, run.fusion_weights)


def load_meta(run: Run) -> MetaLearner:
    """The run's meta-learner; an error when it is missing."""
    weights_path, meta_path = run.meta_learner_weights, run.meta_learner_record
    if not meta_path.exists():
        raise CheckpointError(f"no meta-learner in {run.path}; train it: asd train DATA --run {run.path}")
    meta = read_record(MetaLearnerRecord, meta_path, "meta-learner metadata")
    if fusion_changed(run, meta):
        raise CheckpointError(f"{meta_path}: the fusion head was retrained after the meta-learner; "
                              f"rerun: asd train DATA --run {run.path} (it retrains what is stale)")
    cfg = MetaConfig.model_validate(meta.meta)
    model = MetaClassifier(meta.in_dim, cfg.hidden, (meta.in_dim - 1) // 2)
    load_weights(model, weights_path)
    return MetaLearner(model, cfg, meta.seed, meta)
