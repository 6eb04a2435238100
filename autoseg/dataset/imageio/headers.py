"""What NIfTI, NRRD and MetaImage headers say beyond ITK's reading: NIfTI value scaling, unset voxel sizes,
non-finite placements and sforms ITK ignores, NRRD space units, non-finite NIfTI voxels, and the data files detached
headers (.mhd, .nhdr) name."""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from autoseg.dataset.imageio.endings import (
    DETACHED_HEADER_KEYS,
    NIFTI_ENDINGS,
    SITK_ENDINGS,
    image_ending,
    itk_reads_spelling,
)
from autoseg.dataset.imageio.geometry import _MM_PER_UNIT, SLICE_SPACING_2D, Geometry, geometry_differences
from autoseg.dataset.imageio.rawfile import _file_start, _header_fields, is_gzip
from autoseg.paths import undecodable_path_problem


@dataclass(frozen=True)
class _NiftiHeader:
    """The fields of a NIfTI-1 or NIfTI-2 header that autoseg's own checks read."""

    order: str  # struct byte order, "<" or ">"
    datatype: int
    bitpix: int
    dims: tuple[int, ...]
    vox_offset: float
    scl_inter: float  # what ITK's reader turns a NaN voxel into (0 * slope + inter)
    pixdim: tuple[float, ...]
    scl_slope: float


def _nifti_header(header: bytes) -> _NiftiHeader | None:
    """The header's fields in either byte order, None if the bytes are no NIfTI-1/-2 header."""
    import struct

    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            return _NiftiHeader(order, struct.unpack(order + "h", header[70:72])[0], struct.unpack(order + "h", header[72:74])[0],
                                struct.unpack(order + "8h", header[40:56]), struct.unpack(order + "f", header[108:112])[0],
                                struct.unpack(order + "f", header[116:120])[0], struct.unpack(order + "8f", header[76:108]),
                                struct.unpack(order + "f", header[112:116])[0])
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            return _NiftiHeader(order, struct.unpack(order + "h", header[12:14])[0], struct.unpack(order + "h", header[14:16])[0],
                                struct.unpack(order + "8q", header[16:80]), struct.unpack(order + "q", header[168:176])[0],
                                struct.unpack(order + "d", header[184:192])[0], struct.unpack(order + "8d", header[104:168]),
                                struct.unpack(order + "d", header[176:184])[0])
    return None


def nifti_value_scaling(path: str | Path) -> tuple[float, float] | None:
    """(scl_slope, scl_inter) of a NIfTI whose header scales its stored values (ITK, and so nnU-Net, reads
    ``stored * slope + inter``), None for other files and unscaled ones (slope 0, 1 with inter 0, or not finite).

    A label map of 0, 1, 2 saved with a slope (nibabel picks one when an array is saved as another type) reads as
    0, 1.5, 3: verify said to resample it with nearest neighbour, the header is what needs fixing."""
    path = Path(path)
    if image_ending(path) not in (".nii", ".nii.gz"):
        return None
    try:
        start = _file_start(path)
    except (OSError, zlib.error):  # the reader names damaged files
        return None
    fields = _nifti_header(start.data) if start is not None else None
    if fields is None or not (math.isfinite(fields.scl_slope) and math.isfinite(fields.scl_inter)):
        return None
    if fields.scl_slope == 0 or (fields.scl_slope == 1 and fields.scl_inter == 0):
        return None
    return fields.scl_slope, fields.scl_inter


def _unset_voxel_size_problem(path: Path, ending: str, start: bytes) -> str | None:
    """The problem of a NIfTI or NRRD whose header leaves the voxel size of an axis of more than one voxel unset
    (NIfTI pixdim 0 or NaN; NRRD spacing NaN, the format's 'unknown'), else None: ITK reads such a side as 1 mm
    without a word (a NIfTI sform's own scale notwithstanding; as nnU-Net then does), so the image was planned,
    resampled and predicted at a voxel size made up. ``start``: a NIfTI's first bytes, as the truncation check
    read them (reading and decompressing them a second time cost 2-5% of reading a Hippocampus case)."""
    unset = (_nifti_unset_voxel_sides(start) if ending in (".nii", ".nii.gz")
             else _nrrd_unset_voxel_sides(path) if ending in (".nrrd", ".nhdr") else [])
    if not unset:
        return None
    return (f"{path}: its header gives no voxel size ({', '.join(unset)}), which ITK would read as 1 mm; write the "
            "image's true voxel size into its header (export it again)")


def _nifti_unset_voxel_sides(header: bytes) -> list[str]:
    """``pixdim[i] = v`` of each axis of more than one voxel whose pixdim is 0 or NaN (``header``: the file's start)."""
    fields = _nifti_header(header)
    if fields is None:
        return []
    axes = range(1, max(0, min(int(fields.dims[0]), 3)) + 1)
    return [f"pixdim[{i}] = {fields.pixdim[i]:g}" for i in axes
            if fields.dims[i] > 1 and not (math.isfinite(fields.pixdim[i]) and fields.pixdim[i] != 0)]


# Where a NIfTI-1 / NIfTI-2 header keeps (qform_code, sform_code) and the quaternion with its offset, then the
# sform's rows: (offset, struct format) of each.
_NIFTI_PLACEMENT = {348: ((252, "2h"), (256, "6f"), (280, "12f")), 540: ((344, "2i"), (352, "6d"), (400, "12d"))}
_QFORM_NAMES = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")


def _nifti_forms(header: bytes) -> tuple[int, int, tuple[float, ...], tuple[float, ...]] | None:
    """(qform_code, sform_code, the quaternion with its offset, the sform's 12 values row by row) of a NIfTI
    header's start, None for other bytes."""
    import struct

    fields = _nifti_header(header)
    if fields is None:
        return None
    header_size = struct.unpack(fields.order + "i", header[:4])[0]  # 348 or 540, as _nifti_header found it
    (codes_at, codes), (quat_at, quat), (srow_at, srow) = _NIFTI_PLACEMENT[header_size]
    qform_code, sform_code = struct.unpack_from(fields.order + codes, header, codes_at)
    return (qform_code, sform_code, struct.unpack_from(fields.order + quat, header, quat_at),
            struct.unpack_from(fields.order + srow, header, srow_at))


def _nonfinite_placement_problem(path: Path, header: bytes) -> str | None:
    """The problem of a NIfTI whose qform or sform in use holds NaN or infinity, else None: the image has no
    position in space, ITK printed its SVD's matrix to stderr (four times per read, many lines each) and read it
    without an error, and verify passed it; predictions would be written with that NaN origin."""
    forms = _nifti_forms(header)
    if forms is None:
        return None
    qform_code, sform_code, quaternion, rows = forms
    named = list(zip(_QFORM_NAMES, quaternion)) if qform_code > 0 else []
    if sform_code > 0:
        named += [(f"srow_{'xyz'[i // 4]}[{i % 4}]", value) for i, value in enumerate(rows)]
    bad = [f"{name} = {value}" for name, value in named if not math.isfinite(value)]
    if not bad:
        return None
    return (f"{path}: its header's position and orientation hold no number ({', '.join(bad[:3])}), so the image has "
            "no place in space; export it again with a finite origin and orientation")


def _sform_geometry(rows: Sequence[float]) -> Geometry:
    """The placement an sform's rows give, as ITK spells a geometry (LPS, spacing in array order): a sheared sform
    keeps its non-orthogonal axes in ``direction``, so that it differs from any rotation."""
    matrix = np.asarray(rows, dtype=np.float64).reshape(3, 4) * np.array([[-1.0], [-1.0], [1.0]])  # RAS -> LPS
    sides = np.linalg.norm(matrix[:, :3], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):  # an axis of length 0 gives NaN: it differs from anything
        direction = matrix[:, :3] / sides
    return Geometry(tuple(float(v) for v in sides[::-1]), tuple(float(v) for v in matrix[:, 3]),
                    tuple(float(v) for v in direction.ravel()))


def nifti_sform_ignored(path: Path) -> bool:
    """Whether ITK placed the 3D NIfTI ``path`` by its qform while the sform it holds too (sform_code > 0) places
    it elsewhere beyond rounding (``geometry_differences``). ITK 5.4 takes the qform where the sform is sheared or
    its code is not 1 (scanner): SimpleITK, so nnU-Net, reads such a file by its qform without a word, while
    nibabel and most viewers show it by its sform. Only regular files ITK can be handed are opened: a named pipe
    among predict's inputs blocked the probe forever, a ``.Nii.gz`` made ITK print its spelling complaint, and a name
    that is not UTF-8 aborted the process; reading them refuses each by name."""
    if image_ending(path) not in NIFTI_ENDINGS or not path.is_file() or not itk_reads_spelling(path):
        return False
    if undecodable_path_problem(path) is not None:
        return False
    try:
        start = _file_start(path)
    except (OSError, zlib.error):  # an unreadable file: reading it says why
        return False
    forms = _nifti_forms(start.data) if start is not None else None
    if forms is None or forms[0] <= 0 or forms[1] <= 0:
        return False
    reader = itk_header_reader(path)
    if reader is None or reader.GetDimension() != 3:
        return False
    read = Geometry(tuple(reversed(reader.GetSpacing())), reader.GetOrigin(), reader.GetDirection())
    return bool(geometry_differences(read, _sform_geometry(forms[3])))


def itk_header_reader(path: Path) -> sitk.ImageFileReader | None:
    """ITK's reader of ``path`` with its header read (no voxels), None where ITK cannot read the header, or the file
    by its ending as spelled (``itk_reads_spelling``: ITK printed '** mixed case extension '.Nii.gz' is not valid'
    four times for each probe of such a file, before ``read_image`` refused it by name)."""
    if not itk_reads_spelling(path):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def header_grid(path: Path) -> tuple[tuple[int, ...], Geometry] | None:
    """The (z, y, x) shape and geometry ``read_image`` gives ``path``, read from its header alone (ITK's formats);
    None for other files, or a header ITK cannot read."""
    if image_ending(path) not in SITK_ENDINGS or not path.is_file() or (reader := itk_header_reader(path)) is None:
        return None
    return reader_grid(reader)


def reader_grid(reader: sitk.ImageFileReader) -> tuple[tuple[int, ...], Geometry] | None:
    """``header_grid`` from an ITK reader whose header is read; None for an image of other than 2 or 3 axes."""
    size, spacing = reader.GetSize(), tuple(float(s) for s in reversed(reader.GetSpacing()))
    if len(size) not in (2, 3):
        return None
    if len(size) == 2:
        size, spacing = (*size, 1), (SLICE_SPACING_2D, *spacing)
    origin, direction = tuple(map(float, reader.GetOrigin())), tuple(map(float, reader.GetDirection()))
    return tuple(reversed(size)), Geometry(spacing=spacing, origin=origin, direction=direction)


def ignored_sform_warning(paths: Sequence[Path]) -> str | None:
    """One warning line for the NIfTI files among ``paths`` read by their qform while their sform places them
    elsewhere (``nifti_sform_ignored``), else None: they were read so in silence."""
    found = [path for path in paths if nifti_sform_ignored(path)]
    if not found:
        return None
    return (f"{len(found)} NIfTI file(s) hold an sform (srow_x/y/z) that places them elsewhere than the qform ITK "
            f"reads them by (a sheared sform, or one whose sform_code is not 1): {_some_files(found)}; they are read "
            "by the qform, as SimpleITK and nnU-Net read them, while nibabel and most viewers show the sform; if the "
            "sform is the true placement, export them again with qform and sform equal (resampled where it is sheared)")


def _some_files(paths: Sequence[Path]) -> str:
    """The first three of ``paths`` and how many more, for a warning about many files."""
    return ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


_METAIMAGE_PLACEMENT_KEYS = ("offset", "position", "origin", "transformmatrix", "rotation", "orientation")


def _metaimage_placement_problem(path: Path) -> str | None:
    """The problem of a MetaImage whose origin or direction field holds something other than finite numbers, else
    None: ITK read ``Offset = nan 0 0`` as the origin (0, 0, 0) without a word, and verify passed it."""
    parsed = _header_fields(path, "=", "elementdatafile")
    fields = parsed[0] if parsed is not None else {}
    for key in _METAIMAGE_PLACEMENT_KEYS:
        if key in fields and not all(_is_finite_number(token) for token in fields[key].split()):
            return (f"{path}: its header's {key} '{fields[key]}' is not all finite numbers (ITK would read another "
                    "origin or direction without a word); export it again with a finite origin and orientation")
    return None


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _nrrd_unset_voxel_sides(path: Path) -> list[str]:
    """``spacings: ...`` when a NRRD gives an axis of more than one voxel the spacing NaN (and no space directions)."""
    parsed = _header_fields(path, ":", None)
    if parsed is None or "space directions" in parsed[0]:
        return []
    spacings, sizes = parsed[0].get("spacings", "").split(), parsed[0].get("sizes", "").split()
    unset = any(v.lower() == "nan" and n != "1" for v, n in zip(spacings, sizes))
    return [f"spacings: {' '.join(spacings)}"] if unset else []


def nrrd_space_units(path: Path) -> list[str]:
    """The length units other than mm that a NRRD header (.nrrd, .nhdr) names in its ``space units`` field (ITK
    ignores the field and reads every spacing as mm); a spelling of mm is one of factor 1 in ``_MM_PER_UNIT``."""
    if image_ending(path) not in (".nrrd", ".nhdr") or not path.is_file():
        return []
    try:
        parsed = _header_fields(path, ":", None)
    except OSError:  # an unreadable file: reading it says why
        return []
    units = re.findall(r'"([^"]*)"', parsed[0].get("space units", "")) if parsed is not None else []
    return sorted({unit.strip() for unit in units if unit.strip() and _MM_PER_UNIT.get(unit.strip().lower()) != 1.0})


def space_units_warning(paths: Sequence[Path]) -> str | None:
    """One warning line for the NRRD files among ``paths`` whose spacing is given in another unit than mm (``space
    units: "cm"``, ``"microns"``), else None. ITK ignores the unit, so SimpleITK, nnU-Net and autoseg read such a
    spacing as mm; converting it would have a model see another spacing than the same file gives in nnU-Net, so
    the files are read as they are, with this warning (they were read so in silence)."""
    found = {path: units for path in paths if (units := nrrd_space_units(path))}
    if not found:
        return None
    units = sorted({unit for file_units in found.values() for unit in file_units})
    return (f"{len(found)} NRRD file(s) give their spacing in {', '.join(units)} (their header's space units): "
            f"{_some_files(list(found))}; "
            "they are read as mm, as SimpleITK and nnU-Net read them; to use their true size, rewrite the spacing in mm "
            "(space directions or spacings, and space units \"mm\")")


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def nifti_nonfinite_counts(path: str | Path, read: np.ndarray | None = None) -> tuple[int, int] | None:
    """(NaN, Inf) counts in a floating-point NIfTI's stored voxels; None for other files, and when ``read``
    (the array ITK read from it) tells as much: it holds no voxel of the value a NaN turns into.

    ITK's NIfTI reader silently turns NaN into 0 (into scl_inter when the header scales the voxels), so NaN
    can only be seen in the file's own bytes. The header is read first: integer images (most), and float
    images without the stand-in value, need no second decompression of their voxels. verify looked for the
    stand-in 0 only, and so passed NaN voxels of an image with scl_inter 10, which read as 10.
    """
    import gzip

    path = Path(path)
    ending = image_ending(path)
    if ending not in (".nii", ".nii.gz"):
        return None
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as f:
        raw = f.read(540)
        fields = _nifti_header(raw)
        if fields is None or fields.datatype not in _NIFTI_FLOAT_TYPES:
            return None
        stand_in = fields.scl_inter if math.isfinite(fields.scl_inter) else 0.0
        if read is not None and not np.any(read == stand_in):
            return None
        raw += f.read()
    if not math.isfinite(fields.vox_offset) or not 0 <= fields.vox_offset <= len(raw):
        return None
    offset = int(fields.vox_offset)
    dtype = np.dtype(fields.order + _NIFTI_FLOAT_TYPES[fields.datatype])
    usable = (len(raw) - offset) // dtype.itemsize * dtype.itemsize
    voxels = np.frombuffer(raw, dtype=dtype, count=usable // dtype.itemsize, offset=offset)
    nan = int(np.isnan(voxels).sum())
    return nan, int(np.isinf(voxels).sum())


def case_nonfinite_voxels(files: Sequence[Path], data: np.ndarray) -> tuple[str, int, int] | None:
    """(where, NaN count, Inf count) for a case read from ``files`` into ``data`` (C, z, y, x) that holds
    non-finite voxels, else None. A NIfTI's own bytes are looked at first (its reader turns NaN into 0, so
    the array alone misses them); then each channel, named by its file when every file is one channel."""
    for path in files:
        counts = nifti_nonfinite_counts(path) if Path(path).is_file() else None
        if counts is not None and any(counts):
            return str(path), counts[0], counts[1]
    for c, channel in enumerate(data):
        nan, inf = int(np.isnan(channel).sum()), int(np.isinf(channel).sum())
        if nan or inf:
            where = (str(files[c]) if len(files) == len(data) else str(files[0]) if len(files) == 1
                     else f"{files[0]} (+ {len(files) - 1} more file(s) of the case)")
            return where, nan, inf
    return None


def detached_data_files(header: Path) -> list[str]:
    """The names of the data files in its own folder that a detached header (``.mhd``, ``.nhdr``) refers to;
    [] for other files, unreadable headers, data kept in the header itself (``LOCAL``) and file lists."""
    if image_ending(header) not in DETACHED_HEADER_KEYS:
        return []
    try:
        with open(header, "rb") as f:
            text = f.read(1 << 16).decode("latin-1")
    except OSError:
        return []
    return [name for _, name in _data_file_lines(text.splitlines(), image_ending(header))]


def _data_file_lines(lines: Sequence[str], ending: str) -> list[tuple[int, str]]:
    """(line index, name) of each data file beside it that a detached header's ``lines`` name."""
    keys = DETACHED_HEADER_KEYS[ending]
    found = []
    for index, line in enumerate(lines):
        key, sep, value = line.partition("=" if ending == ".mhd" else ":")
        value = value.strip()
        if sep and key.strip().lower() in keys and value.upper() not in ("", "LOCAL", "LIST") and Path(value).parent == Path("."):
            found.append((index, Path(value).name))  # "c0.raw" or "./c0.raw" (3D Slicer): beside the header
    return found


def header_with_data_files_renamed(header: Path, names: Mapping[str, str]) -> bytes:
    """A detached header's bytes with the data files it names renamed (``names``: old -> new name), for a copy
    whose data files are saved under other names."""
    lines = header.read_bytes().decode("latin-1").splitlines(keepends=True)
    separator = "=" if image_ending(header) == ".mhd" else ":"
    for index, name in _data_file_lines(lines, image_ending(header)):
        key, _, value = lines[index].partition(separator)
        lines[index] = key + separator + value.replace(name, names.get(name, name), 1)
    return "".join(lines).encode("latin-1")
