"""Atomic writes: a result file is either absent, the old version, or complete; never half-written.

Write to a temporary name in the same folder, flush and fsync, then ``os.replace`` (atomic on POSIX and
Windows when source and target are on one file system). The rename alone makes a write atomic against a
killed process; the fsync adds durability against power loss, and bulk writers that can redo their
work (the preprocessed store, hundreds of small files) skip it with ``durable=False``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the target's suffix (``suffix`` overrides it) so that writers that pick
    the format from the extension (SimpleITK, numpy) behave. On error the temporary file is removed
    and ``path`` is untouched. ``durable=False`` skips the fsync before the rename.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    name_suffix = suffix if suffix is not None else "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{name_suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        # mkstemp creates the file private (0600); results get the permissions of any new file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2, durable: bool = True) -> None:
    """Write ``obj`` as JSON (insertion order; ``indent=None`` writes one compact line)."""
    separators = (",", ":") if indent is None else None
    atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators, allow_nan=True) + "\n", durable)
