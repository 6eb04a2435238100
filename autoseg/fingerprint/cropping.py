"""Crop to the nonzero region (reference §1.2, §1.4): shared by the fingerprint and preprocessing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

OUTSIDE_NONZERO = -1  # label value marking voxels outside the nonzero mask in preprocessed labels

BBox = list[list[int]]  # per axis [start, stop)


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels where any channel is nonzero, holes filled (data is (C, z, y, x)).

    Holes are the zero regions that do not touch the image border: one connected-component pass,
    where ``binary_fill_holes`` iterates dilations and gets slow on large CTs. An axis of size one (the
    slice axis of a 2D image) is no border: every pixel lies on it, so counting it left no hole of a 2D
    image filled, and zero pixels inside it (an EM membrane, a zeroed lesion) fell outside the mask.
    """
    mask = np.any(data != 0, axis=0)
    if mask.all() or not mask.any():
        return mask
    background, _ = ndimage.label(~mask)
    border = np.zeros(mask.shape, bool)
    for axis in (a for a in range(mask.ndim) if mask.shape[a] > 1):
        index = [slice(None)] * mask.ndim
        for end in (0, -1):
            index[axis] = end
            border[tuple(index)] = True
    outside = np.unique(background[border & ~mask])
    return ~np.isin(background, outside[outside > 0])


def bounding_box(mask: np.ndarray) -> BBox:
    """Per-axis [start, stop) of ``mask``'s True voxels; the full extent when the mask is empty."""
    if not mask.any():
        return [[0, s] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append([int(hit[0]), int(hit[-1]) + 1])
    return box


def crop_slices(bbox: BBox) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in bbox)


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, BBox, np.ndarray]:
    """Crop ``data`` (C, z, y, x) and ``seg`` (1, z, y, x) to the nonzero bounding box.

    Returns the cropped data, the cropped seg as int16 (or None) with background voxels outside the
    nonzero mask set to ``OUTSIDE_NONZERO``, the bounding box and the cropped nonzero mask.
    """
    mask = nonzero_mask(data)
    bbox = bounding_box(mask)
    sl = crop_slices(bbox)
    data = data[(slice(None), *sl)]
    mask = mask[sl]
    if seg is not None:
        seg = seg[(slice(None), *sl)].astype(np.int16, copy=True)
        seg[(seg == 0) & ~mask[None]] = OUTSIDE_NONZERO
    return data, seg, bbox, mask
