#!/usr/bin/env bash
# Fold-0 Dice of one budgeted plan trained with augmentation or memory-format variants (docs/benchmarks.md,
# "Run-to-run spread at 5 minutes", "Channels-last training on CPU"). One plan and one preprocessing per budget, then one training per
# variant name into a fresh results folder; a variant is named by its prefix, so base2, base3 repeat
# base. Run on a quiet machine, nothing else running.
#
#   benchmarks/augmentation_variants.sh WORK BUDGET VARIANT...   e.g.  ... /tmp/aug 5m base noint base2 noint2
#
# Variants: base (the defaults), noint (no intensity augmentation), mirror (mirroring only), half (every
# augmentation probability halved), contig / last (channels_last=false / true). Data: $AUTOSEG_BENCH_DATA (default ../shared/data) /$AUTOSEG_BENCH_DATASET
# (default Dataset004_Hippocampus; any raw dataset folder there, e.g. Dataset027_ACDC).
set -euo pipefail
WORK=$1 BUDGET=$2; shift 2
DATA=${AUTOSEG_BENCH_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
NAME=${AUTOSEG_BENCH_DATASET:-Dataset004_Hippocampus}
ID=${NAME%%_*}
source "$(dirname "$0")/link_raw.sh"
link_raw "$DATA" "$NAME" "$WORK"
export AUTOSEG_RAW=$WORK/raw AUTOSEG_PREPROCESSED=$WORK/pre_$BUDGET
if [ ! -d "$AUTOSEG_PREPROCESSED" ]; then
  autoseg plan $ID --budget "$BUDGET" -c 3d_fullres | tee "$WORK/plan_$BUDGET.log"
  autoseg preprocess $ID -c 3d_fullres > "$WORK/preprocess_$BUDGET.log" 2>&1
fi
A=augmentation
INTENSITY=(--set $A.gaussian_noise.p=0 --set $A.gaussian_blur.p=0 --set $A.brightness.p=0 --set $A.contrast.p=0
           --set $A.low_resolution.p=0 --set $A.gamma_inverted.p=0 --set $A.gamma.p=0)
HALF=(--set $A.gaussian_noise.p=0.05 --set $A.gaussian_blur.p=0.1 --set $A.brightness.p=0.075 --set $A.contrast.p=0.075
      --set $A.low_resolution.p=0.125 --set $A.gamma_inverted.p=0.05 --set $A.gamma.p=0.15 --set $A.rotation.p=0.1
      --set $A.scaling.p=0.1)
for variant in "$@"; do
  case $variant in
    base*) overrides=();;
    noint*) overrides=("${INTENSITY[@]}");;
    mirror*) overrides=("${INTENSITY[@]}" --set $A.rotation.p=0 --set $A.scaling.p=0);;
    half*) overrides=("${HALF[@]}");;
    contig*) overrides=(--set channels_last=false);;
    last*) overrides=(--set channels_last=true);;
    *) echo "unknown variant $variant (base, noint, mirror, half, contig, last)" >&2; exit 2;;
  esac
  results=$WORK/results_${BUDGET}_$variant
  rm -rf "$results"
  start=$(date +%s.%N)
  AUTOSEG_RESULTS=$results autoseg train $ID 3d_fullres 0 "${overrides[@]}" > "$WORK/train_${BUDGET}_$variant.log" 2>&1
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  python - "$results" "$variant" "$seconds" <<'PY'
import glob, json, sys
[summary] = glob.glob(sys.argv[1] + "/**/fold_0/validation/summary.json", recursive=True)
dice = json.load(open(summary))["foreground_mean"]["dice"]
print(f"{sys.argv[2]}: fold-0 mean Dice {dice:.4f}, train command {float(sys.argv[3]):.1f} s")
PY
done
