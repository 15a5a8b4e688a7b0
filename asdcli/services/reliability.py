"""Whether the fusion can trust a trained branch: what the branch says of its own training data,
and how its held-out normal clips score against its training clips.

A branch that learns its few training clips by heart scores them far lower than any clip it has
not seen, normal or not: its per-section statistics then describe memorised clips, every
pseudo-anomaly looks separable to it, and the fusion would follow it (measured on real fan
recordings: held-out normal clips 17-27 standard deviations above the contrastive branch's
training clips, whose scores then ranked real faults below normal clips). The clips of
``run.holdout`` are kept out of every branch's network training, so their scores show this.
"""

from __future__ import annotations

import numpy as np

from asdcli.config import AsdConfig


def heldout_check(scores: np.ndarray, groups: np.ndarray, held: np.ndarray) -> dict:
    """Scores (N,), section indices (N,) and a held-out mask (N,) of a branch's training clips ->
    ``{"clips": held-out clips, "median_z": median of their scores standardised with the trained
    clips of their own section}``; ``median_z`` is None when no section has both."""
    zs: list[float] = []
    for g in np.unique(groups[held]):
        ref = scores[(groups == g) & ~held]
        ref = ref[np.isfinite(ref)]
        if ref.size < 2:
            continue
        mean, std = float(ref.mean()), float(ref.std(ddof=1))
        std = max(std, 1e-9 * max(1.0, abs(mean)))
        zs += ((scores[(groups == g) & held] - mean) / std).tolist()
    return {"clips": int(held.sum()), "median_z": float(np.median(zs)) if zs else None}


def left_out_reason(name: str, metas: dict[str, dict], config: AsdConfig) -> str | None:
    """Why the fusion must not use branch ``name`` (metadata in ``metas``, with its input
    branches'), or None: a limitation the branch stated at training, held-out clips that score
    more than ``train.heldout_max_z`` above its training clips, or an input branch left out."""
    meta = metas[name]
    if meta.get("limitation"):
        return meta["limitation"]
    held = meta.get("heldout") or {}
    z = held.get("median_z")
    if z is not None and z > config.train.heldout_max_z:
        return (f"its {held['clips']} held-out normal clip(s) score {z:+.1f} standard deviations above its training "
                f"clips (median; limit train.heldout_max_z={config.train.heldout_max_z:g}): it does not generalise "
                "from its training clips")
    for up in meta.get("upstream", []):
        if up in metas and left_out_reason(up, metas, config):
            return f"it models the embeddings of {up}, which is left out"
    return None
