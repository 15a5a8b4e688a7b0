#!/usr/bin/env bash
# The main job on built-in data: generate the synthetic dataset, then compute (and cache) its
# log-mel features. Grows with the model: training, fusion, scoring and evaluation follow.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo}"
ASD="${ASD:-.venv/bin/asd}"
CONFIG="${ASD_CONFIG:-tiny}"
export ASD_CACHE_DIR="${ASD_CACHE_DIR:-$OUT/.cache}"

rm -rf "$OUT/data"
"$ASD" synth "$OUT/data" --config "$CONFIG"
"$ASD" features "$OUT/data" --config "$CONFIG"
