#!/usr/bin/env bash
# GPU check (issue 19): autoseg against nnU-Net v2 on one GPU machine, unattended, in about 8 minutes.
#
# Here (PyPI reachable, once):   python benchmarks/gpu_check_prepare.py      # builds .gpu_bundle/ (git-ignored)
# On the GPU machine (the device tool, carry .gpu_bundle):
#                                bash benchmarks/gpu_check.sh                 # results in $OUT
# Here, to test the script without a GPU (nnU-Net from .bench/nnunet-venv, nothing installed):
#   GPU_CHECK_SKIP_INSTALL=1 NNUNET_PYTHON=.bench/nnunet-venv/bin/python OUT=/tmp/gpu_check \
#       bash benchmarks/gpu_check.sh --device cpu --smoke
# Then: python benchmarks/gpu_check_report.py OUT/gpu_check.json --write-doc   (docs/benchmarks.md)
#
# The machine there has torch (CUDA) and most scientific packages but reaches no registry: the bundle's
# wheels are installed with --no-index --no-deps, SimpleITK is unpacked from its xz tar into
# site-packages, and autoseg runs from this working tree (PYTHONPATH). Writes OUT/gpu_check.json (every
# step's result or error, rewritten after each step), OUT/gpu_check.log and OUT/gpu_check.md.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${GPU_BUNDLE:-$ROOT/.gpu_bundle}"
OUT="${OUT:-$ROOT/gpu_check_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
[ -f "$BUNDLE/manifest.json" ] || { echo "gpu_check: $BUNDLE/manifest.json missing: run python benchmarks/gpu_check_prepare.py first" >&2; exit 2; }

if [ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]; then
    start=$(date +%s)
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PY" -c "import SimpleITK" 2>/dev/null || tar -xJf "$BUNDLE/simpleitk.tar.xz" -C "$SITE" || exit 1
    "$PY" -m pip install --quiet --no-index --no-deps "$BUNDLE"/wheels/*.whl >>"$OUT/gpu_check.log" 2>&1 || {
        echo "gpu_check: installing the bundle's wheels failed (see $OUT/gpu_check.log)" >&2; exit 1; }
    echo "installed in $(( $(date +%s) - start )) s" >&2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
NNUNET_PYTHON="${NNUNET_PYTHON:-$PY}"
"$PY" -c "import SimpleITK, blosc2, autoseg.cli" || { echo "gpu_check: autoseg does not import" >&2; exit 1; }
"$NNUNET_PYTHON" -c "import nnunetv2.run.run_training" || { echo "gpu_check: nnU-Net v2 does not import" >&2; exit 1; }
nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || true

cd "$ROOT"
timeout "${GPU_CHECK_TIMEOUT:-560}" "$PY" benchmarks/gpu_check.py --bundle "$BUNDLE" --out "$OUT" --nnunet-python "$NNUNET_PYTHON" "$@"
rc=$?
"$PY" benchmarks/gpu_check_report.py "$OUT/gpu_check.json" >"$OUT/gpu_check.md" || rc=1
cat "$OUT/gpu_check.md"
exit $rc
