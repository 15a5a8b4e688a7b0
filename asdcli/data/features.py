"""Log-mel spectrograms (torchaudio) and their on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from asdcli.atomic import atomic_open, write_text
from asdcli.config import AudioConfig, FeatureConfig, settings_digest
from asdcli.data.audio import load_audio
from asdcli.errors import DataError, OutputError

# Same floor as the DCASE baselines: 20 / power * log10(mel + float epsilon).
LOG_EPS = sys.float_info.epsilon
# Bump when the way features are computed changes, so old caches are not reused.
FEATURE_VERSION = 1


def mel_filterbank(audio: AudioConfig, features: FeatureConfig) -> Tensor:
    """(n_fft // 2 + 1, n_mels) the Slaney-scale, area-normalised mel filters of these settings."""
    return torchaudio.functional.melscale_fbanks(
        n_freqs=features.n_fft // 2 + 1,
        f_min=features.f_min,
        f_max=features.f_max if features.f_max is not None else audio.sample_rate / 2,
        n_mels=features.n_mels,
        sample_rate=audio.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )


class LogMel(nn.Module):
    """Waveform ``(..., samples)`` -> log-mel ``(..., n_mels, frames)`` in dB (power 2: 10 log10).

    Matches ``librosa.feature.melspectrogram`` defaults as the DCASE 2020-2023 baselines call it:
    periodic Hann window, centred frames with zero padding, Slaney mel scale and area
    normalisation. ``frames = 1 + samples // hop_length``. The power spectrum is taken as
    re^2 + im^2 directly (torchaudio's ``Spectrogram`` goes through ``abs().pow()``, several
    times slower on the CPU).
    """

    def __init__(self, audio: AudioConfig, features: FeatureConfig):
        super().__init__()
        self.n_fft, self.hop, self.power = features.n_fft, features.hop_length, features.power
        self.scale = 20.0 / features.power
        self.register_buffer("window", torch.hann_window(features.n_fft), persistent=False)
        fbank = mel_filterbank(audio, features)  # (freqs, n_mels)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            # Each frequency bin feeds at most two mel bands: the sparse product is ~3x faster.
            self.fbank = fbank.T.contiguous().to_sparse_csr()  # (n_mels, freqs), ~2 * freqs non-zeros

    def forward(self, wave: Tensor) -> Tensor:
        """``(..., samples)`` float -> ``(..., n_mels, frames)`` float32."""
        lead = wave.shape[:-1]
        flat = wave.reshape(-1, wave.shape[-1])  # (B, samples)
        spec = torch.stft(flat, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                          return_complex=True)  # (B, freqs, frames)
        power = spec.real.square() + spec.imag.square()  # (B, freqs, frames)
        if self.power != 2.0:
            power = power.pow(self.power / 2.0)
        mel = torch.stack([self.fbank @ p for p in power])  # (B, n_mels, frames)
        out = self.scale * torch.log10(mel + LOG_EPS)
        return out.reshape(*lead, *out.shape[-2:])  # (..., n_mels, frames)


def num_frames(audio: AudioConfig, features: FeatureConfig) -> int:
    """Frames of one clip's spectrogram at the configured length."""
    return 1 + audio.num_samples // features.hop_length


class ArrayCache:
    """Fixed-shape float32 arrays per audio file: ``<root>/<digest>/<file digest>.f32``.

    ``digest`` names what produced the arrays (settings, model); the file digest covers the
    file's absolute path, size and modification time, so editing or replacing a file recomputes
    its entry. Entries are raw float32 of ``shape`` (no header to parse: a re-read costs one small
    file read); an entry of the wrong size counts as absent. Writes are atomic.
    """

    def __init__(self, root: str | Path, digest: str, shape: tuple[int, ...], settings: dict):
        self.root = Path(root)
        self.folder = self.root / digest
        self.shape = tuple(shape)
        self._settings = settings
        self.problem: str | None = None  # why an entry could not be stored (the first reason)

    def _ensure_folder(self) -> None:
        if not (self.folder / "settings.json").exists():
            write_text(self.folder / "settings.json", json.dumps(self._settings, indent=2) + "\n")

    def entry(self, path: str | Path) -> Path:
        """Cache file for one audio file in its current state."""
        absolute = os.path.abspath(path)
        stat = os.stat(absolute)
        # the name's bytes as the system holds them: a name that is not valid UTF-8 has a key too
        key = os.fsencode(absolute) + f"|{stat.st_size}|{stat.st_mtime_ns}".encode()
        return self.folder / f"{hashlib.sha1(key).hexdigest()}.f32"

    def load(self, path: str | Path) -> np.ndarray | None:
        """The cached array, or ``None`` when absent or damaged."""
        out = np.empty(self.shape, dtype=np.float32)
        return out if self.load_into(path, out) else None

    def load_into(self, path: str | Path, out: np.ndarray, entry: Path | None = None) -> bool:
        """Read the cached array of ``path`` (from ``entry``, its :meth:`entry` found before)
        straight into ``out`` (C-contiguous float32 of the cache's shape: a row of a batch);
        False, ``out`` left undefined, when absent or damaged. No intermediate array to copy, and
        the read holds no lock, so threads read in parallel."""
        try:
            with open(entry or self.entry(path), "rb", buffering=0) as handle:
                if os.fstat(handle.fileno()).st_size != out.nbytes:
                    return False
                return handle.readinto(memoryview(out).cast("B")) == out.nbytes
        except OSError:
            return False

    def save(self, path: str | Path, array: np.ndarray) -> None:
        """Store the array for ``path`` atomically. The cache only saves time: where it cannot be
        written (a full or read-only disk) the entry is not stored and :attr:`problem` says why."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array of shape {array.shape}, cache expects {self.shape}")
        try:
            self._ensure_folder()
            # No fsync: a lost write leaves a short or missing entry, which load() treats as absent.
            with atomic_open(self.entry(path), "wb", fsync=False) as handle:
                handle.write(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        except (OutputError, OSError) as error:
            self.problem = self.problem or f"the cache under {self.root} cannot be written ({error}); going on without it"


class FeatureCache(ArrayCache):
    """Log-mel features ``(n_mels, frames)`` keyed by the audio and feature settings."""

    def __init__(self, root: str | Path, audio: AudioConfig, features: FeatureConfig):
        settings = {"audio": audio.model_dump(mode="json"), "features": features.model_dump(mode="json"),
                    "version": FEATURE_VERSION}
        shape = (features.n_mels, num_frames(audio, features))
        super().__init__(root, settings_digest(audio, features, version=FEATURE_VERSION), shape,
                         {**settings, "shape": list(shape)})


class FeatureExtractor:
    """File -> log-mel features, through the cache when one is given. Safe to share across threads."""

    def __init__(self, audio: AudioConfig, features: FeatureConfig, cache: FeatureCache | None = None):
        self.audio = audio
        self.logmel = LogMel(audio, features)
        self.cache = cache
        self.shape = (features.n_mels, num_frames(audio, features))  # of every clip's features

    def compute(self, path: str | Path) -> np.ndarray:
        """Decode and transform one file: ``(n_mels, frames)`` float32 (raises ``DataError``)."""
        return self.transform(load_audio(path, self.audio), path)

    def transform(self, wave: torch.Tensor, path: str | Path) -> np.ndarray:
        """The features of one decoded file (``path`` names it in errors)."""
        with torch.no_grad():
            feats = self.logmel(wave).numpy()
        if not np.isfinite(feats).all():
            peak = float(wave.abs().max())
            raise DataError(f"{path}: samples up to {peak:.3g} in magnitude give non-finite log-mel features "
                            "(audio samples are expected within about [-1, 1])")
        return feats

    def lookup(self, path: str | Path) -> np.ndarray | None:
        """Cached features of one file, or ``None`` (no cache, not cached, or file unreadable)."""
        return None if self.cache is None else self.cache.load(path)

    def compute_and_store(self, path: str | Path, wave: torch.Tensor | None = None) -> np.ndarray:
        """Compute one file's features (from its ``wave`` when already decoded) and store them in
        the cache (if any)."""
        feats = self.compute(path) if wave is None else self.transform(wave, path)
        if self.cache is not None:
            self.cache.save(path, feats)
        return feats

    def __call__(self, path: str | Path) -> tuple[np.ndarray, bool]:
        """Features of one file and whether they came from the cache."""
        cached = self.lookup(path)
        if cached is not None:
            return cached, True
        return self.compute_and_store(path), False

    def entry(self, path: str | Path) -> Path | None:
        """The cache file of one file in its current state (None without a cache, or when the
        file cannot be read: its features are then computed, and the error named, when asked for)."""
        try:
            return None if self.cache is None else self.cache.entry(path)
        except OSError:
            return None

    def fill(self, path: str | Path, out: np.ndarray, entry: Path | None = None) -> None:
        """Put one file's features in ``out`` (``shape``, C-contiguous float32): read from the
        cache (``entry``: its cache file, found before) into it, or computed (and stored) when
        not cached."""
        if self.cache is None or not self.cache.load_into(path, out, entry):
            out[...] = self.compute_and_store(path)
