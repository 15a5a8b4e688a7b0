"""b2: masked-frame Transformer autoencoder (IDC-TransAE, Guan et al. 2023; MAE-AST, 2203.16691).

Groups of ``patch_frames`` log-mel frames are tokens. Training hides a random half of them
behind a learned mask token and reconstructs the hidden ones from the context, conditioned on a
machine-section token. Scoring hides tokens with ``score_masks`` interleaved masks, so that each
token is reconstructed once from its neighbours, deterministically; the anomaly score is the
pooled per-token reconstruction error.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asdcli.config import TransformerAEConfig
from asdcli.models.base import Batch, Branch, BranchContext, pool_time


class TransformerAEBranch(Branch):
    """Masked Transformer autoencoder over frame patches; latent z2 = mean encoder output."""

    name = "transformer-ae"
    bid = "b2"

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

    def _token_errors(self, batch: Batch, mask: Tensor) -> Tensor:
        """(B, N) squared reconstruction error per token under ``mask``."""
        tokens = self.tokens(batch.feats)
        recon = self.head(self._encode(tokens, batch.group, mask))  # (B, N, token_dim)
        return (recon - tokens).pow(2).mean(dim=2)

    def loss(self, batch: Batch) -> Tensor:
        b = len(batch)
        n_masked = max(1, int(round(self.cfg.mask_ratio * self.n_tokens)))
        order = torch.rand(b, self.n_tokens, device=batch.feats.device).argsort(dim=1)  # (B, N)
        mask = order < n_masked  # (B, N): a random subset of n_masked tokens per clip
        errors = self._token_errors(batch, mask)
        return (errors * mask).sum() / mask.sum()

    def embed(self, batch: Batch) -> Tensor:
        return self._encode(self.tokens(batch.feats), batch.group, None).mean(dim=1)  # (B, d)

    def score(self, batch: Batch) -> Tensor:
        positions = torch.arange(self.n_tokens, device=batch.feats.device)
        errors = torch.zeros(len(batch), self.n_tokens, device=batch.feats.device)
        masks = min(self.cfg.score_masks, self.n_tokens)
        for shift in range(masks):
            mask = (positions % masks == shift)[None].expand(len(batch), -1)  # (B, N)
            errors = errors + self._token_errors(batch, mask) * mask
        return pool_time(errors, self.cfg.pooling, self.cfg.gwrp_decay)
