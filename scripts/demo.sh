#!/usr/bin/env bash
# The main job on built-in data: generate the synthetic dataset, compute (and cache) its log-mel
# features, train the five branches, score the test clips and evaluate them (DCASE metrics).
# Uses the tiny preset by default so that it finishes in minutes on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo}"
ASD="${ASD:-.venv/bin/asd}"
CONFIG="${ASD_CONFIG:-tiny}"
RUN="$OUT/run"
export ASD_CACHE_DIR="${ASD_CACHE_DIR:-$OUT/.cache}"

rm -rf "$OUT/data" "$RUN" "$OUT/results"
"$ASD" synth "$OUT/data" --config "$CONFIG"
"$ASD" features "$OUT/data" --config "$CONFIG"
for branch in b1 b2 b3 b4 b5; do
  "$ASD" train-branch "$branch" --data "$OUT/data" --run "$RUN" --config "$CONFIG" > /dev/null
done
"$ASD" score "$OUT/data" --run "$RUN" --decision --out-dir "$OUT/results" > "$OUT/scores.csv"
"$ASD" evaluate "$OUT/results" --json "$OUT/evaluation.json"
