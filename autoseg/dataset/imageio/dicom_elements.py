"""DICOM files read as bytes, where ITK's reader says too little: their elements walked, the transfer
syntax, the Pixel Data element, and files damaged beyond that walk."""

from __future__ import annotations

from dataclasses import dataclass


def _dicom_transfer_syntax(file: str) -> bytes | None:
    """The transfer syntax UID in a Part-10 DICOM file's meta group; None for a file without one (or a damaged one)."""
    import struct

    with open(file, "rb") as f:
        head = f.read(1 << 16)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        return None
    meta: dict[int, bytes] = {}
    try:
        _walk_dicom_elements(head[:144 + struct.unpack_from("<I", head, 140)[0]], 144, explicit=True, nested=False,
                             values=meta)
    except EOFError:
        return None
    return meta.get(0x00020010, b"").rstrip(b"\x00 ")


@dataclass(frozen=True)
class _PixelData:
    """A DICOM file's Pixel Data: encapsulated, its fragments' lengths (the Basic Offset Table item left
    out); ``()`` for native pixels."""

    fragments: tuple[int, ...]


def _dicom_pixel_data(data: bytes, syntax: bytes | None = None) -> _PixelData | None:
    """The top-level Pixel Data (7FE0,0010) of a DICOM file's bytes, with or without the Part-10 preamble and
    file meta (then explicit VR when the first element names one, else implicit, as GDCM guesses); None
    when it cannot be walked (big endian or deflated, cut short) or holds no Pixel Data."""
    import struct

    if len(data) >= 144 and data[128:132] == b"DICM":
        if syntax in (b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99"):
            return None
        start, explicit = 144 + struct.unpack_from("<I", data, 140)[0], syntax != b"1.2.840.10008.1.2"
    else:
        start, explicit = 0, data[4:6].isalpha() and data[4:6].isupper()
    spans: dict[int, tuple[int, int]] = {}
    try:
        _walk_dicom_elements(data, start, explicit, nested=False, values={}, spans=spans)
    except (EOFError, RecursionError, struct.error):
        return None
    if 0x7FE00010 not in spans:
        return None
    position, length = spans[0x7FE00010]
    if length != _DICOM_UNDEFINED_LENGTH:
        return _PixelData(())
    items = []
    while position + 8 <= len(data) and struct.unpack_from("<HH", data, position) == (0xFFFE, 0xE000):
        items.append(struct.unpack_from("<I", data, position + 4)[0])
        position += 8 + items[-1]
    return _PixelData(tuple(items[1:]))


_DICOM_UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit-VR elements whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2); the others have 2 bytes.
_DICOM_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _is_damaged_dicom(data: bytes, series_sop_class: str) -> bool:
    """Whether a Part-10 DICOM file (preamble, 'DICM', file meta group) that GDCM left out of a series is a damaged
    slice: it stops inside its file meta group or an element (cut short), holds no data set, or is of the
    series' own SOP class (a whole, readable one would be in the series; a cut at an element boundary, or a
    damaged tag GDCM stumbled on, left it out: random bit flips at either end of a series dropped a slice
    unseen). A transfer syntax not walked here (big endian, deflated) only counts by its SOP class.
    """
    import struct

    if len(data) < 144 or data[132:136] != b"\x02\x00\x00\x00":  # (0002,0000) group length comes first
        return True
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    if len(data) < meta_end + 8:
        return True
    meta: dict[int, bytes] = {}
    elements: dict[int, bytes] = {}
    try:
        _walk_dicom_elements(data[:meta_end], 144, explicit=True, nested=False, values=meta)
        syntax = meta.get(0x00020010, b"").rstrip(b"\x00 ")
        if syntax not in (b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99"):  # big endian, deflated: not walked
            _walk_dicom_elements(data, meta_end, explicit=syntax != b"1.2.840.10008.1.2", nested=False, values=elements)
    except EOFError:
        return True
    except RecursionError:  # sequences nested thousands deep: no DICOM writer makes them, a damaged file may seem to
        return True
    # The SOP class in the file meta group (MediaStorageSOPClassUID) or the data set (SOPClassUID): either may be
    # the damaged one.
    classes = {value.rstrip(b"\x00 ").decode("ascii", "replace")
               for value in (meta.get(0x00020002), elements.get(0x00080016)) if value is not None}
    return series_sop_class in classes


def _walk_dicom_elements(data: bytes, position: int, explicit: bool, nested: bool, values: dict[int, bytes],
                         spans: dict[int, tuple[int, int]] | None = None) -> int:
    """The position after the data set (or, ``nested``, the undefined-length value) starting at ``position``,
    its elements' tags and short values put into ``values`` (and, given ``spans``, each one's value position
    and declared length); ``EOFError`` when the bytes end inside an element or before a nested value's delimiter."""
    import struct

    while position < len(data):
        if position + 8 > len(data):
            raise EOFError
        group, element = struct.unpack_from("<HH", data, position)
        if group == 0xFFFE:  # item, item delimiter or sequence delimiter: tag + 4-byte length, no VR
            length = struct.unpack_from("<I", data, position + 4)[0]
            position += 8
            if element in (0xE00D, 0xE0DD):
                return position
            value_explicit = explicit
        elif explicit and data[position + 4:position + 6] in _DICOM_LONG_VRS:
            if position + 12 > len(data):
                raise EOFError
            length = struct.unpack_from("<I", data, position + 8)[0]
            value_explicit = data[position + 4:position + 6] != b"UN"  # an undefined-length UN holds implicit VR
            position += 12
        else:
            length = struct.unpack_from("<H" if explicit else "<I", data, position + 6 if explicit else position + 4)[0]
            value_explicit = explicit
            position += 8
        if group != 0xFFFE and not nested:
            values[group << 16 | element] = data[position:position + min(length, 64)]
            if spans is not None:
                spans[group << 16 | element] = (position, length)
        if length == _DICOM_UNDEFINED_LENGTH:
            position = _walk_dicom_elements(data, position, value_explicit, nested=True, values={})
        else:
            position += length
            if position > len(data):
                raise EOFError
    if nested:
        raise EOFError
    return position
