"""Batches for the branches with their upstream embeddings, and the on-disk cache of the
embeddings of frozen branches (a pretrained model is slow on a CPU). Training and scoring both
take their batches from here."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from asdcli.data.features import ArrayCache
from asdcli.data.layout import Clip
from asdcli.models.base import Batch, Branch
from asdcli.services.inputs.dataset import ClipSet


class EmbeddingCaches:
    """An :class:`ArrayCache` under ``<root>/embeddings`` for each branch whose
    ``embedding_spec()`` allows caching; ``root=None`` caches nothing."""

    def __init__(self, root: Path | None, branches: dict[str, Branch]):
        self.caches: dict[str, tuple[Branch, ArrayCache]] = {}
        for name, branch in branches.items():
            spec = None if root is None else branch.embedding_spec()
            if spec is not None:
                key, dim = spec
                self.caches[name] = (branch, ArrayCache(Path(root) / "embeddings", key, (dim,),
                                                        {"branch": name, "key": key, "dim": dim}))

    def covered(self, clips: list[Clip]) -> set[str]:
        """The cached branches that hold the embedding of every one of ``clips`` already (they
        need neither the clips' audio nor their network to embed them)."""
        return {name for name, (_, cache) in self.caches.items() if all(cache.load(c.path) is not None for c in clips)}

    def attach(self, batch: Batch, clips: list[Clip]) -> Batch:
        """Fill ``batch.embeddings`` for the cached branches, embedding (and storing) only the
        clips not cached yet. ``clips`` are the batch's clips, in order."""
        for name, (branch, cache) in self.caches.items():
            rows = [cache.load(c.path) for c in clips]
            missing = [i for i, r in enumerate(rows) if r is None]
            if missing:
                with torch.no_grad():
                    fresh = branch.embed(batch.select(missing)).float().cpu().numpy()  # (M, D)
                for i, vector in zip(missing, fresh):
                    cache.save(clips[i].path, vector)
                    rows[i] = vector
            batch.embeddings[name] = torch.from_numpy(np.stack(rows)).to(batch.feats.device)  # (B, D)
        return batch


def with_embeddings(batch: Batch, upstream: dict[str, Branch]) -> Batch:
    """Fill ``batch.embeddings`` from the upstream branches (no gradients)."""
    with torch.no_grad():
        for name, branch in upstream.items():
            batch.embeddings[name] = branch.embedding(batch)
    return batch


def model_batches(clipset: ClipSet, batch_size: int, device: torch.device | str, upstream: dict[str, Branch],
                  caches: EmbeddingCaches | None = None, order: list[int] | None = None,
                  embedded: dict[str, Tensor] | None = None) -> Iterator[Batch]:
    """The clip set in ``order`` (default: all, in order) as batches on ``device``, with cached and
    upstream embeddings filled (taken from ``embedded``, every clip's by name, where given)."""
    order = list(range(len(clipset))) if order is None else order
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in clipset.on_device(chunks, device):
        batch = with_rows(batch, embedded or {})
        if caches is not None:
            batch = caches.attach(batch, [clipset.clips[i] for i in batch.index.tolist()])
        yield with_embeddings(batch, upstream)


def with_rows(batch: Batch, embedded: dict[str, Tensor]) -> Batch:
    """Put the batch's clips' rows of ``embedded`` ((N, D) per branch, N the clip set) in ``batch.embeddings``."""
    for name, table in embedded.items():
        batch.embeddings[name] = table[batch.index.to(table.device)]
    return batch


def embed_once(clipset: ClipSet, batch_size: int, device: torch.device, upstream: dict[str, Branch],
               cache_dir: Path | None) -> dict[str, Tensor]:
    """Every clip's (N, D) embedding by each upstream branch (read from the on-disk cache where the
    branch allows it). The upstream branches are frozen, so training epochs and the scoring of the
    training clips take their rows instead of embedding the clips again (b5 spent nearly all its
    training time in b3's network)."""
    if not upstream:
        return {}
    parts: dict[str, list[Tensor]] = {name: [] for name in upstream}
    for batch in model_batches(clipset, batch_size, device, upstream, EmbeddingCaches(cache_dir, upstream)):
        for name in upstream:
            parts[name].append(batch.embeddings[name])
    return {name: torch.cat(rows) for name, rows in parts.items()}
