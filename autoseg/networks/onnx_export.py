"""Export a network's eval-mode graph to ONNX (``pip install autoseg[onnx]``), with dynamic axes.

torch's TorchScript-based exporter (``dynamo=False``) is used: it needs neither onnxscript nor a
network rewrite, and records the inference path (one full-resolution logits tensor; deep supervision
heads are training-only). The batch axis is always dynamic; the spatial axes are dynamic unless the
caller fixes them, and the exported graph is checked in onnxruntime at a second input size before it
is accepted, so a network whose graph froze a shape is caught at export, not at deployment.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from autoseg.errors import ModelFileError
from autoseg.utils.onnx_runtime import INPUT, OUTPUT, onnx_session, run_onnx

OPSET = 17  # opset of onnxruntime >= 1.14; covers every op autoseg's networks use
# ONNX Runtime's float32 kernels sum in another order than torch's: measured differences on the
# registered families stay below 1e-4 of the logits' scale (tests/test_onnx.py).
ONNX_RTOL, ONNX_ATOL = 1e-3, 1e-4


def require_onnx(feature: str) -> tuple[Any, Any]:
    """Import onnx and onnxruntime, or raise the one-line install hint."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ModelFileError(f"{feature} needs onnx and onnxruntime ({exc}); install them with: pip install 'autoseg[onnx]'") from None
    return onnx, onnxruntime


def export_onnx(network: nn.Module, example: torch.Tensor, dynamic_spatial: bool = True) -> bytes:
    """The ONNX graph of ``network`` (eval mode) for inputs like ``example`` (B, C, *spatial)."""
    onnx, _ = require_onnx("ONNX export")
    network = network.eval()
    spatial = {axis: f"spatial_{axis - 2}" for axis in range(2, example.ndim)} if dynamic_spatial else {}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter is deprecated
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            network, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch", **spatial}, OUTPUT: {0: "batch", **spatial}},
        )
    graph = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(graph))
    return graph


def check_onnx(network: nn.Module, graph: bytes, examples: Sequence[torch.Tensor]) -> float:
    """Run ``graph`` in onnxruntime on every example and compare with eager torch; returns the largest
    absolute difference. Raises ``ModelFileError`` when one exceeds the tolerance (a frozen shape, an
    op exported wrongly)."""
    session, worst = onnx_session(graph), 0.0
    for example in examples:
        with torch.no_grad():
            expected = network.eval()(example).float().numpy()
        try:
            got = run_onnx(session, example.numpy())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelFileError(f"the exported ONNX graph fails on input {tuple(example.shape)}: {str(exc).splitlines()[0][:200]}") from None
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=ONNX_RTOL, atol=ONNX_ATOL * max(1.0, float(np.abs(expected).max()))):
            raise ModelFileError(f"the exported ONNX graph disagrees with torch on input {tuple(example.shape)}; this network cannot be exported to ONNX")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
