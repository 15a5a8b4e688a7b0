"""b2: masked-frame Transformer autoencoder (IDC-TransAE, Guan et al. 2023; MAE-AST, 2203.16691).

Groups of ``patch_frames`` log-mel frames are tokens. Training hides a random half of them
behind a learned mask token and reconstructs the hidden ones from the context, conditioned on a
machine-section token. Scoring hides tokens with ``score_masks`` interleaved masks, so that each
token is reconstructed once from its neighbours, deterministically; the anomaly score is the
Mahalanobis distance of the clip's per-bin error profile from its section's training clips
(``score: mahalanobis``) or the pooled squared error (``score: mse``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asdcli.config import TransformerAEConfig
from asdcli.models.base import Batch, Branch, BranchContext
from asdcli.models.error_profile import ProfileScorer, ReconstructionScoring


class TransformerAEBranch(ReconstructionScoring, Branch):
    """Masked Transformer autoencoder over frame patches; latent z2 = mean encoder output."""

    name = "transformer-ae"
    bid = "b2"
    config_field = "transformer_ae"
    loss_name = "masked-patch reconstruction MSE"

    def __init__(self, context: BranchContext, cfg: TransformerAEConfig):
        super().__init__(context)
        self.cfg = cfg
        self.patch = cfg.patch_frames
        self.n_tokens = max(1, context.frames // cfg.patch_frames)
        token_dim = context.n_mels * cfg.patch_frames
        self.proj = nn.Linear(token_dim, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(1, self.n_tokens + 1, cfg.d_model) * 0.02)
        self.section = nn.Embedding(context.n_groups + 1, cfg.d_model)  # last row: unknown section
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, 4 * cfg.d_model, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, token_dim))
        self.profiles = ProfileScorer(context.n_groups, 2 * context.n_mels)

    def tokens(self, feats: Tensor) -> Tensor:
        """(B, n_mels, frames) -> (B, n_tokens, n_mels * patch) after normalisation."""
        x = self.normalize(feats)[:, :, : self.n_tokens * self.patch]  # (B, M, N * p)
        b, m, _ = x.shape
        x = x.reshape(b, m, self.n_tokens, self.patch)  # (B, M, N, p)
        return x.permute(0, 2, 1, 3).reshape(b, self.n_tokens, m * self.patch)  # (B, N, M * p)

    def _encode(self, tokens: Tensor, group: Tensor, mask: Tensor | None) -> Tensor:
        """(B, N, token_dim) tokens, (B, N) bool mask -> (B, N, d_model) encoder outputs."""
        x = self.proj(tokens)  # (B, N, d)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.expand_as(x), x)
        section = self.section(torch.where(group < 0, self.context.n_groups, group))[:, None]  # (B, 1, d)
        x = torch.cat([section, x], dim=1) + self.pos  # (B, N + 1, d)
        return self.encoder(x)[:, 1:]  # (B, N, d)

    def _reconstruct(self, batch: Batch, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Reconstructed and target tokens, both (B, N, n_mels * patch)."""
        tokens = self.tokens(batch.feats)
        return self.head(self._encode(tokens, batch.group, mask)), tokens

    def loss(self, batch: Batch) -> Tensor:
        b = len(batch)
        n_masked = max(1, int(round(self.cfg.mask_ratio * self.n_tokens)))
        order = torch.rand(b, self.n_tokens, device=batch.feats.device).argsort(dim=1)  # (B, N)
        mask = order < n_masked  # (B, N): a random subset of n_masked tokens per clip
        recon, tokens = self._reconstruct(batch, mask)
        errors = (recon - tokens).pow(2).mean(dim=2)  # (B, N)
        return (errors * mask).sum() / mask.sum()

    def embed(self, batch: Batch) -> Tensor:
        return self._encode(self.tokens(batch.feats), batch.group, None).mean(dim=1)  # (B, d)

    def error(self, batch: Batch) -> Tensor:
        """Signed reconstruction error (B, n_mels, N * patch), each token hidden once by one of
        ``score_masks`` interleaved masks."""
        positions = torch.arange(self.n_tokens, device=batch.feats.device)
        masks = min(self.cfg.score_masks, self.n_tokens)
        diff = None
        for shift in range(masks):
            mask = (positions % masks == shift)[None].expand(len(batch), -1)  # (B, N)
            recon, tokens = self._reconstruct(batch, mask)
            part = (recon - tokens) * mask[..., None]
            diff = part if diff is None else diff + part
        b, n, _ = diff.shape
        diff = diff.reshape(b, n, self.context.n_mels, self.patch)  # (B, N, M, p)
        return diff.permute(0, 2, 1, 3).reshape(b, self.context.n_mels, n * self.patch)  # (B, M, N * p)
