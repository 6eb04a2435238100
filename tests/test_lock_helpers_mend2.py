"""One wording of a lock's holder (``atomic.holder_text``) and one public test of whether this process holds a folder's
lock (``atomic.holds_lock``): each caller spelt the wording again, and ``checkpoint_format`` read atomic's private
descriptor set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoseg.utils import atomic
from autoseg.utils.checkpoint_format import fold_trainer

from test_fold_lock_ranks_mend2 import HOLD, REPO

pytest.importorskip("fcntl")


def test_holder_text_names_the_process_or_says_another() -> None:
    assert atomic.holder_text(4242) == "process 4242"
    assert atomic.holder_text(0) == atomic.holder_text(None) == "another process"
    assert str(atomic.FolderLocked(Path("/x"), 17)) == "/x: locked by process 17"


def test_holds_lock_is_true_only_for_this_process_s_own_lock(tmp_path: Path) -> None:
    fold = tmp_path / "fold_0"
    fold.mkdir()
    assert not atomic.holds_lock(fold)  # no lock file at all
    with atomic.folder_lock(fold):
        assert atomic.holds_lock(fold)
        assert fold_trainer(fold) is None  # training's own validation is not 'being trained by' itself
    assert not atomic.holds_lock(fold)
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(fold)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    try:
        assert other.stdout.readline().strip() == "held"
        assert not atomic.holds_lock(fold)
        assert fold_trainer(fold) in (other.pid, 0)  # 0 where /proc/locks cannot tell
    finally:
        other.communicate("")


def test_fold_trainer_asks_without_locking_and_ignores_shared_holders(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """fold_trainer took a shared lock on the fold for an instant to ask; a ``train`` starting in that instant had to
    wait for the checker. Where ``/proc/locks`` answers, it now locks nothing."""
    import fcntl

    if not Path("/proc/locks").is_file():
        pytest.skip("without /proc/locks a shared lock is the only way to ask")
    fold = tmp_path / "fold_0"
    fold.mkdir()
    reader = subprocess.Popen([sys.executable, "-c", HOLD.replace("folder_lock(sys.argv[1])",
                                                                  "folder_lock(sys.argv[1], shared=True)"), str(fold)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert reader.stdout.readline().strip() == "held"
        flocks: list[int] = []
        monkeypatch.setattr(fcntl, "flock", lambda fd, operation: flocks.append(operation))
        assert fold_trainer(fold) is None  # a shared holder (a fold check) trains nothing
    finally:
        reader.communicate("")
    trainer = subprocess.Popen([sys.executable, "-c", HOLD, str(fold)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=REPO)
    try:
        assert trainer.stdout.readline().strip() == "held"
        assert fold_trainer(fold) == trainer.pid
    finally:
        trainer.communicate("")
    assert flocks == []
