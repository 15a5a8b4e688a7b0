"""`asd train-fusion`: fit the attention fusion head on normal clips vs pseudo-anomalies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from asdcli.checkpoints import save_weights, versions
from asdcli.config import AsdConfig
from asdcli.errors import CheckpointError
from asdcli.metrics import auc
from asdcli.models.fusion_attention import (AttentionFusion, balanced_bce, pairwise_rank_loss, prior_kl,
                                             separability_prior)
from asdcli.models.registry import BRANCHES, canonical_name
from asdcli.services.training.branch_prior import BranchPrior, combine, load_prior, prior_digest
from asdcli.services.scoring.branch_scores import trained_branches
from asdcli.services.scoring.examples import Examples, build_examples
from asdcli.services.store.commits import commit_stage, writing
from asdcli.services.store.records import FusionRecord, write_record
from asdcli.services.store.runs import Run, open_run
from asdcli.services.scoring.stages import branch_digests, usable_branches


@dataclass
class FusionResult:
    """What train-fusion fitted: the branches used, those not trained (``missing``) and those left
    out with the reason (``left_out``), the examples per kind, the final loss, the mean attention
    weights and the separability (mean AUC over sections) of normal training clips from
    pseudo-anomalies, per branch and fused."""

    branches: list[str]
    missing: list[str]
    left_out: dict[str, str]
    counts: dict[str, int]
    loss: float
    mean_weights: dict[str, float]
    pseudo_auc: dict[str, float]
    fair_pseudo_auc: dict[str, float] = field(default_factory=dict)  # on the kinds each branch was not trained on
    prior_temperature: float = float("nan")
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    prior: dict = field(default_factory=dict)  # :func:`prior_record`


def section_auc(examples: Examples, score: np.ndarray, pseudo: np.ndarray | None = None) -> float:
    """Mean over sections of the AUC of ``score`` (N,) for normal (0) vs pseudo-anomaly (1);
    ``pseudo``: (N,) mask of the pseudo-anomalies to count (default: all)."""
    return separability(examples, score, pseudo)[0]


def separability(examples: Examples, score: np.ndarray, pseudo: np.ndarray | None = None) -> tuple[float, float]:
    """(mean over sections of the normal-vs-pseudo-anomaly AUC of ``score`` (N,), its standard
    error were the score blind to them). ``pseudo``: (N,) mask of the pseudo-anomalies to count.
    The error is that of a Mann-Whitney AUC under no separation, sqrt((n0 + n1 + 1) / (12 n0 n1))
    per section, averaged: with a few clips per section it is large, with hundreds small."""
    keep = examples.label == 0
    keep |= (examples.label == 1) if pseudo is None else pseudo
    values, variances = [], []
    for g in range(len(examples.groups)):
        rows = np.flatnonzero((examples.group == g) & keep)
        n1 = int(examples.label[rows].sum())
        n0 = len(rows) - n1
        if n0 and n1:
            values.append(auc(examples.label[rows], score[rows]))
            variances.append((n0 + n1 + 1) / (12 * n0 * n1))
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.sqrt(np.sum(variances)) / len(values))


def fusion_prior(examples: Examples, config: AsdConfig) -> tuple[torch.Tensor, float, list[float]]:
    """The attention prior (K,), its temperature and each branch's separability (AUC).

    A branch is judged only on pseudo-anomalies of kinds its training did not already separate
    (:meth:`Examples.fair_pseudo`): the contrastive branch learns to tell sections and perturbed
    copies apart, so other-section clips and those perturbations say nothing about unseen faults
    (measured on real fan clips: 0.90 on other sections against 0.5 for the autoencoders, then
    below chance on the real faults). The temperature is ``fusion.prior_temperature`` or the
    standard error of the separabilities, whichever is larger, so that a branch's weight falls by
    a factor e per standard error it lies below the best: where a section has a handful of clips
    the evidence cannot rank the branches and the prior stays close to uniform."""
    aucs, errors = zip(*(separability(examples, examples.z[:, k], examples.fair_pseudo(k))
                         for k in range(len(examples.branches))))
    finite = [e for e in errors if np.isfinite(e)]
    temperature = max(config.fusion.prior_temperature, float(np.mean(finite)) if finite else 0.0)
    values = torch.nan_to_num(torch.tensor(aucs, dtype=torch.float64), nan=0.5).float()
    return separability_prior(values, temperature), temperature, list(aucs)


@dataclass
class Start:
    """Where the attention starts: the labelled prior's weights (K,), the weights the machine's own
    pseudo-anomalies give (K,), how far those are trusted, their temperature and each branch's
    fair separability (AUC), and the combined start (K,)."""

    prior: np.ndarray
    evidence: np.ndarray
    trust: float
    temperature: float
    fair_auc: list[float]
    weights: np.ndarray
    source: BranchPrior | None


def attention_start(examples: Examples, config: AsdConfig) -> Start:
    """The attention's start: ``fusion.prior`` (learned from labelled faults of other machines,
    :mod:`~asdcli.services.training.branch_prior`) moved toward this machine's pseudo-anomaly evidence
    (:func:`fusion_prior`) by the prior's trust; with ``fusion.prior: none``, the evidence alone."""
    evidence, temperature, fair = fusion_prior(examples, config)
    source = load_prior(config.fusion.prior)
    k = len(examples.branches)
    prior = source.weights(examples.branches) if source is not None else np.full(k, 1.0 / k)
    trust = source.trust if source is not None else 1.0
    weights = combine(prior, evidence.double().numpy(), trust)
    return Start(prior, evidence.double().numpy(), trust, temperature, fair, weights, source)


@dataclass
class FusionObjective:
    """What the fusion head is trained on (``asd train-fusion`` and ``freeze-debug`` alike):
    ``fusion.loss`` on the normal clips and the pseudo-anomalies of kinds no fused branch was
    trained to separate (none left: no fit term), plus ``penalty`` x KL(attention || start)."""

    z: Tensor  # (N', K) the rows it sees
    label: Tensor
    group: Tensor
    start: Tensor  # (K,) the attention's start
    penalty: float
    kind: str
    fits: bool

    def __call__(self, model: AttentionFusion) -> Tensor:
        out = model(self.z)
        if not self.fits:
            fit = out.fused.sum() * 0.0
        elif self.kind == "rank":
            fit = pairwise_rank_loss(out.fused, self.label, self.group)
        else:
            fit = balanced_bce(out.logit, self.label, self.group)
        return fit + self.penalty * prior_kl(out.weights, self.start)


def fusion_objective(examples: Examples, config: AsdConfig, start: Start,
                     untrusted: bool = False) -> FusionObjective | None:
    """The head's objective from its start; None where the prior does not trust pseudo-anomalies
    at all (trust 0: the head keeps its start), or with ``untrusted`` its fit term alone (what
    ``freeze-debug`` logs of a head nothing trains). The pull is ``fusion.prior_penalty / trust``:
    the less the labelled data trusted pseudo-anomalies, the less they move the attention."""
    if start.trust <= 0 and not untrusted:
        return None
    fair = np.logical_and.reduce([examples.fair_pseudo(k) for k in range(len(examples.branches))])
    rows = torch.from_numpy(np.flatnonzero((examples.label == 0) | fair))
    return FusionObjective(torch.from_numpy(examples.z).float()[rows], torch.from_numpy(examples.label)[rows],
                           torch.from_numpy(examples.group)[rows], torch.from_numpy(start.weights).float(),
                           config.fusion.prior_penalty / start.trust if start.trust > 0 else 0.0, config.fusion.loss,
                           bool(fair.any()))


def new_head(examples: Examples, config: AsdConfig, start: Start) -> AttentionFusion:
    """A fusion head at its start (seeded)."""
    torch.manual_seed(config.seed)
    model = AttentionFusion(len(examples.branches), config.fusion.hidden)
    model.set_prior(torch.from_numpy(start.weights).float())
    return model


def fit_fusion(examples: Examples, config: AsdConfig, start: Start | None = None) -> tuple[AttentionFusion, float]:
    """Full-batch AdamW on the head's objective (:func:`fusion_objective`) from its start
    (:func:`attention_start`); deterministic on CPU. Without an objective (trust 0) the head keeps
    its start."""
    start = attention_start(examples, config) if start is None else start
    model = new_head(examples, config, start)
    objective = fusion_objective(examples, config, start)
    if objective is None:
        return model.eval(), float("nan")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.fusion.lr, weight_decay=config.fusion.weight_decay)
    loss = torch.tensor(float("nan"))
    for _ in range(config.fusion.epochs):
        optimizer.zero_grad()
        loss = objective(model)
        loss.backward()
        optimizer.step()
    return model.eval(), float(loss.detach())


def train_fusion(data: Path, run_dir: Path | Run, config: AsdConfig, names: list[str] | None = None,
                 device: torch.device | str = "cpu", progress: Callable[[int, int], None] | None = None) -> FusionResult:
    """Make the examples (``examples.safetensors``), fit the head and write ``fusion.safetensors``
    + ``fusion.json``. Branches that are not trained are left out (listed in ``missing``)."""
    run = open_run(run_dir)
    trained = trained_branches(run)
    names = [canonical_name(n) for n in names] if names else trained
    if not names:
        raise CheckpointError(f"no trained branch in {run.path}; train it first: asd train DATA --run {run.path}")
    names, left_out = usable_branches(run, names, config)
    with writing(run.path, "fusion"):
        return _train_fusion(run, data, names, left_out, config, device, progress)


def _train_fusion(run: Run, data: Path, names: list[str], left_out: dict[str, str], config: AsdConfig,
                  device: torch.device | str, progress: Callable[[int, int], None] | None) -> FusionResult:
    weights_path, meta_path, examples_path = run.fusion_weights, run.fusion_record, run.examples
    examples = build_examples(run, data, names, config, device, progress)
    start = attention_start(examples, config)
    model, loss = fit_fusion(examples, config, start)
    with torch.no_grad():
        out = model(torch.from_numpy(examples.z).float())
    pseudo_auc = {n: section_auc(examples, examples.z[:, k]) for k, n in enumerate(names)}
    pseudo_auc["fused"] = section_auc(examples, out.fused.double().numpy())
    mean_weights = dict(zip(names, out.weights.mean(0).tolist()))
    with commit_stage(run.path) as place:  # examples, head and metadata as one unit
        examples.save(place(examples_path))
        save_weights(model, place(weights_path), {"part": "fusion"})
        write_record(place(meta_path), FusionRecord,
                     status="complete", branches=names, left_out=left_out, branch_digests=branch_digests(run, names),
                     hidden=config.fusion.hidden, config={"seed": config.seed, "fusion": config.fusion.model_dump(mode="json")}, loss=loss,
                     examples=examples.counts(), mean_weights=mean_weights, pseudo_auc=pseudo_auc,
                     fair_pseudo_auc=dict(zip(names, start.fair_auc)), trained_kinds=examples.trained_kinds,
                     prior_temperature=start.temperature, versions=versions(), prior=prior_record(start, names))
    missing = [n for n in BRANCHES if n not in names and n not in left_out]
    return FusionResult(names, missing, left_out, examples.counts(), loss, mean_weights, pseudo_auc,
                        dict(zip(names, start.fair_auc)), start.temperature, examples.skipped,
                        prior_record(start, names))


def prior_record(start: Start, names: list[str]) -> dict:
    """What ``fusion.json`` says of the attention's start: the labelled prior's origin and
    weights, the pseudo-anomaly evidence, the trust and the combined start, per branch."""
    source = start.source
    return {"source": "none" if source is None else source.source.description,
            "sets": [] if source is None else source.source.sets,
            "digest": None if source is None else prior_digest(source),
            "trust": start.trust, "temperature": None if source is None else source.temperature,
            "prior_weights": dict(zip(names, start.prior.tolist())),
            "evidence_weights": dict(zip(names, start.evidence.tolist())),
            "start_weights": dict(zip(names, start.weights.tolist()))}

