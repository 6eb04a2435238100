"""Whether a geometry can place an array: shared by ``ensemble`` (a sidecar's geometry) and ``predict`` (a caller's).

Each check here failed late before it existed: a spacing of 2 values for a 3D array or a direction of 4 values
with ITK's bare 'Exception thrown in SimpleITK Image_SetSpacing', an origin of 2 values for a volume with '2D
geometry but array has 2 slices', an all-zero direction as 'sheared', each after other outputs were written.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from autoseg.dataset.imageio import Geometry, far_origin_reason

# Below this |det(direction)| the direction maps the grid onto (nearly) a plane or line: no orientation ITK inverts.
MIN_DIRECTION_DETERMINANT = 1e-6


def _axes_problem(geometry: Geometry, spatial_shape: Sequence[int]) -> str | None:
    """Why the numbers of spacing, origin and direction values do not fit an array of ``spatial_shape``."""
    axes, dims = len(spatial_shape), len(geometry.origin)
    if len(geometry.spacing) != axes or dims not in (2, 3) or len(geometry.direction) != dims * dims:
        return (f"spacing {list(geometry.spacing)}, origin {list(geometry.origin)} and direction of "
                f"{len(geometry.direction)} values for an array of {axes} spatial axes; give {axes} spacings in array "
                "order (z, y, x; 999 on the slice axis of a 2D image) and an ITK origin and direction of 2 or 3 axes "
                "(4 or 9 values)")
    if dims == 2 and spatial_shape[0] != 1:
        return (f"origin {list(geometry.origin)} and direction of a 2D image for an array of {spatial_shape[0]} slices; "
                "give a 3D origin (3 values) and direction (9 values)")
    return None


def geometry_problem(geometry: Geometry, spatial_shape: Sequence[int]) -> str | None:
    """Why ``geometry`` cannot place (and be written with) an array of ``spatial_shape`` (z, y, x); ``None`` when it
    can: value counts matching the axes, a positive finite spacing, a finite origin near enough to 0 for positions
    there to be exact (``far_origin_reason``, as every file reader refuses it) and a non-singular direction."""
    problem = _axes_problem(geometry, spatial_shape)
    if problem is not None:
        return problem
    if not all(math.isfinite(v) and v > 0 for v in geometry.spacing):
        return f"spacing {list(geometry.spacing)} is not positive and finite"
    if not all(math.isfinite(v) for v in (*geometry.origin, *geometry.direction)):
        return f"origin {list(geometry.origin)} or direction {list(geometry.direction)} holds a value that is not finite"
    if (far := far_origin_reason(geometry)) is not None:
        return far[0]
    dims = len(geometry.origin)
    determinant = float(np.linalg.det(np.asarray(geometry.direction, dtype=np.float64).reshape(dims, dims)))
    if abs(determinant) <= MIN_DIRECTION_DETERMINANT:
        return (f"direction {list(geometry.direction)} is singular (determinant {determinant:.3g}): its axes do not "
                "span the space, so it is no orientation")
    return None

