#!/usr/bin/env bash
# Fold-0 Dice of one budgeted plan trained with several seeds, each alone and their probabilities
# averaged (docs/benchmarks.md, "Several short runs ensembled"). Run on a quiet machine, nothing else
# running; the runs go one after the other on one plan and preprocessing.
#
#   benchmarks/seed_ensemble.sh WORK DATASET BUDGET SEED...   e.g.  ... /tmp/ens Dataset004_Hippocampus 10m 0 1 2
#
# Data: $AUTOSEG_BENCH_DATA (default ../shared/data)/DATASET; configuration 3d_fullres. Each seed trains
# the plan's own budget into WORK/results_s<seed> with --save-probabilities; then every seed's validation
# Dice, the ensemble of all seeds and of each pair go to WORK/summary.txt (one line each).
set -euo pipefail
WORK=$1 NAME=$2 BUDGET=$3; shift 3
[ $# -ge 2 ] || { echo "give at least two seeds" >&2; exit 2; }
DATA=${AUTOSEG_BENCH_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
ID=${NAME%%_*}
source "$(dirname "$0")/link_raw.sh"
link_raw "$DATA" "$NAME" "$WORK"
export AUTOSEG_RAW=$WORK/raw AUTOSEG_PREPROCESSED=$WORK/pre
if [ ! -d "$AUTOSEG_PREPROCESSED/$NAME" ]; then
  autoseg plan $ID --budget "$BUDGET" -c 3d_fullres --device cpu -np 2 > "$WORK/plan.log" 2>&1
  autoseg preprocess $ID -c 3d_fullres -np 2 > "$WORK/preprocess.log" 2>&1
fi
GT=$AUTOSEG_PREPROCESSED/$NAME/gt_segmentations
validation() { echo "$WORK"/results_s$1/$NAME/*__3d_fullres/fold_0/validation; }
score() {  # LABEL SUMMARY_JSON
  python - "$1" "$2" >> "$WORK/summary.txt" <<'PY'
import json, sys
summary = json.load(open(sys.argv[2]))
classes = {name: round(v["dice"], 4) for name, v in summary["mean"].items()}
print(f"{sys.argv[1]}: fold-0 mean Dice {summary['foreground_mean']['dice']:.4f} {classes}")
PY
}
for seed in "$@"; do
  rm -rf "$WORK/results_s$seed"
  AUTOSEG_RESULTS=$WORK/results_s$seed autoseg train $ID 3d_fullres 0 --seed "$seed" --save-probabilities \
    > "$WORK/train_s$seed.log" 2>&1
  score "seed $seed" "$(validation "$seed")/summary.json"
done
ensemble() {  # NAME SEED...
  local out=$WORK/ensemble_$1 inputs=() seed; shift
  for seed in "$@"; do inputs+=(-i "$(validation "$seed")"); done
  rm -rf "$out"
  autoseg ensemble "${inputs[@]}" -o "$out" -np 2 > "$out.log" 2>&1
  autoseg evaluate -p "$out" -r "$GT" -d $ID -np 2 >> "$out.log" 2>&1
  score "ensemble of seeds $*" "$out/summary.json"
}
seeds=("$@")
ensemble all "${seeds[@]}"
if [ ${#seeds[@]} -gt 2 ]; then
  for ((i = 0; i < ${#seeds[@]}; i++)); do
    for ((j = i + 1; j < ${#seeds[@]}; j++)); do ensemble "${seeds[i]}_${seeds[j]}" "${seeds[i]}" "${seeds[j]}"; done
  done
fi
