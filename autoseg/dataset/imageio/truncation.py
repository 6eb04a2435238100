"""Files cut short, found before ITK reads them (it zero-fills a truncated NIfTI in silence): the size a
NIfTI or GIPL header implies, gzip streams measured without inflating them whole, and the voxel data a NRRD or
MetaImage header claims."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autoseg.dataset.imageio.endings import image_ending
from autoseg.dataset.imageio.headers import _nifti_header, detached_data_files
from autoseg.dataset.imageio.rawfile import _FileStart, _file_start, _header_fields


def _missing_data_file_problem(path: Path) -> str | None:
    """The data file a detached header (.mhd, .nhdr) names that is not beside it, named; asked before ITK reads (by
    ``_claimed_data_problem``), whose MetaImage reader printed its own 'MetaImage: Read: Cannot open data file' on
    stderr first."""
    missing = [name for name in detached_data_files(path) if not (path.parent / name).is_file()]
    if not missing:
        return None
    return (f"{path}: its data file {missing[0]} (named in the header) is not beside it; copy the header and its "
            "data file together")


def _nifti_expected_size(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header (None if the header is not NIfTI)."""
    fields = _nifti_header(header)
    if fields is None:
        return None
    offset = _vox_offset(fields.vox_offset)
    n = max(0, min(int(fields.dims[0]), 7))
    return offset + math.prod(max(1, int(d)) for d in fields.dims[1 : n + 1]) * max(1, fields.bitpix) // 8


def _vox_offset(value: float) -> int:
    """A NIfTI header's vox_offset as a byte position; ``ValueError`` for NaN, infinite or negative ones."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"vox_offset {value}")
    return int(value)


def _expected_size_reader(path: Path) -> Callable[[bytes], int | None] | None:
    """How to tell the size a file's header needs (from its first bytes), for the formats whose voxels ITK reads
    without noticing that the file ends early (zero-filled or garbage) and whose writers ignore failed writes:
    NIfTI and GIPL; None for other files."""
    return {".nii": _nifti_expected_size, ".nii.gz": _nifti_expected_size, ".gipl": _gipl_expected_size,
            ".gipl.gz": _gipl_expected_size}.get(image_ending(path))


_GIPL_VOXEL_BYTES = {7: 1, 8: 1, 15: 2, 16: 2, 31: 4, 32: 4, 64: 4, 65: 8}  # GIPL image type -> bytes per voxel
_GIPL_MAGIC = (0xEFFFE9B0, 0x2AE389B8)


def _gipl_expected_size(header: bytes) -> int | None:
    """The 256-byte GIPL header + voxel bytes (big-endian dims and type); None for no (or an unknown) GIPL header.
    A truncated .gipl was read as garbage and a cut-short one written without a word, as NIfTI was."""
    import struct

    if len(header) < 256 or struct.unpack(">I", header[252:256])[0] not in _GIPL_MAGIC:
        return None
    dims, kind = struct.unpack(">4H", header[:8]), struct.unpack(">H", header[8:10])[0]
    if kind not in _GIPL_VOXEL_BYTES:
        return None
    return 256 + math.prod(max(1, d) for d in dims) * _GIPL_VOXEL_BYTES[kind]


def _is_truncated(path: Path, expected_size: Callable[[bytes], int | None], start: _FileStart | None,
                  unrecognised: bool = False) -> bool:
    """Whether the file holds fewer bytes than its header (its ``start``, None when its gzip stream breaks within
    it) needs, as ``expected_size`` reads the header; ``unrecognised`` when the header is not recognised (a file
    just written must have one)."""
    if start is None:
        return True
    expected, compressed = expected_size(start.data), start.compressed
    if expected is None:
        return unrecognised
    if not compressed:
        return path.stat().st_size < expected
    if path.stat().st_size * _DEFLATE_MAX_RATIO + _DEFLATE_SLACK_BYTES < expected:
        return True  # more than any deflate stream of this size holds: no need to decompress it
    with open(path, "rb") as f:
        f.seek(-4, 2)
        isize = int.from_bytes(f.read(4), "little")
    # The trailer holds the size modulo 4 GiB: it confirms a header's need below that only (a 352-byte NIfTI claiming
    # 2048x1024x1024 int16 voxels, 4 GiB + 352 bytes, matched it and was read as 4 GiB of zeros in 30 s and 8 GB).
    if isize == expected % 2**32 and expected < 2**32:
        return False
    # The gzip trailer disagrees: decompress to tell a cut stream, or a whole one that holds fewer bytes than the
    # header needs (it was read as a zero-filled volume), from one of several members (bgzip) or with extra bytes.
    size, whole = _gzip_content_size(path)
    return not whole or size < expected


# Most bytes one deflate-compressed byte can expand to (zlib's documented maximum ratio is 1032:1, measured 1029:1
# on zeros): a gzip or zlib data block of n bytes cannot hold more voxel bytes than this many times n.
_DEFLATE_MAX_RATIO = 1032
_DEFLATE_SLACK_BYTES = 1 << 16  # stream headers and the last, partial block
# MetaImage ElementType -> bytes per value (MetaIO's MET_ValueTypeSize: MET_LONG is 4 bytes, as is MET_INT).
_MET_VALUE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                    "MET_DOUBLE": 8}


@dataclass(frozen=True)
class _DataClaim:
    """What a NRRD or MetaImage header says its voxel data takes: ``values`` of ``value_bytes`` each once decoded,
    stored with ``encoding`` ('raw', 'deflate', 'text', 'hex' or 'bzip2') in ``data_file`` from byte ``offset`` on."""

    values: int
    value_bytes: int
    encoding: str
    data_file: Path
    offset: int


def _nrrd_value_bytes(kind: str) -> int | None:
    """Bytes per value of a NRRD ``type`` (any of its spellings: 'unsigned short', 'uint16_t', 'ushort', ...)."""
    kind = kind.lower()
    for words, size in ((("long", "64", "double"), 8), (("short", "16"), 2), (("char", "8"), 1),
                        (("int", "32", "float"), 4)):
        if any(word in kind for word in words):
            return size
    return None


def _data_claim(path: Path) -> _DataClaim | None:
    """The voxel data a NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) header claims, None for other files and for
    headers this check does not follow (file lists, unknown types, no sizes): ITK's own reader judges those."""
    ending = image_ending(path)
    if ending in (".nrrd", ".nhdr"):
        parsed = _header_fields(path, ":", None)
        if parsed is None:
            return None
        fields, offset = parsed
        value_bytes = _nrrd_value_bytes(fields.get("type", ""))
        sizes = fields.get("sizes", "").split()
        encoding = {"raw": "raw", "gzip": "deflate", "gz": "deflate", "ascii": "text", "text": "text", "txt": "text",
                    "hex": "hex", "bzip2": "bzip2", "bz2": "bzip2"}.get(fields.get("encoding", "").lower())
        data_file = fields.get("data file", fields.get("datafile"))
    elif ending in (".mha", ".mhd"):
        parsed = _header_fields(path, "=", "elementdatafile")
        if parsed is None:
            return None
        fields, offset = parsed
        value_bytes = _MET_VALUE_BYTES.get(fields.get("elementtype", "").upper())
        if value_bytes is not None and fields.get("elementnumberofchannels", "1").isdecimal():
            value_bytes *= int(fields.get("elementnumberofchannels", "1"))
        sizes = fields.get("dimsize", "").split()
        compressed = fields.get("compresseddata", "false").lower() == "true"
        binary = fields.get("binarydata", "true").lower() == "true"
        encoding = "deflate" if compressed else "raw" if binary else "text"
        data_file = fields.get("elementdatafile")
        data_file = None if data_file is None or data_file.upper() == "LOCAL" else data_file
    else:
        return None
    if value_bytes is None or encoding is None or not sizes or not all(s.isdecimal() for s in sizes):
        return None
    if data_file is not None:
        if len(data_file.split()) != 1 or data_file.upper() == "LIST":  # a numbered pattern or a list of files
            return None
        offset, data_path = 0, path.parent / data_file
        if not data_path.is_file():
            return None  # named as missing by _missing_data_file_problem
    else:
        data_path = path
    return _DataClaim(math.prod(int(s) for s in sizes), value_bytes, encoding, data_path, offset)


def _claimed_data_problem(path: Path) -> str | None:
    """Why a NRRD or MetaImage file cannot hold the voxels its header claims, else None.

    ITK allocates the claimed image before it reads a voxel: a 500-byte .nrrd claiming ``sizes: 1000 1000 1000``
    took 4 GB and 3 s to fail as 'fread got only 100 4-sized things', and a larger claim could exhaust the memory.
    The data's stored bytes bound what it can hold: all of the claimed bytes when raw, one byte a voxel value at
    least as text (one character a value), half as hex, and for gzip or zlib data at most ``_DEFLATE_MAX_RATIO``
    times the compressed size. Only the sizes of files are looked at: nothing is read or decompressed. A header
    this check does not follow (its data file missing among the reasons) is asked only for a missing data file,
    so a header that is followed is read once.
    """
    claim = _data_claim(path)
    if claim is None:
        return _missing_data_file_problem(path)
    if claim.encoding == "bzip2":  # ITK's NrrdIO has no bzip2: it allocated the claimed image, then refused
        return (f"{path}: its voxel data is bzip2-compressed, which ITK, the image reader, cannot read; save it again "
                "with gzip (or raw) encoding")
    stored = max(0, claim.data_file.stat().st_size - claim.offset)
    claimed = claim.values * claim.value_bytes
    bound = {"raw": stored, "text": stored * claim.value_bytes, "hex": stored // 2,
             "deflate": stored * _DEFLATE_MAX_RATIO + _DEFLATE_SLACK_BYTES}[claim.encoding]
    if bound >= claimed:
        return None
    holds = "holds" if claim.encoding == "raw" else "can hold at most"
    return (f"{path}: its header claims {claim.values} voxel values ({claimed} bytes), but the data in "
            f"{claim.data_file.name} {holds} {bound} bytes (truncated file, or damaged sizes in the header?); copy or "
            "export it again")


def voxel_data_cut_short(path: Path) -> bool:
    """Whether the ITK-format file ``path`` holds fewer voxel bytes than its header claims: NIfTI and GIPL as
    ``read_image`` tells it before ITK reads (which zero-fills a cut file), NRRD and MetaImage from their headers'
    claims (a compressed one decompressed, in pieces). A check that fails on the file's bytes counts as cut short.
    For ``predict --continue``, which keeps a label map it finds whole."""
    try:
        if (expected_size := _expected_size_reader(path)) is not None:
            return _is_truncated(path, expected_size, _file_start(path))
        if (claim := _data_claim(path)) is None or claim.encoding not in ("raw", "deflate"):
            return False  # a header or encoding predict does not write: ITK's reader judges it when it is read
        claimed = claim.values * claim.value_bytes
        if claim.encoding == "raw":
            return claim.data_file.stat().st_size - claim.offset < claimed
        return _inflated_size(claim.data_file, claim.offset, claimed) < claimed
    except (OSError, ValueError, zlib.error):
        return True


def _inflated_size(path: Path, offset: int, wanted: int) -> int:
    """How many bytes the zlib or gzip stream from byte ``offset`` of ``path`` decompresses to (at most ``wanted``, and
    less when it ends early), in pieces of at most 16 MB whatever the compression ratio."""
    size, decompressor = 0, zlib.decompressobj(wbits=47)  # 32 + 15: a zlib or a gzip header, told by its first bytes
    with open(path, "rb") as f:
        f.seek(offset)
        while size < wanted and not decompressor.eof and (chunk := f.read(1 << 20)):
            while chunk and size < wanted and not decompressor.eof:
                size += len(decompressor.decompress(chunk, 1 << 24))
                chunk = decompressor.unconsumed_tail
    return size


def _gzip_content_size(path: Path) -> tuple[int, bool]:
    """(decompressed bytes, whether the stream ends whole) of a gzip file of one or more members; bytes after
    the last member that are no gzip member are ignored, as zlib's reader (ITK's) ignores them. Decompressed in
    pieces of at most 16 MB, whatever the compression ratio (a label map of zeros compresses 1000-fold)."""
    size, decompressor = 0, zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                if decompressor.eof:  # a further member
                    decompressor = zlib.decompressobj(wbits=31)
                    try:
                        size += len(decompressor.decompress(chunk, 1 << 24))
                    except zlib.error:
                        return size, True
                else:
                    size += len(decompressor.decompress(chunk, 1 << 24))
                chunk = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
    return size, decompressor.eof
