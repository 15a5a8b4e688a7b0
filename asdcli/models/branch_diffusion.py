"""b4: ASD-Diffusion (arXiv 2409.15957): a DDPM denoiser of normal log-mel spectrograms.

Training is DDPM epsilon prediction (Ho et al. 2020) on random crops. Scoring noises a clip
part-way (``noise_level`` of the T steps) and denoises it back with a few deterministic DDIM
steps (Song et al. 2021): a normal clip returns close to itself, an anomalous one is pulled
toward the normal manifold, so the reconstruction error is the anomaly score (Mahalanobis distance of its
per-bin profile from the section's training clips, or the pooled squared error). The scoring noise
comes from a fixed seed and is the same for every clip, so scores are deterministic and do not
depend on the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.config import DiffusionConfig
from asdcli.models.base import Batch, Branch, BranchContext, random_crop, sinusoidal_embedding
from asdcli.models.error_profile import ProfileScorer, ReconstructionScoring

SCORE_SEED = 1234
CPU_CHUNK = 4  # clips per U-Net pass when scoring on a CPU


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the step embedding added in between (residual)."""

    def __init__(self, channels: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.step = nn.Linear(t_dim, channels)
        self.norm2 = nn.GroupNorm(min(8, channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        fresh = not torch.is_grad_enabled()  # scoring: activations updated in place (the same numbers, less memory traffic)
        h = self.conv1(F.silu(self.norm1(x), inplace=fresh))
        step = self.step(t_emb)[:, :, None, None]
        h = h.add_(step) if fresh else h + step
        return x + self.conv2(F.silu(self.norm2(h), inplace=fresh))


class Denoiser(nn.Module):
    """One-level U-Net: (B, 1, M, T) noisy input and (B,) steps -> (B, 1, M, T) noise estimate."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.t_dim = c
        self.t_mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.SiLU(), nn.Linear(4 * c, c))
        self.inp = nn.Conv2d(1, c, 3, padding=1)
        self.block_hi = ResBlock(c, c)
        self.down = nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)
        self.mid = nn.ModuleList([ResBlock(2 * c, c), ResBlock(2 * c, c)])
        self.up = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1)
        self.out = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, return_bottleneck: bool = False):
        m, frames = x.shape[-2:]
        x = F.pad(x, (0, frames % 2, 0, m % 2))  # even sizes for the 2x down/up path
        t_emb = self.t_mlp(sinusoidal_embedding(t, self.t_dim))  # (B, c)
        hi = self.block_hi(self.inp(x), t_emb)  # (B, c, M, T)
        h = self.down(hi)  # (B, 2c, M/2, T/2)
        for block in self.mid:
            h = block(h, t_emb)
        if return_bottleneck:
            return h
        out = self.out(self.up(h) + hi)  # (B, 1, M, T)
        return out[..., :m, :frames]


class DiffusionBranch(ReconstructionScoring, Branch):
    """DDPM denoiser; score = pooled error of a DDIM reconstruction from a part-way noised clip."""

    name = "diffusion"
    bid = "b4"
    config_field = "diffusion"
    loss_name = "noise-prediction MSE"

    def __init__(self, context: BranchContext, cfg: DiffusionConfig):
        super().__init__(context)
        self.cfg = cfg
        self.net = Denoiser(cfg.channels)
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.steps, dtype=torch.float64)
        self.profiles = ProfileScorer(context.n_groups, 2 * context.n_mels)
        self.register_buffer("alpha_bar", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)

    def train(self, mode: bool = True) -> "DiffusionBranch":
        """Scoring runs the U-Net in the channels-last layout (1.3-1.4x faster over whole clips on a
        CPU); training keeps the standard one (channels-last was slower there, on 64-frame crops)."""
        super().train(mode)
        self.net.to(memory_format=torch.contiguous_format if mode else torch.channels_last)
        return self

    def loss(self, batch: Batch) -> Tensor:
        x0 = random_crop(self.normalize(batch.feats)[:, None], self.cfg.crop_frames)  # (B, 1, M, crop)
        t = torch.randint(0, self.cfg.steps, (len(batch),), device=x0.device)
        noise = torch.randn_like(x0)
        a = self.alpha_bar[t][:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(self.net(x_t, t), noise)

    def embed(self, batch: Batch) -> Tensor:
        x0 = self.normalize(batch.feats)[:, None]
        t = torch.zeros(len(batch), dtype=torch.long, device=x0.device)
        return self.net(x0, t, return_bottleneck=True).mean(dim=(2, 3))  # (B, 2c)

    def reconstruct(self, x0: Tensor, noise: Tensor) -> Tensor:
        """DDIM (eta = 0) from step ``noise_level * T`` back to a clean estimate. (B, 1, M, T)."""
        t_start = max(1, int(round(self.cfg.noise_level * self.cfg.steps))) - 1
        a = self.alpha_bar[t_start]
        x = a.sqrt() * x0 + (1 - a).sqrt() * noise
        schedule = torch.linspace(t_start, 0, self.cfg.ddim_steps + 1).round().long().tolist()
        x0_hat = x0
        for i, t in enumerate(schedule[:-1]):
            a_t = self.alpha_bar[t]
            eps = self.net(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
            x0_hat = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            t_next = schedule[i + 1]
            a_next = self.alpha_bar[t_next] if t_next < t else torch.ones((), device=x.device)
            x = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
        return x0_hat

    def error(self, batch: Batch) -> Tensor:
        """Signed error (B, n_mels, T) of the DDIM reconstruction, averaged over ``repeats`` draws."""
        x0 = self.normalize(batch.feats)[:, None]  # (B, 1, M, T)
        generator = torch.Generator().manual_seed(SCORE_SEED)
        total = torch.zeros_like(x0)
        for _ in range(self.cfg.repeats):
            noise = torch.randn((1, *x0.shape[1:]), generator=generator).to(x0.device)
            if x0.device.type == "cpu" and not torch.is_grad_enabled():
                # a few clips at a time: the same numbers, 2-2.5x faster on a CPU (whole-clip
                # activations of 32 clips leave every cache; measured with bench/bench_score.py)
                parts = [self.reconstruct(x0[i : i + CPU_CHUNK], noise.expand_as(x0[i : i + CPU_CHUNK]))
                         for i in range(0, len(x0), CPU_CHUNK)]
                total = total + torch.cat(parts) - x0
            else:
                total = total + self.reconstruct(x0, noise.expand_as(x0)) - x0
        return total[:, 0] / self.cfg.repeats
