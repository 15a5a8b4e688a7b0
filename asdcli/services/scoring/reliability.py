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
from asdcli.models.registry import BRANCHES, branch_config
from asdcli.services.store.records import BranchRecord, HeldOut


def heldout_check(scores: np.ndarray, groups: np.ndarray, held: np.ndarray) -> dict:
    """Scores (N,), section indices (N,) and a held-out mask (N,) of a branch's training clips ->
    ``{"clips": held-out clips, "median_z": median of their scores standardised with the trained
    clips of their own section, "median_normal_z": the same judged against how far an unseen
    clip may lie from so few trained clips}``; both are None when no section has both.

    With n trained clips of mean m and sample sd s, a new clip of the same distribution has
    (x - m) / (s sqrt(1 + 1/n)) ~ Student t with n - 1 degrees of freedom; its upper tail
    probability is turned into the standard normal deviate of the same tail. With hundreds of
    clips this is the plain z; with 4 a held-out clip 6 sd above them is not surprising (t tail
    0.005, normal 2.6), since 4 clips say little of their spread."""
    from scipy import stats  # here: scoring imports this module, and scipy.stats takes 0.6 s

    zs: list[float] = []
    normal: list[float] = []
    for g in np.unique(groups[held]):
        ref = scores[(groups == g) & ~held]
        ref = ref[np.isfinite(ref)]
        if ref.size < 2:
            continue
        mean, std = float(ref.mean()), float(ref.std(ddof=1))
        std = max(std, 1e-9 * max(1.0, abs(mean)))
        z = (scores[(groups == g) & held] - mean) / std
        zs += z.tolist()
        tail = stats.t.logsf(z / np.sqrt(1 + 1 / ref.size), df=ref.size - 1)
        normal += stats.norm.isf(np.exp(np.maximum(tail, -700.0))).tolist()  # finite far out
    if not zs:
        return {"clips": int(held.sum()), "median_z": None, "median_normal_z": None}
    return {"clips": int(held.sum()), "median_z": float(np.median(zs)), "median_normal_z": float(np.median(normal))}


def heldout_gap(held: HeldOut | None) -> float | None:
    """How far a branch's held-out clips lie above its training clips, in standard normal
    deviates of the same tail probability (:func:`heldout_check`)."""
    return None if held is None else held.median_normal_z


def left_out_reason(name: str, metas: dict[str, BranchRecord], config: AsdConfig) -> str | None:
    """Why the fusion must not use branch ``name`` (metadata in ``metas``, with its input
    branches'), or None: a limitation the branch stated at training, held-out clips that score
    more than ``train.heldout_max_z`` above its training clips (judged on at least
    ``train.heldout_min_clips`` of them), or an input branch left out.

    One held-out clip is not enough to leave a branch out: measured on real MIMII fan folds with 5
    training clips, the autoencoder's single held-out clip lay +2.0 to +3.2 (normal deviate) above
    its training clips in 4 of 6 runs, where it ranked every real fault above every normal clip;
    a network is always somewhat closer to the clips it trained on, and one clip cannot tell that
    from learning them by heart."""
    meta = metas[name]
    if meta.limitation:
        return meta.limitation
    stated = BRANCHES[name].fusion_limitation(meta.extra or {}, branch_config(config, name)) if name in BRANCHES else None
    if stated:
        return stated
    held, gap = meta.heldout, heldout_gap(meta.heldout)
    if gap is not None and gap > config.train.heldout_max_z and held.clips >= config.train.heldout_min_clips:
        return (f"{heldout_summary(held)} (limit train.heldout_max_z={config.train.heldout_max_z:g}): it does not "
                "generalise from its training clips")
    for up in meta.upstream:
        if up in metas and left_out_reason(up, metas, config):
            return f"it models the embeddings of {up}, which is left out"
    return None


def split_usable(names: list[str], metas: dict[str, BranchRecord], config: AsdConfig) -> tuple[list[str], dict[str, str]]:
    """``names`` split into the branches to fuse and those left out, with why
    (:func:`left_out_reason`; ``metas`` holds every trained branch's metadata). Where every
    branch would be left out, the one whose held-out clips score lowest is kept (its reason says so)."""
    left_out = {n: r for n in names if (r := left_out_reason(n, metas, config)) is not None}
    kept = [n for n in names if n not in left_out]
    if not kept:
        def gap(name: str) -> float:
            z = heldout_gap(metas[name].heldout)
            return float("inf") if metas[name].limitation or z is None else z
        least = min(names, key=gap)
        kept = [least]
        left_out.pop(least)
    return kept, left_out


def heldout_summary(held: HeldOut) -> str:
    """One phrase on how a branch's held-out clips scored (:func:`heldout_check`)."""
    text = f"its {held.clips} held-out normal clip(s) score {held.median_z:+.1f} standard deviations above its training clips"
    if held.median_normal_z is not None:
        text += f" (median; as unlikely as {held.median_normal_z:+.1f} for a normal variable, given how few they are)"
    return text
