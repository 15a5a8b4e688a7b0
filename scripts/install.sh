#!/usr/bin/env bash
# One-step set-up for a fresh machine: a virtual environment in .venv with torch 2.11, asd itself
# (editable, with its test tools) and learn2learn 0.2.0 for `asd meta-train` (rebuilt from its
# sdist, see below). Idempotent: a second run only checks what is already there.
#
#   ASD_VENV=DIR              the environment's folder (default .venv)
#   PYTHON=python3.11         the interpreter that makes it
#   ASD_TORCH_INDEX=URL       where torch comes from: https://download.pytorch.org/whl/cpu for a
#                             CPU-only build (about 1 GB instead of 5-6 GB), .../whl/cu126 or
#                             .../whl/cu128 to match a GPU's driver (default: PyPI's build)
#   ASD_META=0                leave learn2learn out (everything but `asd meta-train` works)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ASD_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip "setuptools<82" wheel

# torchaudio 2.11.1 accepts torch 2.11.0 but its library does not load with it: pin 2.11.0.
TORCH=("torch==2.11.*" "torchaudio==2.11.0")
if [ -n "${ASD_TORCH_INDEX:-}" ]; then
  "${PIP[@]}" install --index-url "$ASD_TORCH_INDEX" "${TORCH[@]}"
else
  "${PIP[@]}" install "${TORCH[@]}"
fi
"${PIP[@]}" install -e ".[dev]"

# learn2learn 0.2.0's sdist ships Cython output that includes longintrepr.h, which Python 3.11
# removed: regenerate the C from the .pyx sources before building. Its setup.py also asks for
# gsutil, which nothing in asd (or in the parts of learn2learn asd uses) needs: dropped. Its
# runtime imports need gym, qpth, requests, scipy, tqdm and torchvision (the torchvision of
# this torch: from the same index).
if [ "${ASD_META:-1}" != 0 ] && ! "$VENV/bin/python" -c "import learn2learn" >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  venv_abs="$(cd "$VENV" && pwd)"
  "${PIP[@]}" install cython
  "${PIP[@]}" download --no-deps --no-binary learn2learn --no-cache-dir -d "$tmp" "learn2learn==0.2.0"
  tar -xzf "$tmp"/learn2learn-0.2.0.tar.gz -C "$tmp"
  sed -i "/'gsutil',/d" "$tmp/learn2learn-0.2.0/setup.py"
  (cd "$tmp/learn2learn-0.2.0" && "$venv_abs/bin/cython" -3 learn2learn/data/*.pyx >/dev/null)
  "${PIP[@]}" install --no-build-isolation --no-deps --no-cache-dir "$tmp/learn2learn-0.2.0"
  if [ -n "${ASD_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install --index-url "$ASD_TORCH_INDEX" "torchvision==0.26.*"
  else
    "${PIP[@]}" install "torchvision==0.26.*"
  fi
  "${PIP[@]}" install gym qpth requests scipy tqdm
  rm -rf "$tmp"
fi

check="import torch, torchaudio, asdcli; print('asd ready: torch', torch.__version__)"
[ "${ASD_META:-1}" != 0 ] && check="import learn2learn; $check"
if ! report="$("$VENV/bin/python" -W ignore -c "$check" 2>&1)"; then
  echo "install.sh: the environment in $VENV does not import:" >&2
  echo "$report" | tail -n 3 >&2
  exit 1
fi
echo "$report" | tail -n 1
