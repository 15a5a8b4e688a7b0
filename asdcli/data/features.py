"""Log-mel spectrograms (torchaudio) and their on-disk cache."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from asdcli.atomic import atomic_open, write_text
from asdcli.config import AudioConfig, FeatureConfig, settings_digest
from asdcli.data.audio import load_audio

# Same floor as the DCASE baselines: 20 / power * log10(mel + float epsilon).
LOG_EPS = sys.float_info.epsilon
# Bump when the way features are computed changes, so old caches are not reused.
FEATURE_VERSION = 1


class LogMel(nn.Module):
    """Waveform ``(..., samples)`` -> log-mel ``(..., n_mels, frames)`` in dB (power 2: 10 log10).

    Matches ``librosa.feature.melspectrogram`` defaults as the DCASE 2020-2023 baselines call it:
    Hann window, centred frames with zero padding, Slaney mel scale and area normalisation.
    ``frames = 1 + samples // hop_length``.
    """

    def __init__(self, audio: AudioConfig, features: FeatureConfig):
        super().__init__()
        self.scale = 20.0 / features.power
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=audio.sample_rate,
            n_fft=features.n_fft,
            win_length=features.n_fft,
            hop_length=features.hop_length,
            f_min=features.f_min,
            f_max=features.f_max,
            n_mels=features.n_mels,
            power=features.power,
            center=True,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, wave: Tensor) -> Tensor:
        """``(..., samples)`` float -> ``(..., n_mels, frames)`` float32."""
        return self.scale * torch.log10(self.mel(wave) + LOG_EPS)


def num_frames(audio: AudioConfig, features: FeatureConfig) -> int:
    """Frames of one clip's spectrogram at the configured length."""
    return 1 + audio.num_samples // features.hop_length


class FeatureCache:
    """Log-mel features on disk: ``<root>/<settings digest>/<file digest>.npy``.

    The settings digest covers the audio and feature settings (and :data:`FEATURE_VERSION`); the
    file digest covers the file's absolute path, size and modification time, so editing or
    replacing a file, or changing a setting, recomputes its features. Writes are atomic.
    """

    def __init__(self, root: str | Path, audio: AudioConfig, features: FeatureConfig):
        self.root = Path(root)
        self.folder = self.root / settings_digest(audio, features, version=FEATURE_VERSION)
        self._settings = {"audio": audio.model_dump(mode="json"), "features": features.model_dump(mode="json")}

    def _ensure_folder(self) -> None:
        if not (self.folder / "settings.json").exists():
            write_text(self.folder / "settings.json", json.dumps(self._settings, indent=2) + "\n")

    def entry(self, path: str | Path) -> Path:
        """Cache file for one audio file in its current state."""
        path = Path(path).resolve()
        stat = path.stat()
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"

    def load(self, path: str | Path) -> np.ndarray | None:
        """Cached ``(n_mels, frames)`` float32 features, or ``None`` when absent or unreadable."""
        entry = self.entry(path)
        try:
            return np.load(entry, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError, EOFError):
            return None

    def save(self, path: str | Path, features: np.ndarray) -> None:
        """Store features for ``path`` atomically."""
        self._ensure_folder()
        with atomic_open(self.entry(path), "wb") as handle:
            np.save(handle, features, allow_pickle=False)


class FeatureExtractor:
    """File -> log-mel features, through the cache when one is given. Safe to share across threads."""

    def __init__(self, audio: AudioConfig, features: FeatureConfig, cache: FeatureCache | None = None):
        self.audio = audio
        self.logmel = LogMel(audio, features)
        self.cache = cache

    def compute(self, path: str | Path) -> np.ndarray:
        """Decode and transform one file: ``(n_mels, frames)`` float32 (raises ``DataError``)."""
        wave = load_audio(path, self.audio)
        with torch.no_grad():
            return self.logmel(wave).numpy()

    def __call__(self, path: str | Path) -> tuple[np.ndarray, bool]:
        """Features of one file and whether they came from the cache."""
        if self.cache is not None:
            cached = self.cache.load(path)
            if cached is not None:
                return cached, True
        feats = self.compute(path)
        if self.cache is not None:
            self.cache.save(path, feats)
        return feats, False
