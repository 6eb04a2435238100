"""The CPU math threads a fold trains with: as many as cores are idle when it starts (``math_threads: auto``).

OpenMP threads wait for each other at every barrier, so a thread whose core another process holds
slows all of them; ``utils/cpu_load.py`` says why and how idle cores are measured. ``autoseg plan``
times its probe with the same choice, so the plan is made for the threads training will start with.
"""

from __future__ import annotations

from typing import Any

import torch

from autoseg.errors import TrainingError
from autoseg.utils.cpu_load import ThreadChoice, applied, available_cores, idle_thread_choice

__all__ = ["ThreadChoice", "applied", "choose_math_threads", "most_math_threads", "recount_at_epoch_end"]

# A set number may oversubscribe the cores (3 threads on 2 is taken as set), up to this many per core.
MAX_MATH_THREADS_PER_CORE = 4

# Epochs shorter than this are not paused to count idle cores again (the count takes 0.5-1 s).
RECOUNT_MIN_EPOCH_SECONDS = 20.0


def choose_math_threads(setting: Any, device: torch.device, deterministic: bool) -> ThreadChoice | None:
    """The config's ``math_threads`` resolved for ``device`` (None off the CPU, where it does not apply).

    ``auto``: as many threads as cores are idle (``idle_thread_choice``); a deterministic run keeps
    torch's count, so a rerun on a busier machine sums in the same order.
    """
    if device.type != "cpu":
        return None
    limit = max(1, torch.get_num_threads())
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise TrainingError(f"math_threads must be >= 1 or 'auto', got {setting!r}")
        return ThreadChoice(int(setting), limit)
    if deterministic:
        return ThreadChoice(limit, limit)
    return idle_thread_choice()


def most_math_threads() -> int:
    """The most threads ``math_threads`` may set on this machine. Beyond it nothing trains faster (OpenMP
    threads wait for each other at every barrier) and the count was not refused at all: 100000 hung the
    first matrix multiply, 2147483648 stopped training with torch's internal 'Overflow when unpacking long'."""
    return MAX_MATH_THREADS_PER_CORE * available_cores()


def recount_at_epoch_end(start: ThreadChoice | None, epoch_seconds: float) -> ThreadChoice | None:
    """``math_threads: auto``: count the idle cores again while training pauses at an epoch end and set
    torch's threads to match. The choice at the start lasts a whole run otherwise: a fold that started
    while another process briefly held a core trained on one thread throughout (BraTS, 5 minutes: 183
    iterations against 574), and load that arrives mid-run leaves two threads waiting for each other on
    one free core (a Hippocampus epoch ran 4x slower). Returns the new choice when the count changed
    the threads, else None; fixed settings, deterministic runs and short epochs are left alone."""
    if start is None or start.idle is None or epoch_seconds < RECOUNT_MIN_EPOCH_SECONDS:
        return None
    now = idle_thread_choice(start.limit)
    if now.threads == torch.get_num_threads():
        return None
    torch.set_num_threads(now.threads)
    return now
