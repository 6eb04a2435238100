"""A file's cheap identity: enough to tell that it changed, without reading it whole.

Preprocess keys its stored cases on the identities of their input files; ensemble and postprocess apply
record those of their inputs in the output folder's mark. Hashing whole files read every input a second
time (for a full-resolution dataset, gigabytes before the first case); any rewrite of a file changes its
mtime, and an edit that keeps size and mtime (a restored backup of other content) changes its first block.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

HEADER_BYTES = 64 * 1024  # hashed from each file, with its size and mtime


def file_signature(path: Path) -> list[Any]:
    """``[name, size, mtime_ns, sha256 of the first HEADER_BYTES]`` of ``path`` (JSON-ready)."""
    stat = path.stat()
    with path.open("rb") as file:
        head = hashlib.sha256(file.read(HEADER_BYTES)).hexdigest()
    return [path.name, stat.st_size, stat.st_mtime_ns, head]
