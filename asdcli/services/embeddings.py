"""On-disk cache of the embeddings of frozen branches (the pretrained AST is slow on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from asdcli.data.features import ArrayCache
from asdcli.data.layout import Clip
from asdcli.models.base import Batch, Branch


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
