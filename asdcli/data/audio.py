"""Audio loading: any WAV/FLAC -> mono float32 waveform at the configured rate and length."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asdcli.config import AudioConfig
from asdcli.errors import DataError


def read_audio(path: str | Path, seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file with soundfile (its first ``seconds`` and a little more, where given: what
    :func:`prepare_wave` keeps). Returns ``(samples (frames, channels) float32, sample_rate)``.

    Raises :class:`DataError` naming the file when it is empty, corrupt or not audio.
    """
    path = Path(path)
    if os.path.isdir(path):
        raise DataError(f"{path}: a folder that cannot be listed (permissions); the clips in it are left out")
    try:
        size = path.stat().st_size
    except OSError as error:
        what = "a link whose target is missing" if os.path.islink(path) else "cannot read"
        raise DataError(f"{path}: {what} ({error.strerror})") from None
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    _check_wav_length(path, size)
    try:
        with sf.SoundFile(os.fsencode(path)) as handle:  # bytes: a name that is not UTF-8 opens too
            rate = check_rate(handle.samplerate, str(path))
            frames = -1 if seconds is None else int(np.ceil(seconds * rate)) + rate // 100 + 256
            if handle.subtype == "PCM_16":
                # Reading int16 and scaling is 2-3x faster than libsndfile's float conversion
                # and gives the same values (libsndfile also divides by 32768).
                data = handle.read(frames, dtype="int16", always_2d=True).astype(np.float32) * np.float32(1 / 32768)
            else:
                data = handle.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise DataError(f"{path}: not a readable WAV/FLAC audio file ({error})") from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file holds no samples")
    return data, int(rate)


def wav_data_chunk(path: Path, size: int) -> tuple[int, int] | None:
    """A WAV file's data chunk as (bytes its header declares, bytes the file holds after it);
    (0, 0) for a WAV with no data chunk yet; None for a file that is not WAV. Reads the headers
    only. ``OSError`` where the file cannot be read."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk = handle.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                return declared, size - offset - 8
            offset += 8 + declared + (declared & 1)
    return 0, 0


def _check_wav_length(path: Path, size: int) -> None:
    """A WAV whose data chunk declares more bytes than the file holds was cut short (an
    interrupted copy or download); libsndfile would silently read what is there."""
    try:
        found = wav_data_chunk(path, size)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    if found is None:
        return
    declared, available = found
    if declared != 0xFFFFFFFF and declared > available:  # 0xFFFFFFFF: a stream of unknown length
        raise DataError(f"{path}: truncated WAV (its header declares {declared} bytes of audio, the file holds "
                        f"{available})")


def select_channel(data: np.ndarray, channel: int | str, path: Path) -> np.ndarray:
    """(frames, channels) -> (frames,) by channel index or ``"mean"`` downmix."""
    if channel == "mean":
        return data.mean(axis=1)
    if channel >= data.shape[1]:
        raise DataError(
            f"{path}: has {data.shape[1]} channel(s); channel {channel} was requested (audio.channel)"
        )
    return data[:, channel]


def fit_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Crop to the first ``num_samples`` or tile a short clip until it is long enough.

    Tiling rather than zero-padding keeps the spectral statistics of a stationary machine sound.
    """
    length = wave.shape[-1]
    if length >= num_samples:
        return wave[..., :num_samples]
    repeats = -(-num_samples // length)
    return wave.repeat(repeats)[:num_samples]


def load_audio(path: str | Path, cfg: AudioConfig) -> torch.Tensor:
    """Load one clip as a mono waveform.

    Returns ``(num_samples,)`` float32 at ``cfg.sample_rate``, cropped or tiled to
    ``cfg.duration_s``. Raises :class:`DataError` naming the file for every unusable input.
    """
    path = Path(path)
    data, rate = read_audio(path, cfg.duration_s)
    return prepare_wave(select_channel(data, cfg.channel, path), rate, cfg, str(path))


MIN_RATE = 1000  # Hz: below this a file is not a recording of machine sound (and resampling it costs gigabytes)


def check_rate(rate: object, what: str) -> int:
    """``rate`` as a sample rate in Hz, or a :class:`DataError` naming ``what``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) or not np.isfinite(rate) \
            or rate != int(rate) or rate < MIN_RATE:
        raise DataError(f"{what}: sample rate {rate!r} Hz is not usable (a whole number of at least {MIN_RATE} Hz)")
    return int(rate)


def prepare_wave(mono: np.ndarray, rate: int, cfg: AudioConfig, what: str) -> torch.Tensor:
    """A mono waveform (samples,) at ``rate`` -> float32 at ``cfg.sample_rate``, cropped or tiled
    to ``cfg.duration_s``; a :class:`DataError` naming ``what`` when it is unusable. A long clip is
    cut before resampling (keeping a margin wider than the resampling filter, so the kept samples
    are those of resampling the whole clip): its cost does not grow with the file."""
    rate = check_rate(rate, what)
    if not np.isfinite(mono).all():
        raise DataError(f"{what}: contains NaN or infinite samples")
    duration = mono.shape[0] / rate
    if duration < cfg.min_duration_s:
        raise DataError(f"{what}: too short ({duration:.3f} s; audio.min_duration_s is {cfg.min_duration_s} s)")
    needed = -(-cfg.num_samples * rate // cfg.sample_rate) + rate // 100 + 256
    wave = torch.from_numpy(np.ascontiguousarray(mono[:needed], dtype=np.float32))
    if rate != cfg.sample_rate:
        wave = AF.resample(wave, rate, cfg.sample_rate)
    return fit_length(wave, cfg.num_samples)


def length_notice(paths: list[Path], cfg: AudioConfig) -> str | None:
    """A line saying how many clips are cut to ``audio.duration_s`` or tiled up to it (from the
    files' headers; files the loader skips, unreadable, too short or of an unusable sample rate, are
    left to it to report and not counted), or None when all fit."""
    longer, shorter, longest, shortest = 0, 0, 0.0, float("inf")
    for path in paths:
        try:
            info = sf.info(os.fsencode(path))
        except (sf.LibsndfileError, RuntimeError, OSError):
            continue
        seconds = info.frames / info.samplerate if info.samplerate >= MIN_RATE else 0.0
        if seconds < cfg.min_duration_s:
            continue  # skipped when it is loaded, and said so there
        if seconds > cfg.duration_s + 1e-3:
            longer, longest = longer + 1, max(longest, seconds)
        elif seconds < cfg.duration_s - 1e-3:
            shorter, shortest = shorter + 1, min(shortest, seconds)
    parts = []
    if longer:
        parts.append(f"{longer} clip(s) longer than audio.duration_s={cfg.duration_s:g} s (up to {longest:.1f} s) "
                     f"use their first {cfg.duration_s:g} s")
    if shorter:
        parts.append(f"{shorter} shorter one(s) (from {shortest:.1f} s) are repeated up to it")
    return "; ".join(parts) or None
