"""Sound models of the built-in synthetic machines.

Each machine type draws section parameters (one physical machine instance) from a generator and
renders clips under an operating condition. Frequencies are in Hz, durations in seconds, and
rendered clips are ``(n,)`` float64 arrays of arbitrary scale (the mixer normalises them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Params = dict[str, float | np.ndarray]


@dataclass(frozen=True)
class Condition:
    """How one clip differs from the section's nominal sound.

    ``factor`` is the domain's operating-condition multiplier (speed, rate; 1.0 in the source
    domain); ``freq_scale`` shifts resonances/tones (frequency-shift anomaly); ``drop`` removes
    part of the machine's events or harmonics (missing-events anomaly).
    """

    factor: float = 1.0
    freq_scale: float = 1.0
    drop: bool = False


def drift(rng: np.random.Generator, n: int, sr: int, depth: float, every_s: float = 0.5) -> np.ndarray:
    """Slow smooth random fluctuation ``1 + depth * x(t)``, x interpolated from random knots."""
    knots = max(2, int(n / sr / every_s) + 2)
    values = rng.standard_normal(knots)
    return 1.0 + depth * np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values)


def tone(freq: np.ndarray | float, n: int, sr: int, phase: float = 0.0) -> np.ndarray:
    """Sinusoid with a possibly time-varying frequency (phase = 2 pi cumulative sum of f / sr)."""
    inst = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    return np.sin(phase + 2 * np.pi * np.cumsum(inst) / sr)


def band_noise(rng: np.random.Generator, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """White noise band-limited to ``[low, high]`` Hz by an FFT mask, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spec[(freqs < low) | (freqs > high)] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise (power falls 3 dB per octave), unit RMS: the factory background."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, spec.shape[0]))
    spec[0] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def damped_click(sr: int, freqs: np.ndarray, taus: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """A mechanical click: sum of exponentially damped sinusoids (resonant modes)."""
    length = int(sr * 5 * float(np.max(taus)))
    t = np.arange(length) / sr
    return sum(a * np.exp(-t / tau) * np.sin(2 * np.pi * f * t) for f, tau, a in zip(freqs, taus, amps))


def place_events(n: int, sr: int, times: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Add ``event`` starting at each time (s) in ``times``, truncated at the clip end."""
    out = np.zeros(n)
    for start in (times * sr).astype(int):
        if 0 <= start < n:
            seg = event[: n - start]
            out[start : start + seg.shape[0]] += seg
    return out


def harmonic_stack(f0: np.ndarray, amps: np.ndarray, n: int, sr: int, rng: np.random.Generator,
                   drop: bool) -> np.ndarray:
    """Sum of harmonics k*f0(t). ``drop`` silences the two strongest harmonics in random segments."""
    out = np.zeros(n)
    strongest = set(np.argsort(amps)[-2:].tolist())
    gate = np.ones(n)
    if drop:
        # Intermittent loss of the dominant components for 40-60 % of the clip, in 0.25 s blocks.
        blocks = rng.random(int(np.ceil(n / (0.25 * sr)))) < rng.uniform(0.4, 0.6)
        gate = np.repeat(np.where(blocks, 0.05, 1.0), int(0.25 * sr))[:n]
    for k, amp in enumerate(amps, start=1):
        if np.all(k * f0 < sr / 2):
            component = amp * tone(k * f0, n, sr, rng.uniform(0, 2 * np.pi))
            out += component * gate if (k - 1) in strongest else component
    return out


def _envelope(count: int, rng: np.random.Generator, slope: float) -> np.ndarray:
    """Random decreasing harmonic amplitudes: the machine instance's timbre."""
    return np.exp(-slope * np.arange(count)) * rng.uniform(0.3, 1.0, count)


# --- machine types ------------------------------------------------------------------------------

def fan_params(rng: np.random.Generator) -> Params:
    return {"f0": rng.uniform(18, 32), "blades": float(rng.integers(5, 10)),
            "amps": _envelope(6, rng, 0.4), "air": rng.uniform(0.6, 1.2), "air_hi": rng.uniform(2500, 5000)}


def fan_render(p: Params, c: Condition, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Rotor tone plus blade-pass harmonics over broadband airflow noise."""
    shaft = p["f0"] * c.factor * c.freq_scale * drift(rng, n, sr, 0.002)
    blade = harmonic_stack(shaft * p["blades"], p["amps"], n, sr, rng, c.drop)
    rotor = 0.3 * tone(shaft, n, sr)
    air = p["air"] * band_noise(rng, n, sr, 150, p["air_hi"]) * drift(rng, n, sr, 0.05)
    return blade + rotor + air


def fan_attribute(p: Params, c: Condition) -> str:
    return f"speed_{int(round(p['f0'] * c.factor * 60))}"


def pump_params(rng: np.random.Generator) -> Params:
    return {"f0": rng.uniform(45, 90), "stroke": rng.uniform(1.0, 2.5), "amps": _envelope(8, rng, 0.3),
            "fluid_lo": rng.uniform(100, 300), "fluid_hi": rng.uniform(1200, 2500)}


def pump_render(p: Params, c: Condition, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Motor harmonics plus fluid noise pulsating at the stroke rate."""
    t = np.arange(n) / sr
    motor = harmonic_stack(p["f0"] * c.freq_scale * drift(rng, n, sr, 0.002), p["amps"], n, sr, rng, False)
    stroke = p["stroke"] * c.factor
    pulse = (0.5 + 0.5 * np.sin(2 * np.pi * stroke * t + rng.uniform(0, 2 * np.pi))) ** 2
    if c.drop:
        # Missing strokes: some pump cycles produce no fluid pulse.
        cycle = np.floor(stroke * t).astype(int)
        missing = rng.random(cycle.max() + 1) < 0.45
        pulse = pulse * np.where(missing[cycle], 0.05, 1.0)
    fluid = band_noise(rng, n, sr, p["fluid_lo"] * c.freq_scale, p["fluid_hi"] * c.freq_scale)
    return motor + 1.5 * pulse * fluid


def pump_attribute(p: Params, c: Condition) -> str:
    return f"flow_{int(round(p['stroke'] * c.factor * 10))}"


def valve_params(rng: np.random.Generator) -> Params:
    return {"period": rng.uniform(0.3, 0.6), "gap": rng.uniform(0.06, 0.15),
            "modes": rng.uniform(900, 5000, 3), "taus": rng.uniform(0.003, 0.012, 3),
            "mode_amps": rng.uniform(0.4, 1.0, 3)}


def valve_render(p: Params, c: Condition, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Periodic open/close double clicks of a solenoid valve (damped resonant modes)."""
    period = p["period"] / c.factor
    starts = np.arange(rng.uniform(0, period), n / sr, period)
    starts = starts + rng.normal(0, 0.01 * period, starts.shape)
    if c.drop:
        starts = starts[rng.random(starts.shape[0]) > 0.4]
    click = damped_click(sr, p["modes"] * c.freq_scale, p["taus"], p["mode_amps"])
    second = damped_click(sr, p["modes"][::-1] * 0.8 * c.freq_scale, p["taus"], p["mode_amps"] * 0.6)
    out = place_events(n, sr, starts, click) + place_events(n, sr, starts + p["gap"], second)
    return out + 0.02 * band_noise(rng, n, sr, 50, 8000)


def valve_attribute(p: Params, c: Condition) -> str:
    return f"pat_{int(round(10 / (p['period'] / c.factor))):02d}"


def slider_params(rng: np.random.Generator) -> Params:
    return {"period": rng.uniform(0.9, 1.6), "duty": rng.uniform(0.5, 0.7), "motor": rng.uniform(90, 180),
            "band_lo": rng.uniform(400, 900), "band_hi": rng.uniform(1800, 3500)}


def slider_render(p: Params, c: Condition, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Back-and-forth strokes: motor whine rising with velocity and a sweeping friction band."""
    t = np.arange(n) / sr
    period = p["period"] / c.factor
    phase = ((t + rng.uniform(0, period)) % period) / period
    moving = phase < p["duty"]
    if c.drop:
        stroke = np.floor((t + 0.0) / period).astype(int)
        skipped = rng.random(stroke.max() + 1) < 0.4
        moving &= ~skipped[stroke]
    ramp = np.where(moving, np.sin(np.pi * np.clip(phase / p["duty"], 0, 1)), 0.0)
    speed = c.factor * c.freq_scale
    whine = tone(p["motor"] * speed * (0.6 + 0.4 * ramp), n, sr) + 0.5 * tone(2 * p["motor"] * speed * (0.6 + 0.4 * ramp), n, sr)
    sweep = p["band_lo"] * speed + (p["band_hi"] - p["band_lo"]) * speed * ramp
    friction = sum(tone(sweep * ratio, n, sr, rng.uniform(0, 6.3)) * rng.uniform(0.3, 1.0) for ratio in (1.0, 1.5, 2.1))
    return ramp * (0.8 * whine + 0.6 * friction) + ramp * band_noise(rng, n, sr, 300, 6000) * 0.5


def slider_attribute(p: Params, c: Condition) -> str:
    return f"vel_{int(round(100 / (p['period'] / c.factor)))}"


def gearbox_params(rng: np.random.Generator) -> Params:
    return {"shaft": rng.uniform(12, 25), "teeth": float(rng.integers(17, 32)), "amps": _envelope(3, rng, 0.5)}


def gearbox_render(p: Params, c: Condition, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Gear-mesh harmonics with shaft-rate sidebands over broadband mechanical noise."""
    shaft = p["shaft"] * c.factor * c.freq_scale * drift(rng, n, sr, 0.002)
    mesh = shaft * p["teeth"]
    out = harmonic_stack(mesh, p["amps"], n, sr, rng, c.drop)
    for k, amp in enumerate(p["amps"], start=1):
        out += 0.3 * amp * (tone(k * mesh + shaft, n, sr) + tone(k * mesh - shaft, n, sr))
    return out + 0.5 * band_noise(rng, n, sr, 100, 6000)


def gearbox_attribute(p: Params, c: Condition) -> str:
    return f"volt_{p['shaft'] * c.factor / 10:.1f}"


@dataclass(frozen=True)
class MachineModel:
    """A machine type: section parameters, rendering and the attribute its file names carry."""

    params: Callable[[np.random.Generator], Params]
    render: Callable[[Params, Condition, np.random.Generator, int, int], np.ndarray]
    attribute: Callable[[Params, Condition], str]
    target_factor: float  # operating-condition change of the target domain


MACHINES: dict[str, MachineModel] = {
    "fan": MachineModel(fan_params, fan_render, fan_attribute, 1.25),
    "pump": MachineModel(pump_params, pump_render, pump_attribute, 1.4),
    "valve": MachineModel(valve_params, valve_render, valve_attribute, 0.7),
    "slider": MachineModel(slider_params, slider_render, slider_attribute, 1.3),
    "gearbox": MachineModel(gearbox_params, gearbox_render, gearbox_attribute, 1.2),
}
