"""A full disk stops a command that writes many cases at the first case it hits.

Every later case would fail the same way (each after its work was done), and the user read the same bare
'No space left on device' once per case; one line naming the folder, the case and how to resume is what helps.
Raise the ``error`` given here from a case and name its type in ``parallel_map(stop_on=...)``.
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

from autoseg.utils.atomic import disk_full_error


@contextlib.contextmanager
def stop_on_full_disk(folder: Path, what: str, error: type[Exception], rerun: str) -> Iterator[None]:
    """Turn a full disk (or exhausted quota) while writing ``what`` into ``folder`` into one ``error`` naming the
    folder and ``rerun`` (how to resume once space is freed); any other error passes unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a full disk
        full = disk_full_error(exc, folder / what)
        if full is None:
            raise
        state = "the disk is full" if full.errno == errno.ENOSPC else "the disk quota is exhausted"
        raise error(f"{folder}: {state} ({what} could not be written); free space there and re-run {rerun}") from None
