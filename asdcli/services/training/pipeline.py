"""`asd train`: every stage of a run in order, checked before the first long step, continued where
an earlier call stopped.

The plan says, for each branch (b2, b3, b4, b1, b5: the flow models b3's embeddings, so it comes
after), the fusion head and the meta-learner, whether it is trained, resumed (an interrupted
training), kept (finished, and nothing it depends on changes) or skipped (``--skip``, or an input
branch skipped). Before anything is trained, every stage to train is checked: the data has
training clips and each branch can get what it needs (b1's pretrained weights), so that a missing
download stops the pipeline in seconds, not after an hour of training.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from asdcli.checkpoints import training_progress
from asdcli.config import AsdConfig
from asdcli.errors import AsdError, ConfigError
from asdcli.models.registry import BRANCHES, branch_config, canonical_name, training_order, upstream_names
from asdcli.services.training.branch_prior import load_prior
from asdcli.services.inputs.dataset import training_clips, untrained_machines
from asdcli.services.scoring.stages import is_current, stale_branches
from asdcli.services.store.records import BranchRecord, FusionRecord, MetaLearnerRecord, read_record
from asdcli.services.store.runs import Run, is_run, open_run

FUSION, META = "fusion", "meta-learner"


@dataclass
class Step:
    """One stage of the pipeline: ``action`` train, resume, keep or skip, and why."""

    stage: str
    action: str
    why: str = ""

    @property
    def label(self) -> str:
        return f"{BRANCHES[self.stage].bid} {self.stage}" if self.stage in BRANCHES else self.stage


def _branch_step(run: Run | None, name: str, config: AsdConfig, skipped: set[str]) -> Step:
    if name in skipped:
        return Step(name, "skip", "--skip")
    ups = upstream_names(config, name)
    if any(u in skipped for u in ups):
        return Step(name, "skip", f"it models the embeddings of {next(u for u in ups if u in skipped)}, which is skipped")
    if run is None:
        return Step(name, "train")
    if run.record(name).exists() and read_record(BranchRecord, run.record(name), f"{name} metadata").status == "complete":
        return Step(name, "keep", "finished")
    progress = training_progress(run.train_state(name))
    if progress is not None:
        return Step(name, "resume", f"stopped at epoch {progress.get('epochs_done')}/{progress.get('epochs')}")
    return Step(name, "train")


def _head_steps(run: Run | None, branches: list[Step]) -> list[Step]:
    """The fusion head and meta-learner: kept where they exist, are current and no branch changes."""
    changing = [s.label for s in branches if s.action in ("train", "resume")]
    if run is None or changing:
        why = f"after {', '.join(changing)}" if changing else ""
        return [Step(FUSION, "train", why), Step(META, "train", why)]
    kept = {s.stage for s in branches if s.action == "keep"}
    if not run.fusion_record.exists():
        return [Step(FUSION, "train"), Step(META, "train")]
    fusion = read_record(FusionRecord, run.fusion_record, "fusion metadata")
    if stale_branches(run, fusion) or not set(fusion.branches) <= kept:
        return [Step(FUSION, "train", "a branch changed after it"), Step(META, "train", "after the fusion")]
    steps = [Step(FUSION, "keep", "finished")]
    if not run.meta_learner_record.exists():
        return steps + [Step(META, "train")]
    meta = read_record(MetaLearnerRecord, run.meta_learner_record, "meta-learner metadata")
    current = is_current(meta.fusion_digest, run.fusion_record, run.fusion_weights)
    return steps + [Step(META, "keep", "finished") if current else Step(META, "train", "the fusion changed after it")]


def plan(run_dir: Path, config: AsdConfig, skip: list[str] | None = None, heads: bool = True) -> list[Step]:
    """What ``asd train`` will do with the run folder ``run_dir`` (see the module docstring). The
    meta-learner needs learn2learn (an optional install): without it, it is skipped, saying so,
    and the run scores with the fusion head. ``heads=False`` trains the branches only."""
    skipped = {canonical_name(s) for s in skip or []}
    run = open_run(run_dir) if is_run(run_dir) else None
    branches = [_branch_step(run, name, config, skipped) for name in training_order(config)]
    if all(s.action == "skip" for s in branches):
        raise ConfigError("every branch is skipped: nothing to train")
    if not heads:
        return branches + [Step(FUSION, "skip", "branches only"), Step(META, "skip", "branches only")]
    steps = branches + _head_steps(run, branches)
    if steps[-1].action == "train" and importlib.util.find_spec("learn2learn") is None:
        steps[-1] = Step(META, "skip", "learn2learn is not installed (scripts/install.sh installs it): the run scores "
                                       "with the fusion head")
    return steps


def preflight(data: Path, config: AsdConfig, steps: list[Step]) -> int:
    """Check, before any training, that the data has training clips, that every branch to train
    can be built (its pretrained weights can be had) and that the fusion's prior reads; returns the
    number of training clips. Raises the first problem as one line naming the stage."""
    clips = training_clips(str(data))
    if any(step.stage == FUSION and step.action == "train" for step in steps):
        load_prior(config.fusion.prior)
    for step in steps:
        if step.stage in BRANCHES and step.action in ("train", "resume"):
            try:
                BRANCHES[step.stage].check(branch_config(config, step.stage))
            except AsdError as error:
                hint = "" if "--skip" in str(error) else f"; or leave it out: asd train --skip {BRANCHES[step.stage].bid}"
                raise type(error)(f"{step.label}: {error}{hint}") from None
    return len(clips)


@dataclass
class Progress:
    """What a caller follows of :func:`train` (each callback may be None): the plan, once every
    stage was checked (``planned``, the :class:`Trained` so far); a stage starts
    (``stage``), a branch's optimisation step (``step``, :class:`~asdcli.services.training.train.StepInfo`),
    clips scored after a branch or for the fusion's and meta-learner's examples (``scored(done,
    total)``), a meta-training step (``meta(step, total, loss)``), a stage ends (``done(step,
    result, seconds)``: the service's own result)."""

    planned: Callable[["Trained"], None] | None = None
    stage: Callable[[Step], None] | None = None
    step: Callable[[object], None] | None = None
    scored: Callable[[int, int], None] | None = None
    meta: Callable[[int, int, float], None] | None = None
    done: Callable[[Step, object, float], None] | None = None


@dataclass
class Trained:
    """What :func:`train` did: the plan it followed, the training clips it found, the machine types
    it left out (no training clip) and each stage's result and seconds."""

    steps: list[Step]
    clips: int
    untrained: list[str]
    results: dict[str, object] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def train(data: Path, run_dir: Path, config: AsdConfig, skip: list[str] | None = None,
          device: torch.device | str = "cpu", cache_dir: Path | None = None, progress: Progress | None = None,
          heads: bool = True) -> Trained:
    """Every stage of a run in order (the module docstring): plan, check every stage first, then
    train the branches, the fusion head and the meta-learner that are not finished and current
    (``heads=False``: the branches only, for a caller that fits its own heads).
    ``asd train`` is this with progress bars; the library's ``asdcli.train``."""
    from asdcli.services.training.fuse import train_fusion
    from asdcli.services.training.meta import meta_train
    from asdcli.services.training.train import train_branch

    progress = progress or Progress()
    steps = plan(run_dir, config, skip, heads)
    trained = Trained(steps, preflight(data, config, steps), untrained_machines(str(data)))
    if progress.planned:
        progress.planned(trained)
    device = torch.device(device)
    for step in steps:
        if step.action in ("keep", "skip"):
            continue
        if progress.stage:
            progress.stage(step)
        start = time.perf_counter()
        if step.stage == FUSION:
            result = train_fusion(data, open_run(run_dir), config, None, device, progress=progress.scored)
        elif step.stage == META:
            result = meta_train(open_run(run_dir), config, None, progress.meta, data, device, progress.scored)
        else:
            result = train_branch(step.stage, data, run_dir, config, device, cache_dir, step.action == "resume",
                                  on_step=progress.step, on_score=progress.scored)
        trained.results[step.stage], trained.seconds[step.stage] = result, time.perf_counter() - start
        if progress.done:
            progress.done(step, result, trained.seconds[step.stage])
    return trained
