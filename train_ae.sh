#!/usr/bin/env bash
# Train everything and score, as the DCASE Task 2 baselines' scripts do.
#
#   bash train_ae.sh -d [-r DATA_ROOT] [-o OUT] [-c CONFIG] [--gpu N] [--force]   development mode
#   bash train_ae.sh -e [-r DATA_ROOT] [-o OUT] [-c CONFIG] [--gpu N] [--force]   evaluation mode
#
# (-d, -e, -r, -o, -c are this script's, as in the DCASE baselines' scripts; they are not asd's.)
# Both modes: features -> the five branches -> fusion -> meta-learner -> scores, for the
# machines under DATA_ROOT (<machine>/train/*.wav and <machine>/test/*.wav; -r or $ASD_DATA_ROOT).
# -d (development set): test clips carry labels; ends with the evaluation tables (AUC, pAUC,
#    official score), OUT/evaluation.json and the evaluator's results CSV OUT/result.csv.
# -e (evaluation set): trains on its (additional) training clips, writes the DCASE files
#    OUT/results/anomaly_score_<machine>_section_<XX>_test.csv and decision_result_..._test.csv
#    (2020 data: anomaly_score_<machine>_id_<XX>.csv); evaluate them with the organisers'
#    ground truth: asd evaluate OUT/results --ground-truth DIR.
# Run folder OUT/run, feature cache $ASD_CACHE_DIR (default OUT/.cache), every stage's output in
# OUT/logs/ and the whole session in OUT/train_ae.log. An OUT that holds a run already is refused;
# --force replaces its run and results. Relative paths are taken from the caller's folder.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

MODE="" DATA="${ASD_DATA_ROOT:-}" OUT="results-asd" CONFIG="${ASD_CONFIG:-default}" DEVICE=() FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--dev) MODE=dev ;;
    -e|--eval) MODE=eval ;;
    -r|--data-root) DATA="$2"; shift ;;
    -o|--out) OUT="$2"; shift ;;
    -c|--config) CONFIG="$2"; shift ;;
    --gpu) DEVICE=(--gpu "$2"); shift ;;
    --force) FORCE=1 ;;
    -h|--help) usage 0 ;;
    *) echo "train_ae.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
[ -n "$MODE" ] || { echo "train_ae.sh: give -d (development) or -e (evaluation)" >&2; usage; }
[ -n "$DATA" ] || { echo "train_ae.sh: no data root: give -r DIR or set ASD_DATA_ROOT" >&2; usage; }
[ -d "$DATA" ] || { echo "train_ae.sh: data root '$DATA' is not a folder" >&2; exit 1; }

HERE="$(cd "$(dirname "$0")" && pwd)"
ASD="${ASD:-$HERE/.venv/bin/asd}"
[ -f "$CONFIG" ] && CONFIG="$(realpath "$CONFIG")"  # a config file, not a preset name
RUN="$OUT/run"
export ASD_CACHE_DIR="${ASD_CACHE_DIR:-$OUT/.cache}"
if [ -e "$RUN" ] || [ -e "$OUT/results" ]; then
  [ "$FORCE" = 1 ] || { echo "train_ae.sh: $OUT holds a run or results already; give --force to replace them, or another -o" >&2; exit 1; }
  rm -rf "$RUN" "$OUT/results"
fi
mkdir -p "$OUT/logs"
exec > >(tee -a "$OUT/train_ae.log") 2>&1
echo "train_ae.sh $MODE: data $DATA, config $CONFIG, out $OUT ($(date -u +%FT%TZ))"

"$ASD" features "$DATA" --config "$CONFIG"
for branch in b2 b3 b4 b1 b5; do  # b5 (flow) models the embeddings of b3
  "$ASD" train-branch "$branch" --data "$DATA" --run "$RUN" --config "$CONFIG" "${DEVICE[@]}" > "$OUT/logs/$branch.txt"
  echo "$branch: thresholds and statistics in $OUT/logs/$branch.txt"
done
"$ASD" train-fusion --data "$DATA" --run "$RUN" --config "$CONFIG" "${DEVICE[@]}"
"$ASD" meta-train --data "$DATA" --run "$RUN" --config "$CONFIG" "${DEVICE[@]}"
"$ASD" score "$DATA" --run "$RUN" --decision --out-dir "$OUT/results" > "$OUT/scores.csv"
if [ "$MODE" = dev ]; then
  "$ASD" evaluate "$OUT/results" --json "$OUT/evaluation.json" --csv "$OUT/result.csv"
else
  echo "evaluation mode: DCASE files in $OUT/results (labels are not in evaluation-set names; with the" \
       "organisers' ground truth: $ASD evaluate $OUT/results --ground-truth DIR)" >&2
fi
