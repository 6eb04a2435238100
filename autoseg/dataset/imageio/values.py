"""Checks on voxel values every reader and writer shares: complex values, float32 overflow, integer labels."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from autoseg.errors import DatasetError


def _refuse_complex(path: Path, array: np.ndarray) -> None:
    """Complex values are refused: every stage computes in float32, where the imaginary part was dropped with
    a mere warning (an image) or ended in an internal TypeError (a label)."""
    if array.dtype.kind == "c":
        raise DatasetError(f"{path}: holds complex values ({array.dtype}), autoseg reads real ones; save the "
                           "magnitude (or the real and imaginary parts as two channels _0000, _0001)")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_overflow_problem(path: str | Path, array: np.ndarray) -> str | None:
    """The problem line for finite values that float32, where every stage computes, cannot hold; else None.

    A float64 image with values beyond ~3.4e38 would turn into Inf on reading, and its normalization
    statistics, fingerprint and predictions into NaN, without a word.
    """
    if array.dtype.kind != "f" or array.dtype.itemsize <= 4 or not array.size:
        return None
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: reported as NaN elsewhere
        extremes = (float(np.nanmin(array)), float(np.nanmax(array)))  # no copy: the usual image stops here
    if not any(abs(v) > FLOAT32_MAX for v in extremes):
        return None
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(array)
        over = np.isfinite(magnitude) & (magnitude > FLOAT32_MAX)
    count = int(over.sum())
    if not count:
        return None
    return (
        f"{path}: {count} voxel(s) with magnitude up to {float(magnitude[over].max()):.3g}, beyond float32's "
        f"{FLOAT32_MAX:.3g} that autoseg computes in; rescale the image (e.g. divide it by a power of ten) and save it again"
    )


def is_integer_valued(array: np.ndarray) -> bool:
    """True when every value is a finite integer (float labels saved by some tools pass)."""
    if array.dtype.kind in "iub":
        return True
    return bool(np.all(np.isfinite(array)) and np.all(np.equal(np.mod(array, 1), 0)))
