"""`asd train-branch`: train one branch on the normal training clips of every section.

Deterministic on the CPU: the data order and the random draws of epoch e come from (seed, e)
alone, so a resumed run repeats exactly what an uninterrupted one does. Under torchrun each
process takes its share of every batch and DDP averages the gradients; rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from asdcli.atomic import write_text
from asdcli.checkpoints import load_training_state, save_training_state, save_weights, versions
from asdcli.config import AsdConfig
from asdcli.errors import CheckpointError, TrainingError
from asdcli.metrics import gamma_threshold
from asdcli.models.base import Batch, Branch, state_digest
from asdcli.models.registry import BRANCHES, branch_training, canonical_name, config_key, upstream_names
from asdcli.services.inputs.dataset import ClipSet, Vocabulary, clip_key, holdout_keys, training_clips
from asdcli.services.inputs.device import DistInfo, distributed
from asdcli.services.training.loop import run_epoch
from asdcli.services.training.schedule import Precision, epoch_chunks
from asdcli.services.scoring.branch_setup import BranchSet, fresh_branch
from asdcli.services.inputs.embeddings import EmbeddingCaches, embed_once, model_batches, with_rows
from asdcli.services.inputs.features import make_extractor
from asdcli.services.store.migrate import leftovers
from asdcli.services.scoring.reliability import heldout_check
from asdcli.services.store.commits import commit_stage, writing
from asdcli.services.store.records import BranchRecord, TrainScores, write_record
from asdcli.services.store.runs import (CONFIG_FILE, RUN_FILE, Run, branch_settings, is_run,
                                  open_or_create_run, open_run)

LOG_COLUMNS = ["epoch", "loss", "lr", "clips", "seconds", "clips_per_s"]


@dataclass
class StepInfo:
    """Progress of one optimisation step, for a progress bar (``loss``: the step before's, except
    at an epoch's last step)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    clips_per_s: float


@dataclass
class TrainResult:
    """What a finished training wrote and measured."""

    branch: str
    run: Path
    epochs: int
    final_loss: float | None
    clips: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    score_stats: dict = field(default_factory=dict)
    world_size: int = 1
    replicas_identical: bool | None = None
    rank: int = 0
    heldout: dict = field(default_factory=dict)  # held-out clips and their median z (reliability.heldout_check)
    limitation: str | None = None  # what the branch says it cannot learn from this data
    log: Path | None = None  # the per-epoch log


class _LossModule(nn.Module):
    """DDP synchronises gradients around a forward(); route it to the branch's loss."""

    def __init__(self, branch: Branch):
        super().__init__()
        self.branch = branch

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.branch.loss(batch)


def _write_log(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _read_log(path: Path, epochs_done: int) -> list[dict]:
    """Rows of the epochs already done (1-based ``epoch`` column), for a resumed run."""
    if not path.exists():
        return []
    try:
        with path.open(newline="") as handle:
            return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= epochs_done]
    except (KeyError, TypeError, ValueError, csv.Error, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: damaged training log ({type(error).__name__}: {error}); it was edited or cut: "
                              "start the branch again without --resume") from None


@dataclass
class _Setup:
    name: str
    device: torch.device
    run: Run
    clipset: ClipSet
    upstream: dict[str, Branch]
    branch: Branch
    embed_dims: dict[str, int]
    epochs: int
    lr: float
    trained: list[int]  # clip indices the network trains on (the run's held-out clips are not)
    cache_dir: Path | None = None
    embedded: dict[str, Tensor] = field(default_factory=dict)  # every clip's upstream embeddings (embed_once)


def _prepare(name: str, data: Path, run_dir: Path, config: AsdConfig, device: torch.device,
             cache_dir: Path | None, info: DistInfo) -> _Setup:
    clips = training_clips(str(data))
    if info.is_main:
        open_or_create_run(run_dir, Vocabulary.from_clips(clips), config,
                           holdout_keys(clips, config.train.holdout, config.seed))
    if info.world_size > 1:
        dist.barrier()
    run = open_run(run_dir)
    cls = BRANCHES[name]
    upstream = BranchSet.load(run, upstream_names(config, name), device).branches  # the branches it embeds with
    needs_wave = cls.needs_wave or any(b.needs_wave for b in upstream.values())
    clipset = ClipSet(clips, config, make_extractor(config, cache_dir), run.vocab, with_wave=needs_wave)
    embedded = embed_once(clipset, config.train.batch_size, device, upstream, cache_dir)
    embed_dims = {n: int(e.shape[1]) for n, e in embedded.items()}
    trained = [i for i, c in enumerate(clipset.clips) if clip_key(c) not in run.holdout]
    branch = fresh_branch(name, config, run, clipset, upstream, trained, device, cache_dir, embedded)
    epochs, lr = branch_training(config, name, "epochs"), branch_training(config, name, "lr")
    return _Setup(name, device, run, clipset, upstream, branch, embed_dims, epochs, lr, trained, cache_dir, embedded)


def _metadata(s: _Setup, config: AsdConfig, status: str, epochs_done: int, score_stats: dict,
              heldout: dict | None) -> dict:
    return {
        "branch": s.name, "id": s.branch.bid, "status": status,
        "epochs_done": epochs_done, "epochs": s.epochs, "seed": config.seed, "clips": len(s.clipset),
        "trained_clips": len(s.trained), "groups": s.run.vocab.groups, "config": branch_settings(config, s.name),
        "embed_dims": s.embed_dims, "upstream": list(s.upstream), "extra": s.branch.extra_meta(),
        "versions": versions(), "score_stats": score_stats, "heldout": heldout, "limitation": s.branch.limitation(),
    }


def _save(s: _Setup, config: AsdConfig, epochs_done: int, score_stats: dict, per_clip: dict[str, float],
          heldout: dict | None = None) -> None:
    """The finished branch, committed as one unit: weights, training scores and metadata."""
    with commit_stage(s.run.path) as place:
        save_weights(s.branch, place(s.run.weights(s.name)), {"branch": s.name, "status": "complete",
                                                               "epoch": str(epochs_done)})
        write_record(place(s.run.train_scores(s.name)), TrainScores, branch=s.name, scores=per_clip)
        write_record(place(s.run.record(s.name)), BranchRecord,
                     **_metadata(s, config, "complete", epochs_done, score_stats, heldout))


def _progress(s: _Setup, config: AsdConfig, epochs_done: int) -> dict:
    """What an unfinished training records, so that --resume can tell it continues the same one."""
    keys = sorted(clip_key(c) for c in s.clipset.clips)
    return {"epochs_done": epochs_done, "epochs": s.epochs, "seed": config.seed,
            "clips": len(keys), "clips_digest": hashlib.sha1("\n".join(keys).encode()).hexdigest(),
            "config": config.model_dump(mode="json")}


def _differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two config dumps differ."""
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} (now {b!r})")
    return out


def _resume(s: _Setup, optimizer: torch.optim.Optimizer, config: AsdConfig) -> int:
    """Load the weights and optimizer state of an interrupted training; returns the next epoch.
    Refuses, naming the difference, when the epochs, seed, data or config are not those of the
    interrupted training."""
    path = s.run.train_state(s.name)
    if not path.is_file():
        if s.run.record(s.name).exists():
            raise CheckpointError(f"{s.run.record(s.name)}: training already finished; nothing to resume")
        raise CheckpointError(f"{s.run.path}: no interrupted training of '{s.name}' to resume; run without --resume")
    progress = load_training_state(s.branch, optimizer, path)
    now = _progress(s, config, progress["epochs_done"])
    differ = [f"{key} {progress.get(key)!r} (now {now[key]!r})" for key in ("epochs", "seed", "clips")
              if progress.get(key) != now[key]]
    if progress.get("clips_digest") != now["clips_digest"] and progress.get("clips") == now["clips"]:
        differ.append("the training clips (same count, other files)")
    differ += [d for d in _differences(progress.get("config", {}), now["config"])
               if not d.startswith(("seed ", "train.epochs ", "branches.", "fusion.", "meta.", "debug.", "loader."))
               or d.startswith(f"{config_key(s.name)}.")]
    if differ:
        raise CheckpointError(f"{path}: cannot resume: the interrupted training had " + "; ".join(differ[:4])
                              + ("; ..." if len(differ) > 4 else "") + ". Give the same settings and data, or start "
                              "again without --resume")
    return int(progress["epochs_done"])


def _check_finite(s: _Setup, row: dict) -> None:
    """Stop a training whose loss or weights are no longer finite (a diverging learning rate,
    clips of absurd amplitude): nothing of it is saved and the run stays as it was."""
    bad = [n for n, p in s.branch.named_parameters() if not torch.isfinite(p).all()]
    if math.isfinite(float(row["loss"])) and not bad:
        return
    what = f"loss {row['loss']}" + (f", {len(bad)} of {len(list(s.branch.parameters()))} weight tensors not finite"
                                    if bad else "")
    raise TrainingError(f"{s.name} diverged in epoch {row['epoch']} ({what}): lower its learning rate (now {s.lr:g}; "
                        f"train.lr or {config_key(s.name)}.lr) or check the training clips. Nothing of this "
                        "training was saved; the run is as it was before")


def _run_epoch(s: _Setup, model: nn.Module, optimizer, config: AsdConfig, epoch: int, info: DistInfo,
               on_step: Callable[[StepInfo], None] | None, precision: Precision) -> dict:
    """One pass over the shuffled training clips (:func:`~asdcli.services.training.loop.run_epoch`);
    returns the epoch's log row."""
    chunks = epoch_chunks(s.clipset, config, epoch, s.trained, info)
    steps = len(chunks)
    s.branch.train()
    s.branch.set_progress(epoch / max(1, s.epochs))
    params = [p for p in s.branch.parameters() if p.requires_grad]
    start, losses, seen = time.perf_counter(), [], [0]  # losses stay on the device until the epoch ends

    def loss_of(batch: Batch) -> dict[str, Tensor]:
        with precision.autocast():
            return {s.name: model(batch)}

    def after(step: int, batch: Batch, values: dict[str, Tensor], _norms) -> None:
        losses.append(values[s.name].detach())
        seen[0] += len(batch) * info.world_size
        if on_step is not None:
            # The loss shown is the step before's: reading this step's would make the host wait
            # for a GPU to finish it instead of queueing the next one.
            shown = losses[-2] if len(losses) > 1 and step + 1 < steps else losses[-1]
            on_step(StepInfo(epoch + 1, s.epochs, step + 1, steps, float(shown), seen[0] / (time.perf_counter() - start)))

    lr = run_epoch(s.clipset, chunks, s.device, optimizer, precision.scaler, epoch * steps, steps * max(1, s.epochs),
                   steps * config.train.warmup_epochs, loss_of, {s.name: params}, config.train.grad_clip,
                   prepare=lambda batch: with_rows(batch, s.embedded), after_step=after)
    seconds = time.perf_counter() - start
    mean_loss = float(torch.stack(losses).double().mean())
    return {"epoch": epoch + 1, "loss": f"{mean_loss:.6f}", "lr": f"{lr:.6g}", "clips": seen[0],
            "seconds": f"{seconds:.3f}", "clips_per_s": f"{seen[0] / seconds:.2f}"}


def _finalize(s: _Setup, config: AsdConfig,
              on_score: Callable[[int, int], None] | None = None) -> tuple[dict, dict[str, float], dict]:
    """Build the scoring state from every training clip (held-out ones included), then score them:
    per-section statistics, the score of every clip (the ensemble's thresholds are fitted on
    them) and how the held-out clips score against the trained ones (:func:`heldout_check`)."""
    s.branch.eval()
    bs = config.train.batch_size
    caches = EmbeddingCaches(s.cache_dir, {s.name: s.branch})  # the upstream rows are in s.embedded

    def counted() -> Iterator[Batch]:  # the training clips' batches, with progress
        done = 0
        for batch in model_batches(s.clipset, bs, s.device, s.upstream, caches, embedded=s.embedded):
            yield batch
            done += len(batch)
            if on_score is not None:
                on_score(done, len(s.clipset))

    with torch.no_grad():
        s.branch.prepare_scoring(counted())
        score = s.branch.fitted_train_scores()  # from what prepare_scoring kept: no clip scored twice
        if score is None:  # it keeps nothing to score them from
            score = torch.cat([s.branch.train_scores(batch).cpu() for batch in counted()])
    score = score.cpu().double()
    group = torch.as_tensor([s.clipset.vocab.group_index(c) for c in s.clipset.clips], dtype=torch.long)
    per_clip = {clip_key(c): float(v) for c, v in zip(s.clipset.clips, score.tolist())}
    stats = {}
    for index, name in enumerate(s.run.vocab.groups):
        values = score[group == index]
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            continue
        stats[name] = {"count": int(values.numel()), "mean": float(values.mean()),
                       "std": float(values.std()) if values.numel() > 1 else 0.0,
                       "threshold": gamma_threshold(values.numpy()) if values.numel() > 1 else float(values[0])}
    held = np.array([clip_key(c) in s.run.holdout for c in s.clipset.clips], dtype=bool)
    return stats, per_clip, heldout_check(score.numpy(), group.numpy(), held)


def train_branch(name: str, data: Path, run_dir: Path, config: AsdConfig, device: torch.device | None = None,
                 cache_dir: Path | None = None, resume: bool = False,
                 on_step: Callable[[StepInfo], None] | None = None,
                 on_epoch: Callable[[dict], None] | None = None,
                 on_score: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train branch ``name`` on the normal training clips under ``data`` into ``run_dir``.

    After every epoch writes ``<branch>.train.safetensors`` (weights, optimizer state and progress
    in one file, for ``resume``) and ``logs/<branch>_train.csv``; when done, ``<branch>.safetensors``
    + ``<branch>.json`` (with the memory bank and per-section score statistics) replace any earlier
    training of the branch, and the unfinished-training file is removed. A loss or weights that
    stop being finite end the training with a :class:`TrainingError`, nothing of it saved.
    """
    name = canonical_name(name)
    data, run_dir, cache_dir = Path(data), Path(run_dir), None if cache_dir is None else Path(cache_dir)
    device = device or torch.device("cpu")
    torch.use_deterministic_algorithms(True, warn_only=True)
    new_run = not is_run(run_dir)
    try:
        return _train_branch(name, data, run_dir, config, device, cache_dir, resume, on_step, on_epoch, on_score)
    except BaseException:
        if new_run:
            _forget_new_run(run_dir)
        raise


def _forget_new_run(run_dir: Path) -> None:
    """After a first training that failed before any branch was saved, remove the run
    description it wrote, so that the folder is not tied to the sections of data that failed."""
    if any(run_dir.glob("*.safetensors")):
        return
    for name in (RUN_FILE, CONFIG_FILE):
        (run_dir / name).unlink(missing_ok=True)


def _train_branch(name: str, data: Path, run_dir: Path, config: AsdConfig, device: torch.device,
                  cache_dir: Path | None, resume: bool, on_step: Callable[[StepInfo], None] | None,
                  on_epoch: Callable[[dict], None] | None,
                  on_score: Callable[[int, int], None] | None = None) -> TrainResult:
    with distributed(device) as info, (writing(run_dir, name) if info.is_main else contextlib.nullcontext()):
        s = _prepare(name, data, run_dir, config, device, cache_dir, info)
        params = [p for p in s.branch.parameters() if p.requires_grad]
        trainable = bool(params) and s.epochs > 0
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=config.train.weight_decay) if params else None
        start = _resume(s, optimizer, config) if resume else 0
        for group in optimizer.param_groups if optimizer is not None else ():
            group["base"] = s.lr  # the schedule's base rate (a resumed state may predate the key)
        rows = _read_log(s.run.log_path(name), start) if resume else []
        model: nn.Module = _LossModule(s.branch)
        if info.world_size > 1 and trainable:
            model = DistributedDataParallel(model, find_unused_parameters=True,
                                            device_ids=[device.index] if device.type == "cuda" else None)
        final_loss = None
        precision = Precision.of(config, name, torch.device(s.device))
        for epoch in range(start, s.epochs if trainable else 0):
            row = _run_epoch(s, model, optimizer, config, epoch, info, on_step, precision)
            _check_finite(s, row)
            rows.append(row)
            final_loss = float(row["loss"])
            if info.is_main:
                _write_log(s.run.log_path(name), rows)
                save_training_state(s.branch, optimizer, s.run.train_state(name), _progress(s, config, epoch + 1))
            if on_epoch is not None:
                on_epoch(row)
        # Release DDP's reducer while the process group is alive; destroying it after
        # destroy_process_group() can block on a peer that has gone.
        del model
        if info.world_size > 1:
            # Running statistics (batch norm) are updated from each process's own data after
            # DDP's last broadcast: take rank 0's, as its checkpoint does.
            for buffer in s.branch.buffers():
                dist.broadcast(buffer, src=0)
        stats, per_clip, heldout = _finalize(s, config, on_score)
        identical = None
        if info.world_size > 1:
            digests = [None] * info.world_size
            dist.all_gather_object(digests, state_digest(s.branch))
            identical = len(set(digests)) == 1
        if info.is_main:
            _save(s, config, s.epochs if trainable else 0, stats, per_clip, heldout)
            s.run.train_state(name).unlink(missing_ok=True)
            for leftover in leftovers(name):
                (s.run.path / leftover).unlink(missing_ok=True)
        return TrainResult(name, run_dir, s.epochs if trainable else 0, final_loss, len(s.clipset),
                           s.clipset.report.failures, stats, info.world_size, identical, info.rank, heldout,
                           s.branch.limitation(), s.run.log_path(name))
