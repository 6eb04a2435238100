"""Write a zip of named members with a ``manifest.json`` that lists each member's sha256 (model files), and read
its members back safely: no symbolic links, no zip bombs, no truncated data (import-model, the onnxruntime engine)."""

from __future__ import annotations

import hashlib
import json
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from autoseg.errors import ModelFileError
from autoseg.utils.atomic import atomic_path

MANIFEST = "manifest.json"
# The manifest's "format" of the two kinds of model file. Each reader names the other kind, so a file given
# to the wrong command gets the command that takes it.
MODEL_ZIP_FORMAT = "autoseg-model"  # export-model: import-model and predict -m (torch engine)
ONNX_ZIP_FORMAT = "autoseg-onnx-model"  # export-model --format onnx: predict -m --engine onnxruntime
# Declared uncompressed size a model file may reach: 5 folds of nnU-Net's largest published networks
# fit many times over; a bigger declaration is a zip bomb, refused before anything is inflated.
MAX_UNCOMPRESSED_BYTES = 16 * 1024**3
LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header (APPNOTE 4.3.7), 30 bytes
INFLATE_CHUNK = 1024**2  # what a member inflating past its declared size is read on in, counted and dropped


def write_checksummed_zip(output_zip: str | Path, manifest: Mapping[str, Any], members: Mapping[str, bytes]) -> Path:
    """Atomically write ``members`` and ``manifest`` plus ``"files": {name: sha256}`` as ``manifest.json``."""
    listed = {**manifest, "files": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}}
    output_zip = Path(output_zip)
    with atomic_path(output_zip) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(listed, indent=2) + "\n")
        for name, data in members.items():
            archive.writestr(name, data)
    return output_zip


def check_entries(infos: Sequence[zipfile.ZipInfo], refuse: str) -> None:
    """Refuse symlinks, compression export-model never uses, and sizes no model reaches (zip bombs)."""
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ModelFileError(f"{refuse}: member {info.filename!r} is a symbolic link; model files hold plain files only")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{refuse}: member {info.filename!r} uses compression method {info.compress_type}; "
                                 "export-model writes stored or deflated members only")
    declared = sum(info.file_size for info in infos)
    if declared > MAX_UNCOMPRESSED_BYTES:
        raise ModelFileError(f"{refuse}: its members declare {declared / 1024**3:.1f} GiB uncompressed, more than any "
                             f"model ({MAX_UNCOMPRESSED_BYTES / 1024**3:.0f} GiB); a zip bomb or not a model file")


def checkpoint_kind(name: str) -> str:
    """``final`` for ``final`` or ``checkpoint_final.safetensors`` (checkpoint_format's names, which this
    torch-free module cannot import)."""
    return name.removeprefix("checkpoint_").removesuffix(".safetensors")


def check_zip_checkpoint(zip_path: Path, held: str, asked: str) -> None:
    """A model file holds one checkpoint (``held``, as its manifest names it); the one predict asks for must
    be it: the torch and the onnxruntime engine refuse another alike, here."""
    kind = checkpoint_kind(held)
    if checkpoint_kind(asked) != kind:
        raise ModelFileError(f"{zip_path}: holds the {kind} checkpoint, not {asked}; predict with --checkpoint "
                             f"{kind}, or export the {asked} checkpoint")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, refuse: str) -> bytes:
    """A member's bytes, never inflating more than its declared size (plus one byte that proves a lie)."""
    where = f"{refuse}: member {info.filename!r}"
    handle = archive.fp
    assert handle is not None
    handle.seek(info.header_offset)
    header = handle.read(LOCAL_HEADER.size)
    if len(header) < LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ModelFileError(f"{where} cannot be read (the zip is truncated or damaged)")
    fields = LOCAL_HEADER.unpack(header)
    handle.seek(fields[-2] + fields[-1], 1)  # file name and extra field
    raw = handle.read(info.compress_size)
    if len(raw) < info.compress_size:
        raise ModelFileError(f"{where} cannot be read (the zip is truncated: its data ends early)")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(raw, info.file_size + 1)
        except zlib.error as exc:
            raise ModelFileError(f"{where} cannot be read (damaged compressed data: {exc})") from None
        if len(data) > info.file_size or inflater.unconsumed_tail:
            raise ModelFileError(_overflow_problem(where, inflater, data, info))
    else:
        data = raw
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise ModelFileError(f"{where} cannot be read (its size or CRC-32 does not match the zip's directory; truncated or damaged)")
    return data


def _overflow_problem(where: str, inflater: Any, head: bytes, info: zipfile.ZipInfo) -> str:
    """Why a deflated member inflated past its declared size, ``head`` being its first ``file_size + 1`` bytes: a
    bit flipped in its data (a damaged copy) often decodes to a few bytes more, and was called 'a zip bomb?'. The
    rest is inflated in chunks that are counted, not kept, up to twice the declared size: a stream that breaks, or
    ends there with another CRC-32 than the directory's, is damaged; one inflating further (or to the content its
    CRC-32 names, under a smaller size) is a bomb."""
    crc, total, cap = zlib.crc32(head), len(head), 2 * info.file_size + INFLATE_CHUNK
    try:
        while not inflater.eof and total <= cap:
            chunk = inflater.decompress(inflater.unconsumed_tail, INFLATE_CHUNK)
            if not chunk:
                break
            crc, total = zlib.crc32(chunk, crc), total + len(chunk)
    except zlib.error as exc:
        return f"{where} cannot be read (damaged compressed data: {exc}); get the file again"
    if total <= cap and crc != info.CRC:
        return (f"{where} cannot be read (damaged compressed data: it inflates to {total} bytes, not its declared "
                f"{info.file_size}, and its CRC-32 does not match the zip's directory); get the file again")
    return f"{where} inflates beyond its declared size of {info.file_size} bytes (a zip bomb?)"
