"""Training primitives every trainable part shares: the learning-rate schedule, the seeded order
of an epoch's clips, a process's share of it under DDP, a branch's training precision and the
optimiser step itself (asd train-branch and freeze-debug take the same one)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from asdcli.config import AsdConfig
from asdcli.errors import ConfigError
from asdcli.models.registry import branch_config, branch_training, canonical_name, config_key
from asdcli.services.inputs.dataset import ClipSet
from asdcli.services.inputs.device import DistInfo, native_bf16
from asdcli.services.training.trouble import grad_norm


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``base``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order and random draws: from (seed, epoch) alone, so a
    resumed training repeats what an uninterrupted one does."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**31)


def epoch_order(clipset: ClipSet, balance: bool, seed: int, indices: list[int] | None = None) -> list[int]:
    """The clips of one epoch, drawn from ``indices`` (default: every clip): a seeded permutation,
    or with ``balance`` as many draws (with replacement) weighted so that every class is drawn
    equally often on average."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.arange(len(clipset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    n = len(pool)
    if not balance:
        return pool[torch.randperm(n, generator=generator)].tolist()
    labels = torch.tensor([clipset.vocab.label_index(clipset.clips[i]) for i in pool.tolist()])
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].double()  # (N,)
    return pool[torch.multinomial(weights, n, replacement=True, generator=generator)].tolist()


def shard(indices: list[int], info: DistInfo) -> list[int]:
    return indices[info.rank :: info.world_size]


@dataclass
class Precision:
    """A branch's training arithmetic (``branches.<name>.precision``, else ``train.precision``): an
    autocast context and a gradient scaler (active for fp16 only, whose small gradients would
    otherwise underflow)."""

    device: torch.device
    dtype: torch.dtype | None

    @classmethod
    def of(cls, config: AsdConfig, name: str, device: torch.device) -> "Precision":
        name = canonical_name(name)
        own = branch_config(config, name).precision is not None
        field = f"{config_key(name)}.precision" if own else "train.precision"
        chosen = branch_training(config, name, "precision")
        if chosen == "auto":
            chosen = "bf16" if native_bf16(device) else "fp32"
        if chosen == "fp16" and device.type != "cuda":
            raise ConfigError(f"{field}: fp16 needs a CUDA device (training on {device}); use bf16 or fp32")
        return cls(device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[chosen])

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor | None,
                   clipped: dict[str, list[torch.nn.Parameter]], grad_clip: float,
                   norms_of: dict[str, list[torch.nn.Parameter]] | None = None) -> dict[str, float]:
    """One optimiser step on ``loss``: its gradients (scaled by ``scaler`` for fp16, then
    unscaled), each part of ``clipped`` clipped to norm ``grad_clip`` on its own, the step. Returns
    the gradient norm of each part of ``norms_of`` before clipping (what the loss asked for).
    ``loss`` None (no finite loss this step): no step, gradients cleared."""
    optimizer.zero_grad(set_to_none=True)
    if loss is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    norms = {name: grad_norm(params) for name, params in (norms_of or {}).items()}
    for params in clipped.values():
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if loss is not None:
        scaler.step(optimizer)
        scaler.update()
    return norms


def epoch_chunks(clipset: ClipSet, config: AsdConfig, epoch: int, indices: list[int] | None,
                 info: DistInfo | None = None) -> list[list[int]]:
    """The batches (clip indices) of 0-based ``epoch`` of a branch's training (``asd train-branch``
    and ``freeze-debug`` alike): the seeded order of ``indices`` (:func:`epoch_order`), a last
    partial batch kept where it can give every process a clip, each batch this process's share.
    Seeds torch's generator for the epoch's random draws first."""
    seed = epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)
    order = epoch_order(clipset, config.train.balance, seed, indices)
    bs, world = config.train.batch_size, info.world_size if info else 1
    steps = len(order) // bs + int(len(order) % bs >= world)  # a last batch too small for every process is dropped
    return [shard(order[step * bs : (step + 1) * bs], info) if info else order[step * bs : (step + 1) * bs]
            for step in range(steps)]
