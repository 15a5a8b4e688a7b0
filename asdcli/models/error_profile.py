"""Mahalanobis scoring of reconstruction-error profiles, per machine section.

A reconstruction branch summarises a clip's error as a profile over mel bins (the signed mean
error and the RMS error of each bin). The profiles of the normal training clips of a section
give a mean and a covariance; a clip's score is its Mahalanobis distance from them. As in the
"MAHALA" mode of the DCASE 2023 baseline autoencoder, this weighs each bin by how much it
varies among normal clips, which plain MSE does not: a quiet bin that changes matters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from asdcli.models.base import Batch, pool_time


def error_profile(error: Tensor) -> Tensor:
    """(B, n_mels, T) signed error -> (B, 2 * n_mels): per-bin mean and RMS over time."""
    return torch.cat([error.mean(dim=2), error.pow(2).mean(dim=2).sqrt()], dim=1)


class ProfileScorer(nn.Module):
    """Per-section Gaussian of error profiles; the last row is all sections pooled (unknown sections)."""

    def __init__(self, n_groups: int, dim: int, shrink: float = 0.3):
        super().__init__()
        self.shrink = shrink
        self.register_buffer("mean", torch.zeros(n_groups + 1, dim))
        self.register_buffer("precision", torch.eye(dim).repeat(n_groups + 1, 1, 1))
        # The training profiles themselves, for leave-one-out distances of the training clips.
        self.register_buffer("train_profiles", torch.zeros(0, dim))
        self.register_buffer("train_group", torch.zeros(0, dtype=torch.long))

    def _fit_one(self, profiles: Tensor) -> tuple[Tensor, Tensor]:
        x = profiles.double()
        mean = x.mean(dim=0)
        centred = x - mean
        cov = centred.T @ centred / max(1, x.shape[0] - 1)  # (D, D)
        diag = torch.diag(torch.diag(cov))
        # Shrink toward the diagonal (few clips, many bins) and add a ridge relative to the scale.
        cov = (1 - self.shrink) * cov + self.shrink * diag
        cov = cov + 1e-3 * torch.diag(cov).mean().clamp_min(1e-12) * torch.eye(cov.shape[0], dtype=cov.dtype)
        return mean.float(), torch.linalg.inv(cov).float()

    def fit_from(self, batches, error: Callable[[Batch], Tensor]) -> None:
        """Fit on the error profiles ``error(batch)`` (B, n_mels, T) of the training batches."""
        profiles, groups = [], []
        for batch in batches:
            profiles.append(error_profile(error(batch)))
            groups.append(batch.group)
        self.fit(torch.cat(profiles), torch.cat(groups))

    def fit(self, profiles: Tensor, group: Tensor) -> None:
        """(N, D) training profiles with (N,) section indices."""
        self.train_profiles, self.train_group = profiles.detach().float().clone(), group.detach().long().clone()
        rows = self.mean.shape[0] - 1
        pooled = self._fit_one(profiles)
        self.mean[rows], self.precision[rows] = pooled
        for g in range(rows):
            members = profiles[group == g]
            if members.shape[0] >= 2:
                self.mean[g], self.precision[g] = self._fit_one(members)
            else:
                self.mean[g], self.precision[g] = pooled

    def forward(self, profiles: Tensor, group: Tensor) -> Tensor:
        """(B, D) profiles, (B,) sections -> (B,) Mahalanobis distances."""
        rows = torch.where(group < 0, self.mean.shape[0] - 1, group)
        diff = profiles - self.mean[rows]  # (B, D)
        return torch.einsum("bi,bij,bj->b", diff, self.precision[rows], diff).clamp_min(0).sqrt()

    def leave_one_out(self, profiles: Tensor, group: Tensor, exclude: Tensor) -> Tensor:
        """Distances as :meth:`forward`, but each clip's section Gaussian refitted without training
        row ``exclude`` (its own profile, or its clean original's; -1: none). In-sample distances are
        biased low: with few clips per section a clip's own profile pulls the fit toward it, and
        the statistics the fusion is trained on must match those of unseen normal clips."""
        out = self(profiles, group)
        for i in torch.nonzero(exclude >= 0).flatten().tolist():
            keep = (self.train_group == group[i]) & (torch.arange(len(self.train_group), device=group.device) != exclude[i])
            if int(keep.sum()) >= 2:
                mean, precision = self._fit_one(self.train_profiles[keep])
                diff = profiles[i] - mean
                out[i] = (diff @ precision @ diff).clamp_min(0).sqrt()
        return out


class ReconstructionScoring:
    """Scoring shared by the reconstruction branches (b2, b4), mixed in before :class:`Branch`.

    The branch defines ``error(batch)`` -> signed (B, n_mels, T) error, ``self.profiles`` (a
    :class:`ProfileScorer`) and ``cfg.score`` / ``cfg.pooling`` / ``cfg.gwrp_decay``.
    """

    def prepare_scoring(self, batches) -> None:
        self.profiles.fit_from(batches, self.error)

    def score(self, batch: Batch) -> Tensor:
        error = self.error(batch)
        if self.cfg.score == "mahalanobis":
            return self.profiles(error_profile(error), batch.group)
        return pool_time(error.pow(2).mean(dim=1), self.cfg.pooling, self.cfg.gwrp_decay)

    def train_scores(self, batch: Batch) -> Tensor:
        if self.cfg.score != "mahalanobis" or batch.index is None:
            return self.score(batch)
        return self.profiles.leave_one_out(error_profile(self.error(batch)), batch.group, batch.index)
