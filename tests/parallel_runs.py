"""The suite on every core (pytest-xdist), with the tests that time things or read the machine's load alone.

The suite runs its files on ``-n auto`` workers (pyproject.toml's addopts; ``-n 0`` runs in one process).
Most tests train tiny networks on one math thread, so two workers use both cores of a 2-core machine
where one process used one. Each worker keeps torch (and the processes it starts) on one math thread:
two workers of two threads each on two cores make OpenMP threads wait for each other.

Tests marked ``exclusive`` measure wall time, training speed or the machine's idle cores (budgeted
training, the planner's timing probe, ``math_threads: auto``): a test of another worker running at
the same time would change what they measure. Such a test runs alone, with torch's own thread count:
every test holds a shared lock while it runs (setup and teardown included, so module fixtures too),
an exclusive one holds it exclusively; a waiting exclusive test holds a turnstile that keeps new
shared holders out, so it is not starved.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

EXCLUSIVE = "exclusive"
# More workers than this gain little on the machines the suite is sized for (2 cores) and multiply
# the memory of the real-data pipelines.
MAX_WORKERS = 4


def lock_folder(run: str) -> Path:
    """Where the workers of one run keep their lock files."""
    return Path(tempfile.gettempdir()) / f"autoseg-tests-{run}"


def worker_id() -> str | None:
    """This process's xdist worker name (gw0, gw1, ...), or None outside a parallel run."""
    return os.environ.get("PYTEST_XDIST_WORKER")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per usable core, at most MAX_WORKERS."""
    from autoseg.utils.cpu_load import available_cores

    return min(available_cores(), MAX_WORKERS)


class SuiteLock:
    """A readers-writer lock over two files shared by the run's workers (fcntl.flock)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._turnstile = open(folder / "turnstile.lock", "a+b")  # noqa: SIM115 (held for the worker's life)
        self._room = open(folder / "room.lock", "a+b")  # noqa: SIM115

    @contextlib.contextmanager
    def held(self, exclusive: bool) -> Iterator[None]:
        import fcntl

        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._room, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._room, fcntl.LOCK_UN)


class ParallelRuns:
    """A worker's lock and thread settings (made only in xdist workers)."""

    def __init__(self) -> None:
        import torch

        self.torch_threads = torch.get_num_threads()
        self.omp = os.environ.get("OMP_NUM_THREADS")
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "local")
        self.lock = SuiteLock(lock_folder(run))
        self.alone(False)

    def alone(self, exclusive: bool) -> None:
        """Torch's own thread count for a test that runs alone, one thread otherwise."""
        import torch

        torch.set_num_threads(self.torch_threads if exclusive else 1)
        omp = self.omp if exclusive else "1"  # child processes: the user's setting, or one thread
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


_RUNS: ParallelRuns | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _RUNS
    config.addinivalue_line("markers", f"{EXCLUSIVE}: runs alone with torch's own threads (it times or reads the load)")
    if worker_id() is not None:
        _RUNS = ParallelRuns()
    elif config.pluginmanager.hasplugin("xdist") and config.getoption("testrunuid", None) is None:
        # the controller names the run, so that it can remove the workers' lock folder when they are done
        config.option.testrunuid = uuid.uuid4().hex


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller removes the run's lock folder (every worker has exited by then)."""
    run = getattr(config.option, "testrunuid", None)
    if worker_id() is None and run:
        shutil.rmtree(lock_folder(run), ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if _RUNS is None:
        yield
        return
    exclusive = item.get_closest_marker(EXCLUSIVE) is not None
    with _RUNS.lock.held(exclusive):
        if exclusive:
            _RUNS.alone(True)
        try:
            yield
        finally:
            if exclusive:
                _RUNS.alone(False)
