"""Mahalanobis scoring of reconstruction-error profiles, per machine section.

A reconstruction branch summarises a clip's error as a profile over mel bins (the signed mean
error and the RMS error of each bin). The profiles of the normal training clips of a section
give a mean and a covariance; a clip's score is its Mahalanobis distance from them. As in the
"MAHALA" mode of the DCASE 2023 baseline autoencoder, this weighs each bin by how much it
varies among normal clips, which plain MSE does not: a quiet bin that changes matters.
"""

from __future__ import annotations

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
        self._loo: dict[int, tuple] = {}  # per section: what leave_one_out needs, computed once

    def _fit_one(self, profiles: Tensor) -> tuple[Tensor, Tensor]:
        x = profiles.double()
        mean = x.mean(dim=0)
        centred = x - mean
        cov = centred.T @ centred / max(1, x.shape[0] - 1)  # (D, D)
        return mean.float(), torch.linalg.inv(self._regularised(cov, torch.diag(cov))).float()

    def fit(self, profiles: Tensor, group: Tensor) -> None:
        """(N, D) training profiles with (N,) section indices."""
        self.train_profiles, self.train_group = profiles.detach().float().clone(), group.detach().long().clone()
        self._loo.clear()
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
        out = profiles.new_empty(len(rows))
        for g in torch.unique(rows).tolist():  # one (D, D) precision per section, not one per clip
            members = rows == g
            diff = profiles[members] - self.mean[g]  # (R, D)
            out[members] = ((diff @ self.precision[g]) * diff).sum(dim=1)
        return out.clamp_min(0).sqrt()

    def shares(self, error: Tensor, group: Tensor) -> Tensor:
        """(B, n_mels, T) signed error -> (B, n_mels, T): each bin's and frame's share of the clip's
        distance (:meth:`forward` of its profile), summed over the bins and averaged over the
        frames exactly that distance. The profile is linear in the frames but for the RMS, which is
        taken to first order around the clip's own (its frame terms still average to it): a
        frame's share is its profile's deviation from the section's mean along the direction
        in which the whole clip deviates, so frames and bins that make the clip unusual stand out
        and the others stay near zero."""
        n_mels = error.shape[1]
        rms = error.pow(2).mean(dim=2, keepdim=True).sqrt().clamp_min(1e-12)  # (B, M, 1)
        frame_rms = rms + (error.pow(2) - rms.pow(2)) / (2 * rms)  # (B, M, T): its mean over T is the RMS
        rows = torch.where(group < 0, self.mean.shape[0] - 1, group)
        mean = self.mean[rows]  # (B, 2M)
        diff = torch.cat([error.mean(dim=2), rms[..., 0]], dim=1) - mean  # the profile's deviation
        direction = (diff[:, None, :] @ self.precision[rows])[:, 0]  # (B, 2M), as forward weighs it
        distance = (direction * diff).sum(dim=1).clamp_min(1e-12).sqrt()  # (B,)
        share = ((error - mean[:, :n_mels, None]) * direction[:, :n_mels, None]
                 + (frame_rms - mean[:, n_mels:, None]) * direction[:, n_mels:, None])
        return share / distance[:, None, None]

    def leave_one_out(self, profiles: Tensor, group: Tensor, exclude: Tensor) -> Tensor:
        """Distances as :meth:`forward`, but each clip's section Gaussian refitted without training
        row ``exclude`` (its own profile, or its clean original's; -1: none). In-sample distances
        are biased low: with few clips per section a clip's own profile pulls the fit toward it, and
        the statistics the fusion is trained on must match those of unseen normal clips.

        One inversion per section, not per clip. Without row j of a section's n clips the mean is
        m - d/(n-1) and the scatter a S - b d d^T (d = x_j - m, a = (n-1)/(n-2),
        b = n/((n-1)(n-2))), so the refitted covariance is A - c d d^T + E: A the same for every
        clip (inverted once), a rank-one term (Sherman-Morrison) and E = -b (shrink diag(d^2) +
        ridge mean(d^2) I), the clip's share of the shrinkage target and ridge, a diagonal. The
        distance solves (A - c d d^T + E) y = e by the fixed-point iteration
        y <- (A - c d d^T)^-1 (e - E y), which converges because the refitted covariance is
        positive definite; each step costs O(D^2) per clip. It matches refitting to 1e-6."""
        out = self(profiles, group)
        for g in torch.unique(group[exclude >= 0]).tolist():
            if g not in self._loo:  # once per section, not per batch: scoring stays linear in the clips
                self._loo[g] = self._section_downdate(g)
            if self._loo[g] is None:  # two clips left at least, as when refitting
                continue
            slot, mean, centred, inv, n, b = self._loo[g]
            rows = torch.nonzero((group == g) & (exclude >= 0)).flatten()
            rows = rows[slot[exclude[rows]] >= 0]  # a row of another section leaves this one whole
            d = centred[slot[exclude[rows]]]  # (R, D) the excluded rows, centred
            e = profiles[rows].double() - (mean - d / (n - 1))  # (R, D) from the mean without them
            out[rows] = _downdated_distance(inv, d, e, b, self.shrink).to(out.dtype)
        return out

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._loo.clear()  # loaded training profiles: the per-section downdates are recomputed
        super()._load_from_state_dict(*args, **kwargs)

    def _section_downdate(self, g: int) -> tuple | None:
        """Section ``g``'s row slots, mean, centred profiles, A^-1, clip count and b
        (:meth:`leave_one_out`); None with fewer than 3 clips."""
        members = torch.nonzero(self.train_group == g).flatten()
        n = len(members)
        if n < 3:
            return None
        slot = torch.full((len(self.train_group),), -1, dtype=torch.long, device=self.train_group.device)
        slot[members] = torch.arange(n, device=self.train_group.device)
        x = self.train_profiles[members].double()
        mean = x.mean(dim=0)
        centred = x - mean
        scatter = centred.T @ centred / (n - 1)
        a, b = (n - 1) / (n - 2), n / ((n - 1) * (n - 2))
        inv = torch.linalg.inv(self._regularised(a * scatter, a * torch.diag(scatter)))  # A^-1
        return slot, mean, centred, inv, n, b

    def _regularised(self, cov: Tensor, variances: Tensor) -> Tensor:
        """Shrink ``cov`` toward the diagonal of ``variances`` (few clips, many bins) and add a
        ridge relative to their scale."""
        cov = (1 - self.shrink) * cov + self.shrink * torch.diag(variances)
        return cov + RIDGE * variances.mean().clamp_min(1e-12) * torch.eye(cov.shape[0], dtype=cov.dtype)


RIDGE = 1e-3  # of the mean variance, added to every section's covariance


def _downdated_distance(inv: Tensor, d: Tensor, e: Tensor, b: float, shrink: float,
                        tol: float = 1e-9, max_steps: int = 500) -> Tensor:
    """sqrt(e^T (A - c d d^T + E)^-1 e) per row of ``d``, ``e`` (R, D), with ``inv`` = A^-1,
    c = (1 - shrink) b and E = -b diag(shrink d^2 + RIDGE mean(d^2))
    (:meth:`ProfileScorer.leave_one_out`)."""
    c = (1 - shrink) * b
    inv_d = d @ inv  # (R, D)
    denom = 1 - c * (inv_d * d).sum(dim=1, keepdim=True)  # (R, 1)

    def solve(v: Tensor) -> Tensor:  # (A - c d d^T)^-1 v, row by row
        return v @ inv + c * inv_d * (inv_d * v).sum(dim=1, keepdim=True) / denom

    diag = -b * (shrink * d.pow(2) + RIDGE * d.pow(2).mean(dim=1, keepdim=True))  # (R, D) the diagonal of E
    y = solve(e)
    for _ in range(max_steps):
        step = solve(e - diag * y)
        done = ((step - y).abs().amax(dim=1) <= tol * step.abs().amax(dim=1).clamp_min(1e-30)).all()
        y = step
        if done:
            break
    return (e * y).sum(dim=1).clamp_min(0).sqrt()


class ReconstructionScoring:
    """Scoring shared by the reconstruction branches (b2, b4), mixed in before :class:`Branch`.

    The branch defines ``error(batch)`` -> signed (B, n_mels, T) error, ``self.profiles`` (a
    :class:`ProfileScorer`) and ``cfg.score`` / ``cfg.pooling`` / ``cfg.gwrp_decay``.
    """

    def prepare_scoring(self, batches) -> None:
        """Fit the section Gaussians on the error profiles of the training clips (and keep each
        clip's pooled error, for :meth:`fitted_train_scores` under ``score: mse``)."""
        profiles, groups, pooled = [], [], []
        for batch in batches:
            error = self.error(batch)
            profiles.append(error_profile(error))
            groups.append(batch.group)
            pooled.append(self._pooled(error))
        self.profiles.fit(torch.cat(profiles), torch.cat(groups))
        self._fitted_pooled = torch.cat(pooled)

    def _pooled(self, error: Tensor) -> Tensor:
        return pool_time(error.pow(2).mean(dim=1), self.cfg.pooling, self.cfg.gwrp_decay)

    def score_map(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """:meth:`score` and (B, n_mels, T) each bin's and frame's part in it, from one
        reconstruction: its share of the Mahalanobis distance (:meth:`ProfileScorer.shares`), or
        under ``score: mse`` its squared error over the bins (whose sum over the bins is the
        frame's pooled error)."""
        error = self.error(batch)
        if self.cfg.score == "mahalanobis":
            return self._scored(error, batch.group), self.profiles.shares(error, batch.group)
        return self._scored(error, batch.group), error.pow(2) / error.shape[1]

    def score(self, batch: Batch) -> Tensor:
        return self._scored(self.error(batch), batch.group)

    def _scored(self, error: Tensor, group: Tensor) -> Tensor:
        if self.cfg.score == "mahalanobis":
            return self.profiles(error_profile(error), group)
        return self._pooled(error)

    def train_scores(self, batch: Batch) -> Tensor:
        if self.cfg.score != "mahalanobis" or batch.index is None:
            return self.score(batch)
        return self.profiles.leave_one_out(error_profile(self.error(batch)), batch.group, batch.index)

    def fitted_train_scores(self) -> Tensor:
        if self.cfg.score != "mahalanobis":
            return self._fitted_pooled
        p = self.profiles
        return p.leave_one_out(p.train_profiles, p.train_group, torch.arange(len(p.train_group), device=p.train_group.device))
