"""Preprocessing: crop, normalize, resample, store; and the exact inverse (reference §1.4).

The names below load on first use, so prediction (which needs ``pipeline`` and ``inverse``) does not
import the store's blosc2 and a torch-free deployment installs without it (docs/interop.md).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "label_to_preprocessed_grid": "inverse", "restore_label": "inverse", "restore_probabilities_to_labels": "inverse",
    "preprocess_case": "pipeline", "PreprocessReport": "runner", "preprocess_dataset": "runner",
    "class_locations": "store", "list_cases": "store", "load_case": "store", "save_case": "store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
