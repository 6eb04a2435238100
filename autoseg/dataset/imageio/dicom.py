"""A folder of DICOM files read as one series, once ``dicom_checks`` finds nothing to refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.dataset.imageio.dicom_checks import (
    _check_slice_positions,
    _damaged_dicom_files,
    _damaged_dicom_problem,
    _dicom_header,
    _refuse_pixel_claims_beyond_files,
    _refuse_skewed_orientation,
    _refuse_unset_pixel_spacing,
    _refuse_unstackable_files,
    damaged_dicom_refusal,
)
from autoseg.dataset.imageio.geometry import Geometry
from autoseg.dataset.imageio.itk_image import _from_sitk
from autoseg.dataset.imageio.rawfile import _check_utf8_path, _first_line
from autoseg.errors import DatasetError


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, Geometry]:
    _check_utf8_path(folder)
    for entry in folder.iterdir():
        # GDCM scans every file of the folder: one name that is not UTF-8 aborted the process (exit 134, no word)
        _check_utf8_path(entry)
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise DatasetError(f"{folder}: cannot scan for DICOM files: {_first_line(exc)}") from None
    if not series:
        if problem := damaged_dicom_refusal(folder):  # a lone volume file cut short was 'no DICOM series'
            raise DatasetError(problem)
        raise DatasetError(f"{folder}: is a folder but holds no DICOM series; give an image file or a DICOM folder"
                           + _nested_folders_hint(folder))
    if len(series) > 1:
        raise DatasetError(
            f"{folder}: holds {len(series)} DICOM series ({'; '.join(_series_files(folder, uid) for uid in series)}); "
            "put one series per folder"
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    broken = _damaged_dicom_files(folder, files)
    if broken:
        # GDCM leaves such files out silently: a truncated last slice shortened the series unseen.
        raise DatasetError(_damaged_dicom_problem(folder, broken))
    try:
        headers = [_dicom_header(file) for file in files]
        _refuse_pixel_claims_beyond_files(folder, files, headers)
        _refuse_skewed_orientation(folder, files[0], headers[0])
        _refuse_unset_pixel_spacing(folder, files[0], headers[0])
        if len(files) == 1:
            # One (multi-frame) file: ImageSeriesReader would stack its volume as a 4D image of one slice.
            image = sitk.ReadImage(files[0])
        else:
            _refuse_unstackable_files(folder, files, headers)
            _check_slice_positions(folder, files, headers)
            if len({header.GetPixelID() for header in headers}) > 1:
                # Slices rescaled differently (per-slice RescaleSlope, as PET has): ITK casts every slice to the
                # first one's type, truncating a fractional slope's values to integers.
                reader.SetOutputPixelType(sitk.sitkFloat64)
            reader.SetFileNames(files)
            image = reader.Execute()
    except RuntimeError as exc:
        raise DatasetError(f"{folder}: DICOM series cannot be read: {_first_line(exc)}") from None
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise DatasetError(_colour_dicom_problem(folder, files, image.GetNumberOfComponentsPerPixel()))
    return _from_sitk(image, folder)


def _colour_dicom_problem(folder: Path, files: Sequence[str], samples: int) -> str:
    """Why a colour DICOM (SamplesPerPixel > 1) is refused, naming its file: it got the message for RGB or
    vector images in 3D formats ('save each channel as its own _XXXX file'), which names no file and misses
    that a colour DICOM is a secondary capture or screenshot, not the scan."""
    more = f" (+ {len(files) - 1} more file(s) of the series)" if len(files) > 1 else ""
    return (f"{folder}: {Path(files[0]).name}{more} is a colour DICOM ({samples} samples per pixel): a secondary "
            "capture or screenshot (a rendering, report or annotated image), not a scan; give the folder of the "
            "scan's own series (grey CT, MR, ... slices)")


def _series_files(folder: Path, uid: str) -> str:
    """Series ``uid`` with its file count and first file, so the user can tell which files to move where
    (the UIDs alone did not say which of the folder's files belong to which series)."""
    files = sorted(Path(f).name for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    return f"{uid}: {len(files)} file(s), {files[0]}{' ...' if len(files) > 1 else ''}" if files else uid


def _nested_folders_hint(folder: Path) -> str:
    """For a folder of folders (patient/study/series as exported): nested folders are not searched; say which to give."""
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        return ""
    return (f" (the one holding the series' files: subfolders such as {', '.join(subfolders[:3])}"
            f"{', ...' if len(subfolders) > 3 else ''} are not searched)")
