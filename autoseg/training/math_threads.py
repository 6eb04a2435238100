"""The CPU math threads a fold trains with: as many as cores are idle when it starts (``math_threads: auto``).

OpenMP threads wait for each other at every barrier, so a thread whose core another process holds
slows all of them; ``utils/cpu_load.py`` says why and how idle cores are measured.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from autoseg.errors import TrainingError
from autoseg.utils.cpu_load import available_cores, idle_cores, threads_for_idle_cores


@dataclass(frozen=True)
class ThreadChoice:
    """``threads`` of at most ``limit`` (torch's count), and why: ``idle`` of ``logical`` CPUs were idle
    (None: a fixed setting, or unknown)."""

    threads: int
    limit: int
    idle: float | None = None
    logical: int = 0

    def describe(self) -> str:
        if self.idle is None:
            return f"{self.threads} math threads"
        return (f"{self.threads} of {self.limit} math threads ({self.idle:.1f} of {self.logical} CPUs idle "
                "at the start)")


def choose_math_threads(setting: Any, device: torch.device, deterministic: bool) -> ThreadChoice | None:
    """The config's ``math_threads`` resolved for ``device`` (None off the CPU, where it does not apply).

    ``auto`` measures idle cores for half a second, and once more when that finds some busy (the more
    idle of the two counts); a deterministic run keeps torch's count, so a rerun on a busier machine
    sums in the same order.
    """
    if device.type != "cpu":
        return None
    limit = max(1, torch.get_num_threads())
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise TrainingError(f"math_threads must be >= 1 or 'auto', got {setting!r}")
        return ThreadChoice(int(setting), limit)
    if deterministic or limit == 1:  # nothing to lower: no need to sample
        return ThreadChoice(limit, limit)
    logical = available_cores()
    idle = idle_cores()
    if idle is not None and threads_for_idle_cores(limit, idle, logical) < limit:
        again = idle_cores()  # a second look, so a passing spike costs nothing
        idle = idle if again is None else max(idle, again)
    return ThreadChoice(threads_for_idle_cores(limit, idle, logical), limit, idle, logical)


@contextlib.contextmanager
def applied(choice: ThreadChoice | None) -> Iterator[None]:
    """torch's math threads set to ``choice`` inside the block and given back after it."""
    if choice is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
