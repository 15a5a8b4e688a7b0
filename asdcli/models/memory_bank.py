"""k-nearest-neighbour cosine distance to the training embeddings of the same section."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asdcli.models.base import Batch


def collect_embeddings(batches: Iterable[Batch], embed: Callable[[Batch], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Embed every batch: (N, D) embeddings, (N,) groups and (N,) domains."""
    embs, groups, domains = [], [], []
    for batch in batches:
        embs.append(embed(batch))
        groups.append(batch.group)
        domains.append(batch.domain)
    return torch.cat(embs), torch.cat(groups), torch.cat(domains)


class MemoryBank(nn.Module):
    """Normalised training embeddings with their section and domain, as buffers.

    The score of a clip is the mean cosine distance to its k nearest training clips of the same
    section, taken per domain and minimised over the domains: a target-domain clip is compared
    with the few target training clips too, not drowned among source clips (DCASE 2022+).
    """

    def __init__(self, k: int, dim: int):
        super().__init__()
        self.k = k
        self.register_buffer("emb", torch.zeros(0, dim))  # (N, dim) once fitted
        self.register_buffer("group", torch.zeros(0, dtype=torch.long))
        self.register_buffer("domain", torch.zeros(0, dtype=torch.long))

    def fit(self, emb: Tensor, group: Tensor, domain: Tensor) -> None:
        """Store (N, D) embeddings with their (N,) groups and domains."""
        self.emb = F.normalize(emb.detach().float(), dim=1)
        self.group = group.detach().long().clone()
        self.domain = domain.detach().long().clone()

    def __len__(self) -> int:
        return self.emb.shape[0]

    def distance(self, emb: Tensor, group: Tensor, exclude: Tensor | None = None) -> Tensor:
        """(B, D) queries -> (B,) domain-aware kNN cosine distance within each query's group.

        ``exclude`` (B,) bank rows to leave out per query (the query itself, for leave-one-out
        scores of the training clips; -1 for none). A group absent from the bank is compared
        with the whole bank.
        """
        if len(self) == 0:
            raise RuntimeError("memory bank is empty: prepare_scoring() was not run")
        dist = 1.0 - F.normalize(emb.float(), dim=1) @ self.emb.T  # (B, N)
        same_group = group[:, None] == self.group[None, :]  # (B, N)
        allowed = torch.where(same_group.any(dim=1, keepdim=True), same_group, torch.ones_like(same_group))
        if exclude is not None:
            rows = torch.arange(len(self), device=emb.device)
            allowed = allowed & (rows[None, :] != exclude[:, None])
        best = torch.full((emb.shape[0],), float("inf"), device=emb.device)
        for domain in (0, 1):
            mask = allowed & (self.domain[None, :] == domain)  # (B, N)
            masked = dist.masked_fill(~mask, float("inf"))
            nearest = masked.topk(min(self.k, len(self)), dim=1, largest=False).values  # (B, k)
            finite = torch.isfinite(nearest)
            mean = torch.where(finite, nearest, torch.zeros_like(nearest)).sum(1) / finite.sum(1).clamp_min(1)
            best = torch.minimum(best, torch.where(finite.any(dim=1), mean, best))
        return best

    def leave_one_out(self, chunk: int = 1024) -> Tensor:
        """(N,) :meth:`distance` of every stored embedding with itself left out, ``chunk`` rows
        at a time (memory stays O(chunk x N))."""
        rows = torch.arange(len(self), device=self.emb.device)
        return torch.cat([self.distance(self.emb[i : i + chunk], self.group[i : i + chunk], exclude=rows[i : i + chunk])
                          for i in range(0, len(self), chunk)])
