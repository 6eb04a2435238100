"""How thin the structures to segment are, in mm: what the planner may not coarsen away.

A structure's thickness is twice the mean Euclidean distance (in mm, at the case's spacing) from its
voxels to the nearest voxel outside it (an ignored voxel, of unknown class, is not outside), counted
between voxel centres: a slab n voxels wide gives about n/2 + 1 voxels (3 for 4, 2 for a one-voxel
line), a ball of diameter d about d/2. A coarse measure of width, but monotonic and robust to a ragged
outline. The distance transform runs on the bounding box of the structure and the ignored voxels, padded
by one background voxel (so a structure touching the image border ends there), and skips the slice axis,
the first of size one (a 2D image, or a single sagittal or coronal slice, is measured in its plane);
another axis of size one (an image one pixel wide) bounds the structure to one pixel, as any border does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.utils.shapes import single_slice_axis

# Ignored voxels farther than this many voxels beyond the structure's bounding box count as outside: searching
# the whole image cost 19 s and 4 GB per target on a 512x512x200 CT of scribbles. A structure reaching the
# cap measures over 30 voxels across, which the planner draws at every spacing it tries (at most 4x coarser,
# planning.constants COARSE_STRUCTURE_VOXELS 2.5 across).
UNKNOWN_SEARCH_MARGIN = 16


def structure_thickness_mm(mask: np.ndarray, spacing: Sequence[float], unknown: np.ndarray | None = None) -> float | None:
    """Twice the mean distance (mm) of the mask's voxels to the nearest voxel outside it; None if empty.

    ``unknown`` (the ignore label's voxels) is neither the structure nor outside it: counted as outside, a
    structure annotated on every other slice measured one slice thick (Hippocampus 2.0-2.3 mm instead of
    3.0-3.4, EM 2.1-2.6 instead of 8.7-9.0 with half the rows ignored) and the budget planner kept a
    resolution the structures did not need."""
    if not mask.any():
        return None
    # Only the slice axis is skipped: skipping a one-pixel-wide image's x axis too measured its structure
    # along y, its length (16 for a 30 px run one pixel wide), not its width.
    slice_axis = single_slice_axis([mask.shape])
    keep = [a for a in range(mask.ndim) if a != slice_axis]
    if not keep:  # a single voxel of a 1D array: no extent to measure
        return None
    shape = [mask.shape[a] for a in keep]
    mask = mask.reshape(shape)
    sampling = [float(spacing[a]) for a in keep]
    where = np.nonzero(mask)
    margin = 0 if unknown is None else UNKNOWN_SEARCH_MARGIN
    box = tuple(slice(max(int(c.min()) - margin, 0), int(c.max()) + 1 + margin) for c in where)
    inside = np.pad(mask[box], 1, constant_values=False)
    not_outside = inside if unknown is None else np.pad(mask[box] | unknown.reshape(shape)[box], 1, constant_values=False)
    distance = ndimage.distance_transform_edt(not_outside, sampling=sampling)
    return float(2.0 * distance[inside].mean())


def case_thickness(label: np.ndarray, spacing: Sequence[float], targets: dict[str, list[int]],
                   ignore_label: int | None = None) -> dict[str, float | None]:
    """Each target's thickness in one case (None where the case does not contain it), the ignore label's
    voxels neither inside nor outside any target."""
    unknown = None if ignore_label is None else label == ignore_label
    if unknown is not None and not unknown.any():
        unknown = None  # no ignored voxel: no search margin beyond each structure's box
    return {name: structure_thickness_mm(np.isin(label, values), spacing, unknown) for name, values in targets.items()}


def median_thickness(per_case: dict[str, list[float | None]]) -> dict[str, float | None]:
    """Per target, the median over the cases that contain it."""
    return {name: float(np.median(present)) if (present := [v for v in values if v is not None]) else None
            for name, values in per_case.items()}
