"""The slice axis of single-slice images, shared by the fingerprint (which measures in the slice's plane)
and planning (which slices the ``2d`` configuration along it)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def single_slice_axis(shapes: Sequence[Sequence[int]]) -> int | None:
    """The first array axis holding one voxel in every shape, None when there is none.

    Such a dataset is 2D whichever axis that is: a single sagittal slice stored in RAS orientation holds
    it last, not first. The ``2d`` configuration slices along the plan's first axis, so this axis goes
    first (trained along another axis it sees strips one voxel wide).
    """
    ones = np.all(np.asarray(shapes) == 1, axis=0)
    return int(np.argmax(ones)) if ones.any() else None
