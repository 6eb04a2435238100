"""A check of whether a fold is being trained (``fold_trainer``: predict, export-model, find-best) takes a shared lock
on the fold's lock file for an instant; a ``train`` starting in that instant was refused as 'being trained by process
<the checker>'. Train now waits out a lock held only shared, and still refuses one held exclusively."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from autoseg.training import run as run_module
from autoseg.utils.atomic import LOCK_FILE, FolderLocked, exclusive_holder

# Holds a shared lock on the lock file opened read-only, as fold_trainer does, until its stdin closes.
CHECKER = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_SH)\n"
           "print('held', flush=True); sys.stdin.read()")
TRAINER = ("import sys; from autoseg.utils.atomic import folder_lock\n"
           "with folder_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux's flock and /proc/locks")


def _holder(code: str, target: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_a_train_starting_while_a_check_holds_the_fold_is_not_refused(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fold = tmp_path / "fold_0"
    fold.mkdir()
    (fold / LOCK_FILE).touch()  # left by a killed train: a check then locks it
    checker = _holder(CHECKER, fold / LOCK_FILE)
    asked = threading.Event()  # train found the lock taken and asked who holds it
    monkeypatch.setattr(run_module, "exclusive_holder", lambda folder: asked.set() or exclusive_holder(folder))
    outcome: list[object] = []

    def lock() -> None:
        with contextlib.ExitStack() as stack:
            try:
                run_module._lock_fold_folder(fold, stack)
                outcome.append("locked")
            except FolderLocked as exc:
                outcome.append(exc)

    thread = threading.Thread(target=lock)
    try:
        thread.start()
        while thread.is_alive() and not asked.wait(0.01):  # refused at once (as it was), or waiting for the check
            pass
    finally:
        checker.communicate("")
    thread.join()
    assert outcome == ["locked"] and asked.is_set()
    assert not (fold / LOCK_FILE).exists()  # the train's exclusive lock removed its file on leaving


def test_a_fold_being_trained_is_still_refused_naming_the_trainer(tmp_path: Path) -> None:
    fold = tmp_path / "fold_0"
    fold.mkdir()
    trainer = _holder(TRAINER, fold)
    try:
        with contextlib.ExitStack() as stack, pytest.raises(FolderLocked) as refused:
            run_module._lock_fold_folder(fold, stack)
        assert refused.value.pid == trainer.pid and exclusive_holder(fold) == trainer.pid
    finally:
        trainer.communicate("")
    assert exclusive_holder(fold) is None
