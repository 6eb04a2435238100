"""Export a network for inference as a TorchScript trace, and check the export against eager.

A trace records the eval-mode path (one full-resolution logits tensor), which is all inference needs;
deep supervision heads and training-only branches are left out. ONNX export is in ``onnx_export.py``
(the ``autoseg[onnx]`` extra).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from autoseg.errors import ModelFileError, NetworkError
from autoseg.utils.atomic import atomic_path

# Exported outputs must match eager ones this closely (float32 reorderings stay far below it).
EXPORT_ATOL = 1e-5


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence the warnings that say nothing about the model being exported.

    torch >= 2.9 marks ``torch.jit`` deprecated; it is still the one format that loads without Python
    code on every torch 2.x. torch's own layers (InstanceNorm's input checks) raise TracerWarnings on
    shape checks that only guard against misuse; warnings from network code stay visible.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.")
        yield


def trace_for_inference(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace ``model`` in eval mode on ``example``; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _quiet_jit():
            traced = torch.jit.trace(model, example, check_trace=False)
    finally:
        model.train(was_training)
    return traced


def max_export_error(model: nn.Module, exported: nn.Module, example: torch.Tensor) -> float:
    """Largest absolute difference between the eval-mode eager and exported outputs on ``example``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected, actual = model(example), exported(example)
    finally:
        model.train(was_training)
    if expected.shape != actual.shape:
        raise NetworkError(f"exported model outputs shape {tuple(actual.shape)}, eager {tuple(expected.shape)}")
    return float((expected - actual).abs().max())


def check_export(model: nn.Module, exported: nn.Module, example: torch.Tensor, atol: float = EXPORT_ATOL) -> float:
    """Raise ``NetworkError`` unless the exported model reproduces eager within ``atol``; return the error."""
    error = max_export_error(model, exported, example)
    if not error <= atol:
        raise NetworkError(
            f"exported model differs from eager by {error:.3g} (> {atol:g}); the network has a "
            "data-dependent branch that tracing cannot record; export it with the eager code instead"
        )
    return error


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Trace ``model`` on ``example``, check it against eager, and save it atomically to ``path``."""
    traced = trace_for_inference(model, example)
    check_export(model, traced, example)
    target = Path(path)
    with atomic_path(target) as tmp, _quiet_jit():
        torch.jit.save(traced, str(tmp))
    return target


def load_torchscript(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """Load an exported model onto ``device`` in eval mode."""
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelFileError(
            f"{path}: not a readable TorchScript model ({exc}); re-export it with autoseg"
        ) from exc
    return module.eval()
