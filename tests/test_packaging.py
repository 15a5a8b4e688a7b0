"""The wheel carries the presets: a non-editable install, away from the source tree, loads every one."""

import shutil
import subprocess
import sys
import zipfile

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_install_finds_every_preset_and_the_shipped_prior(tmp_path):
    source = tmp_path / "source"  # built from a copy: the build leaves its folders behind
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "demo",
                                                                  ".pytest_cache", "__pycache__", "checkpoints", "logs"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), "-q"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("asd*.whl"))
    presets = sorted(p.name for p in (ROOT / "asdcli" / "presets").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as archive:
        assert sorted(Path(n).name for n in archive.namelist() if n.startswith("asdcli/presets/")) == presets
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel),
                                "-q"], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    names = [Path(p).stem for p in presets]
    code = ("import asdcli, sys; from asdcli.config import load_config; "
            f"assert asdcli.__file__.startswith({str(site)!r}), asdcli.__file__; "
            f"print([load_config(n).seed for n in {names!r}]); "
            "from asdcli.services.training.branch_prior import load_prior; print(sorted(load_prior('builtin').branches))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "transformer-ae" in loaded.stdout, loaded.stdout
