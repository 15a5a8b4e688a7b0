"""Waveform perturbations of normal clips: pseudo-anomalies for the fusion head and the meta-learner.

Training data holds only normal clips. A perturbed normal clip is a plausible fault of the same
machine: a speed change, a new tone (rubbing), knocks, an amplitude wobble (unbalance), a muffled
or a brightened spectrum. They act on the waveform so that every branch, including the AST that
reads audio rather than our log-mel, sees the same fault. Each takes a (samples,) float32 wave at
``sr`` Hz and a seeded generator and returns a wave of the same length.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

from asdcli.data.audio import fit_length


def _rms(wave: Tensor) -> Tensor:
    return wave.pow(2).mean().sqrt().clamp_min(1e-8)


def speed_change(wave: Tensor, sr: int, rng: np.random.Generator) -> Tensor:
    """Play 0.5-2 % faster or slower (every frequency moves by that factor), length kept by tiling."""
    factor = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.005, 0.02)
    resampled = AF.resample(wave, round(1000 * factor), 1000)  # (samples / factor,)
    return fit_length(resampled, wave.shape[0])


def added_tone(wave: Tensor, sr: int, rng: np.random.Generator) -> Tensor:
    """A steady tone at a random frequency, 20-30 dB below the clip."""
    t = torch.arange(wave.shape[0], dtype=wave.dtype) / sr
    freq = rng.uniform(200.0, min(4000.0, 0.45 * sr))
    level = 10 ** (-rng.uniform(20.0, 30.0) / 20) * math.sqrt(2)
    return wave + level * _rms(wave) * torch.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi))


def knocks(wave: Tensor, sr: int, rng: np.random.Generator) -> Tensor:
    """A few short decaying broadband bursts at random times."""
    out = wave.clone()
    length = max(8, int(0.005 * sr))
    decay = torch.exp(-torch.arange(length, dtype=wave.dtype) / (0.0012 * sr))
    for start in rng.integers(0, max(1, wave.shape[0] - length), int(rng.integers(3, 8))):
        burst = torch.from_numpy(rng.standard_normal(length).astype(np.float32)) * decay
        stop = min(wave.shape[0], int(start) + length)
        out[int(start):stop] += rng.uniform(1.0, 2.5) * _rms(wave) * burst[: stop - int(start)]
    return out


def wobble(wave: Tensor, sr: int, rng: np.random.Generator) -> Tensor:
    """Slow amplitude modulation (3-12 Hz, 10-25 % depth)."""
    t = torch.arange(wave.shape[0], dtype=wave.dtype) / sr
    depth = rng.uniform(0.1, 0.25)
    return wave * (1.0 + depth * torch.sin(2 * math.pi * rng.uniform(3.0, 12.0) * t))


def muffle(wave: Tensor, sr: int, rng: np.random.Generator) -> Tensor:
    """Low-pass at 3-6 kHz: a duller sound, loudness restored."""
    out = AF.lowpass_biquad(wave, sr, float(rng.uniform(min(3000.0, 0.3 * sr), min(6000.0, 0.45 * sr))))
    return out * (_rms(wave) / _rms(out))


def brighten(wave: Tensor, sr: int, rng: np.random.Generator) -> Tensor:
    """Boost above 2-4 kHz by 1.5-4 dB (a hiss, a worn bearing), loudness restored."""
    gain = float(rng.uniform(1.5, 4.0))
    out = AF.treble_biquad(wave, sr, gain, central_freq=float(rng.uniform(2000.0, min(4000.0, 0.4 * sr))))
    return out * (_rms(wave) / _rms(out))


Perturbation = Callable[[Tensor, int, np.random.Generator], Tensor]
PERTURBATIONS: dict[str, Perturbation] = {
    "speed_change": speed_change, "added_tone": added_tone, "knocks": knocks,
    "wobble": wobble, "muffle": muffle, "brighten": brighten,
}


OTHER_SECTION = "other_section"  # a clip of another section scored as this one (outlier exposure)
SYNTHETIC_MACHINE = "synthetic_machine"  # a clip of a built-in synthetic machine
KINDS = ("normal", *PERTURBATIONS, OTHER_SECTION, SYNTHETIC_MACHINE)  # every kind of fusion example


def perturb(wave: Tensor, sr: int, kind: str, seed: int) -> Tensor:
    """Apply perturbation ``kind`` with its own generator seeded by ``seed`` (deterministic)."""
    out = PERTURBATIONS[kind](wave.float(), sr, np.random.default_rng(seed))
    return out.clamp(-1.0, 1.0)
