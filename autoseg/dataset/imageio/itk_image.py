"""An image ITK has read, as autoseg's 3D array and ``Geometry`` (files and DICOM series alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.dataset.imageio.geometry import SLICE_SPACING_2D, Geometry, far_origin_problem
from autoseg.dataset.imageio.rawfile import _first_line
from autoseg.dataset.imageio.values import _refuse_complex
from autoseg.errors import DatasetError


def _from_sitk(image: sitk.Image, path: Path) -> tuple[np.ndarray, Geometry]:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector "
            "image); save each channel as its own _XXXX file, and labels as one integer value per voxel"
        )
    dim = image.GetDimension()
    size = image.GetSize()
    # a 3D label saved with an extra axis of size 1 (x, y, z, 1, or a numpy axis read as x: 1, y, z, t) was told to
    # split a 4D series into channels; a 2D slice of 4 channels (64x64x1x4) was told to drop its axis of size 1,
    # which gives a 4-slice volume
    if dim not in (2, 3) and (all(s == 1 for s in size[3:]) or 1 in size[:2]):
        raise DatasetError(
            f"{path}: is {dim}D of size {'x'.join(map(str, size))}, with an axis of size 1; autoseg reads "
            "2D or 3D images: save it without that axis"
        )
    if dim not in (2, 3):
        raise DatasetError(
            f"{path}: is {dim}D; autoseg reads 2D or 3D images. Split 4D series into channels (_0000, _0001, ...)"
        )
    if 0 in image.GetSize():
        raise DatasetError(f"{path}: has size {'x'.join(map(str, image.GetSize()))}: the image holds no voxels; export it again")
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    geometry = Geometry(
        spacing=(SLICE_SPACING_2D, *spacing) if dim == 2 else spacing,
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
    )
    if (problem := far_origin_problem(path, geometry)) is not None:  # the header alone: refused before the voxels
        raise DatasetError(problem)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise DatasetError(f"{path}: pixel data cannot be read (truncated file?): {_first_line(exc)}") from None
    _refuse_complex(path, array)
    return (array[None] if dim == 2 else array), geometry
