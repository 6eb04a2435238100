"""The refusals of a DICOM series autoseg cannot stack into one volume: damaged files, pixel data beyond
the files, mixed or multi-frame files, unset pixel spacing, skewed orientations and uneven slice positions."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.dataset.imageio.dicom_elements import (
    _PixelData,
    _dicom_pixel_data,
    _dicom_transfer_syntax,
    _is_damaged_dicom,
)
from autoseg.dataset.imageio.geometry import GEOMETRY_TOLERANCE, _fmt
from autoseg.errors import DatasetError


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
