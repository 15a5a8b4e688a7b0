"""Deterministic perturbations of log-mel clips: pseudo-anomalies for outlier exposure.

Training data holds only normal clips; a perturbed normal clip is a plausible fault (a shifted
resonance, a changed spectral balance, a wobble) that the models can learn to tell apart.
Each takes and returns (B, n_mels, frames) log-mel in dB.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def shift_frequency(feats: Tensor) -> Tensor:
    """Move the spectrum up by ~4 % of the mel bins (at least one), repeating the lowest bin."""
    shift = max(1, round(0.04 * feats.shape[1]))
    return torch.cat([feats[:, :1].expand(-1, shift, -1), feats[:, :-shift]], dim=1)


def tilt_spectrum(feats: Tensor) -> Tensor:
    """Add a linear spectral tilt of -6 dB (lowest band) to +6 dB (highest band)."""
    ramp = torch.linspace(-6.0, 6.0, feats.shape[1], device=feats.device, dtype=feats.dtype)
    return feats + ramp[None, :, None]


def wobble(feats: Tensor) -> Tensor:
    """Amplitude modulation with an 8-frame period and 60 % depth (added in dB)."""
    t = torch.arange(feats.shape[2], device=feats.device, dtype=feats.dtype)
    gain_db = 10.0 * torch.log10(1.0 + 0.6 * torch.sin(2 * math.pi * t / 8.0))
    return feats + gain_db[None, None, :]


PERTURBATIONS = (shift_frequency, tilt_spectrum, wobble)
# The waveform pseudo-anomalies (asdcli.data.pseudo_anomalies) each of them imitates: a speed
# change moves every frequency, a tilt is what muffling or brightening does to the spectrum.
IMITATES = (("speed_change",), ("muffle", "brighten"), ("wobble",))


def imitated_kinds(count: int) -> tuple[str, ...]:
    """Waveform pseudo-anomaly kinds imitated by the first ``count`` perturbations."""
    return tuple(kind for kinds in IMITATES[:count] for kind in kinds)


def perturbed_copies(feats: Tensor, count: int, per_clip: int | None = None) -> tuple[Tensor, Tensor]:
    """Perturbed copies of every clip by the first ``count`` perturbations: all of them, or
    ``per_clip`` kinds per clip drawn at random (torch's generator) without repeats.

    Returns ((C, M, T) copies, (C,) kind), grouped by kind.
    """
    if count == 0:
        return feats[:0], torch.zeros(0, dtype=torch.long, device=feats.device)
    if per_clip is None or per_clip >= count:
        copies = torch.cat([PERTURBATIONS[k](feats) for k in range(count)], dim=0)  # (count * B, M, T)
        kinds = torch.arange(count, device=feats.device).repeat_interleave(feats.shape[0])
        return copies, kinds
    chosen = torch.rand(feats.shape[0], count).argsort(dim=1)[:, :per_clip].to(feats.device)  # (B, per_clip)
    rows = [(chosen == k).any(dim=1).nonzero()[:, 0] for k in range(count)]
    copies = torch.cat([PERTURBATIONS[k](feats[r]) for k, r in enumerate(rows)], dim=0)  # (per_clip * B, M, T)
    kinds = torch.cat([torch.full((len(r),), k, dtype=torch.long, device=feats.device) for k, r in enumerate(rows)])
    return copies, kinds
