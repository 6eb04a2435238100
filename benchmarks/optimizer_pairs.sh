#!/usr/bin/env bash
# Fold-0 Dice of one budgeted plan trained with nnU-Net's SGD and with AdamW, one after the other on
# one plan and preprocessing (docs/benchmarks.md, "AdamW for short schedules"). Run on a quiet machine,
# nothing else running; order the variants both ways across repeats.
#
#   benchmarks/optimizer_pairs.sh WORK DATASET BUDGET VARIANT...   e.g.  ... /tmp/acdc Dataset027_ACDC 10m adamw sgd
#
# Variants (a suffix repeats one: sgd2, adamw2): sgd (nnU-Net's: learning rate 0.01, momentum 0.99),
# adamw (learning rate 0.001), plan (whatever the plan's `training` settings say); `+key=value` after
# a variant adds a setting, e.g. adamw+optimizer.weight_decay=0.01 (results_ and the summary line use
# the whole variant). Data:
# $AUTOSEG_BENCH_DATA (default ../shared/data)/DATASET. Configuration: $AUTOSEG_BENCH_CONFIGURATION
# (default 3d_fullres). Appends one line per training to WORK/summary.txt.
set -euo pipefail
WORK=$1 NAME=$2 BUDGET=$3; shift 3
DATA=${AUTOSEG_BENCH_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
ID=${NAME%%_*}
CONFIGURATION=${AUTOSEG_BENCH_CONFIGURATION:-3d_fullres}
source "$(dirname "$0")/link_raw.sh"
link_raw "$DATA" "$NAME" "$WORK"
export AUTOSEG_RAW=$WORK/raw AUTOSEG_PREPROCESSED=$WORK/pre
if [ ! -d "$AUTOSEG_PREPROCESSED/$NAME" ]; then
  autoseg plan $ID --budget "$BUDGET" -c $CONFIGURATION --device cpu -np 2 > "$WORK/plan.log" 2>&1
  autoseg preprocess $ID -c $CONFIGURATION -np 2 > "$WORK/preprocess.log" 2>&1
fi
for variant in "$@"; do
  IFS=+ read -r -a parts <<< "$variant"
  base=${parts[0]} extra=("${parts[@]:1}")
  case $base in
    sgd*) overrides=(--set optimizer.name=sgd --set optimizer.lr=0.01);;
    adamw*) overrides=(--set optimizer.name=adamw --set optimizer.lr=0.001);;
    plan*) overrides=();;
    *) echo "unknown variant $variant (sgd, adamw, plan)" >&2; exit 2;;
  esac
  for setting in "${extra[@]}"; do overrides+=(--set "$setting"); done
  results=$WORK/results_$variant
  rm -rf "$results"
  AUTOSEG_RESULTS=$results autoseg train $ID $CONFIGURATION 0 "${overrides[@]}" > "$WORK/train_$variant.log" 2>&1
  python - "$results" "$variant" >> "$WORK/summary.txt" <<'PY'
import glob, json, sys
[fold] = glob.glob(glob.escape(sys.argv[1]) + "/**/fold_0", recursive=True)  # variants may hold [ ]
summary = json.load(open(fold + "/validation/summary.json"))
classes = {name: round(v["dice"], 4) for name, v in summary["mean"].items()}
iterations = json.load(open(fold + "/time_accounting.json"))["iterations"]
line = (f"{sys.argv[2]}: fold-0 mean Dice {summary['foreground_mean']['dice']:.4f} {classes}, "
        f"iterations {iterations['trained']} (planned {iterations['planned']})")
print(line)
PY
done
