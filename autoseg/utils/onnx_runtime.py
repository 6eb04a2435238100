"""Running an exported ONNX graph in onnxruntime, without torch (the deployment side of ``networks/onnx_export``).

onnxruntime is optional (``pip install 'autoseg[onnx]'``, or the torch-free install in docs/interop.md)
and imported only when a session is made; without it, one line says how to install it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from autoseg.errors import ModelFileError

INPUT, OUTPUT = "image", "logits"  # the graph's input (B, C, *spatial) and output (B, K, *spatial)


def require_onnxruntime(feature: str) -> Any:
    """Import onnxruntime, or raise the one-line install hint."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelFileError(
            f"{feature} needs onnxruntime ({exc}); install it with: pip install onnxruntime (or pip install 'autoseg[onnx]')"
        ) from None
    return onnxruntime


def default_threads() -> int:
    """torch's intra-op threads when torch is loaded (one setting for both engines), else OMP_NUM_THREADS,
    else 0: onnxruntime's own default (one per physical core)."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdecimal() else 0


def onnx_session(graph: bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for ``graph`` (``threads``: intra-op threads, default ``default_threads()``)."""
    onnxruntime = require_onnxruntime("the onnxruntime engine")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, batch: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]
