"""b5: RealNVP normalizing flow (Dinh et al. 2017) on the embeddings of trained branches.

Flows for ASD: Dohi et al., arXiv 2103.08801. The embeddings of the ``inputs`` branches are
concatenated, centred and projected on their principal axes (at most ``max_dims``), then mapped
to a standard normal by affine coupling layers with alternating masks, each conditioned on the
clip's machine section. The exact log-likelihood gives the score: negative log-likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.config import FlowConfig
from asdcli.models.base import Batch, Branch, BranchContext


class AffineCoupling(nn.Module):
    """y = x on the masked half; y = x * exp(s) + t elsewhere, s and t from the masked half."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dim + cond_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)  # start as the identity map
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(B, dim), (B, cond_dim) -> y (B, dim) and log|det dy/dx| (B,)."""
        kept = x * self.mask
        s, t = self.net(torch.cat([kept, cond], dim=1)).chunk(2, dim=1)
        s = torch.tanh(s) * (1 - self.mask)  # bounded log-scales keep training stable
        t = t * (1 - self.mask)
        return kept + (1 - self.mask) * (x * s.exp() + t), s.sum(dim=1)


class FlowBranch(Branch):
    """Section-conditioned RealNVP density of branch embeddings; score = -log p(z | section)."""

    name = "flow"
    bid = "b5"
    config_field = "flow"
    loss_name = "negative log-likelihood per clip (nats)"

    def __init__(self, context: BranchContext, cfg: FlowConfig):
        super().__init__(context)
        self.cfg = cfg
        self.in_dim = sum(context.embed_dims[name] for name in cfg.inputs)
        self.dim = min(cfg.max_dims, self.in_dim)
        self.register_buffer("emb_mean", torch.zeros(self.in_dim))
        self.register_buffer("proj", torch.eye(self.in_dim)[:, : self.dim].clone())
        self.register_buffer("proj_scale", torch.ones(self.dim))
        cond_dim = context.n_groups + 1
        masks = [(torch.arange(self.dim) + i) % 2 for i in range(cfg.couplings)]
        self.couplings = nn.ModuleList(
            AffineCoupling(self.dim, cond_dim, cfg.hidden, m.float()) for m in masks
        )

    @classmethod
    def upstream(cls, cfg: FlowConfig) -> tuple[str, ...]:
        return tuple(cfg.inputs)

    def _inputs(self, batch: Batch) -> Tensor:
        """Concatenated upstream embeddings (B, in_dim)."""
        missing = [n for n in self.cfg.inputs if n not in batch.embeddings]
        if missing:
            raise KeyError(f"flow needs embeddings of {missing} in the batch")
        return torch.cat([batch.embeddings[n] for n in self.cfg.inputs], dim=1)

    def prepare_training(self, batches) -> None:
        """Centre and project the training embeddings on their principal axes, whitened.

        With few clips the sample covariance is a poor estimate: its small eigenvalues are biased
        toward 0 (exactly 0 beyond rank N - 1), and whitening by them blows up every direction in
        which a new clip differs from the handful it was fitted on (measured on real fan clips:
        held-out normal clips 17 standard deviations above the training clips). So at most
        N // 5 directions are kept, and their variances are shrunk toward their mean by keep / N
        (Ledoit and Wolf 2004, toward a scaled identity); with hundreds of clips both barely act
        (N = 475, 32 dims: shrinkage 0.07)."""
        inputs, groups = zip(*((self._inputs(b), b.group) for b in batches))
        z = torch.cat(inputs).double()  # (N, in_dim)
        self.section_clips = float(torch.unique(torch.cat(groups), return_counts=True)[1].double().median())  # the lower median
        n = z.shape[0]
        mean = z.mean(dim=0)
        _, svals, vh = torch.linalg.svd(z - mean, full_matrices=False)
        var = svals.pow(2) / max(1, n - 1)  # (min(N, in_dim),)
        keep = max(1, min(self.dim, vh.shape[0], n // 5))
        shrink = keep / max(n, 1)
        var = (1 - shrink) * var[:keep] + shrink * var[:keep].mean()  # (keep,)
        proj = torch.zeros(self.in_dim, self.dim, dtype=torch.float64)
        proj[:, :keep] = vh[:keep].T
        scale = torch.ones(self.dim, dtype=torch.float64)
        scale[:keep] = var.clamp_min(1e-12).sqrt()
        self.emb_mean.copy_(mean.float())
        self.proj.copy_(proj.float())
        self.proj_scale.copy_(scale.float())

    def limitation(self) -> str | None:
        """A density fitted to a handful of clips per section ranks unseen faults at random or
        inverted. Measured on real folds (bench/bench_real.py, 6 runs each): with 5 clips per section
        (MIMII fan) the flow's AUC ranged from 0.08 to 0.98 (mean 0.65) while every other branch
        stayed at 0.90-1.00; with 9 (DCASE 2020 fan) 0.54 +- 0.07; with 60 (slider) 0.97."""
        clips = getattr(self, "section_clips", None)  # set by prepare_training
        if clips is None or clips >= self.cfg.min_clips:
            return None
        return (f"its sections have {clips:g} training clips (median), fewer than branches.flow.min_clips="
                f"{self.cfg.min_clips}: too few to fit a density that ranks unseen faults")

    def _condition(self, group: Tensor) -> Tensor:
        return F.one_hot(torch.where(group < 0, self.context.n_groups, group), self.context.n_groups + 1).float()

    def forward_flow(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Latent u (B, dim) and the log-determinant of the whole map (B,)."""
        x = (self._inputs(batch) - self.emb_mean) @ self.proj / self.proj_scale  # (B, dim)
        cond = self._condition(batch.group)
        logdet = torch.zeros(x.shape[0], device=x.device)
        for coupling in self.couplings:
            x, ld = coupling(x, cond)
            logdet = logdet + ld
        return x, logdet

    def nll(self, batch: Batch) -> Tensor:
        """(B,) negative log-likelihood in nats per dimension."""
        u, logdet = self.forward_flow(batch)
        log_pz = -0.5 * (u.pow(2).sum(dim=1) + self.dim * math.log(2 * math.pi))
        return -(log_pz + logdet) / self.dim

    def loss(self, batch: Batch) -> Tensor:
        return self.nll(batch).mean()

    def embed(self, batch: Batch) -> Tensor:
        return self.forward_flow(batch)[0]

    def score(self, batch: Batch) -> Tensor:
        return self.nll(batch)
