"""Shared fixtures: the tiny config, a small synthetic dataset and the real clips in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asdcli.config import load_config
from asdcli.data.synth import generate

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def host_bf16():
    """``ASD_TEST_NATIVE_BF16=0`` (or 1) runs the suite as on a CPU without (with) native bf16,
    whatever this host has: no test may depend on the host's instruction set."""
    forced = os.environ.get("ASD_TEST_NATIVE_BF16")
    if forced not in ("0", "1"):
        yield None
        return
    patch = pytest.MonkeyPatch()
    patch.setattr("asdcli.services.training.schedule.native_bf16", lambda device: forced == "1")
    yield forced == "1"
    patch.undo()


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset used by the fast suite."""
    return load_config("tiny")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Real DCASE/MIMII clips beside the repository; tests using them skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory, tiny) -> Path:
    """A small synthetic dataset (2 machine types, 1 section) written once per session."""
    cfg = tiny.synth.model_copy(update={"machines": ["fan", "valve"], "sections": 1, "train_source": 8,
                                        "train_target": 2, "test_per_domain": 4})
    root = tmp_path_factory.mktemp("synth")
    generate(root, cfg, seed=0)
    return root


def write_wav(path: Path, data: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    """Write ``data`` ((frames,) or (frames, channels)) as a WAV file and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def noise(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Gaussian noise at -20 dBFS, ``(frames,)`` or ``(frames, channels)``."""
    rng = np.random.default_rng(seed)
    shape = (int(seconds * rate),) if channels == 1 else (int(seconds * rate), channels)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture
def run_fresh():
    """``run_fresh(code, watched)``: run ``code`` in a fresh interpreter; its output, and which of the
    ``watched`` modules it loaded."""
    return _run_fresh


def _run_fresh(code: str, watched: tuple[str, ...]) -> tuple[str, list[str]]:
    import subprocess
    import sys

    probe = f"\nimport sys as _sys\nprint('LOADED', sorted(m for m in {watched!r} if m in _sys.modules))"
    result = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *output, loaded = result.stdout.splitlines()
    return "\n".join(output), eval(loaded[len("LOADED "):])
