"""Folders a command makes only to hold its lock in them: gone again if the command leaves them empty."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from autoseg.utils.atomic import folder_lock


@contextlib.contextmanager
def locked_new_folder(folder: Path, wait: bool = True) -> Iterator[None]:
    """Make ``folder`` (and missing parents) and hold its exclusive ``folder_lock``; on leaving (the lock and its
    file gone), remove the ones made here that are empty: a refused train or import left an empty
    ``<results>/<Dataset>/`` behind. ``FolderLocked`` (``wait=False``) passes through."""
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(folder, wait=wait):
            yield
    finally:
        for path in made:  # deepest first; only the empty ones: another run's files may have arrived
            with contextlib.suppress(OSError):
                path.rmdir()
