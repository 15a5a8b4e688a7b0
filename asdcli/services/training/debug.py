"""`asd freeze-debug`: train every part of the model together with some parts frozen, logging
each part's loss and gradient norm per step, and reporting trouble (non-finite losses, exploding
or vanishing gradients) at the step where it begins.

Every part is trained on what its own command trains it on: the branches on the batches ``asd
train-branch`` takes (the run's held-out clips kept out, the same seeded order, each branch's
random draws from its own generator), each with its own loss; the fusion head on its objective
(:func:`~asdcli.services.training.fuse.fusion_objective`, from the run's examples) and the meta-learner on
``asd meta-train``'s outer step (:func:`~asdcli.services.training.meta.step_losses`). Only the freezing,
the logging and the trouble detection are this command's. A frozen part
has ``requires_grad`` off and stays in eval mode (its batch-norm statistics do not move either),
so its weights are bit-identical afterwards; this is checked and reported. Nothing is written to
the run: this is a diagnostic, its product is the log.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.config import AsdConfig
from asdcli.errors import ConfigError
from asdcli.models.base import Branch, state_digest
from asdcli.models.meta_learner import meta_features
from asdcli.models.registry import BRANCHES, branch_training, canonical_name
from asdcli.services.inputs.dataset import ClipSet, Vocabulary, clip_key, holdout_keys, training_clips
from asdcli.services.scoring.examples import Examples
from asdcli.services.inputs.features import make_extractor
from asdcli.services.training.fuse import attention_start, fusion_objective, new_head
from asdcli.services.scoring.stages import load_fusion, load_meta, meta_examples
from asdcli.services.training.meta import new_meta_learner, sample_task, step_losses, task_groups
from asdcli.services.scoring.branch_setup import BranchSet
from asdcli.services.inputs.embeddings import with_embeddings
from asdcli.services.store.runs import Run, is_run, open_run
from asdcli.services.training.loop import run_epoch
from asdcli.services.training.schedule import Precision, epoch_chunks, lr_at
from asdcli.services.training.trouble import Trouble, TroubleDetector

HEADS = ("fusion", "meta")


def debug_log_path(log_dir: Path, frozen: list[str]) -> Path:
    """``<log_dir>/debug_freeze_<frozen parts>.csv``."""
    return log_dir / f"debug_freeze_{'_'.join(part_id(p) for p in frozen)}.csv"


def part_id(name: str) -> str:
    """Log id of a part: b1..b5 for branches, ``fusion`` / ``meta`` for the heads."""
    return name if name in HEADS else BRANCHES[name].bid


def parse_parts(names: list[str]) -> list[str]:
    """Canonical part names (branch ids or names, ``fusion``, ``meta``), validated."""
    return [n if n in HEADS else canonical_name(n) for n in names]


@dataclass
class DebugResult:
    """The log written, the parts trained and frozen, whether each frozen part is bit-identical
    afterwards, the troubles found and notices (parts not logged and why)."""

    log: Path
    parts: list[str]
    frozen: list[str]
    unchanged: dict[str, bool]
    steps: int
    troubles: list[Trouble] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


class _Heads:
    """The fusion head and the meta-learner with the objectives their commands train
    (:func:`~asdcli.services.training.fuse.fusion_objective`, :func:`~asdcli.services.training.meta.step_losses`), on
    the run's examples; a frozen one is the run's own. A fusion head whose prior does not trust
    pseudo-anomalies (trust 0) is not trained by ``asd train-fusion``, so here it is frozen too."""

    def __init__(self, run: Run, config: AsdConfig, frozen: list[str], notices: list[str]):
        examples = Examples.load(run.examples)
        start = attention_start(examples, config)
        self.objective = fusion_objective(examples, config, start)
        if self.objective is None:
            self.objective = fusion_objective(examples, config, start, untrusted=True)
            frozen.append("fusion")
            notices.append("fusion: the prior does not trust pseudo-anomalies (trust 0), so asd train-fusion does not "
                           "train the head: frozen at its start here too (its fit term is logged)")
        use_run = "fusion" in frozen and run.fusion_record.exists()
        self.fusion = load_fusion(run)[0] if use_run else new_head(examples, config, start)
        self.examples = meta_examples(run, load_meta(run).meta) if run.meta_learner_record.exists() else examples
        self.cfg = config
        k = len(self.examples.branches)
        self.maml = new_meta_learner(2 * k + 1, k, config)
        if "meta" in frozen and run.meta_learner_record.exists():
            self.maml.module.load_state_dict(load_meta(run).model.state_dict())
        self.start = [p.detach().clone() for p in self.maml.parameters()]
        self.z = torch.from_numpy(self.examples.z).float()
        self.label = torch.from_numpy(self.examples.label).float()
        self.tasks = task_groups(self.examples, config.meta, [])
        self.rng = np.random.default_rng(config.seed)
        self.modules = {"fusion": self.fusion, "meta": self.maml}

    def losses(self, trainable: set[str]) -> dict[str, Tensor]:
        """This step's loss of each head (differentiable for the trainable ones)."""
        with torch.set_grad_enabled("fusion" in trainable):
            out = {"fusion": self.objective(self.fusion)}
        if self.tasks:
            with torch.no_grad():
                x = meta_features(self.fusion(self.z))
            if "meta" in trainable:
                out["meta"] = sum(loss for _, loss in step_losses(self.maml, x, self.label, self.examples, self.tasks,
                                                                    self.cfg.meta, self.rng, self.start))
            else:  # frozen: no inner loop either (it would need gradients of the frozen weights)
                support, query = sample_task(self.examples, int(self.rng.choice(self.tasks)), self.cfg.meta, self.rng)
                with torch.no_grad():
                    out["meta"] = F.binary_cross_entropy_with_logits(self.maml(x[query]), self.label[query])
        return out


def log_columns(parts: list[str]) -> list[str]:
    """Columns of the freeze-debug CSV for the logged ``parts``."""
    per_part = [f"{kind}_{part_id(p)}" for p in parts for kind in ("loss", "grad_norm")]
    return ["kind", "epoch", "step", "global_step", "time_s", "lr", "loss_total", *per_part]


class _Log:
    """The CSV, one flushed row at a time: a crash keeps every row written so far."""

    def __init__(self, path: Path, parts: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, log_columns(parts), lineterminator="\n")
        self.writer.writeheader()
        self.parts, self.epoch_rows = parts, []

    def step(self, epoch: int, step: int, global_step: int, seconds: float, lr: float,
             losses: dict[str, float], grads: dict[str, float]) -> None:
        row = {"kind": "step", "epoch": epoch, "step": step, "global_step": global_step, "time_s": f"{seconds:.3f}",
               "lr": f"{lr:.6g}", "loss_total": f"{sum(v for v in losses.values()):.6g}"}
        for p in self.parts:
            row[f"loss_{part_id(p)}"], row[f"grad_norm_{part_id(p)}"] = f"{losses[p]:.6g}", f"{grads[p]:.6g}"
        self._write(row)
        self.epoch_rows.append(row)

    def epoch_summary(self, epoch: int, global_step: int, seconds: float, lr: float) -> None:
        """A row of the epoch's means (``kind`` = epoch)."""
        rows, self.epoch_rows = self.epoch_rows, []
        row = {"kind": "epoch", "epoch": epoch, "step": len(rows), "global_step": global_step,
               "time_s": f"{seconds:.3f}", "lr": f"{lr:.6g}"}
        for column in log_columns(self.parts)[6:]:
            row[column] = f"{np.mean([float(r[column]) for r in rows]):.6g}"
        self._write(row)

    def _write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


@dataclass
class _Setup:
    clipset: ClipSet
    branches: dict[str, Branch]
    heads: _Heads | None
    modules: dict[str, nn.Module]
    params: dict[str, list[nn.Parameter]]
    upstream: dict[str, Branch]
    precision: dict[str, Precision]  # each branch's arithmetic, as asd train-branch would use it
    scaler: torch.amp.GradScaler  # active when a branch trains in fp16
    trained: list[int]  # the clips asd train-branch trains on: the run's held-out clips are not
    rng: dict[str, Tensor] = field(default_factory=dict)  # each branch's own torch generator state


def _base_lr(config: AsdConfig, part: str) -> float:
    if part in HEADS:
        return config.fusion.lr if part == "fusion" else config.meta.lr
    return branch_training(config, part, "lr")


def _prepare(data: Path, run_dir: Path | None, config: AsdConfig, frozen: list[str], device,
             cache_dir: Path | None, notices: list[str]) -> _Setup:
    clips = training_clips(str(data))
    run = open_run(run_dir) if run_dir is not None and is_run(run_dir) else None
    vocab = run.vocab if run is not None else Vocabulary.from_clips(clips)
    held = run.holdout if run is not None else frozenset(holdout_keys(clips, config.train.holdout, config.seed))
    clipset = ClipSet(clips, config, make_extractor(config, cache_dir), vocab,
                      with_wave=any(cls.needs_wave for cls in BRANCHES.values()))
    trained = [i for i, c in enumerate(clipset.clips) if clip_key(c) not in held]
    # every branch as asd train-branch starts it; a frozen one is the run's trained one where it has it
    branch_set = BranchSet.fresh(config, run or Run(Path("."), vocab, {}), clipset, trained, device, cache_dir,
                                 keep=tuple(frozen) if run is not None else ())
    branches = branch_set.branches
    heads = None
    if run is not None and run.examples.exists():
        heads = _Heads(run, config, frozen, notices)
    else:
        notices.append("fusion and meta-learner not logged: the run has no examples (asd train DATA --run RUN makes them)")
    modules: dict[str, nn.Module] = {**branches, **(heads.modules if heads else {})}
    missing = [p for p in frozen if p not in modules]
    if missing:
        raise ConfigError(f"--branch {', '.join(missing)}: cannot freeze a part that is not trained here ({notices[-1]})")
    for name in frozen:
        modules[name].requires_grad_(False)
        modules[name].eval()
    params = {n: [p for p in m.parameters() if p.requires_grad] for n, m in modules.items()}
    notices += [f"{n} has no trainable parameters: loss logged, gradient norm 0" for n in modules
                if not params[n] and n not in frozen]
    upstream = branch_set.upstream
    precision = {n: Precision.of(config, n, torch.device(device)) for n in branches}
    scaler = torch.amp.GradScaler(torch.device(device).type,
                                  enabled=any(p.dtype == torch.float16 for p in precision.values()))
    return _Setup(clipset, branches, heads, modules, params, upstream, precision, scaler, trained)


def _step_losses(s: _Setup, batch, trainable: set[str]) -> dict[str, Tensor]:
    """Each part's loss on this step. Each branch draws its random numbers (perturbed copies,
    noise) from a generator of its own, seeded for the epoch as asd train-branch seeds it, so that
    its losses are those of training it alone."""
    losses = {}
    for name, branch in s.branches.items():
        torch.set_rng_state(s.rng[name])
        with torch.set_grad_enabled(name in trainable), s.precision[name].autocast():
            losses[name] = branch.loss(batch).float()
        s.rng[name] = torch.get_rng_state()
    if s.heads is not None:
        losses.update(s.heads.losses(trainable))
    return losses


@dataclass
class _Loop:
    """The state of a freeze-debug run between steps."""

    s: _Setup
    config: AsdConfig
    optimizer: torch.optim.Optimizer
    trainable: set[str]
    log: _Log
    epochs: int
    steps: int
    device: torch.device | str
    on_step: Callable[[int, int, float], None] | None
    on_trouble: Callable[[Trouble], None] | None
    detector: TroubleDetector = field(init=False)
    troubles: list[Trouble] = field(default_factory=list)
    global_step: int = 0
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.detector = TroubleDetector(self.config)

    def epoch(self, epoch: int) -> None:
        """One pass over the training clips in the order asd train-branch takes them (its batches
        of epoch ``epoch``), then the epoch's summary row."""
        chunks = epoch_chunks(self.s.clipset, self.config, epoch - 1, self.s.trained)
        self.s.rng = {name: torch.get_rng_state() for name in self.s.branches}  # seeded for the epoch
        for name in self.trainable:
            self.s.modules[name].train()
            if name in self.s.branches:
                self.s.branches[name].set_progress((epoch - 1) / self.epochs)
        total, warmup = self.steps * self.epochs, self.steps * self.config.train.warmup_epochs
        run_epoch(self.s.clipset, chunks, self.device, self.optimizer, self.s.scaler, self.global_step, total, warmup,
                  lambda batch: _step_losses(self.s, batch, self.trainable),
                  {n: self.s.params[n] for n in self.trainable}, self.config.train.grad_clip,
                  prepare=lambda batch: with_embeddings(batch, self.s.upstream), skip_nonfinite=True,
                  norms_of=self.s.params, after_step=lambda i, batch, losses, grads: self.after_step(epoch, i + 1, losses, grads))
        lr = lr_at(max(0, self.global_step - 1), total, warmup, self.config.train.lr)
        self.log.epoch_summary(epoch, self.global_step, time.perf_counter() - self.start, lr)

    def after_step(self, epoch: int, step: int, losses: dict[str, Tensor], grads: dict[str, float]) -> None:
        """Log the step (each part's loss and gradient norm) and check it for trouble."""
        self.global_step += 1
        values = {n: float(v.detach()) for n, v in losses.items()}
        lr = lr_at(self.global_step - 1, self.steps * self.epochs, self.steps * self.config.train.warmup_epochs,
                   self.config.train.lr)
        self.log.step(epoch, step, self.global_step, time.perf_counter() - self.start, lr, values, grads)
        for name in self.s.modules:
            grad = grads[name] if name in self.trainable else None
            for trouble in self.detector.check(name, values[name], grad, epoch, self.global_step):
                self.troubles.append(trouble)
                if self.on_trouble is not None:
                    self.on_trouble(trouble)
        if self.on_step is not None:
            self.on_step(self.global_step, self.steps * self.epochs, sum(values[n] for n in self.trainable))


def freeze_debug(data: Path, config: AsdConfig, frozen: list[str], epochs: int, log_path: Path,
                 run_dir: Path | None = None, device: torch.device | str = "cpu", cache_dir: Path | None = None,
                 on_step: Callable[[int, int, float], None] | None = None,
                 on_trouble: Callable[[Trouble], None] | None = None) -> DebugResult:
    """Train every part for ``epochs`` with the ``frozen`` parts fixed; log to ``log_path``."""
    frozen, notices = parse_parts(frozen), []
    torch.use_deterministic_algorithms(True, warn_only=True)
    s = _prepare(data, run_dir, config, frozen, device, cache_dir, notices)
    trainable = {n for n, ps in s.params.items() if ps}
    optimizer = torch.optim.AdamW([{"params": s.params[n], "lr": _base_lr(config, n), "base": _base_lr(config, n)}
                                   for n in s.modules if s.params[n]], weight_decay=config.train.weight_decay)
    digests = {n: state_digest(s.modules[n]) for n in frozen}
    log = _Log(log_path, list(s.modules))
    loop = _Loop(s, config, optimizer, trainable, log, epochs, len(epoch_chunks(s.clipset, config, 0, s.trained)),
                 device, on_step, on_trouble)
    try:
        for epoch in range(1, epochs + 1):
            loop.epoch(epoch)
    finally:
        log.close()
    unchanged = {n: state_digest(s.modules[n]) == d for n, d in digests.items()}
    return DebugResult(log_path, list(s.modules), frozen, unchanged, loop.global_step, loop.troubles, notices)
