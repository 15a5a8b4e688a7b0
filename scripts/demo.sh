#!/usr/bin/env bash
# The main job on built-in data: generate the synthetic dataset, then run the whole pipeline in
# development mode (features, five branches, fusion, meta-learner, scores, evaluation table).
# Uses the tiny preset by default so that it finishes in minutes on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo}"
ASD="${ASD:-.venv/bin/asd}"
CONFIG="${ASD_CONFIG:-tiny}"
export ASD_CACHE_DIR="${ASD_CACHE_DIR:-$OUT/.cache}"

rm -rf "$OUT/data"
"$ASD" synth "$OUT/data" --config "$CONFIG"
ASD="$ASD" bash train_ae.sh -d -r "$OUT/data" -o "$OUT" -c "$CONFIG" --force
