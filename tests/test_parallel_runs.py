"""The suite's parallel-run machinery (tests/parallel_runs.py): its lock and its thread settings."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from parallel_runs import ParallelRuns, SuiteLock

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="fcntl locks: Linux")


def _acquired_within(lock: SuiteLock, exclusive: bool, seconds: float) -> tuple[threading.Event, threading.Event]:
    """Start taking ``lock`` in a thread; returns (acquired, release) events."""
    acquired, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock.held(exclusive):
            acquired.set()
            release.wait(10)

    threading.Thread(target=hold, daemon=True).start()
    acquired.wait(seconds)
    return acquired, release


def test_shared_holders_share_and_an_exclusive_one_waits_for_them(tmp_path):
    # Each SuiteLock opens its own files, so flock treats them as different workers.
    first, second, alone, late = (SuiteLock(tmp_path) for _ in range(4))
    a, release_a = _acquired_within(first, False, 2.0)
    b, release_b = _acquired_within(second, False, 2.0)
    assert a.is_set() and b.is_set()  # two ordinary tests at once
    c, release_c = _acquired_within(alone, True, 0.5)
    assert not c.is_set()  # the exclusive test waits for both
    e, release_e = _acquired_within(late, False, 0.5)
    assert not e.is_set()  # the turnstile: an ordinary test arriving now waits behind it (no starvation)
    release_a.set()
    release_b.set()
    assert c.wait(2.0)
    d, release_d = _acquired_within(first, False, 0.5)
    assert not d.is_set() and not e.is_set()  # nothing else runs while it does
    release_c.set()
    assert d.wait(2.0) and e.wait(2.0)
    release_d.set()
    release_e.set()


@pytest.mark.exclusive  # torch's own thread count to compare with
def test_a_worker_runs_ordinary_tests_on_one_thread_and_exclusive_ones_on_torch_s(monkeypatch, tmp_path):
    threads = torch.get_num_threads()
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", f"test-{os.getpid()}")
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        runs = ParallelRuns()
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        runs.alone(True)
        assert torch.get_num_threads() == threads and "OMP_NUM_THREADS" not in os.environ
        runs.alone(False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
