"""The checkpoint format: file names, layout version, and the one reader and writer of checkpoints.

Training writes checkpoints, inference loads them, model files export and import them; all three go
through this module, so a checkpoint's name, its layout version and the checks made when one is read
exist once. A checkpoint is a dict written as an autoseg weight file (autoseg/utils/weights_file.py):
``network_weights`` and ``metadata`` (network, topology, channels, ``format_version``, ...) always;
optimiser, grad scaler, RNG and trainer state in training checkpoints only (docs/architecture.md).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from autoseg.utils import atomic
from autoseg.utils.weights_file import LEGACY_SUFFIX, SUFFIX, load_weights, save_weights, weights_exist, weights_from_bytes, weights_to_bytes

CHECKPOINT_FORMAT_VERSION = 1  # of the checkpoint dict's layout (metadata["format_version"])
CHECKPOINT_KINDS = ("final", "best", "latest")
# What a deployed model keeps of a checkpoint (model files drop the optimiser and training state).
NETWORK_KEYS = ("network_weights", "metadata")
ErrorType = Callable[[str], Exception]


def checkpoint_name(kind: str) -> str:
    """``final`` -> ``checkpoint_final.safetensors``."""
    return f"checkpoint_{kind}{SUFFIX}"


def checkpoint_file(checkpoint: str, error: ErrorType) -> str:
    """The file name of checkpoint ``final``, ``best`` or ``latest`` (also given as that file name); any
    other name raises ``error`` with the choices, before a missing file is blamed on training."""
    kinds = {checkpoint_name(kind): kind for kind in CHECKPOINT_KINDS}
    if kinds.get(checkpoint, checkpoint) not in CHECKPOINT_KINDS:
        raise error(f"checkpoint {checkpoint!r} unknown; choose one of {', '.join(CHECKPOINT_KINDS)}")
    return checkpoint_name(kinds.get(checkpoint, checkpoint))


def missing_checkpoint(path: Path, fix: str) -> str:
    """``read_checkpoint``'s text for a missing ``path``: the checkpoints its fold does hold, then ``fix``."""
    present = [kind for kind in CHECKPOINT_KINDS if checkpoint_exists(Path(path).parent / checkpoint_name(kind))]
    return f"not found (present: {', '.join(present) or 'none'}); {fix}"


def checkpoint_exists(path: Path) -> bool:
    """The checkpoint at ``path`` (or the legacy ``.pt`` of autoseg before safetensors) exists."""
    return weights_exist(path)


def fold_trainer(fold: Path) -> int | None:
    """The pid of another process training ``fold`` now (holding its ``folder_lock`` exclusively), 0 where its pid is
    unknown, None where nobody else holds it. Asked through ``/proc/locks`` without locking (on Linux): a shared lock
    taken to ask, for an instant, made a ``train`` starting then wait for the checker. None off POSIX, where
    ``folder_lock`` locks nothing."""
    if os.name != "posix":
        return None
    holder = atomic.exclusive_holder(fold)
    return None if holder is None or holder == os.getpid() or atomic.holds_lock(fold) else holder


def warn_if_training(path: Path) -> None:
    """One warning line when the fold of checkpoint ``path`` is being trained right now: predict and export-model took
    the previous run's checkpoint of that fold in silence, while a newer one was on its way."""
    path = Path(path)
    if (holder := fold_trainer(path.parent)) is None:
        return
    found = path if path.is_file() else path.with_suffix(LEGACY_SUFFIX)
    written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.stat().st_mtime)) if found.is_file() else "unknown"
    print(f"warning: {path.parent}: is being trained right now by {atomic.holder_text(holder)}; "
          f"using its {found.name} of {written}, which that run will replace (run again once it has ended for the new one)",
          file=sys.stderr, flush=True)


def write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Atomically write ``checkpoint`` (tensors, containers and plain values only)."""
    save_weights(path, checkpoint)


def read_checkpoint(
    path: Path, error: ErrorType, missing: str, fix: str, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load and check a checkpoint (no code runs from the file). Errors name ``path``; ``missing``
    says what to do when it does not exist, ``fix`` what to do when it is damaged, foreign or of
    another format version."""
    path = Path(path)
    if not weights_exist(path):
        raise error(f"{path}: {missing}")
    checkpoint = load_weights(path, lambda message: error(f"{message}; {fix}"), device)
    check_checkpoint(checkpoint, str(path), error, fix)
    return checkpoint


def check_checkpoint(checkpoint: Any, where: str, error: ErrorType, fix: str) -> None:
    """``checkpoint`` has network weights and metadata of this format version, else ``error``."""
    if not isinstance(checkpoint, dict) or not all(isinstance(checkpoint.get(key), dict) for key in NETWORK_KEYS):
        raise error(f"{where}: is not an autoseg checkpoint (needs 'network_weights' and 'metadata'); {fix}")
    version = checkpoint["metadata"].get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise error(f"{where}: checkpoint format version {version!r}, this autoseg reads {CHECKPOINT_FORMAT_VERSION}; {fix}")


def first_mismatch(exc: Exception) -> str:
    """The first tensor ``load_state_dict`` names (name, expected and found shape): its message starts with
    a bare header line ('Error(s) in loading state_dict for UNet:'), which alone says nothing about what
    differs. Shared by training's resume and inference's loading, so both name the same tensor."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]).rstrip(".")


def network_checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """The network part of a checkpoint (weights and metadata, no optimiser state) as weight-file bytes."""
    return weights_to_bytes({key: checkpoint[key] for key in NETWORK_KEYS})


def checkpoint_from_bytes(data: bytes, where: str, error: ErrorType, fix: str) -> dict[str, Any]:
    """Inverse of ``network_checkpoint_bytes``, checked like a checkpoint file."""
    checkpoint = weights_from_bytes(data, where, error)
    check_checkpoint(checkpoint, where, error, fix)
    return checkpoint


def check_outputs_match_labels(metadata: dict[str, Any], expected: int, where: str, labels_where: str, error: ErrorType) -> None:
    """A network's output channels must be what the model's ``dataset.json`` labels give (classes with
    background, or regions): a label map and probabilities are named from those labels, so an edited
    or swapped dataset.json would mislabel every prediction."""
    outputs = int(metadata.get("num_outputs", expected))
    if outputs != expected:
        raise error(
            f"{where}: the network predicts {outputs} channel(s) but {labels_where} gives {expected} (its labels, "
            "background included, or its regions); that dataset.json is not the one the model was trained with: restore it"
        )
