"""Reading images: one file or DICOM folder (``read_image``), a file's colour channels
(``read_image_channels``), a case's channel files joined (``read_case_images``)."""

from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.dataset.imageio.channels import _expected_channels, select_channels
from autoseg.dataset.imageio.dicom import _read_dicom_series
from autoseg.dataset.imageio.endings import (
    NATURAL_2D_ENDINGS,
    NIFTI_ENDINGS,
    SITK_ENDINGS,
    SUPPORTED_ENDINGS,
    TIFF_ENDINGS,
    image_ending,
    itk_reads_spelling,
)
from autoseg.dataset.imageio.geometry import Geometry, geometry_differences
from autoseg.dataset.imageio.headers import (
    _metaimage_placement_problem,
    _nonfinite_placement_problem,
    _unset_voxel_size_problem,
)
from autoseg.dataset.imageio.itk_image import _from_sitk
from autoseg.dataset.imageio.natural2d import _natural_2d_geometry, _read_natural_2d, _read_natural_2d_pixels
from autoseg.dataset.imageio.rawfile import (
    _check_utf8_path,
    _file_start,
    _first_line,
    _refuse_contentless_file,
    is_gzip,
)
from autoseg.dataset.imageio.tiff_volume import _read_tiff_volume, _volume_spacing_source, is_tiff_volume
from autoseg.dataset.imageio.truncation import _claimed_data_problem, _expected_size_reader, _is_truncated
from autoseg.dataset.imageio.values import float32_overflow_problem
from autoseg.errors import DatasetError


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read one image as a 3D array (z, y, x) with its geometry; raise ``DatasetError`` if unreadable."""
    path = Path(path)
    _check_utf8_path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    if not path.exists():
        raise DatasetError(_missing_file_problem(path))
    ending = image_ending(path)
    if ending not in NATURAL_2D_ENDINGS and ending not in SITK_ENDINGS:
        raise DatasetError(
            f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_ENDINGS)} or a DICOM folder"
        )
    if not path.is_file():  # a named pipe was called 'empty (0 bytes; an interrupted copy?)'; read, it would block
        raise DatasetError(f"{path}: is not a regular file (a named pipe, socket or device); put the image file there")
    _refuse_contentless_file(path)
    volume_spacing = _volume_spacing_source(path)
    if volume_spacing is not None:
        return _read_tiff_volume(path, *volume_spacing)
    if ending in NATURAL_2D_ENDINGS:
        return _read_natural_2d(path)
    if not itk_reads_spelling(path):  # asked first: ITK printed '** mixed case extension ... is not valid' 4 times
        spelled = path.name[-len(ending):]
        raise DatasetError(f"{path}: ITK, the image reader, does not read the ending '{spelled}' in this case; rename "
                           f"the files to end in '{ending}' (and set dataset.json's file_ending to '{ending}')")
    try:
        # Before ITK reads: it zero-fills the missing part of a truncated NIfTI without any error, after allocating
        # what the header claims (a 400-byte file claiming 1000^3 voxels took 4 GB and 15 s, a larger claim more
        # memory than there is).
        expected_size = _expected_size_reader(path)
        start = _file_start(path) if expected_size is not None else None
        truncated = expected_size is not None and _is_truncated(path, expected_size, start)
    except ValueError as exc:
        raise DatasetError(f"{path}: invalid NIfTI header ({exc}); export the image again") from None
    except zlib.error as exc:  # a damaged gzip stream (its trailer's length or checksum), seen while measuring it
        raise DatasetError(f"{path}: its gzip compression is damaged ({exc}); copy or export it again") from None
    if truncated:
        raise DatasetError(f"{path}: file is truncated (its voxel data ends early); copy or export it again")
    if (problem := _unset_voxel_size_problem(path, ending, start.data if start else b"")) is not None:
        raise DatasetError(problem)
    if ending in NIFTI_ENDINGS and (problem := _nonfinite_placement_problem(path, start.data if start else b"")):
        raise DatasetError(problem)
    if ending in (".mha", ".mhd") and (problem := _metaimage_placement_problem(path)):
        raise DatasetError(problem)
    if (problem := _claimed_data_problem(path)) is not None:
        raise DatasetError(problem)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if "Refusing to change spacing" in str(exc):  # ITK's words for a zero or NaN voxel size
            raise DatasetError(f"{path}: voxel spacing is zero or not a number ({_first_line(exc)}); fix the header's "
                               "voxel size") from None
        if ending == ".nii" and is_gzip(path):  # ITK picks its reader by the name alone
            raise DatasetError(f"{path}: is gzip-compressed but named .nii, which ITK cannot read; rename it to "
                               f"{path.name}.gz (and set dataset.json's file_ending to '.nii.gz')") from None
        raise DatasetError(_unreadable_problem(path, exc)) from None
    return _from_sitk(image, path)


def _missing_file_problem(path: Path) -> str:
    """Why ``path`` cannot be opened although a listing may show it: a symbolic link whose target is gone (a dataset
    linked to a store that moved) was reported as 'file not found', beside an ``ls`` that lists it."""
    if path.is_symlink():
        return (f"{path}: is a symbolic link to {os.readlink(path)}, which does not exist (moved or deleted?); "
                "restore its target, or replace the link with the file")
    return (f"{path}: file not found (a wrong path, or the file was moved or deleted after it was listed); check the "
            "path, and run the command again once the dataset is complete")


def _unreadable_problem(path: Path, exc: RuntimeError) -> str:
    """Why ITK could not read existing file ``path``. A sheared orientation is named as such (it was 'truncated
    or corrupt file?' with ITK's words, and no fix); the MetaImage reader's stale 'Reason: No such file or
    directory' (its short read of voxel data left errno at ENOENT) is dropped: it told the user a file that exists
    was missing."""
    if "only supports orthonormal direction cosines" in str(exc):
        return (f"{path}: its orientation (the header's sform/qform matrix) is sheared or degenerate, not a rotation, "
                "which ITK cannot read; resample the image onto an unsheared grid, or fix the header's orientation")
    detail = _first_line(exc)
    if detail == f"Reason: {os.strerror(errno.ENOENT)}":
        detail = "the header or its voxel data is damaged or cut short"
    return f"{path}: cannot be read (truncated or corrupt file?): {detail}"


def read_image_channels(path: str | Path) -> tuple[np.ndarray, Geometry, bool]:
    """One image file's channels (C, z, y, x) with its geometry, and whether the last channel is alpha.

    A colour 2D image gives one channel per colour (RGB: 3, RGBA: 4), as nnU-Net's NaturalImage2DIO
    reads it; every other file is one channel.
    """
    path = Path(path)
    _check_utf8_path(path)
    if path.is_file() and image_ending(path) in NATURAL_2D_ENDINGS and not is_tiff_volume(path):
        _refuse_contentless_file(path)
        array = _read_natural_2d_pixels(path)
        if array.ndim == 2:
            return array[None, None], _natural_2d_geometry(), False
        channels = np.moveaxis(array, -1, 0)[:, None]
        return channels, _natural_2d_geometry(), _last_channel_is_alpha(path, array.shape[-1])
    array, geometry = read_image(path)
    return array[None], geometry, False


def _last_channel_is_alpha(path: Path, channels: int) -> bool:
    """Whether the last of a 2D file's ``channels`` is alpha: PNG keeps 2 or 4 only as grey or RGB + alpha, but
    a TIFF's extra sample is alpha only when its ExtraSamples tag says so (associated or unassociated alpha);
    an unspecified one is data (a second stain, near-infrared beside RGB), which must not be dropped as alpha."""
    if channels not in (2, 4):
        return False
    if path.suffix.lower() not in TIFF_ENDINGS:
        return True
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            extra = tiff.pages[0].extrasamples
    except Exception:  # noqa: BLE001 - the file was just read; without its tags nothing marks alpha
        return False
    return bool(extra) and int(extra[-1]) in (1, 2)  # EXTRASAMPLE.ASSOCALPHA, UNASSALPHA


def read_case_images(
    paths: Sequence[str | Path], num_channels: int | None = None, model_channels: Mapping[str, str] | None = None
) -> tuple[np.ndarray, Geometry]:
    """Read a case's channel files into one float32 array (C, z, y, x); channels must share geometry.

    ``num_channels`` (the dataset's ``channel_names`` count) is checked, and selects the colour
    channels of 2D images without alpha; ``None`` keeps every channel of every file. ``model_channels``
    (predict: the trained model's ``channel_names``) makes a wrong count name the model's channels, to
    be supplied, instead of suggesting another ``channel_names`` declaration.
    """
    if not paths:
        raise ValueError("read_case_images needs at least one path")
    if any(image_ending(p) in NATURAL_2D_ENDINGS and not is_tiff_volume(Path(p)) for p in paths):
        return _read_natural_case(paths, num_channels, model_channels)
    if num_channels is not None and len(paths) != num_channels:
        raise DatasetError(
            f"{paths[0]}: the case has {len(paths)} channel file(s), {_expected_channels(num_channels, model_channels)}; "
            "give one file per channel (_0000, _0001, ...)"
        )
    # Each channel is copied into one preallocated float32 array as soon as it is read, so at most
    # one channel in its file's dtype is held beside the result.
    data: np.ndarray | None = None
    first: Geometry | None = None
    for index, p in enumerate(paths):
        array, geometry = read_image(p)
        if data is None or first is None:
            data = np.empty((len(paths), *array.shape), np.float32)
            first = geometry
        else:
            _check_same_grid(p, array.shape, geometry, paths[0], data.shape[1:], first)
        overflow = float32_overflow_problem(p, array)
        if overflow:
            raise DatasetError(overflow)
        data[index] = array
        del array
    assert data is not None and first is not None
    return data, first


def _check_same_grid(
    path: str | Path, shape: Sequence[int], geometry: Geometry, first_path: str | Path, first_shape: Sequence[int],
    first: Geometry,
) -> None:
    if tuple(shape) != tuple(first_shape):
        raise DatasetError(
            f"{path}: shape {tuple(shape)} differs from {first_path} {tuple(first_shape)}; all channels of a "
            "case must be on the same grid (resample them first)"
        )
    diff = geometry_differences(geometry, first)
    if diff:
        raise DatasetError(f"{path}: geometry differs from {first_path}: {'; '.join(diff)}; all channels of a case must be "
                           "on the same grid (resample them onto one grid, or fix the header)")  # was: no fix at all


def _read_natural_case(
    paths: Sequence[str | Path], num_channels: int | None, model_channels: Mapping[str, str] | None
) -> tuple[np.ndarray, Geometry]:
    """2D images are small: read every file's channels, then select and join them."""
    arrays, alphas, first = [], [], None
    for p in paths:
        array, geometry, alpha = read_image_channels(p)
        if first is None:
            first = geometry
        else:
            _check_same_grid(p, array.shape[1:], geometry, paths[0], arrays[0].shape[1:], first)
        arrays.append(array)
        alphas.append(alpha)
    assert first is not None
    if num_channels is not None:
        arrays = select_channels(paths, arrays, alphas, num_channels, model_channels)
    return np.concatenate(arrays).astype(np.float32, copy=False), first
