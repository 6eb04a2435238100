"""What ``autoseg predict`` is asked, checked before anything is read or written.

The command line parses its options into a ``PredictRequest`` and calls ``check_predict_request``, which
refuses the settings an engine would not use and a model named twice (the same refusals for Python
callers who build a request); ``predict_folder`` then runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import UsageError
from autoseg.inference.engine import ENGINES, require_torch
from autoseg.inference.tiling import DEFAULT_STEP, check_step


@dataclass(frozen=True)
class PredictRequest:
    """A prediction as asked: the model (``model_folder``, or ``dataset`` and ``configuration`` with an
    optional ``network`` and ``plans_name``) and how to run it (the ``predict`` options of the same names)."""

    model_folder: Path | None = None
    dataset: str | None = None
    configuration: str | None = None
    network: str | None = None
    plans_name: str | None = None
    engine: str = "torch"
    device: str | None = None
    mixed_precision: str = "auto"
    step: float = DEFAULT_STEP


def check_predict_request(request: PredictRequest) -> None:
    """Raise ``UsageError`` for a request that names its model twice (or not at all) or asks an engine for
    a setting it would not use; the command line's options are named as spelled there."""
    _check_engine_settings(request)
    check_step(request.step, UsageError, "--step")
    _check_model_choice(request)


def _check_engine_settings(request: PredictRequest) -> None:
    """The torch engine needs torch and a mixed precision the device runs; the onnxruntime engine runs on the
    CPU in float32, so ``--device`` and ``--mixed-precision`` asking otherwise were silently replaced."""
    engine, device, mixed_precision = request.engine, request.device, request.mixed_precision
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: choose torch or onnxruntime")
    if engine == "torch":
        require_torch()  # the onnxruntime engine imports no torch: a deployment may lack it
        from autoseg.utils.device import autocast_dtype, choose_device

        autocast_dtype(mixed_precision, choose_device(device), UsageError, name="--mixed-precision")
    elif mixed_precision not in ("auto", "off"):
        raise UsageError(f"--mixed-precision {mixed_precision} applies to the torch engine; the onnxruntime engine "
                         "computes in float32: leave it out, or predict with --engine torch")
    elif device not in (None, "auto", "cpu"):
        raise UsageError(f"--device {device} applies to the torch engine; the onnxruntime engine runs on the CPU: "
                         "leave it out, or predict with --engine torch")


def _check_model_choice(request: PredictRequest) -> None:
    """Either ``-m`` or ``-d`` with ``-c``: ``-m M -c 2d`` predicted with M's own configuration without a word."""
    lookup = {"-d": request.dataset, "-c": request.configuration, "--network": request.network,
              "--plans-name": request.plans_name}
    given = [flag for flag, value in lookup.items() if value is not None]
    if request.model_folder is not None and given:
        raise UsageError(f"-m names the model; {', '.join(given)} would be ignored: leave {'them' if len(given) > 1 else 'it'} "
                         "out, or name the model with -d DATASET -c CONFIGURATION instead of -m")
    if (request.model_folder is None) == (request.dataset is None or request.configuration is None):
        raise UsageError("give either -m MODEL_FOLDER or both -d DATASET and -c CONFIGURATION")

