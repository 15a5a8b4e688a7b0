"""Learnable attention over the normalised branch scores: one fused anomaly score per clip."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def compress(z: Tensor) -> Tensor:
    """Standardised scores -> asinh(z): linear near 0, logarithmic in the tails, so that one huge
    outlier score (a flow's NLL of another machine) cannot dominate a weighted sum."""
    return torch.asinh(z)


@dataclass
class FusionOutput:
    """``fused`` (B,) score, ``weights`` (B, K) attention over the branches (rows sum to 1),
    ``scores`` (B, K) compressed branch scores, ``logit`` (B,) calibrated anomaly logit."""

    fused: Tensor
    weights: Tensor
    scores: Tensor
    logit: Tensor


class AttentionFusion(nn.Module):
    """Attention over K branch scores, conditioned on the clip's own score vector.

    weights = softmax(prior + MLP(c)), fused = sum_k weights_k * c_k with c = asinh(z); the fused
    score is a convex combination of branch scores, so it stays on their common scale. The MLP's
    last layer starts at zero: an untrained head attends by its prior alone (uniform until
    :meth:`set_prior`). A scalar slope and bias turn the fused score into the logit trained
    against pseudo-anomalies.
    """

    def __init__(self, n_branches: int, hidden: int):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(n_branches, hidden), nn.Tanh(), nn.Linear(hidden, n_branches))
        nn.init.zeros_(self.attention[2].weight)
        nn.init.zeros_(self.attention[2].bias)
        self.prior = nn.Parameter(torch.zeros(n_branches))
        self.slope = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def set_prior(self, prior: Tensor) -> None:
        """Start the attention at the (K,) distribution ``prior``."""
        with torch.no_grad():
            self.prior.copy_(prior.clamp_min(1e-6).log())

    def forward(self, z: Tensor) -> FusionOutput:
        """(B, K) standardised branch scores -> :class:`FusionOutput`."""
        c = compress(z)
        weights = torch.softmax(self.prior + self.attention(c), dim=1)  # (B, K)
        fused = (weights * c).sum(dim=1)
        return FusionOutput(fused, weights, c, F.softplus(self.slope) * 4.0 * fused + self.bias)


def balanced_bce(logit: Tensor, label: Tensor, group: Tensor) -> Tensor:
    """Binary cross-entropy where every (section, label) cell weighs the same in total, so neither
    the many outliers nor the large sections dominate."""
    cell = group * 2 + label.long()  # (N,)
    counts = torch.bincount(cell).float()
    weight = 1.0 / counts[cell]
    weight = weight / weight.sum()
    return (F.binary_cross_entropy_with_logits(logit, label.float(), reduction="none") * weight).sum()


def pairwise_rank_loss(fused: Tensor, label: Tensor, group: Tensor) -> Tensor:
    """Mean over sections of softplus(normal - anomaly) over every (normal, pseudo-anomaly) pair of
    the section: a smooth surrogate of 1 - AUC, the quantity DCASE scores a section by."""
    terms = []
    for g in torch.unique(group):
        own = group == g
        pos, neg = fused[own & (label == 1)], fused[own & (label == 0)]
        if len(pos) and len(neg):
            terms.append(F.softplus(neg[:, None] - pos[None, :]).mean())  # (N0, N1) pairs
    return torch.stack(terms).mean() if terms else fused.sum() * 0.0


def prior_kl(weights: Tensor, prior: Tensor) -> Tensor:
    """Mean KL divergence of (B, K) attention rows from the (K,) prior distribution."""
    return (weights * (weights.clamp_min(1e-12) / prior.clamp_min(1e-12)).log()).sum(dim=1).mean()


def separability_prior(aucs: Tensor, temperature: float) -> Tensor:
    """(K,) AUCs of each branch for normal vs pseudo-anomalous clips -> (K,) prior attention,
    sharply favouring the branches that separate them best."""
    return torch.softmax((aucs - aucs.max()) / temperature, dim=0)
