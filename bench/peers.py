"""The peers a user would pick instead of asd, run on the same folds as the pipeline (bench_real.py).

- ``audio-anomaly`` (PyPI, a numpy band-spectrum detector; a bench-only dependency,
  ``pip install audio-anomaly==0.1.0``): its ``Monitor`` with the fold's normal training clips as
  the reference (concatenated into one recording, as a user with several healthy recordings would
  give them), one score per 50 ms frame of each test clip; the clip's score is the mean or the
  max of its frame scores.
- The DCASE 2023 baseline autoencoder (MSE and selective Mahalanobis): bench/baseline_ae.py.
- Frozen-embedding kNN: b1 alone (the pretrained EfficientAT, frozen), the pipeline's own branch.

Every peer reads the clips as asd does: the configured channel (``audio.channel``), the file's
own sample rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from asdcli.config import AudioConfig
from asdcli.data.layout import Clip

AUDIO_ANOMALY = ["audio-anomaly (mean)", "audio-anomaly (max)"]


@dataclass
class PeerScores:
    """Scores (N,) of the test clips under each peer's name, and the seconds it took."""

    scores: dict[str, np.ndarray]
    seconds: float


def _mono(clip: Clip, audio: AudioConfig) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(clip.path), dtype="float32", always_2d=True)
    channel = data.mean(axis=1) if audio.channel == "mean" else data[:, min(audio.channel, data.shape[1] - 1)]
    return np.ascontiguousarray(channel), int(rate)


def audio_anomaly_scores(train: list[Clip], test: list[Clip], audio: AudioConfig) -> PeerScores:
    """audio-anomaly's frame scores of every test clip against the training clips of the same
    section (its ``Monitor`` reference), pooled by mean and by max (module docstring)."""
    import audio_anomaly

    start = time.perf_counter()
    monitors = {}
    for group in sorted({c.group for c in test}):
        own = [c for c in train if c.group == group] or train  # a section without training clips: all of them
        waves = [_mono(c, audio) for c in own]
        rate = waves[0][1]
        reference = np.concatenate([w for w, r in waves if r == rate])
        monitors[group] = audio_anomaly.Monitor((reference, rate))
    mean, peak = [], []
    for clip in test:
        wave, rate = _mono(clip, audio)
        frames = np.asarray(monitors[clip.group].check((wave, rate)).scores, dtype=float)
        frames = frames[np.isfinite(frames)]
        mean.append(float(frames.mean()) if frames.size else 0.0)
        peak.append(float(frames.max()) if frames.size else 0.0)
    return PeerScores({AUDIO_ANOMALY[0]: np.array(mean), AUDIO_ANOMALY[1]: np.array(peak)},
                      time.perf_counter() - start)
