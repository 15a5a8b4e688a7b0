"""The branch interface every service relies on, the batch it consumes, and pooling helpers."""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import ClassVar, Iterable

import torch
from torch import Tensor, nn


@dataclass
class Batch:
    """A batch of clips.

    ``feats`` (B, n_mels, frames) raw log-mel in dB; ``group`` (B,) index of the clip's
    machine section in the run (-1 unknown); ``domain`` (B,) 0 source / 1 target; ``label`` (B,)
    index of its section-and-attributes class (-1 unknown); ``wave`` (B, samples) at 16 kHz for
    branches that need audio; ``embeddings`` upstream branches' (B, D) embeddings by name;
    ``index`` (B,) position of each clip in the training set (for leave-one-out scores).
    """

    feats: Tensor
    group: Tensor
    domain: Tensor
    label: Tensor
    wave: Tensor | None = None
    embeddings: dict[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None

    @classmethod
    def unlabelled(cls, feats: Tensor, groups: list[int], domains: list[int], wave: Tensor | None = None,
                   index: list[int] | None = None) -> "Batch":
        """Clips outside the training clips' classes (label -1): audio given in memory, made
        pseudo-anomalies. ``index``: each clip's row among the training clips (-1: none)."""
        return cls(feats=feats, group=torch.tensor(groups), domain=torch.tensor(domains),
                   label=torch.full((len(groups),), -1), wave=wave,
                   index=torch.tensor(index if index is not None else [-1] * len(groups)))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """Copy of the batch on ``device`` (``non_blocking``: from page-locked memory, the copy
        runs while the host goes on)."""
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            feats=move(self.feats),
            group=move(self.group),
            domain=move(self.domain),
            label=move(self.label),
            wave=None if self.wave is None else move(self.wave),
            embeddings={k: move(v) for k, v in self.embeddings.items()},
            index=None if self.index is None else move(self.index),
        )

    def __len__(self) -> int:
        return self.feats.shape[0]

    def select(self, rows: list[int]) -> "Batch":
        """The clips at ``rows`` as a smaller batch."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.feats.device)
        return Batch(self.feats[idx], self.group[idx], self.domain[idx], self.label[idx],
                     None if self.wave is None else self.wave[idx], {k: v[idx] for k, v in self.embeddings.items()},
                     None if self.index is None else self.index[idx])


@dataclass(frozen=True)
class BranchContext:
    """What a branch needs to know about the data to build itself."""

    n_mels: int
    frames: int
    sample_rate: int
    n_groups: int
    n_labels: int
    embed_dims: dict[str, int] = field(default_factory=dict)  # upstream embedding sizes (flow)


class Branch(nn.Module, ABC):
    """One anomaly-detection branch. feats: (B, n_mels, frames).

    ``loss`` trains it, ``score`` gives one anomaly score per clip (higher = more anomalous),
    ``embed`` a (B, D) embedding. Everything ``score`` needs after training (memory banks,
    statistics) is a registered buffer, so it travels in the checkpoint. ``score`` is
    deterministic in ``eval()`` mode and does not depend on the other clips of the batch.
    """

    name: ClassVar[str]
    bid: ClassVar[str]
    config_field: ClassVar[str]  # its section of the config: branches.<config_field>
    loss_name: ClassVar[str] = "training loss"  # what its loss measures, for plots
    # the config field (of its branch section) giving the share of epochs after which its loss
    # changes by design (a second objective joins), for plots; None: it never does
    switch_field: ClassVar[str | None] = None
    needs_wave: ClassVar[bool] = False

    def __init__(self, context: BranchContext):
        super().__init__()
        self.context = context
        self.register_buffer("input_mean", torch.zeros(context.n_mels))
        self.register_buffer("input_std", torch.ones(context.n_mels))

    @classmethod
    def upstream(cls, cfg) -> tuple[str, ...]:
        """Branches whose embeddings this one consumes through ``batch.embeddings`` (given its config)."""
        return ()

    def set_input_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-mel-bin mean and std (n_mels,) of the training log-mel, used by :meth:`normalize`."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-3))

    def normalize(self, feats: Tensor) -> Tensor:
        """(B, n_mels, frames) dB -> standardised per mel bin."""
        return (feats - self.input_mean[:, None]) / self.input_std[:, None]

    @abstractmethod
    def loss(self, batch: Batch) -> Tensor:
        """Scalar, differentiable training loss."""

    @abstractmethod
    def embed(self, batch: Batch) -> Tensor:
        """(B, D) embedding."""

    @abstractmethod
    def score(self, batch: Batch) -> Tensor:
        """(B,) anomaly scores, higher = more anomalous."""

    def embedding(self, batch: Batch) -> Tensor:
        """:meth:`embed`, or outside training the embedding a service already put in
        ``batch.embeddings`` (computed for a downstream branch, or read from the on-disk cache):
        a clip is embedded once per batch."""
        done = batch.embeddings.get(self.name)
        return done if done is not None and not self.training else self.embed(batch)

    def background_spec(self) -> str:
        """Which background of other machines' recordings its training uses
        (:mod:`asdcli.data.background`: a folder, or ``none``, the default)."""
        return "none"

    def set_background(self, feats: Tensor, kinds: Tensor) -> None:
        """Before training: (N, n_mels, frames) log-mel of the background recordings and (N,)
        their machine types (0..K-1). Training-only: nothing of it is saved."""

    @classmethod
    def fusion_limitation(cls, extra: dict, cfg) -> str | None:
        """Why the fusion must leave a trained branch out under its config ``cfg`` (a reason a
        setting read when fusing decides), given the ``extra_meta`` it recorded; None: no reason."""
        return None

    def prepare_training(self, batches: Iterable[Batch]) -> None:
        """Before training: fit data-dependent input transforms (beyond the log-mel statistics)."""

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1] at the start of each epoch, for staged objectives."""

    def prepare_scoring(self, batches: Iterable[Batch]) -> None:
        """After training: build what scoring needs from the (normal) training clips."""

    def extra_meta(self) -> dict:
        """JSON-able facts needed to rebuild this branch from a checkpoint (architecture)."""
        return {}

    def embedding_spec(self) -> tuple[str, int] | None:
        """(digest identifying the embeddings, their size D) when they depend on the clip alone
        (a frozen model), so services may cache them on disk; ``None``: not cacheable."""
        return None

    def train_scores(self, batch: Batch) -> Tensor:
        """Scores of training clips for the normalisation statistics (leave-one-out where a
        branch scores by distance to the training clips themselves)."""
        return self.score(batch)

    def fitted_train_scores(self) -> Tensor | None:
        """(N,) :meth:`train_scores` of the N clips :meth:`prepare_scoring` was just given, in
        their order, from what it kept of them (embeddings, error profiles), so that they are not
        computed again; None where it keeps nothing to score them from."""
        return None

    def limitation(self) -> str | None:
        """Why this branch cannot learn what normal means from its training data (given its
        context), or None. Stored with the checkpoint; the fusion leaves such a branch out."""
        return None

    def trained_kinds(self) -> tuple[str, ...]:
        """Pseudo-anomaly kinds (names of :data:`asdcli.data.pseudo_anomalies.KINDS`) that this
        branch's own training objective already separates from normal clips: telling them apart
        says nothing about unseen faults, so the fusion does not judge the branch on them."""
        return ()

    @classmethod
    def check(cls, cfg) -> None:
        """Raise a one-line error at once where this branch cannot be built from ``cfg`` (weights
        that cannot be had): what a pipeline checks before its first long step."""

    def is_trainable(self) -> bool:
        """Whether any parameter receives gradients (a frozen branch only prepares scoring)."""
        return any(p.requires_grad for p in self.parameters())


def state_digest(module: nn.Module, extra: str = "") -> str:
    """SHA-1 of every parameter and buffer (and ``extra``): identifies weights, compares replicas."""
    digest = hashlib.sha1(extra.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


TOP_SHARE = 0.1  # "top10" pooling: the mean of this share of a clip's frames, its largest


def pool_time(errors: Tensor, mode: str, decay: float = 0.9) -> Tensor:
    """(B, T) per-frame errors -> (B,) by mean, max, the mean of the largest tenth ("top10") or
    global weighted rank pooling (GWRP).

    GWRP (Kolesnikov & Lampert 2016): sort descending and weight the r-th value by decay^r, a
    soft maximum that rewards clips whose worst frames are bad.
    """
    if mode == "mean":
        return errors.mean(dim=1)
    if mode == "max":
        return errors.amax(dim=1)
    if mode == "top10":
        return errors.topk(max(1, round(TOP_SHARE * errors.shape[1])), dim=1).values.mean(dim=1)
    ranked = errors.sort(dim=1, descending=True).values  # (B, T)
    weights = decay ** torch.arange(errors.shape[1], device=errors.device, dtype=errors.dtype)
    return (ranked * weights).sum(dim=1) / weights.sum()


def random_crop(feats: Tensor, frames: int) -> Tensor:
    """(B, ..., T) -> (B, ..., min(frames, T)): a random window of each clip, drawn with torch's
    global generator (training crops)."""
    crop = min(frames, feats.shape[-1])
    starts = torch.randint(0, feats.shape[-1] - crop + 1, (feats.shape[0],), device=feats.device)
    idx = starts[:, None] + torch.arange(crop, device=feats.device)[None]  # (B, crop)
    idx = idx.view(feats.shape[0], *[1] * (feats.ndim - 2), crop).expand(*feats.shape[:-1], crop)
    return feats.gather(-1, idx)


def sinusoidal_embedding(positions: Tensor, dim: int) -> Tensor:
    """(N,) positions or diffusion steps -> (N, dim) sinusoidal features (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / max(half - 1, 1))
    angles = positions.float()[:, None] * freqs[None, :]  # (N, half)
    out = torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, 2 * half)
    return nn.functional.pad(out, (0, dim - 2 * half))
