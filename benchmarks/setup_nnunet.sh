#!/usr/bin/env bash
# Create (or reuse) the nnU-Net v2 virtual environment the benchmarks compare against.
# It lives in .bench/nnunet-venv (git-ignored) so nnU-Net never touches autoseg's environment.
# torch is installed FIRST, the CPU build that lies on this machine's disk, and stays pinned by a
# constraint while nnunetv2 installs: its dependency timm asks for torchvision, whose newest release
# needs a newer torch, and pip would otherwise replace torch by a CUDA build of several GB.
# Known limit: the torchvision pip then picks (built for the CUDA torch) does not import beside the CPU
# torch ("operator torchvision::nms does not exist"); nnU-Net's fingerprint, planning and
# preprocessing never import it.
# Usage: bash benchmarks/setup_nnunet.sh   (idempotent: a complete venv is left as it is)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NNUNET_VENV:-$ROOT/.bench/nnunet-venv}"
TORCH_VERSION="${NNUNET_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/nnUNetv2_extract_fingerprint" ] && "$VENV/bin/python" -c "import nnunetv2, torch" 2>/dev/null; then
    echo "nnU-Net venv ready: $VENV"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINT"
"$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINT" nnunetv2
"$VENV/bin/python" -c "import torch, nnunetv2; print('nnU-Net venv ready:', '$VENV', 'torch', torch.__version__)"
