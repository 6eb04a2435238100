"""Folders a command makes only to hold its lock in them: gone again if the command leaves them empty."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from autoseg.utils.atomic import LOCK_FILE, folder_lock


@contextlib.contextmanager
def locked_new_folder(folder: Path, wait: bool = True) -> Iterator[None]:
    """Make ``folder`` (and missing parents) and hold its ``folder_lock``; on leaving, remove the ones made here
    that hold nothing but the lock file: a refused train or import left an empty ``<results>/<Dataset>/``
    behind. The lock file goes while still held (a waiter then locks a new one); a folder that existed before
    keeps its lock file. ``FolderLocked`` (``wait=False``) passes through."""
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(folder, wait=wait):
            try:
                yield
            finally:
                with contextlib.suppress(OSError):  # the folder itself gone meanwhile: nothing to remove
                    if made and [entry.name for entry in folder.iterdir()] == [LOCK_FILE]:
                        (folder / LOCK_FILE).unlink()
    finally:
        for path in made:  # deepest first; only the empty ones: another run's files may have arrived
            with contextlib.suppress(OSError):
                path.rmdir()
