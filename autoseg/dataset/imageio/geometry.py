"""Where an array lies in physical space: the ``Geometry`` every array travels with, how two geometries differ,
origins too far from 0 to compare, and voxel volumes and length units."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


SLICE_SPACING_2D = 999.0  # nnU-Net's spacing for the absent slice axis of 2D images (reference §1.1)


@dataclass(frozen=True)
class Geometry:
    """Where an array lies in physical space.

    Args:
        spacing: voxel size per array axis (z, y, x), in mm.
        origin: ITK origin (x, y, z) or (x, y) for 2D images.
        direction: ITK direction matrix, row-major, 9 (3D) or 4 (2D) values.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def is_2d(self) -> bool:
        return len(self.origin) == 2

    def to_dict(self) -> dict[str, Any]:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Geometry":
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
        )

    @classmethod
    def default(cls, shape: Sequence[int]) -> "Geometry":
        """Unit spacing, zero origin, identity direction for an array of ``shape`` (z, y, x)."""
        return cls(spacing=(1.0,) * len(shape), origin=(0.0,) * 3, direction=tuple(np.eye(3).ravel()))


GEOMETRY_TOLERANCE = 1e-3  # spacing (relative and mm) and direction cosines: float32 headers round them
# Origins may differ by this share of the smallest voxel side, no more. Not relative to the coordinate:
# at a CT table position of -1500 mm a relative 1e-3 let labels 1.5 mm (3 voxels of 0.5 mm) off their image pass.
ORIGIN_TOLERANCE_VOXELS = 0.1


def geometry_differences(a: Geometry, b: Geometry) -> list[str]:
    """Human-readable differences between two geometries ('' list when they agree within tolerance)."""
    if a.is_2d != b.is_2d:
        # a 2D file beside a one-slice 3D file: their spacing, direction and origin all differ in length, which
        # read as three puzzling mismatches ('spacing (1, 1, 1) vs (999, 1, 1); direction ...; origin ...')
        return [f"{_dimensionality(a)} vs {_dimensionality(b)}: save both as 2D or both as 3D"]
    problems = []
    for field in ("spacing", "direction"):
        va, vb = getattr(a, field), getattr(b, field)
        if len(va) != len(vb) or not np.allclose(va, vb, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE):
            problems.append(f"{field} {_fmt(va)} vs {_fmt(vb)}")
    origin_tolerance = ORIGIN_TOLERANCE_VOXELS * min(min(a.spacing), min(b.spacing))
    if len(a.origin) != len(b.origin) or np.abs(np.subtract(a.origin, b.origin)).max() > origin_tolerance:
        problems.append(f"origin {_fmt(a.origin, 8)} vs {_fmt(b.origin, 8)} (they may differ by {origin_tolerance:.3g} mm, "
                        f"{ORIGIN_TOLERANCE_VOXELS:g} of a voxel)")
    return problems


def _dimensionality(geometry: Geometry) -> str:
    return "2D (no slice axis)" if geometry.is_2d else "3D"


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    return "(" + ", ".join(f"{v:.{digits}g}" for v in values) + ")"


# Positions must stay exact to this fraction of the smallest voxel side: image and label origins are compared to a
# tenth of a voxel (ORIGIN_TOLERANCE_VOXELS), which needs digits to spare. Real origins (hundreds of mm) pass by
# a factor of a billion; at 1 mm voxels the bound lies near 4.5e12 mm.
ORIGIN_PRECISION_VOXELS = 1e-3
# The smallest voxel side a real image has (1 nm: electron microscopy). An origin that would place such voxels
# exactly is no damaged origin: a voxel side below it (1e-12 mm at origin -100) is the damaged value.
SMALLEST_REAL_VOXEL_MM = 1e-6


def far_origin_problem(path: Path, geometry: Geometry) -> str | None:
    """The problem of the file's origin so far from 0 (1e30 from a damaged header), or voxel side so small (1e-12 mm),
    that float64 positions near the origin are coarser than a thousandth of a voxel, else None: verify passed it,
    and no two origins could be compared."""
    found = far_origin_reason(geometry)
    if found is None:
        return None
    reason, cause = found
    return f"{path}: {reason}; export it again with the image's true {cause}"


def far_origin_reason(geometry: Geometry) -> tuple[str, str] | None:
    """Why positions at ``geometry``'s origin are coarser than a thousandth of a voxel, and which header value to
    correct ("origin" or "origin or voxel size"); None when they are not. For geometries given without a file
    (``predict_array``) and for ``far_origin_problem``."""
    farthest = max((abs(v) for v in geometry.origin), default=0.0)
    step = float(np.spacing(farthest))
    smallest = min(geometry.spacing)
    if step <= ORIGIN_PRECISION_VOXELS * smallest:
        return None
    if step <= ORIGIN_PRECISION_VOXELS * SMALLEST_REAL_VOXEL_MM:  # the origin would do for any real voxel
        return (f"its voxel side {smallest:g} mm is so small (a damaged header?) that positions at its origin "
                f"{_fmt(geometry.origin)} are exact to only {step:.3g} mm, coarser than a thousandth of a voxel",
                "origin or voxel size")
    return (f"its origin {_fmt(geometry.origin)} lies so far from 0 that positions there are exact to only "
            f"{step:.3g} mm, coarser than a thousandth of its {smallest:g} mm voxel side (a damaged header?)", "origin")


# Millimetres per length unit as tools write it beside a TIFF description's spacing (tifffile: metadata={"unit": "um"})
# or in a NRRD header's space units.
_MM_PER_UNIT = {"mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "millimetre": 1.0, "millimetres": 1.0,
                "um": 1e-3, "\u00b5m": 1e-3, "\u03bcm": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3,
                "micrometers": 1e-3, "nm": 1e-6, "nanometer": 1e-6, "nanometers": 1e-6, "cm": 10.0, "centimeter": 10.0,
                "centimeters": 10.0, "m": 1e3, "meter": 1e3, "meters": 1e3}


def is_orthonormal(direction: Sequence[float]) -> bool:
    """Whether a flattened square direction matrix is a rotation (or reflection), to ``GEOMETRY_TOLERANCE``."""
    size = math.isqrt(len(direction))
    matrix = np.asarray(direction, dtype=np.float64).reshape(size, size)
    return bool(np.abs(matrix.T @ matrix - np.eye(size)).max() <= GEOMETRY_TOLERANCE)


def physical_volume_mm3(spacing: Sequence[float]) -> float:
    """Volume of one voxel; the 2D placeholder slice spacing counts as 1."""
    return math.prod(1.0 if s == SLICE_SPACING_2D else s for s in spacing)
