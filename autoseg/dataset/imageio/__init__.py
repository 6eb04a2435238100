"""Image reading and writing with geometry.

Every array travels with its ``Geometry`` so every output is written in its input's geometry. Formats:
NIfTI (.nii.gz, .nii), NRRD, MetaImage (.mha/.mhd) and GIPL through SimpleITK; 2D natural images
(.png, .bmp, .tif/.tiff) through scikit-image; a folder of DICOM files as one series.

Arrays are in SimpleITK's array order, always 3D: a 2D image is read as one slice ``(1, y, x)`` with
spacing 999 on the slice axis (as nnU-Net does), and written back as 2D.

A colour image file holds several channels, as in nnU-Net's ``NaturalImage2DIO``: ``read_image_channels``
gives an RGB PNG as 3 channels (R, G, B), RGBA as 4, grey as 1. ``read_case_images`` joins a case's
files in channel order and drops alpha when the dataset declares the channels without it.

A multi-page TIFF is a 3D volume (pages along z) when its spacing is known, as nnU-Net v2's ``Tiff3DIO``
reads it: from the sidecar ``<case>.json`` (``{"spacing": [z, y, x]}`` in mm; for a channel file
``<case>_0000.tif`` too), else from the spacing autoseg writes into the TIFF's own description. Without
either it is refused (nnU-Net would assume 1 mm silently; its pages could also be channels).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.dataset.description import channel_list
from autoseg.dataset.imageio.dicom_elements import (
    _PixelData,
    _dicom_pixel_data,
    _dicom_transfer_syntax,
    _is_damaged_dicom,
)
from autoseg.dataset.imageio.endings import (  # noqa: F401 - re-exported
    DETACHED_HEADER_KEYS,
    NATURAL_2D_ENDINGS,
    NIFTI_ENDINGS,
    SITK_ENDINGS,
    SUPPORTED_ENDINGS,
    TIFF_ENDINGS,
    image_ending,
    is_image_ending,
    itk_reads_spelling,
    spelled_ending,
)
from autoseg.dataset.imageio.geometry import (  # noqa: F401 - re-exported
    GEOMETRY_TOLERANCE,
    ORIGIN_PRECISION_VOXELS,
    ORIGIN_TOLERANCE_VOXELS,
    SLICE_SPACING_2D,
    SMALLEST_REAL_VOXEL_MM,
    Geometry,
    _fmt,
    far_origin_problem,
    far_origin_reason,
    geometry_differences,
    is_orthonormal,
    physical_volume_mm3,
)
from autoseg.dataset.imageio.headers import (  # noqa: F401 - re-exported
    _metaimage_placement_problem,
    _nonfinite_placement_problem,
    _unset_voxel_size_problem,
    case_nonfinite_voxels,
    detached_data_files,
    header_with_data_files_renamed,
    ignored_sform_warning,
    itk_header_reader,
    nifti_nonfinite_counts,
    nifti_sform_ignored,
    nifti_value_scaling,
    nrrd_space_units,
    space_units_warning,
)
from autoseg.dataset.imageio.itk_image import _from_sitk
from autoseg.dataset.imageio.natural2d import (  # noqa: F401 - re-exported
    COLOUR_KINDS,
    _natural_2d_geometry,
    _pil_mode,
    _read_natural_2d,
    _read_natural_2d_pixels,
    _write_natural_2d,
)
from autoseg.dataset.imageio.rawfile import (  # noqa: F401 - re-exported
    _check_utf8_path,
    _file_start,
    _first_line,
    _refuse_contentless_file,
    is_gzip,
)
from autoseg.dataset.imageio.tiff_volume import (  # noqa: F401 - re-exported
    _read_tiff_volume,
    _volume_spacing_source,
    _write_tiff_volume,
    is_tiff_volume,
    missing_spacing_file_problem,
    tiff_spacing_files,
)
from autoseg.dataset.imageio.truncation import (  # noqa: F401 - re-exported
    _claimed_data_problem,
    _expected_size_reader,
    _is_truncated,
    voxel_data_cut_short,
)
from autoseg.dataset.imageio.values import (  # noqa: F401 - re-exported
    FLOAT32_MAX,
    float32_overflow_problem,
    is_integer_valued,
)
from autoseg.errors import DatasetError
from autoseg.utils.atomic import atomic_path, disk_full_error, staging_folder

# ITK prints warnings straight to stderr (for example while scanning a folder for DICOM); autoseg reports
# problems itself, as one clear line each.
sitk.ProcessObject_SetGlobalWarningDisplay(False)
# tifffile logs each oddity of a damaged TIFF ('incorrect StripByteCounts count (1 != 10000)', several times) to
# stderr beside autoseg's own line naming the file; its errors still reach autoseg as exceptions.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


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
    return f"{path}: file not found"


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


def select_channels(
    paths: Sequence[str | Path], arrays: Sequence[np.ndarray], alphas: Sequence[bool], expected: int,
    model_channels: Mapping[str, str] | None = None,
) -> list[np.ndarray]:
    """The files' channel arrays (C_i, z, y, x) that make the ``expected`` channels, in order.

    Alpha is dropped when the channels without it are what the dataset declares (an RGBA PNG of an
    R, G, B dataset); any other count raises ``DatasetError`` naming the files, both counts and the fix
    (``model_channels``: see ``read_case_images``).
    """
    counts = [a.shape[0] for a in arrays]
    if sum(counts) == expected:
        return list(arrays)
    if any(alphas) and sum(c - int(alpha) for c, alpha in zip(counts, alphas)) == expected:
        return [a[:-1] if alpha else a for a, alpha in zip(arrays, alphas)]
    raise DatasetError(_channel_count_problem([Path(p) for p in paths], arrays, alphas, expected, model_channels))


def _channel_count_problem(
    paths: list[Path], arrays: Sequence[np.ndarray], alphas: Sequence[bool], expected: int,
    model_channels: Mapping[str, str] | None,
) -> str:
    """Files, channels found, channels expected and the fix; a dataset may also declare what was found,
    a trained model's channels are fixed."""
    found = sum(a.shape[0] for a in arrays)
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+ {len(paths) - 1} more file(s) of the case)"
    kinds = ", ".join(
        "1 channel" if image_ending(p) not in NATURAL_2D_ENDINGS
        else COLOUR_KINDS[a.shape[0]] if alpha or a.shape[0] in (1, 3)
        else f"{a.shape[0]} samples, none marked alpha"  # a TIFF (_last_channel_is_alpha)
        for p, a, alpha in zip(paths, arrays, alphas)
    )
    if found > expected and expected == 1 and len(arrays) == 1:
        image = arrays[0]
        grey = " (its R, G and B are equal: a grey image stored as colour)" if all(
            np.array_equal(image[0], image[c]) for c in range(1, min(3, image.shape[0]))
        ) else ""
        if _pil_mode(paths[0]) in ("P", "PA"):
            # A grey image saved with a lookup table (Fiji/ImageJ's LUTs) is a palette file, read as its colours.
            grey = (" (it is a palette (indexed-colour) image, read as its colours: if its indices are the "
                    "intensities, as in an image saved with a lookup table, save them without the palette)")
        fix, declare = f"save the image as grey (one channel){grey}", f"{_declarable(found, alphas)} channels"
    elif found < expected:
        fix = f"give the case {expected} channels (one RGB file holds 3, a grey file 1; files _0000, _0001, ...)"
        declare = _declarable(found, alphas)
    else:
        fix, declare = f"save the case with {expected} channel(s)", _declarable(found, alphas)
    problem = f"{where}: found {found} channel(s) ({kinds}), {_expected_channels(expected, model_channels)}; {fix}"
    return problem if model_channels is not None else f"{problem}, or declare {declare} in channel_names"


def _declarable(found: int, alphas: Sequence[bool]) -> str:
    """The channel counts a dataset may declare for files of ``found`` channels: with alpha, also the count
    without it (alpha is then dropped); a grey + alpha PNG was told to declare 2, though 1 reads it too."""
    without_alpha = found - sum(alphas)
    return str(found) if without_alpha == found else f"{found} (or {without_alpha}, dropping alpha)"


def _expected_channels(expected: int, model_channels: Mapping[str, str] | None) -> str:
    """Who expects ``expected`` channels: the dataset's dataset.json, or the trained model (named channels)."""
    if model_channels is None:
        return f"dataset.json channel_names declares {expected}"
    return f"the model expects {expected} ({channel_list(model_channels)})"


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


# Transfer syntaxes whose Pixel Data is stored as it is: implicit and explicit VR little endian, big endian.
_DICOM_UNCOMPRESSED_SYNTAXES = (b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.2")


def _refuse_pixel_claims_beyond_files(folder: Path, files: Sequence[str], headers: Sequence[sitk.ImageFileReader]) -> None:
    """Refuse a file smaller than the pixels its header claims (rows x columns x frames x samples x bits
    allocated): one of uncompressed transfer syntax, or a data set without the Part-10 preamble and file meta
    (implicit or explicit VR little endian, as GDCM reads it) whose Pixel Data is not encapsulated.

    GDCM allocates the claimed image and zero-fills what the file lacks, without an error: a slice whose Rows and
    Columns read 50000 (a damaged header) was read in 29 s and 5 GB as a 50000 x 50000 image of zeros; a file
    without the preamble was not measured. Encapsulated (compressed) Pixel Data: ``_encapsulated_problem``."""
    for file, header in zip(files, headers):
        def tag(key: str, default: int | None = None) -> int | None:
            value = header.GetMetaData(key).strip("\x00 ") if header.HasMetaDataKey(key) else ""
            return int(value) if value.isdecimal() else default

        rows, columns, bits = tag("0028|0010"), tag("0028|0011"), tag("0028|0100")
        if rows is None or columns is None or bits is None:
            continue
        frames, samples = tag("0028|0008", 1) or 1, tag("0028|0002", 1) or 1
        claimed = rows * columns * frames * samples * bits // 8
        shown = f"{rows}x{columns}" + (f"x{frames} frames" if frames > 1 else "") + (f"x{samples} samples" if samples > 1 else "")
        syntax, size, problem = _dicom_transfer_syntax(file), Path(file).stat().st_size, None
        if syntax in _DICOM_UNCOMPRESSED_SYNTAXES or syntax is None:
            # without file meta, only Pixel Data of undefined length is encapsulated
            if size < claimed and (syntax is not None or not _is_encapsulated(_dicom_pixel_data(Path(file).read_bytes()))):
                problem = (f"its header claims {shown} pixels of {bits} bits ({claimed} bytes), more than the file's "
                           f"{size} bytes")
        elif (pixels := _dicom_pixel_data(Path(file).read_bytes(), syntax)) is not None:
            problem = _encapsulated_problem(pixels, syntax, shown, bits, claimed, frames)
        if problem:
            raise DatasetError(f"{folder}: {Path(file).name}: {problem} (a damaged header or a truncated copy?); copy "
                               "the series again, or remove the file")


_DICOM_RLE_SYNTAX = b"1.2.840.10008.1.2.5"
# MPEG-2, H.264 and HEVC (.100 to .108): one video stream over all fragments, however many frames
_DICOM_VIDEO_SYNTAX_PREFIX = b"1.2.840.10008.1.2.4.10"
# PackBits, RLE Lossless' scheme, decodes at most 128 bytes from a 2-byte run packet (PS3.5 G.3.1)
_DICOM_RLE_MAX_RATIO = 64


def _is_encapsulated(pixels: _PixelData | None) -> bool:
    return pixels is not None and bool(pixels.fragments)


def _encapsulated_problem(pixels: _PixelData, syntax: bytes, shown: str, bits: int, claimed: int, frames: int) -> str | None:
    """What an encapsulated Pixel Data cannot hold. A codec stream of JPEG or JPEG 2000 carries its own size
    (GDCM reads that one, or refuses the file), so its compressed bytes bound nothing; but each frame has a
    fragment of its own (a fragment never holds two frames, PS3.5 A.4; video streams aside), and RLE Lossless'
    segments carry no size: they decode to what the header claims, at most 64 bytes per compressed byte."""
    if not pixels.fragments:
        return None
    if frames > len(pixels.fragments) and not syntax.startswith(_DICOM_VIDEO_SYNTAX_PREFIX):
        return f"its header claims {frames} frames, its encapsulated pixel data holds {len(pixels.fragments)} fragment(s)"
    compressed = sum(pixels.fragments)
    if syntax == _DICOM_RLE_SYNTAX and claimed > _DICOM_RLE_MAX_RATIO * compressed:
        return (f"its header claims {shown} pixels of {bits} bits ({claimed} bytes), more than RLE's "
                f"{compressed} compressed bytes can decode to (at most {_DICOM_RLE_MAX_RATIO}x)")
    return None


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


def _unread_slice_files(folder: Path, files: Sequence[str]) -> list[str]:
    """Files in ``folder`` named like DICOM slices (``_named_like_dicom``) that GDCM left out of the series
    ``files``: it skips files it cannot parse (a truncated copy) without a word."""
    read = {Path(f).name for f in files}
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name not in read and _named_like_dicom(p))


def _damaged_dicom_files(folder: Path, files: Sequence[str]) -> list[str]:
    """Files of ``folder`` that GDCM left out of the series ``files`` and that are damaged DICOM, whatever their
    names (``IM0004``, a UID ``1.2.840....5``): a file with the DICOM preamble ('DICM' at byte 128) that is cut
    short or of the series' own SOP class (``_is_damaged_dicom``), or a ``.dcm``/``.ima`` file without the preamble.

    GDCM leaves unparsable files out silently, so a slice cut short at either end of the series shortened it
    unseen (mid-series the gap check catches it). A whole DICOM object of another kind (RTSTRUCT, SR,
    DICOMDIR) is rightly no slice. It was told from a damaged slice by a Modality element without Pixel Data,
    so a slice cut between the two passed as such an object, and files without an ending were never looked at.
    """
    read = {Path(f).name for f in files}
    sop_class: str | None = None
    damaged = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in read or not path.is_file():
            continue
        with open(path, "rb") as f:
            preamble = f.read(132)
        if preamble[128:132] == b"DICM":
            if sop_class is None:  # the series' (none without a series: only a cut-short file counts then)
                header = _dicom_header(files[0]) if files else None
                has_class = header is not None and header.HasMetaDataKey("0008|0016")
                sop_class = header.GetMetaData("0008|0016").strip("\x00 ") if header is not None and has_class else ""
            if _is_damaged_dicom(path.read_bytes(), sop_class):
                damaged.append(path.name)
        elif path.suffix.lower() in (".dcm", ".ima") or (_named_like_dicom(path) and not preamble.strip(b"\x00")):
            damaged.append(path.name)  # no DICOM, or a copy that stopped inside the (zero) preamble
    return damaged


def _damaged_dicom_problem(folder: Path, names: Sequence[str]) -> str:
    """The refusal of a folder holding damaged DICOM files ``names`` (``_damaged_dicom_files``), with or without
    a series GDCM could read."""
    return (f"{folder}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''} cannot be read as DICOM (truncated or "
            "corrupt copy?); copy the series again, or remove the file(s)")


def damaged_dicom_refusal(folder: Path) -> str | None:
    """The refusal of ``folder`` when it holds damaged DICOM files and no series GDCM could read, else None."""
    damaged = _damaged_dicom_files(folder, [])
    return _damaged_dicom_problem(folder, damaged) if damaged else None


def _named_like_dicom(path: Path) -> bool:
    """A name DICOM slices carry: ``.dcm``, ``.ima``, no ending (``IM0004``) or a UID's last number (``1.2.840....5``)."""
    return path.suffix.lower() in ("", ".dcm", ".ima") or path.suffix[1:].isdigit()


def _nested_folders_hint(folder: Path) -> str:
    """For a folder of folders (patient/study/series as exported): nested folders are not searched; say which to give."""
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        return ""
    return (f" (the one holding the series' files: subfolders such as {', '.join(subfolders[:3])}"
            f"{', ...' if len(subfolders) > 3 else ''} are not searched)")


DICOM_TILT_DEGREES = 0.5  # a series' slice axis may lean this far from the slice normal (rounded positions)
# Slice positions may stray from the even grid by this share of a slice step: DICOM exporters round them (to
# 0.1 mm at a 0.625 mm step: up to 0.08); a missing slice strays by half a step or more.
DICOM_SLICE_TOLERANCE = 0.2


def _dicom_header(file: str) -> sitk.ImageFileReader:
    """One DICOM file's header (tags and pixel type, as rescaled by GDCM), without its pixels."""
    header = sitk.ImageFileReader()
    header.SetFileName(file)
    header.ReadImageInformation()
    return header


def _is_multi_frame(header: sitk.ImageFileReader) -> bool:
    """Whether a DICOM file's header describes a volume of several frames rather than one slice."""
    return len(header.GetSize()) > 2 and header.GetSize()[2] > 1


def _refuse_unstackable_files(folder: Path, files: Sequence[str], headers: Sequence[sitk.ImageFileReader]) -> None:
    """Files of one series that are no stack of equal slices, named.

    Several multi-frame (3D) files: ITK stacks them into a 4D image, which was refused with advice for 4D NIfTI
    files ('split into channels'). Slices of another size (a localizer in the series): ITK's 'Size mismatch!'.
    Slices of another pixel spacing: read silently in the first slice's.
    """
    volumes = [Path(f).name for f, header in zip(files, headers) if _is_multi_frame(header)]
    if volumes:
        raise DatasetError(f"{folder}: holds {len(volumes)} multi-frame DICOM file(s) ({', '.join(volumes[:3])}"
                           f"{', ...' if len(volumes) > 3 else ''}) among {len(files)} files of one series; each "
                           "multi-frame file is a volume: put each in a folder of its own")
    sizes = [header.GetSize()[:2] for header in headers]
    odd = [Path(f).name for f, size in zip(files, sizes) if size != sizes[0]]
    if odd:
        other = next(size for size in sizes if size != sizes[0])
        raise DatasetError(f"{folder}: DICOM slices differ in size ({Path(files[0]).name} is {sizes[0][0]}x{sizes[0][1]}, "
                           f"{odd[0]} {other[0]}x{other[1]}; {len(odd)} of {len(files)} files differ from the first); "
                           "put each acquisition in its own folder")
    # Slices of another pixel spacing (a reconstruction of another field of view under the same series UID): ITK took
    # the first slice's spacing for all, stacking the others on a grid they do not lie on.
    spacings = [header.GetSpacing()[:2] for header in headers]
    odd = [Path(f).name for f, spacing in zip(files, spacings) if not np.allclose(spacing, spacings[0], rtol=GEOMETRY_TOLERANCE)]
    if odd:
        other = next(spacing for spacing in spacings if not np.allclose(spacing, spacings[0], rtol=GEOMETRY_TOLERANCE))
        raise DatasetError(f"{folder}: DICOM slices differ in pixel spacing ({Path(files[0]).name} {_fmt(spacings[0])} mm, "
                           f"{odd[0]} {_fmt(other)} mm; {len(odd)} of {len(files)} files differ from the first); "
                           "put each acquisition in its own folder")


# Where a slice's pixel spacing is: PixelSpacing (CT, MR), ImagerPixelSpacing (radiographs), NominalScannedPixelSpacing
# (secondary captures); GDCM reads the first the file's kind has, or 1 mm.
_DICOM_PIXEL_SPACING_TAGS = ("0028|0030", "0018|1164", "0018|2010")


def _refuse_unset_pixel_spacing(folder: Path, file: str, header: sitk.ImageFileReader) -> None:
    """Refuse a series of slices that give no pixel spacing (DICOM written from arrays without PixelSpacing): GDCM
    reads 1 x 1 mm pixels without a word, so the series was resampled and predicted at a made-up voxel size, as an
    unset NIfTI or NRRD voxel size was (``_unset_voxel_size_problem``). A folder of one single-frame file is asked
    too (it was read as 1 mm pixels in silence), and a multi-frame file, which keeps its spacing in a functional
    group that ITK's tags do not show, by its bytes (``_multi_frame_names_pixel_spacing``) when the tags lack it."""
    if any(header.HasMetaDataKey(tag) for tag in _DICOM_PIXEL_SPACING_TAGS):
        return
    if not (_is_multi_frame(header) and _multi_frame_names_pixel_spacing(file)):
        raise DatasetError(f"{folder}: {Path(file).name} gives no pixel spacing (PixelSpacing, 0028,0030), which ITK "
                           "would read as 1 mm; write the slices' true pixel spacing into the files (export the series "
                           "again)")


# The pixel spacing tags as a little-endian file holds them (group, element), top-level or nested.
_DICOM_PIXEL_SPACING_TAG_BYTES = tuple(bytes.fromhex(tag[2:4] + tag[:2] + tag[7:9] + tag[5:7])
                                       for tag in _DICOM_PIXEL_SPACING_TAGS)
_DICOM_BYTES_NOT_SEARCHABLE = (b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99")  # big endian, deflated


def _multi_frame_names_pixel_spacing(file: str) -> bool:
    """Whether a multi-frame DICOM file holds a pixel spacing tag anywhere, nested in its functional groups too (a
    file without one was read as 1 x 1 x 1 mm voxels in silence). Searched as bytes, chunk by chunk until found; a
    file whose tags are not stored as little-endian bytes (big endian, deflated) counts as holding one."""
    if _dicom_transfer_syntax(file) in _DICOM_BYTES_NOT_SEARCHABLE:
        return True
    overlap = max(map(len, _DICOM_PIXEL_SPACING_TAG_BYTES)) - 1
    tail = b""
    with open(file, "rb") as stream:
        while chunk := stream.read(1 << 20):
            data = tail + chunk
            if any(tag in data for tag in _DICOM_PIXEL_SPACING_TAG_BYTES):
                return True
            tail = data[-overlap:]
    return False


def _refuse_skewed_orientation(folder: Path, file: str, header: sitk.ImageFileReader) -> None:
    """Refuse a series whose ImageOrientationPatient row and column cosines are not perpendicular (to
    ``GEOMETRY_TOLERANCE``, after scaling each to unit length) or one of them is zero: GDCM then takes the identity
    direction, so a sheared or broken orientation was read, predicted and written as an unrotated image in
    silence. The other slices must agree with this one (``_check_slice_positions``). A file without the tag (an
    enhanced multi-frame file keeps it in a functional group) is left to ITK."""
    if not header.HasMetaDataKey("0020|0037"):
        return
    value = header.GetMetaData("0020|0037").strip()
    try:
        cosines = np.array([float(v) for v in value.split("\\")], dtype=np.float64)
    except ValueError:
        return
    if cosines.size != 6:
        return
    row, column = cosines[:3], cosines[3:]
    lengths = float(np.linalg.norm(row)) * float(np.linalg.norm(column))
    skew = abs(float(row @ column)) / lengths if lengths > 0 else 1.0
    if skew >= GEOMETRY_TOLERANCE:
        problem = (f"row and column directions {math.degrees(math.asin(min(1.0, skew))):.2f} degrees off perpendicular"
                   if lengths > 0 else "a zero row or column direction")
        raise DatasetError(f"{folder}: {Path(file).name}'s ImageOrientationPatient ({value}) has {problem}, which ITK "
                           "reads as an unrotated image; correct the tag (export the series again) so that the two "
                           "directions are perpendicular unit vectors")


def _refuse_slices_without_position(folder: Path, files: Sequence[str], headers: Sequence[sitk.ImageFileReader]) -> None:
    """Refuse slices that do not say where they lie (DICOM written from arrays without ImagePositionPatient or
    ImageOrientationPatient): ITK stacked them 1 mm apart and upright, whatever their thickness, in silence."""
    for tag, name, made_up in (("0020|0032", "ImagePositionPatient", "slices 1 mm apart"),
                               ("0020|0037", "ImageOrientationPatient", "an upright orientation")):
        lacking = [Path(f).name for f, header in zip(files, headers) if not header.HasMetaDataKey(tag)]
        if lacking:
            raise DatasetError(f"{folder}: {len(lacking)} of {len(files)} DICOM slices ({', '.join(lacking[:3])}"
                               f"{', ...' if len(lacking) > 3 else ''}) give no {name} ({tag.replace('|', ',')}), "
                               f"which ITK would replace by {made_up}; write each slice's position and orientation "
                               "into the files (export the series again)")


def _check_slice_positions(folder: Path, files: Sequence[str], headers: Sequence[sitk.ImageFileReader]) -> None:
    """Refuse a series whose slices (in GDCM's order) do not lie on one even grid along the slice normal.

    ITK reads such a series silently with the mean slice step as spacing (missing slices, uneven spacing,
    duplicated positions) or as if untilted (gantry tilt shifts each slice in-plane), so the label map would
    lie in a wrong geometry. Positions may stray from the even grid by ``DICOM_SLICE_TOLERANCE`` of a
    slice step. Slices without ImagePositionPatient or ImageOrientationPatient are refused: ITK stacked them
    1 mm apart, or upright, without a word. Malformed values are left to ITK.
    """
    _refuse_slices_without_position(folder, files, headers)
    positions: list[list[float]] = []
    orientations: list[list[float]] = []
    for info in headers:
        try:
            positions.append([float(v) for v in info.GetMetaData("0020|0032").split("\\")])
            orientations.append([float(v) for v in info.GetMetaData("0020|0037").split("\\")])
        except ValueError:
            return
    if any(len(p) != 3 for p in positions) or any(len(o) != 6 for o in orientations):
        return  # malformed tags: left to ITK
    if np.abs(np.array(orientations) - orientations[0]).max() > GEOMETRY_TOLERANCE:
        raise DatasetError(f"{folder}: DICOM slices differ in orientation (ImageOrientationPatient); "
                           "put each acquisition in its own folder")
    orientation = np.array(orientations[0])
    normal = np.cross(orientation[:3], orientation[3:])
    points = np.array(positions)
    along = points @ normal
    names = [Path(f).name for f in files]
    step = (along[-1] - along[0]) / (len(files) - 1)  # signed: GDCM orders the slices along the normal
    order = np.argsort(along)
    gaps = np.diff(along[order])
    if abs(step) == 0 or gaps.min() <= DICOM_SLICE_TOLERANCE * abs(step):
        i = int(gaps.argmin())
        raise DatasetError(f"{folder}: DICOM files {names[order[i]]} and {names[order[i + 1]]} lie at the same slice "
                           "position (a repeated acquisition or duplicated files?); keep one series per folder")
    extent = points[-1] - points[0]
    angle = math.degrees(math.acos(min(1.0, abs(extent @ normal) / float(np.linalg.norm(extent)))))
    # In-plane drift of the last slice against the first, in pixels: below DICOM_SLICE_TOLERANCE of one it is
    # position rounding over a short series (two slices 1 mm apart, 0.05 mm off: 2.9 degrees), not a tilt.
    drift = float(np.linalg.norm(extent - (extent @ normal) * normal)) / min(headers[0].GetSpacing()[:2])
    if angle > DICOM_TILT_DEGREES and drift > DICOM_SLICE_TOLERANCE:
        raise DatasetError(f"{folder}: DICOM slices are sheared (gantry tilt of {angle:.1f} degrees: each slice is "
                           "shifted in-plane), which a direction matrix cannot hold; resample the series to an "
                           "untilted grid first")
    deviation = np.abs(along - (along[0] + step * np.arange(len(files))))
    if deviation.max() > DICOM_SLICE_TOLERANCE * abs(step):
        i = int(np.abs(np.diff(along) - step).argmax())
        unread = _unread_slice_files(folder, files)  # they may be the missing slices
        hint = f" not read as DICOM: {', '.join(unread[:3])}{', ...' if len(unread) > 3 else ''}" if unread else ""
        raise DatasetError(f"{folder}: DICOM slice spacing is uneven ({abs(along[i + 1] - along[i]):.3g} mm between "
                           f"{names[i]} and {names[i + 1]}, {abs(step):.3g} mm on average: missing slices?{hint}); "
                           "give the complete series")


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
