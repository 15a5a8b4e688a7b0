"""The training loop every trainable part runs: ``asd train-branch`` with one branch, ``asd
freeze-debug`` with every part, some frozen, and its logging and trouble checks attached."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from asdcli.models.base import Batch
from asdcli.services.inputs.dataset import ClipSet
from asdcli.services.training.schedule import lr_at, optimizer_step

Losses = Callable[[Batch], dict[str, Tensor]]
AfterStep = Callable[[int, Batch, dict[str, Tensor], dict[str, float]], None]


def set_learning_rates(optimizer: torch.optim.Optimizer, step: int, total: int, warmup: int) -> float:
    """Every parameter group's learning rate at 0-based ``step`` of ``total`` (:func:`lr_at` of the
    group's ``base`` rate, ``warmup`` steps first); returns the first group's."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, total, warmup, group["base"])
    return optimizer.param_groups[0]["lr"]


def run_epoch(clipset: ClipSet, chunks: Sequence[Sequence[int]], device, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, first_step: int, total_steps: int, warmup_steps: int,
              losses: Losses, clipped: dict[str, list[torch.nn.Parameter]], grad_clip: float,
              prepare: Callable[[Batch], Batch] = lambda batch: batch, skip_nonfinite: bool = False,
              norms_of: dict[str, list[torch.nn.Parameter]] | None = None,
              after_step: AfterStep | None = None) -> float:
    """One pass over the batches ``chunks`` (clip indices of ``clipset``) on ``device``. Each step:
    the learning rates of step ``first_step + i`` (:func:`set_learning_rates`), the batch made
    ready (``prepare``: upstream embeddings), each part's loss (``losses``), one optimiser step on
    the sum of the losses of the parts in ``clipped`` (each clipped on its own; with
    ``skip_nonfinite`` a part whose loss is not finite is left out of the step, which reads the
    loss on the host), then ``after_step(i, batch, losses, gradient norms of norms_of)``. Returns
    the last learning rate."""
    lr = optimizer.param_groups[0]["lr"]
    for index, batch in enumerate(clipset.on_device(chunks, device)):
        lr = set_learning_rates(optimizer, first_step + index, total_steps, warmup_steps)
        batch = prepare(batch)
        values = losses(batch)
        used = [n for n in clipped if not skip_nonfinite or bool(torch.isfinite(values[n]))]
        loss = values[used[0]] if len(used) == 1 else sum(values[n] for n in used) if used else None
        norms = optimizer_step(optimizer, scaler, loss, clipped, grad_clip, norms_of)
        if after_step is not None:
            after_step(index, batch, values, norms)
    return lr
