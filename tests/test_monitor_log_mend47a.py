"""A log line ``Monitor.log`` fails to write (a full disk) stops a run of one process at once: kept for the ranks'
next meeting point (288311b, right under torchrun) it let a single-process run train on to the end of the epoch with
its log unwritable. Under torchrun, and from another thread (the watchdog's), it is still kept for ``raise_kept``."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from autoseg.training.monitor import LOG_FILE, Monitor


def _unwritable(tmp_path: Path) -> Monitor:
    """A monitor whose log file is a folder: every line's write fails with IsADirectoryError."""
    (tmp_path / "fold" / LOG_FILE).mkdir(parents=True)
    return Monitor(tmp_path / "fold")


def test_one_process_stops_at_the_failed_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monitor = _unwritable(tmp_path)
    with pytest.raises(IsADirectoryError) as failed:
        monitor.log("time budget: a line in the middle of the epoch")
    assert failed.value.filename == str(tmp_path / "fold" / LOG_FILE)
    assert capsys.readouterr().err.endswith("  time budget: a line in the middle of the epoch\n")  # still shown
    monitor.raise_kept()  # raised once, not again at the end of the epoch


def test_under_torchrun_the_failed_line_waits_for_the_ranks_to_meet(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monitor = _unwritable(tmp_path)
    monitor.log("first")
    monitor.log("second")
    with pytest.raises(IsADirectoryError):
        monitor.raise_kept()


def test_a_thread_s_failed_line_is_kept_for_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monitor = _unwritable(tmp_path)
    raised: list[BaseException] = []

    def watchdog() -> None:
        try:
            monitor.log("watchdog: no batch for 10 minutes")
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            raised.append(exc)

    thread = threading.Thread(target=watchdog)
    thread.start()
    thread.join()
    assert raised == []
    with pytest.raises(IsADirectoryError):
        monitor.raise_kept()
