"""Writing images atomically in their geometry, after refusing what the chosen ending cannot hold."""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.dataset.imageio.endings import (
    DETACHED_HEADER_KEYS,
    NATURAL_2D_ENDINGS,
    NIFTI_ENDINGS,
    SUPPORTED_ENDINGS,
    TIFF_ENDINGS,
    image_ending,
    itk_reads_spelling,
)
from autoseg.dataset.imageio.geometry import Geometry, _fmt, geometry_differences, is_orthonormal
from autoseg.dataset.imageio.natural2d import _write_natural_2d
from autoseg.dataset.imageio.rawfile import _check_utf8_path, _file_start
from autoseg.dataset.imageio.tiff_volume import _write_tiff_volume
from autoseg.dataset.imageio.truncation import _expected_size_reader, _is_truncated
from autoseg.errors import DatasetError
from autoseg.utils.atomic import atomic_path, disk_full_error, staging_folder


# Limits of ITK's writers, which fail only once the whole result is computed ('Dimension(0) = 40000 is greater than
# maximum possible dimension 32767', 'Pixel Type Unknown'): NIfTI-1 stores sides as int16, GIPL as uint16 and holds
# no 32- or 64-bit integers.
_MAX_SIDE = {".nii": 32767, ".nii.gz": 32767, ".gipl": 65535, ".gipl.gz": 65535}
_GIPL_UNWRITABLE_KINDS = (np.int32, np.uint32, np.int64, np.uint64)


def unwritable_problem(
    path: str | Path, shape: Sequence[int], dtype: Any, geometry: Geometry | None = None
) -> str | None:
    """Why an array of ``shape`` (z, y, x) and ``dtype`` in ``geometry`` cannot be written to ``path`` in its format
    (with the fix: another format), else None. Cheap, so a command can ask before it computes what it would write.

    An ending ITK reads in lower case only (``.MHA``, ``.Nii.gz``) is refused too: such a file was written but could
    not be read back, and a ``.MHD`` header was written as ``.mhd`` (ITK's MetaImage writer renames it), leaving
    nothing at ``path``."""
    ending = image_ending(path)
    if not itk_reads_spelling(path):
        spelled = Path(path).name[-len(ending):]
        return (f"{path}: ITK, the image reader, cannot read the ending '{spelled}' in this case; write '{ending}' "
                "instead")
    limit = _MAX_SIDE.get(ending)
    if limit is not None and max(shape, default=0) > limit:
        return (f"{path}: an image of {'x'.join(map(str, shape))} voxels cannot be written as {ending}, which holds at "
                f"most {limit} voxels a side; use .nrrd or .mha")
    if ending in (".gipl", ".gipl.gz") and np.dtype(dtype).type in _GIPL_UNWRITABLE_KINDS:
        return (f"{path}: {np.dtype(dtype)} voxels cannot be written as {ending} (GIPL holds no 32- or 64-bit "
                "integers); use .nii.gz, .nrrd or .mha")
    if geometry is not None and (lost := _geometry_lost_in(ending, geometry)):
        return (f"{path}: {ending} cannot hold this image's geometry ({'; '.join(lost)} as written); use "
                f"{endings_keeping_geometry(ending, geometry)}, which keep it")
    return None


def endings_keeping_geometry(ending: str, geometry: Geometry) -> str:
    """The endings to name instead of ``ending`` for an image of ``geometry`` it cannot hold: NIfTI keeps what GIPL
    and TIFF lose, but no sheared direction, which only NRRD and MetaImage keep (a sheared image refused as .gipl
    was told to use .nii.gz, which refused it next)."""
    sheared = ending in NIFTI_ENDINGS or not is_orthonormal(geometry.direction)
    return ".nrrd or .mha" if sheared else ".nii.gz, .nrrd or .mha"


def _geometry_lost_in(ending: str, geometry: Geometry) -> list[str]:
    """What of a 3D ``geometry`` a file of ``ending`` would drop, as ``geometry_differences`` words it: GIPL stores no
    direction and a 3D TIFF only its spacing, so a rotated or shifted image was written in silence as an upright one
    at the origin (read back, its labels lay elsewhere than its image's). NIfTI stores rotations only: ITK wrote a
    sheared direction as its nearest rotation, in silence (predict writes such a case as .nrrd)."""
    if ending in NIFTI_ENDINGS and not is_orthonormal(geometry.direction):
        return [f"direction {_fmt(geometry.direction)} is sheared, not a rotation, which NIfTI cannot store"]
    if geometry.is_2d or ending not in (".gipl", ".gipl.gz", *TIFF_ENDINGS):
        return []
    origin = geometry.origin if ending in (".gipl", ".gipl.gz") else (0.0,) * len(geometry.origin)
    kept = Geometry(geometry.spacing, origin, tuple(np.eye(3).ravel()))
    return geometry_differences(geometry, kept)


def geometry_lost_in(ending: str, geometry: Geometry) -> list[str]:
    """What of ``geometry`` a file of ``ending`` (lower case) drops, pictures included: a PNG, BMP or 2D TIFF keeps
    one slice of 1 x 1 pixels at the origin. ``write_image`` writes pictures all the same (a natural image has no
    geometry to lose) and refuses only what ``_geometry_lost_in`` finds; a command writing cases of known geometry
    in an ending the user chose (ensemble's ``--file-ending``) asks this before the first case."""
    if ending not in NATURAL_2D_ENDINGS or (ending in TIFF_ENDINGS and not geometry.is_2d):
        return _geometry_lost_in(ending, geometry)
    if not geometry.is_2d:
        return ["3D vs 2D"]
    return geometry_differences(geometry, Geometry((geometry.spacing[0], 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a 3D array (z, y, x) in ``geometry`` atomically; 2D geometries write one slice as 2D."""
    path = Path(path)
    _check_utf8_path(path)
    ending = image_ending(path)
    if ending == "":
        raise DatasetError(f"{path}: cannot write; give a file name ending in one of {', '.join(SUPPORTED_ENDINGS)}")
    if array.ndim != 3:
        raise ValueError(f"write_image expects a 3D array (z, y, x), got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    shape = array.shape[1:] if geometry.is_2d else array.shape
    if (problem := unwritable_problem(path, shape, array.dtype, geometry)) is not None:
        raise DatasetError(problem)
    if ending in TIFF_ENDINGS and not geometry.is_2d:
        _write_tiff_volume(array, geometry, path)
        return
    if ending in NATURAL_2D_ENDINGS:
        _write_natural_2d(array, path)
        return
    if geometry.is_2d:
        if array.shape[0] != 1:
            raise ValueError(f"2D geometry but array has {array.shape[0]} slices")
        image = sitk.GetImageFromArray(array[0])
        image.SetSpacing(tuple(reversed(geometry.spacing[1:])))
    else:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(reversed(geometry.spacing)))
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    compress = ending in (".nii.gz", ".nrrd", ".mha")
    if ending in DETACHED_HEADER_KEYS:
        _write_detached(image, path, compress)
        return
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
        _refuse_cut_short_write(tmp, path)


def _refuse_cut_short_write(written: Path, target: Path) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``target`` when the NIfTI or GIPL just ``written`` (its temporary) is not whole.

    ITK's NIfTI and GIPL writers ignore failed writes (a full disk, an exhausted quota): they left a cut-short
    .nii.gz, .nii or .gipl, reported as written. ``atomic_path`` only caught it when the disk ended with exactly
    0 bytes free, not when another writer freed space meanwhile (its own failed temporary removed). The header
    is read and the size checked against it (for gzip the trailer's ISIZE; the stream is decompressed only
    when that disagrees), so a whole file costs a few hundred bytes of reading.
    """
    expected_size = _expected_size_reader(written)
    if expected_size is None:
        return
    try:
        start = _file_start(written)
        whole = not _is_truncated(written, expected_size, start, unrecognised=True)
    except (OSError, EOFError, zlib.error):  # a gzip stream cut inside its first bytes
        whole = False
    if not whole:
        raise OSError(errno.ENOSPC, "the image writer stopped short of the file's end (disk full or quota exhausted?)",
                      str(target))


def _write_detached(image: sitk.Image, path: Path, compress: bool) -> None:
    """A header and its data file (``.mhd`` + ``.raw``, ``.nhdr`` + ``.raw.gz``): ITK names the data file after
    the header and writes that name into it, so a temporary header name (``atomic_path``) left the header
    pointing at the temporary's data file. Both are written under their final names in a staging folder and
    renamed into place, the data file first and the header last, so a complete header never points at a
    missing or partial data file."""
    staging = staging_folder(path)
    try:
        header = staging / path.name
        sitk.WriteImage(image, str(header), useCompression=compress)
        for written in sorted(staging.iterdir(), key=lambda f: f == header):
            os.replace(written, path.parent / written.name)
    except Exception as exc:
        # As atomic_path does: a full disk named at the target (ITK's RuntimeError named the staging folder's
        # header and reached the user as an internal error), asked before the staged files are removed.
        full = disk_full_error(exc, path)
        if full is not None:
            raise full from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
