"""The built-in synthetic dataset: seeded machine sounds in the DCASE 2021+ layout.

``<out>/<machine>/train/section_XX_{source|target}_train_normal_NNNN_<attr>_<value>.wav`` and
``<out>/<machine>/test/section_XX_{source|target}_test_{normal|anomaly}_NNNN_<attr>_<value>.wav``.
Every clip's generator is seeded from (seed, machine, section, domain, split, label, index), so
the same config gives bit-identical files, and one clip does not depend on how many others exist.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf

from asdcli.atomic import atomic_path, write_text
from asdcli.config import SynthConfig
from asdcli.data.synth_machines import MACHINES, Condition, band_noise, pink_noise, tone

TARGET_RMS = 0.05  # about -26 dBFS, a typical DCASE clip level
GAIN_JITTER_DB = 4.0  # per-clip loudness spread, so that loudness alone says nothing


@dataclass(frozen=True)
class ClipSpec:
    """Identity of one synthetic clip."""

    machine: str
    section: int
    domain: str
    split: str
    label: str
    index: int
    anomaly: str | None = None

    def seed_words(self, seed: int) -> list[int]:
        """Entropy words for this clip's ``SeedSequence`` (stable across Python runs)."""
        tags = (self.machine, self.domain, self.split, self.label)
        return [seed, self.section, self.index] + [zlib.crc32(t.encode()) for t in tags]


def section_params(seed: int, machine: str, section: int) -> dict:
    """The physical machine instance behind one section (independent of clip seeds)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(machine.encode()), section, 7]))
    return MACHINES[machine].params(rng)


def _condition(spec: ClipSpec, rng: np.random.Generator, severity: float) -> Condition:
    factor = MACHINES[spec.machine].target_factor if spec.domain == "target" else 1.0
    if spec.anomaly == "freq_shift":
        return Condition(factor, freq_scale=1.0 + rng.choice([-1.0, 1.0]) * 0.06 * severity)
    return Condition(factor, drop=spec.anomaly == "missing_events")


@dataclass(frozen=True)
class Fault:
    """Where a localised fault lies: its kind, its span in seconds and its band in Hz (the whole
    spectrum for a broadband one)."""

    kind: str
    start_s: float
    end_s: float
    low_hz: float
    high_hz: float


def _fade(n: int, sr: int, ramp_s: float = 0.02) -> np.ndarray:
    """(n,) envelope rising and falling over ``ramp_s`` at each end (no click at the edges)."""
    ramp = min(n // 2, max(1, int(ramp_s * sr)))
    env = np.ones(n)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[n - ramp:] = np.linspace(1, 0, ramp)
    return env


def _localised(sound: np.ndarray, kind: str, rng: np.random.Generator, sr: int,
               severity: float) -> tuple[np.ndarray, Fault]:
    """A fault at a random known time (and band) of a unit-RMS machine sound: ``knock`` a 30-60 ms
    broadband burst, ``whine`` a tone of 500-4,000 Hz for 1.5-3 s, ``dropout`` the machine falling
    to -26 dB for 0.3-1 s (the background goes on); shorter in clips too short for them."""
    n = sound.shape[0]
    out = sound.copy()

    def place(length: int) -> int:  # a start leaving a margin (up to 0.5 s) at both ends
        margin = min(int(0.5 * sr), (n - length) // 4)
        return int(rng.integers(margin, n - length - margin + 1))

    if kind == "knock":
        length = min(int(rng.uniform(0.03, 0.06) * sr), n // 4)
        start = place(length)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.01 * sr))
        out[start : start + length] += 3.0 * severity * burst
        return out, Fault(kind, start / sr, (start + length) / sr, 0.0, sr / 2)
    if kind == "whine":
        length = min(int(rng.uniform(1.5, 3.0) * sr), n // 2)
        start = place(length)
        freq = rng.uniform(500, 4000)
        out[start : start + length] += 0.3 * severity * np.sqrt(2) * tone(freq, length, sr) * _fade(length, sr)
        return out, Fault(kind, start / sr, (start + length) / sr, freq * 0.97, freq * 1.03)
    if kind == "dropout":
        length = min(int(rng.uniform(0.3, 1.0) * sr), n // 4)
        start = place(length)
        out[start : start + length] *= 1 - (1 - 0.05 ** min(1.0, severity)) * _fade(length, sr)
        return out, Fault(kind, start / sr, (start + length) / sr, 0.0, sr / 2)
    raise ValueError(f"not a localised fault: {kind}")


LOCALISED = ("knock", "whine", "dropout")


def _add_anomaly(sound: np.ndarray, kind: str | None, rng: np.random.Generator, sr: int,
                 severity: float) -> np.ndarray:
    """Effects that apply to any machine type, on a unit-RMS machine sound."""
    n = sound.shape[0]
    t = np.arange(n) / sr
    if kind == "extra_harmonic":
        # A new inharmonic tone (rubbing, a loose part) about 14 dB below the machine.
        freq = rng.uniform(300, 3500)
        return sound + 0.2 * severity * np.sqrt(2) * tone(freq, n, sr)
    if kind == "modulation":
        # Unbalance or a loose mount: slow amplitude wobble.
        depth = min(0.9, 0.35 * severity)
        return sound * (1 + depth * np.sin(2 * np.pi * rng.uniform(4, 10) * t))
    if kind == "impulses":
        # Knocks: a few short broadband bursts at random times.
        out = sound.copy()
        burst_len = int(0.004 * sr)
        decay = np.exp(-np.arange(burst_len) / (0.001 * sr))
        for start in rng.integers(0, n - burst_len, int(rng.integers(3, 8))):
            out[start : start + burst_len] += 2.5 * severity * decay * rng.standard_normal(burst_len)
        return out
    return sound


def render_clip(spec: ClipSpec, cfg: SynthConfig, seed: int) -> tuple[np.ndarray, str]:
    """One clip as ``((n,) float32 in [-1, 1], attribute string)``."""
    wave, attribute, _ = render_clip_with_fault(spec, cfg, seed)
    return wave, attribute


def render_clip_with_fault(spec: ClipSpec, cfg: SynthConfig, seed: int) -> tuple[np.ndarray, str, Fault | None]:
    """:func:`render_clip`, and where its localised fault lies (None for the other kinds)."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed_words(seed)))
    model = MACHINES[spec.machine]
    params = section_params(seed, spec.machine, spec.section)
    n, sr = int(round(cfg.duration_s * cfg.sample_rate)), cfg.sample_rate
    cond = _condition(spec, rng, cfg.severity)
    machine = model.render(params, cond, rng, n, sr)
    machine = machine / (np.sqrt(np.mean(machine**2)) + 1e-12)
    fault = None
    if spec.anomaly in LOCALISED:
        machine, fault = _localised(machine, spec.anomaly, rng, sr, cfg.severity)
    else:
        machine = _add_anomaly(machine, spec.anomaly, rng, sr, cfg.severity)
    noise = pink_noise(rng, n) + 0.3 * band_noise(rng, n, sr, 2000, sr / 2 - 1)
    mix = machine + 10 ** (-cfg.snr_db / 20) * noise / np.sqrt(1.09)
    gain = TARGET_RMS * 10 ** (rng.uniform(-GAIN_JITTER_DB, GAIN_JITTER_DB) / 20)
    mix = mix * gain / (np.sqrt(np.mean(mix**2)) + 1e-12)
    peak = np.max(np.abs(mix))
    if peak > 0.99:
        mix = mix * (0.99 / peak)
    # The attribute names the operating condition, never the anomaly (as in DCASE file names).
    return mix.astype(np.float32), model.attribute(params, Condition(cond.factor)), fault


def clip_specs(cfg: SynthConfig) -> Iterator[ClipSpec]:
    """Every clip of the dataset, in a fixed order. Anomaly kinds rotate over the test anomalies."""
    for m, machine in enumerate(cfg.machines):
        for section in range(cfg.sections):
            for domain, count in (("source", cfg.train_source), ("target", cfg.train_target)):
                for i in range(count):
                    yield ClipSpec(machine, section, domain, "train", "normal", i)
            for d, domain in enumerate(("source", "target")):
                n_anomaly = cfg.test_per_domain // 2
                for i in range(cfg.test_per_domain - n_anomaly):
                    yield ClipSpec(machine, section, domain, "test", "normal", i)
                for i in range(n_anomaly):
                    kind = cfg.anomalies[(i + d * n_anomaly + section + m) % len(cfg.anomalies)]
                    yield ClipSpec(machine, section, domain, "test", "anomaly", i, kind)


def clip_path(root: Path, spec: ClipSpec, attribute: str) -> Path:
    """DCASE 2021+ file name of a clip under ``root``."""
    name = f"section_{spec.section:02d}_{spec.domain}_{spec.split}_{spec.label}_{spec.index:04d}_{attribute}.wav"
    return root / spec.machine / spec.split / name


def generate(out: str | Path, cfg: SynthConfig, seed: int,
             progress: Callable[[Path], None] | None = None) -> list[Path]:
    """Write the dataset under ``out`` (atomically, file by file) and return the written paths.

    Also writes ``<out>/ground_truth.csv`` (file, anomaly kind) so anomaly types can be analysed,
    and where the data hold localised faults (knock, whine, dropout) ``<out>/faults.csv``: each
    one's file, kind, span (s) and band (Hz).
    """
    out = Path(out)
    written, truth = [], ["machine,file,label,anomaly_kind"]
    faults = ["machine,file,kind,start_s,end_s,low_hz,high_hz"]
    for spec in clip_specs(cfg):
        wave, attribute, fault = render_clip_with_fault(spec, cfg, seed)
        path = clip_path(out, spec, attribute)
        with atomic_path(path) as tmp:
            sf.write(str(tmp), wave, cfg.sample_rate, subtype="PCM_16", format="WAV")
        written.append(path)
        truth.append(f"{spec.machine},{path.name},{spec.label},{spec.anomaly or ''}")
        if fault is not None:
            faults.append(f"{spec.machine},{path.name},{fault.kind},{fault.start_s:.4f},{fault.end_s:.4f},"
                          f"{fault.low_hz:.1f},{fault.high_hz:.1f}")
        if progress is not None:
            progress(path)
    write_text(out / "ground_truth.csv", "\n".join(truth) + "\n")
    if len(faults) > 1:
        write_text(out / "faults.csv", "\n".join(faults) + "\n")
    return written


def count_clips(cfg: SynthConfig) -> int:
    """Number of clips :func:`generate` writes."""
    per_section = cfg.train_source + cfg.train_target + 2 * cfg.test_per_domain
    return len(cfg.machines) * cfg.sections * per_section
