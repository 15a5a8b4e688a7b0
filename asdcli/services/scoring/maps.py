"""Anomaly maps: each branch's anomaly over the frames of a clip, on the scale of its clip score.

- b2 and b4 (reconstruction branches, anything with ``score_map``): each frame's and mel band's
  share of the clip score (:meth:`asdcli.models.error_profile.ProfileScorer.shares`: the frame's
  error profile along the direction in which the whole clip's profile deviates from its
  section's; summed over the bands and averaged over the frames, the clip score), summed over the
  bands; the bands' shares also say which frequencies drove it. Chosen on seed 0 of
  bench/bench_explain.py against the squared error of each frame averaged over the bands (which
  a tone in one band barely moves: tones were placed in 0.04 of the flagged clips, 0.83 now).
- Every other branch (b1, b3, b5, a registered one): its score of overlapping windows of the clip
  (``WINDOW`` frames, every ``HOP``; a quarter of a clip shorter than 4 windows, the hop scaled
  alike: chosen on seed 0 of bench/bench_explain.py against half a clip and whole-clip windows),
  each frame the mean of the windows that hold it. An approximation: the branch was trained and
  its statistics fitted on whole clips.

Either curve is then scaled so that its mean over the frames is the branch's raw clip score (a
ratio where both are positive, else a shift): standardised with the section's training
statistics as the clip score is, the map's mean over time is the branch's standardised score.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from asdcli.models.base import Batch, Branch
from asdcli.services.inputs.embeddings import with_embeddings

WINDOW, HOP = 64, 8  # frames (about 2 s and 0.26 s at 16 kHz, hop 512)


def native(branch: Branch) -> bool:
    """Whether the branch gives a map of its own (per bin and frame) rather than windows."""
    return hasattr(branch, "score_map")


def score_map(branch: Branch, batch: Batch) -> tuple[Tensor, Tensor]:
    """A reconstruction branch's (B,) clip score and (B, n_mels, T) shares of it over bins and the
    clip's frames, from one reconstruction."""
    with torch.no_grad():
        score, out = branch.score_map(batch)  # (B, M, T') with T' <= T (whole patches)
    out, frames = out.float(), batch.feats.shape[-1]
    if out.shape[-1] != frames:
        out = F.pad(out, (0, frames - out.shape[-1]), mode="replicate")
    return score, out


def _windows(branch: Branch, batch: Batch, upstream: dict[str, Branch]) -> Tensor:
    """(B, T) window scores spread over the frames (module docstring)."""
    frames = batch.feats.shape[-1]
    width = min(WINDOW, max(8, frames // 4), frames)  # a quarter of a short clip: a whole-clip window places nothing
    hop = max(1, width * HOP // WINDOW)
    starts = list(range(0, frames - width + 1, hop))
    if starts[-1] != frames - width:
        starts.append(frames - width)
    total = torch.zeros(len(batch), frames)
    count = torch.zeros(frames)
    samples = batch.wave.shape[-1] if batch.wave is not None else 0
    for start in starts:
        wave = None
        if batch.wave is not None:
            a, b = start * samples // frames, (start + width) * samples // frames
            wave = batch.wave[:, a:b].contiguous()
        crop = replace(batch, feats=batch.feats[:, :, start : start + width].contiguous(), wave=wave, embeddings={})
        crop = with_embeddings(crop, upstream)
        total[:, start : start + width] += branch.score(crop).float().cpu()[:, None]
        count[start : start + width] += 1
    return total / count


def time_map(branch: Branch, batch: Batch, upstream: dict[str, Branch], clip_score: Tensor,
             tf: Tensor | None = None) -> Tensor:
    """(B, T) the branch's anomaly over the frames, whose mean over time is ``clip_score`` (B,);
    ``tf``: a reconstruction branch's map over bins and frames (:func:`score_map`), made here
    where not given."""
    with torch.no_grad():
        if native(branch):
            curve = (score_map(branch, batch)[1] if tf is None else tf).cpu().sum(dim=1)
        else:
            curve = _windows(branch, batch, upstream)
    clip_score = clip_score.float().cpu()
    mean = curve.mean(dim=1)
    ratio = (clip_score > 0) & (mean > 0) & (curve >= 0).all(dim=1)
    scaled = curve * (clip_score / mean.clamp_min(1e-12))[:, None]
    shifted = curve + (clip_score - mean)[:, None]
    return torch.where(ratio[:, None], scaled, shifted)
