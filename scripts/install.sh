#!/usr/bin/env bash
# One-step set-up for a fresh machine: a virtual environment in .venv with torch 2.11,
# learn2learn 0.2.0 (rebuilt from its sdist, see below) and asd itself in editable mode.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ASD_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip "setuptools<82" wheel cython numpy

# torchaudio 2.11.1 accepts torch 2.11.0 but its library does not load with it: pin 2.11.0.
"${PIP[@]}" install "torch==2.11.*" "torchaudio==2.11.0" "torchvision==0.26.*"

# learn2learn 0.2.0's sdist ships Cython output that includes longintrepr.h, which Python 3.11
# removed; regenerate the C from the .pyx sources before building. Its runtime imports need
# gym, qpth, requests, scipy, tqdm and torchvision.
if ! "$VENV/bin/python" -c "import learn2learn" >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  venv_abs="$(cd "$VENV" && pwd)"
  "${PIP[@]}" download --no-deps --no-binary learn2learn --no-cache-dir -d "$tmp" "learn2learn==0.2.0"
  tar -xzf "$tmp"/learn2learn-0.2.0.tar.gz -C "$tmp"
  (cd "$tmp/learn2learn-0.2.0" && "$venv_abs/bin/cython" -3 learn2learn/data/*.pyx >/dev/null)
  "${PIP[@]}" install --no-build-isolation --no-deps --no-cache-dir "$tmp/learn2learn-0.2.0"
  "${PIP[@]}" install gym qpth requests scipy tqdm
  rm -rf "$tmp"
fi

"${PIP[@]}" install -e ".[dev]"
"$VENV/bin/python" -c "import torch, torchaudio, learn2learn, asdcli; print('asd ready: torch', torch.__version__)" 2>/dev/null
