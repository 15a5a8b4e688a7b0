"""`asd meta-train`: MAML meta-training of the final classifier, tasks = machine sections.

A task is one section with a random subset of its pseudo-anomaly kinds: the support set (a few
normal clips and pseudo-anomalies) adapts the classifier in the inner loop, the query set (other
clips of the same task) trains the initialisation in the outer loop. At scoring time a section's
classifier is adapted from its support set of training clips; a section the meta-learner never
saw adapts the same way from normal clips given for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from asdcli.checkpoints import save_weights, versions
from asdcli.config import AsdConfig, MetaConfig
from asdcli.errors import DataError
from asdcli.models.meta_learner import MetaClassifier, adapted, maml_wrapper
from asdcli.services.scoring.examples import Examples, build_examples
from asdcli.services.store.commits import commit_stage, writing
from asdcli.services.store.records import MetaLearnerRecord, write_record
from asdcli.services.store.runs import Run, open_run
from asdcli.services.scoring.stages import fused_features, load_fusion, stage_digest, support_sizes


def sample_task(examples: Examples, group: int, cfg: MetaConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Support and query rows of one task: a section with a random half of its pseudo-anomaly kinds."""
    normals = rng.permutation(examples.rows(group, 0))
    pseudo = examples.rows(group, 1)
    kinds = np.unique(examples.kind[pseudo])
    chosen = rng.choice(kinds, size=max(1, (len(kinds) + 1) // 2), replace=False)
    pseudo = rng.permutation(pseudo[np.isin(examples.kind[pseudo], chosen)])
    n_sup, a_sup = support_sizes(len(normals), len(pseudo), cfg)
    support = np.concatenate([normals[:n_sup], pseudo[:a_sup]])
    query = np.concatenate([normals[n_sup : n_sup + cfg.query], pseudo[a_sup : a_sup + cfg.query]])
    return support, query


def usable_task(examples: Examples, group: int) -> bool:
    """A section can be a task with at least two normal clips and two pseudo-anomalies (one of
    each for the support set, the rest for the query set)."""
    return len(examples.rows(group, 0)) >= 2 and len(examples.rows(group, 1)) >= 2


def task_groups(examples: Examples, cfg: MetaConfig, holdout: list[str]) -> list[int]:
    """Sections usable as tasks: not held out, with clips for a support and a query set."""
    unknown = sorted(set(holdout) - set(examples.groups))
    if unknown:
        raise DataError(f"--holdout {', '.join(unknown)}: not a section of this run (sections: {', '.join(examples.groups)})")
    return [g for g, name in enumerate(examples.groups) if name not in holdout and usable_task(examples, g)]


@dataclass
class MetaResult:
    """Tasks trained on, held-out sections, the mean query loss over the tasks before and after
    adaptation (fresh splits after training: adaptation should lower it), the examples file the
    tasks came from and the training clips that could not be read for it."""

    tasks: list[str]
    holdout: list[str]
    final_loss: float
    query_loss_unadapted: float
    query_loss_adapted: float
    examples: str  # the examples file's name in the run
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    abstained: str | None = None  # why it keeps the fused score (too few sections), or None


def _query_losses(maml, x: Tensor, y: Tensor, examples: Examples, tasks: list[int], cfg: MetaConfig,
                  rng: np.random.Generator) -> tuple[float, float]:
    before, after = [], []
    for g in tasks:
        support, query = sample_task(examples, g, cfg, rng)
        with torch.no_grad():
            before.append(float(F.binary_cross_entropy_with_logits(maml(x[query]), y[query])))
        learner = adapted(maml, x[support], y[support], cfg.inner_steps)
        with torch.no_grad():
            after.append(float(F.binary_cross_entropy_with_logits(learner(x[query]), y[query])))
    return float(np.mean(before)), float(np.mean(after))


def step_losses(maml, x: Tensor, y: Tensor, examples: Examples, tasks: list[int], cfg: MetaConfig,
                rng: np.random.Generator, start: list[Tensor]) -> Iterator[tuple[str, Tensor]]:
    """One outer step's objective, piece by piece (``asd meta-train`` and ``freeze-debug`` alike):
    ("proximal", the pull toward the start) and ("query", each of ``tasks_per_step`` adapted tasks'
    query loss / their number). Pieces come one at a time so that each can be backpropagated and
    its graph freed before the next task is adapted."""
    if cfg.proximal > 0:
        yield "proximal", sum(cfg.proximal * (p - p0).pow(2).sum() for p, p0 in zip(maml.parameters(), start))
    chosen = rng.choice(tasks, size=cfg.tasks_per_step, replace=len(tasks) < cfg.tasks_per_step)
    for g in chosen:
        support, query = sample_task(examples, int(g), cfg, rng)
        learner = adapted(maml, x[support], y[support], cfg.inner_steps)
        yield "query", F.binary_cross_entropy_with_logits(learner(x[query]), y[query]) / len(chosen)


def _fit(maml, x: Tensor, y: Tensor, examples: Examples, tasks: list[int], cfg: MetaConfig,
         rng: np.random.Generator, progress: Callable[[int, int, float], None] | None) -> float:
    """The outer loop: Adam on the mean query loss of ``tasks_per_step`` adapted tasks; returns the last."""
    optimizer = torch.optim.Adam(maml.parameters(), lr=cfg.lr)
    start = [p.detach().clone() for p in maml.parameters()]
    total = float("nan")
    for step in range(cfg.iterations):
        optimizer.zero_grad()
        total = 0.0
        for kind, loss in step_losses(maml, x, y, examples, tasks, cfg, rng, start):
            loss.backward()
            total += float(loss.detach()) if kind == "query" else 0.0
        optimizer.step()
        if progress is not None:
            progress(step + 1, cfg.iterations, total)
    return total


def abstain_reason(n_tasks: int, cfg: MetaConfig) -> str | None:
    """Why the meta-learner keeps the fused score instead of learning from ``n_tasks`` sections.

    MAML learns a start that adapts well across tasks; with one or two sections there is nothing
    to learn across, and each section's adaptation follows its pseudo-anomalies alone. Measured on
    real folds (bench/bench_real.py): with the 2 sections of DCASE 2020 fan the adapted classifier
    lost 0.013 AUC to the fused score on average (up to 0.034), with 1 section of MIMII fan or
    slider it changed nothing or lost."""
    if n_tasks >= cfg.min_tasks:
        return None
    return (f"{n_tasks} section(s) to meta-train on, fewer than meta.min_tasks={cfg.min_tasks}: too few to learn "
            "anything across machines, so the final score is the fused score (no adaptation)")


def new_meta_learner(in_dim: int, n_branches: int, config: AsdConfig) -> torch.nn.Module:
    """The MAML-wrapped classifier at its start (seeded): it ranks clips as the fused score does."""
    torch.manual_seed(config.seed)
    return maml_wrapper(MetaClassifier(in_dim, config.meta.hidden, n_branches), config.meta.inner_lr,
                        config.meta.first_order)


def fit_meta(examples: Examples, x: Tensor, config: AsdConfig, holdout: list[str],
             progress: Callable[[int, int, float], None] | None = None) -> tuple[torch.nn.Module, list[int], float, float, float]:
    """MAML over the sections of ``examples`` (meta-learner inputs ``x`` (N, F)) but ``holdout``:
    (the MAML-wrapped classifier, the task sections, the last loss, the mean query loss of fresh
    tasks unadapted and adapted). Deterministic on CPU for a seed. With too few sections
    (:func:`abstain_reason`) the classifier keeps its start, which ranks clips as the fused score
    does, and the losses are NaN."""
    cfg = config.meta
    tasks = task_groups(examples, cfg, holdout)
    if not tasks:
        raise DataError("no section outside --holdout has 2 normal training clips and 2 pseudo-anomalies to "
                        "meta-train on")
    y = torch.from_numpy(examples.label).float()
    maml = new_meta_learner(x.shape[1], len(examples.branches), config)
    if abstain_reason(len(tasks), cfg):
        return maml, tasks, float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(config.seed)
    loss_value = _fit(maml, x, y, examples, tasks, cfg, rng, progress)
    unadapted, adapted_loss = _query_losses(maml, x, y, examples, tasks, cfg, rng)
    return maml, tasks, loss_value, unadapted, adapted_loss


def meta_train(run_dir: Path | Run, config: AsdConfig, holdout: list[str] | None = None,
               progress: Callable[[int, int, float], None] | None = None, data: Path | None = None,
               device: torch.device | str = "cpu",
               example_progress: Callable[[int, int], None] | None = None) -> MetaResult:
    """Meta-train the classifier over the sections of the run's examples; ``holdout`` sections are
    never used as tasks. Without ``data`` the tasks come from the examples the fusion head was
    fitted on (``asd train-fusion`` writes them); with the training ``data`` the meta-learner gets
    its own, freshly made pseudo-anomalies (``meta_examples.safetensors``), so that it learns and
    adapts on fused scores of clips the fusion head never fitted. Writes ``meta.safetensors`` + ``meta.json``."""
    run, holdout = open_run(run_dir), list(holdout or [])
    with writing(run.path, "meta-learner"):
        return _meta_train(run, config, holdout, progress, data, device, example_progress)


def _meta_train(run: Run, config: AsdConfig, holdout: list[str], progress: Callable[[int, int, float], None] | None,
                data: Path | None, device: torch.device | str,
                example_progress: Callable[[int, int], None] | None) -> MetaResult:
    fusion, fusion_meta = load_fusion(run)
    if data is not None and run.examples.exists():
        probe = Examples.load(run.examples)  # too few sections to learn across: no new pseudo-anomalies needed
        if abstain_reason(len(task_groups(probe, config.meta, holdout)), config.meta):
            data = None
    if data is None:
        examples_name = run.examples.name
        examples = Examples.load(run.file(examples_name))
    else:
        examples_name = run.meta_examples.name
        examples = build_examples(run, data, fusion_meta.branches, config, device, example_progress, stream=1)
    x = fused_features(fusion, examples.z)
    maml, tasks, loss_value, unadapted, adapted_loss = fit_meta(examples, x, config, holdout, progress)
    weights_path, meta_path = run.meta_learner_weights, run.meta_learner_record
    names = [examples.groups[g] for g in tasks]
    abstained = abstain_reason(len(tasks), config.meta)
    with commit_stage(run.path) as place:  # its own examples, weights and metadata as one unit
        if data is not None:
            examples.save(place(run.path / examples_name))
        save_weights(maml.module, place(weights_path), {"part": "meta"})
        write_record(place(meta_path), MetaLearnerRecord,
                     status="complete", tasks=names, holdout=holdout, examples=examples_name,
                     fusion_digest=stage_digest(run.fusion_record, run.fusion_weights), in_dim=int(x.shape[1]),
                     meta=config.meta.model_dump(mode="json"), seed=config.seed, fusion_loss=fusion_meta.loss,
                     final_loss=_finite(loss_value), query_loss_unadapted=_finite(unadapted),
                     query_loss_adapted=_finite(adapted_loss), abstained=abstained, versions=versions())
    return MetaResult(names, holdout, loss_value, unadapted, adapted_loss, examples_name, examples.skipped, abstained)


def _finite(value: float) -> float | None:
    """A loss for JSON: None where there is none (NaN)."""
    return value if np.isfinite(value) else None

