"""Connected-component operations on label maps (pure functions; reference §1.7).

Components use full connectivity (26 neighbours in 3D, 8 in 2D), the same neighbourhood as the surface
convention of the metrics. Removed voxels become background (0). Ties between equally large components
go to the one met first in C order, so every result is deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.evaluation.metrics import voxel_volume_mm3


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component ids (1..n, 0 = outside) of a binary mask and the voxel count of each id (index 0 unused)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    ids, n = ndimage.label(mask, structure=structure)
    return ids, np.bincount(ids.ravel(), minlength=n + 1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (empty stays empty)."""
    ids, sizes = label_components(mask)
    if sizes.size <= 1:
        return np.zeros_like(mask, dtype=bool)
    return ids == int(np.argmax(sizes[1:])) + 1


def component_volumes_mm3(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Physical volume of each connected component of ``mask`` (in label order)."""
    _, sizes = label_components(mask)
    return sizes[1:] * voxel_volume_mm3(mask.shape, spacing)


def keep_largest(seg: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Keep only the largest component of the voxels holding any of ``values``; the rest become 0."""
    mask = np.isin(seg, values)
    out = seg.copy()
    out[mask & ~largest_component(mask)] = 0
    return out


def remove_small(seg: np.ndarray, values: Sequence[int], min_volume_mm3: float, spacing: Sequence[float]) -> np.ndarray:
    """Set to 0 every component of the voxels holding any of ``values`` smaller than ``min_volume_mm3``."""
    mask = np.isin(seg, values)
    ids, sizes = label_components(mask)
    too_small = sizes * voxel_volume_mm3(seg.shape, spacing) < min_volume_mm3
    too_small[0] = False
    out = seg.copy()
    out[too_small[ids]] = 0
    return out
