"""SIGTERM ends a stage as Ctrl-C does: cleanup runs, one line, exit status 143.

Batch schedulers (SLURM's preemption and time limit, Kubernetes, ``timeout``) stop a job with SIGTERM,
whose default action ends Python at once: no ``finally`` runs, so workers are left to the kernel and a
temporary half-written file to the next run, and the job's log says nothing. Raised as an interrupt
instead, every cleanup path written for Ctrl-C runs, and the command says why it stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

TERMINATED_EXIT_CODE = 143  # what a shell reports for a command stopped by SIGTERM (128 + 15)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; a KeyboardInterrupt so that the cleanup written for Ctrl-C serves it too."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block (main thread only: Python delivers signals there), SIGTERM raises ``Terminated`` and
    Ctrl-C (SIGINT) ``KeyboardInterrupt``, whatever the entry point set for them (``autoseg.__main__`` exits at
    once, with one line); the previous handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
