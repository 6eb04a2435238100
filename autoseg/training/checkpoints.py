"""Checkpoints: written atomically, loaded without pickle, holding everything an exact resume needs.

reference.md §1.5 / §3: nnU-Net saves every 50 epochs straight to the final name and loads with pickle.
Here a checkpoint is written every epoch to a temporary name and renamed, so ``kill -9`` at any moment
leaves the previous complete file; it is a safetensors file (autoseg/utils/weights_file.py) holding only
tensors and JSON-able values. RNG states are converted to tensors and lists for that.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import TrainingError
from autoseg.utils.weights_file import CHECKPOINT_FORMAT_VERSION as FORMAT_VERSION
from autoseg.utils.weights_file import checkpoint_name, load_weights, save_weights, weights_exist

LATEST = checkpoint_name("latest")
BEST = checkpoint_name("best")
FINAL = checkpoint_name("final")


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors / plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Atomically write ``checkpoint`` (tensors, containers and plain values only)."""
    save_weights(path, checkpoint)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (no code runs from the file)."""
    path = Path(path)
    if not weights_exist(path):
        raise TrainingError(f"{path}: checkpoint not found; train first (without --continue) or check the fold")
    checkpoint = load_weights(path, lambda message: TrainingError(f"{message}; delete it to restart the fold"), map_location)
    version = checkpoint.get("metadata", {}).get("format_version") if isinstance(checkpoint, dict) else None
    if version != FORMAT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint format version {version!r}, this autoseg reads {FORMAT_VERSION}; "
            "retrain the fold with this version"
        )
    return checkpoint
