"""A folder lock is held by the process that took it, never by its children: a data loading worker (forked) outliving
a training run killed with ``kill -9`` kept the fold locked, and ``autoseg train ... --continue`` was refused as
'another run holds this fold' until the orphaned worker exited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from autoseg.utils import atomic
from autoseg.utils.atomic import folder_lock, lock_holder

# A holder of the folder's lock that forks a sleeping child (as a DataLoader worker), says both pids, and waits.
HOLD_AND_FORK = """
import multiprocessing, sys, time
from autoseg.utils.atomic import folder_lock

def sleep():
    time.sleep(60)

if __name__ == "__main__":
    with folder_lock(sys.argv[1]):
        child = multiprocessing.get_context("fork").Process(target=sleep, daemon=False)
        child.start()
        print(child.pid, flush=True)
        sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_holders_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        assert lock_holder(tmp_path) == holder.pid
        holder.kill()  # kill -9: the child lives on, orphaned
        holder.wait()
        assert _alive(child)
        with folder_lock(tmp_path, wait=False):  # the orphan holds nothing: the lock is free at once
            assert lock_holder(tmp_path) == os.getpid()
        assert _alive(child)
    finally:
        holder.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_lock_descriptor_is_not_inherited_by_spawned_children(tmp_path: Path) -> None:
    """A child started by exec (``spawn``, a subprocess) gets no copy of the lock: its descriptor is close-on-exec."""
    import fcntl

    with folder_lock(tmp_path):
        (fd,) = atomic._HELD_LOCKS
        assert not os.get_inheritable(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
