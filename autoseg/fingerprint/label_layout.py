"""Where each foreground label lies in a case: its centroid, from which planning learns along which axes
two labels keep a fixed order (``planning/mirroring.py``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def class_centroids(label: np.ndarray, values: Sequence[int]) -> dict[str, list[float] | None]:
    """The centroid of each label value in ``values`` (voxel indices along each array axis, the order the
    arrays are read in), None for a value the case does not contain.

    One ``bincount`` per slice along each axis: no per-voxel coordinate arrays, so a 512x512x300 label
    needs no more memory than one of its slices.
    """
    if not values:
        return {}
    top = max(values) + 1
    labels = label if label.dtype.kind in "ui" else label.astype(np.int64)
    sums = np.zeros((label.ndim, top))
    for axis in range(label.ndim):
        per_index = np.stack([np.bincount(np.clip(s, 0, None).ravel(), minlength=top)[:top]
                              for s in np.moveaxis(labels, axis, 0)]).astype(np.float64)
        sums[axis] = np.arange(label.shape[axis], dtype=np.float64) @ per_index
    counts = per_index.sum(axis=0)  # each label's voxels: the same summed over any axis's slices
    return {str(v): ([float(s) / counts[v] for s in sums[:, v]] if counts[v] > 0 else None) for v in values}
