"""Worker processes end with the process that started them.

A stage's worker processes (the case pool of ``parallel_map``, training's data-loading workers) wait on
a queue their parent feeds. When the parent is killed (SIGKILL, or SIGTERM, which runs no cleanup),
nothing ever closes that queue: the workers would wait, or block on a full queue, forever, holding
memory and the parent's stdout (a ``... | tee`` never ends). On Linux each worker asks the kernel to
send it SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); elsewhere this is a no-op. The kernel
sends it when the *thread* that started the worker ends: start workers from the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int) -> None:
    """Call first thing in a worker: it is killed when ``parent_pid`` (the process that started it)
    ends; exits at once if that process is already gone (it died before this call)."""
    # SIGTERM ends a worker at once (a stage's handler turning it into an interrupt, inherited by a
    # forked worker, would print the worker's traceback when a scheduler signals the whole group)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Ctrl-C reaches the terminal's whole process group: a worker interrupted inside the pool's queues left
    # them locked, and the stage, its workers and the shell hung for good. The parent stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # orphaned before prctl took effect: nobody reads our results
        os._exit(1)
