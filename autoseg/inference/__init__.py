"""Prediction: sliding window with TTA and fold ensembling, cascade, export to the input geometry.

``load_model`` + ``predict_array`` segment arrays; ``predict_folder`` is ``autoseg predict``. The names
below load on first use, so importing ``autoseg.inference.sliding_window`` (training's validation, the
benchmarks) pulls in torch alone, not the image readers and the store.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PredictReport": "batch", "predict_folder": "batch",
    "LoadedModel": "model", "find_model_folder": "model", "load_model": "model", "pick_device": "model",
    "PredictRequest": "request", "check_predict_request": "request",
    "Prediction": "predictor", "predict_array": "predictor", "predict_preprocessed": "predictor",
    "gaussian_importance_map": "sliding_window", "sliding_window_predict": "sliding_window",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
