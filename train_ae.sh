#!/usr/bin/env bash
# Train everything and score, as the DCASE Task 2 baselines' scripts do: a thin wrapper over `asd train`.
#
#   bash train_ae.sh -d [-r DATA_ROOT] [-o OUT] [-c CONFIG] [--gpu N] [--skip BRANCH] [--force] [KEY=VALUE ...]
#   bash train_ae.sh -e [-r DATA_ROOT] [-o OUT] [-c CONFIG] [--gpu N] [--skip BRANCH] [--force] [KEY=VALUE ...]
#
# (-d, -e, -r, -o, -c are this script's, as in the DCASE baselines' scripts.) Both modes: the five
# branches -> fusion -> meta-learner -> scores of the test clips, for the machines under DATA_ROOT
# (<machine>/train/*.wav and <machine>/test/*.wav; -r or $ASD_DATA_ROOT). Every stage is checked
# before the first long step; a second call continues where the first stopped (--force starts over).
# -d (development set): test clips carry labels; ends with the evaluation tables (AUC, pAUC,
#    official score), OUT/evaluation.json and the evaluator's results CSV OUT/result.csv.
# -e (evaluation set): writes the DCASE files OUT/results/anomaly_score_<machine>_section_<XX>_test.csv
#    and decision_result_..._test.csv; evaluate them with the organisers' ground truth:
#    asd evaluate OUT/results --ground-truth DIR.
# Run folder OUT/run, feature cache $ASD_CACHE_DIR (default OUT/.cache), the session in OUT/train_ae.log.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

MODE="" DATA="${ASD_DATA_ROOT:-}" OUT="results-asd" CONFIG="${ASD_CONFIG:-}" EXTRA=() FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    -d|--dev) MODE=dev ;;
    -e|--eval) MODE=eval ;;
    -r|--data-root) DATA="$2"; shift ;;
    -o|--out) OUT="$2"; shift ;;
    -c|--config) CONFIG="$2"; shift ;;
    --gpu|--device|--skip) EXTRA+=("$1" "$2"); shift ;;
    --force) FORCE=1 ;;
    -h|--help) usage 0 ;;
    *=*) EXTRA+=("$1") ;;
    *) echo "train_ae.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
[ -n "$MODE" ] || { echo "train_ae.sh: give -d (development) or -e (evaluation)" >&2; usage; }
[ -n "$DATA" ] || { echo "train_ae.sh: no data root: give -r DIR or set ASD_DATA_ROOT" >&2; usage; }
[ -d "$DATA" ] || { echo "train_ae.sh: data root '$DATA' is not a folder" >&2; exit 1; }

HERE="$(cd "$(dirname "$0")" && pwd)"
ASD="${ASD:-$(command -v asd || echo "$HERE/.venv/bin/asd")}"
[ -n "$CONFIG" ] && [ -f "$CONFIG" ] && CONFIG="$(realpath "$CONFIG")"  # a config file, not a preset name
export ASD_CACHE_DIR="${ASD_CACHE_DIR:-$OUT/.cache}"
if [ "$FORCE" = 1 ]; then rm -rf "$OUT/run" "$OUT/results"; fi
mkdir -p "$OUT"
exec > >(tee -a "$OUT/train_ae.log") 2>&1
echo "train_ae.sh $MODE: data $DATA, config ${CONFIG:-of the run, else default}, out $OUT ($(date -u +%FT%TZ))"

"$ASD" train "$DATA" --run "$OUT/run" ${CONFIG:+--config "$CONFIG"} --out-dir "$OUT/results" --no-evaluate "${EXTRA[@]}"
if [ "$MODE" = dev ]; then
  "$ASD" evaluate "$OUT/results" --json "$OUT/evaluation.json" --csv "$OUT/result.csv"
else
  echo "evaluation mode: DCASE files in $OUT/results (with the organisers' ground truth:" \
       "$ASD evaluate $OUT/results --ground-truth DIR)" >&2
fi
