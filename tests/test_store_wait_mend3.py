"""train's store check and a preprocess run writing into the store: the check polls the folder's exclusive lock
for a bounded time, saying that it waits, instead of blocking in silence for as long as writers keep coming
(Linux grants new shared locks while an exclusive one waits: a ``preprocess -np 2`` run starved it)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import PreprocessingError
from autoseg.preprocessing import store
from autoseg.preprocessing.store import case_paths, check_stored, save_case

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")

# A preprocess run in the middle of save_case: the folder's shared lock held, the case's marker removed.
WRITER = ("import sys; from pathlib import Path; from autoseg.utils.atomic import folder_lock\n"
          "marker = Path(sys.argv[1]); text = marker.read_text()\n"
          "with folder_lock(marker.parent, shared=True):\n"
          "    marker.unlink(); print('storing', flush=True); sys.stdin.read(); marker.write_text(text)")


def _blocked_here() -> bool:
    """Whether this process waits in a blocking ``flock`` (``/proc/locks`` lists such a request with '->')."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any(len(f) > 5 and f[1] == "->" and f[5] == str(os.getpid()) for f in map(str.split, lines))


def _check_while_storing(tmp_path: Path, capfd: pytest.CaptureFixture[str], finish_when_waiting: bool,
                         ) -> tuple[list, bool, str, int]:
    """Run check_stored on a case a writer process is storing again; the writer finishes once the check ended,
    blocked in flock (as it did) or, with ``finish_when_waiting``, said that it waits. The check's outcome, whether
    it blocked, its stderr and the writer's pid."""
    folder = tmp_path / "store"
    save_case(folder, "a", np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.int16), {"shape": [4, 4, 4]})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(case_paths(folder, "a")[2])], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            check_stored(folder, "a")
            outcome.append(None)
        except PreprocessingError as exc:
            outcome.append(exc)

    err, blocked = "", False
    try:
        assert writer.stdout.readline() == "storing\n"
        capfd.readouterr()
        thread = threading.Thread(target=check)
        thread.start()
        while thread.is_alive() and not (finish_when_waiting and "waiting for" in err) and not blocked:
            time.sleep(0.01)
            err += capfd.readouterr().err
            blocked = _blocked_here()
    finally:
        writer.communicate("")
    thread.join()
    assert writer.returncode == 0
    return outcome, blocked, err + capfd.readouterr().err, writer.pid


def test_the_store_check_says_it_waits_and_goes_on_once_the_writer_is_done(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 3600.0)
    outcome, blocked, err, _ = _check_while_storing(tmp_path, capfd, finish_when_waiting=True)
    assert not blocked and outcome == [None]
    assert err == f"waiting for a preprocess run writing into {tmp_path / 'store'}\n"


def test_the_store_check_refuses_the_case_after_its_wait_naming_the_writing_run(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 0.0)  # the bound is reached at the second poll
    outcome, blocked, err, pid = _check_while_storing(tmp_path, capfd, finish_when_waiting=False)
    folder = tmp_path / "store"
    assert not blocked and len(outcome) == 1 and isinstance(outcome[0], PreprocessingError)
    assert str(outcome[0]) == (
        f"{folder}: case a fails its check while a preprocess run (process {pid}) has been writing into this folder "
        "for over 0 s, probably storing the case again; start train again once that run has finished")
    assert err == f"waiting for a preprocess run writing into {folder}\n"
