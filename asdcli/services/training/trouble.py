"""Trouble in a training that ``asd freeze-debug`` reports: the first non-finite loss, exploding
and vanishing gradient norms of each part, at the step where each begins."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from asdcli.config import AsdConfig


@dataclass
class Trouble:
    """A problem seen during training: ``kind`` began at ``step`` (global, 1-based) in ``part``."""

    part: str
    kind: str
    epoch: int
    step: int
    value: float

    def __str__(self) -> str:
        return f"{self.kind} in {self.part} beginning at epoch {self.epoch}, step {self.step} (value {self.value:.4g})"


class TroubleDetector:
    """Per part: the first non-finite loss, the first exploding and the first vanishing gradient norm."""

    def __init__(self, config: AsdConfig):
        self.cfg = config.debug
        self.history: dict[str, list[float]] = {}
        self.seen: set[tuple[str, str]] = set()

    def check(self, part: str, loss: float, grad: float | None, epoch: int, step: int) -> list[Trouble]:
        found = []
        if not math.isfinite(loss):
            found.append(Trouble(part, "non-finite loss", epoch, step, loss))
            grad = None  # the part was left out of the step: its zero gradient says nothing
        if grad is not None:
            past = self.history.setdefault(part, [])
            median = float(np.median(past)) if len(past) >= 5 else None
            if not math.isfinite(grad) or grad > self.cfg.explode_above or (
                    median and grad > self.cfg.explode_factor * median):
                found.append(Trouble(part, "exploding gradient norm", epoch, step, grad))
            elif grad < self.cfg.vanish_below:
                found.append(Trouble(part, "vanishing gradient norm", epoch, step, grad))
            if math.isfinite(grad):
                past.append(grad)
        new = [t for t in found if (t.part, t.kind) not in self.seen]
        self.seen.update((t.part, t.kind) for t in new)
        return new


def grad_norm(params: list[nn.Parameter]) -> float:
    """L2 norm of the gradients of ``params`` (0 when none has a gradient)."""
    grads = [p.grad.detach().pow(2).sum() for p in params if p.grad is not None]
    return float(torch.stack(grads).sum().sqrt()) if grads else 0.0
