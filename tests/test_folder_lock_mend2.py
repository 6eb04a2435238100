"""``folder_lock`` locks a hidden regular file in the folder (a folder's own descriptor has no ``flock`` over NFS,
so a second train of a fold on another host was not refused), goes on with one warning on a file system
without ``flock``, and the folders made only to hold the lock go again when left empty."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg.utils import atomic
from autoseg.utils.atomic import LOCK_FILE, FolderLocked, folder_lock, lock_holder
from autoseg.utils.folders import locked_new_folder

fcntl = pytest.importorskip("fcntl")
HOLD = ("import sys; from autoseg.utils.atomic import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")


def test_the_lock_is_taken_on_a_hidden_regular_file(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        assert (tmp_path / LOCK_FILE).is_file() and not (tmp_path / LOCK_FILE).is_symlink()
        with open(tmp_path / LOCK_FILE, "rb") as lock, pytest.raises(BlockingIOError):
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # what another host's process does over NFS
        if Path("/proc/locks").is_file():
            assert lock_holder(tmp_path) == proc.pid
        with pytest.raises(FolderLocked, match=rf"^{re.escape(str(tmp_path))}: locked by process {proc.pid}$" if Path("/proc/locks").is_file() else ""):
            with folder_lock(tmp_path, wait=False):
                pass
    finally:
        proc.communicate("")
    assert list(tmp_path.iterdir()) == []  # an exclusive holder removes it as it leaves: no result folder keeps it


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_without_flock_goes_on_unlocked_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: int,
) -> None:
    def no_flock(fd: int, operation: int) -> None:
        raise OSError(code, "no locks here")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(atomic, "_warned_no_lock", set())
    ran = []
    for _ in range(3):  # three saved cases: one warning
        with folder_lock(tmp_path, shared=True):
            ran.append(True)
    assert ran == [True] * 3
    assert capsys.readouterr().err == (f"warning: {tmp_path}: its file system cannot lock files (no locks here); going "
                                       "on without the lock that keeps two runs from writing there at once\n")


def test_another_flock_error_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bad(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, "bad descriptor")

    monkeypatch.setattr(fcntl, "flock", bad)
    with pytest.raises(OSError, match="bad descriptor"), folder_lock(tmp_path):
        pass


def test_folders_made_for_the_lock_go_again_when_left_empty(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), locked_new_folder(tmp_path / "results" / "Dataset1_A" / "fold_0"):
        assert (tmp_path / "results" / "Dataset1_A" / "fold_0" / LOCK_FILE).is_file()
        raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == []
    with locked_new_folder(tmp_path / "results" / "fold_0"):
        (tmp_path / "results" / "fold_0" / "checkpoint").write_text("x")
    assert [p.name for p in (tmp_path / "results" / "fold_0").iterdir()] == ["checkpoint"]


def test_a_shared_lock_leaves_its_file_and_a_waiter_locks_a_new_one(tmp_path: Path) -> None:
    with folder_lock(tmp_path, shared=True):
        pass
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]  # other sharers may hold it: it stays
    stale = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)  # a waiter that opened the file its holder then removed
    try:
        with folder_lock(tmp_path):
            pass
        assert not (tmp_path / LOCK_FILE).exists()
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the removed file: locking it excludes nobody, so
        with folder_lock(tmp_path, wait=False):  # the next holder locks a new one
            assert (tmp_path / LOCK_FILE).is_file()
    finally:
        os.close(stale)
