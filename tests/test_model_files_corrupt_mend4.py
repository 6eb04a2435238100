"""A model zip's deflated member damaged by a flipped bit often decodes to a few bytes more than its declared size,
and was refused as 'inflates beyond its declared size ... (a zip bomb?)'; it is now named as damaged data, while a
member that truly inflates far beyond its declared size is still called a zip bomb."""

from __future__ import annotations

import io
import zipfile
import zlib

import numpy as np
import pytest

from autoseg.errors import ModelFileError
from autoseg.utils.checksummed_zip import LOCAL_HEADER, read_member

NAME = "fold_0/checkpoint_final.safetensors"


def _zip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(NAME, data)
    return buffer.getvalue()


def _read(raw: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        return read_member(archive, archive.getinfo(NAME), "model.zip: refusing to import")


def _flipped_to_overflow(raw: bytes, size: int) -> tuple[bytes, int]:
    """``raw`` with the first bit flip of the member's data (in order) that still inflates, to more than ``size``
    bytes; with the size it inflates to."""
    start = LOCAL_HEADER.size + len(NAME)
    for position in range(start, len(raw)):
        for bit in range(8):
            damaged = bytearray(raw)
            damaged[position] ^= 1 << bit
            try:
                inflated = len(zlib.decompress(bytes(damaged[start:]), -zlib.MAX_WBITS))
            except zlib.error:
                continue
            if inflated > size:
                return bytes(damaged), inflated
    raise AssertionError("no bit flip inflates beyond the size")


def test_a_damaged_member_inflating_a_little_too_far_is_named_as_damaged() -> None:
    data = np.random.default_rng(0).standard_normal(20000).astype(np.float16).tobytes() + bytes(20000)
    damaged, inflated = _flipped_to_overflow(_zip(data), len(data))
    with pytest.raises(ModelFileError) as info:
        _read(damaged)
    assert str(info.value) == (f"model.zip: refusing to import: member '{NAME}' cannot be read (damaged compressed data: "
                               f"it inflates to {inflated} bytes, not its declared {len(data)}, and its CRC-32 does not "
                               "match the zip's directory); get the file again")


def test_a_member_inflating_far_beyond_its_declared_size_is_a_zip_bomb() -> None:
    raw = bytearray(_zip(bytes(4 * 1024**2)))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        directory = archive.getinfo(NAME).header_offset  # the central directory follows the one member
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24: central + 28] = (1000).to_bytes(4, "little")  # the directory's uncompressed size
    raw[directory + 22: directory + 26] = (1000).to_bytes(4, "little")  # the local header's
    with pytest.raises(ModelFileError) as info:
        _read(bytes(raw))
    assert str(info.value) == (f"model.zip: refusing to import: member '{NAME}' inflates beyond its declared size of "
                               "1000 bytes (a zip bomb?)")
