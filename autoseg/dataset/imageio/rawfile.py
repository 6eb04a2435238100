"""A file as bytes, before any image reader opens it: a path ITK can take, a file with content (no empty file,
no repository pointer), gzip or not, its first (gunzipped) bytes, a text header's fields; and the one line of a
reader's error worth showing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import DatasetError
from autoseg.paths import undecodable_path_problem


def _check_utf8_path(path: Path) -> None:
    """Refuse a path SimpleITK would abort the process on (every reader and writer checks it first)."""
    if (problem := undecodable_path_problem(path)) is not None:
        raise DatasetError(problem)


# The first bytes of a file that stands for an image kept elsewhere (a repository cloned without its large files):
# what it is, and the command that fetches the image.
_POINTER_STARTS = {b"version https://git-lfs.github.com/spec/": ("a Git LFS pointer", "git lfs pull"),
                   b"/annex/objects/": ("a git-annex pointer", "git annex get, or datalad get")}


def _refuse_contentless_file(path: Path) -> None:
    """Refuse a regular file that holds no image at all: an empty one, or the pointer a repository cloned without
    its large files leaves in the image's place (was 'cannot be read (truncated or corrupt file?): Unable to
    determine ImageIO reader', and an empty PNG the same, while an empty NIfTI was named as empty)."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty (0 bytes; an interrupted copy or export?); copy or export it again")
    try:
        with open(path, "rb") as file:
            start = file.read(64)
    except OSError:
        return  # the reader names what keeps the file from being read
    for prefix, (kind, fetch) in _POINTER_STARTS.items():
        if start.startswith(prefix):
            raise DatasetError(f"{path}: is {kind}, not the image (a repository cloned without its large files?); "
                               f"fetch the image ({fetch}), then run the command again")


def is_gzip(path: Path) -> bool:
    """Whether the file starts with gzip's magic bytes: ITK (and so nnU-Net) reads an uncompressed NIfTI named
    .nii.gz (renamed by hand to match file_ending) as it is, which was refused as 'truncated'."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


@dataclass(frozen=True)
class _FileStart:
    """A file's first bytes (enough for a NIfTI-2 header, the largest checked), decompressed when it is gzip."""

    data: bytes
    compressed: bool


def _file_start(path: Path) -> _FileStart | None:
    """The start of ``path``; None when its gzip stream breaks within those bytes (a file cut short)."""
    import gzip

    compressed = is_gzip(path)  # .nii, .gipl, or an uncompressed one named .nii.gz, are read as they are
    with (gzip.open if compressed else open)(path, "rb") as f:
        try:
            return _FileStart(f.read(540), compressed)
        except (OSError, EOFError):
            if not compressed:
                raise
            return None


def _header_fields(path: Path, separator: str, last_key: str | None) -> tuple[dict[str, str], int] | None:
    """(lower-cased key -> value, byte offset after the header) of a text header of ``key<separator>value`` lines
    that ends at a blank line (NRRD) or after its ``last_key`` line (MetaImage's ElementDataFile); None when the
    first 64 KiB hold no such end (no header autoseg can judge: ITK's reader is left to say what is wrong)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    fields: dict[str, str] = {}
    position = 0
    while (end := head.find(b"\n", position)) >= 0:
        line = head[position:end].decode("latin-1").rstrip("\r")
        position = end + 1
        if not line.strip():
            return fields, position
        key, sep, value = line.partition(separator)
        if sep and not line.startswith("#") and not value.startswith("="):  # no comment, no NRRD "key:=value" pair
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == last_key:
                return fields, position
    return (fields, len(head)) if position == len(head) and last_key is None else None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SimpleITK's messages start with a source location; the useful part is the last line.
    return lines[-1] if lines else type(exc).__name__
