"""How many CPU cores this process may use, and how many of them other processes leave idle.

CPU training runs its convolutions on torch's OpenMP threads, one per physical core by default. When
another process holds some of the cores, those threads wait for each other at every barrier: in
``autoseg demo`` on the 2-core machine with one core busy, two math threads trained 920 iterations,
one thread on the free core 3294, as many as two threads on the quiet machine (docs/benchmarks.md).
So training starts with as many math threads as cores are idle, measured from ``/proc/stat`` over a
short sample before it starts (``training/math_threads.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PROC_STAT = Path("/proc/stat")
# Long enough to see a busy loop or a running training, short beside the seconds a fold takes to start.
IDLE_SAMPLE_SECONDS = 0.5


def _affinity() -> set[int] | None:
    """The logical CPUs this process may run on; None where the OS has no affinity masks."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return None


def available_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    cpus = _affinity()
    return max(1, len(cpus)) if cpus is not None else max(1, os.cpu_count() or 1)


def _cpu_times(text: str) -> dict[int, tuple[int, int]]:
    """``/proc/stat`` text -> logical CPU -> (idle jiffies incl. iowait, total jiffies)."""
    times = {}
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        times[int(name[3:])] = (idle, sum(values))
    return times


def idle_cores_between(before: str, after: str, cpus: set[int] | None = None) -> float | None:
    """Idle logical CPUs (a sum of idle shares) between two ``/proc/stat`` readings, over ``cpus``
    (default every CPU listed); None when the readings say nothing (no CPU lines, no time passed)."""
    first, second = _cpu_times(before), _cpu_times(after)
    idle, seen = 0.0, 0
    for cpu in sorted(set(first) & set(second)):
        if cpus is not None and cpu not in cpus:
            continue
        total = second[cpu][1] - first[cpu][1]
        if total <= 0:
            continue
        idle += min(1.0, max(0.0, (second[cpu][0] - first[cpu][0]) / total))
        seen += 1
    return idle if seen else None


def idle_cores(sample_seconds: float = IDLE_SAMPLE_SECONDS) -> float | None:
    """Idle logical CPUs of this process's affinity mask over ``sample_seconds`` (None where
    ``/proc/stat`` cannot be read, e.g. macOS and Windows)."""
    try:
        before = PROC_STAT.read_text()
        time.sleep(sample_seconds)
        after = PROC_STAT.read_text()
    except OSError:
        return None
    return idle_cores_between(before, after, _affinity())


def threads_for_idle_cores(max_threads: int, idle: float | None, logical: int) -> int:
    """Math threads for a process allowed ``max_threads`` of ``logical`` CPUs when ``idle`` of them are
    idle: the idle share of ``max_threads``, rounded, at least 1 (``max_threads`` when unknown).

    ``max_threads`` is torch's count (physical cores by default, or what the user set), so on a machine
    with two hardware threads per core the idle share is applied to cores, not to hardware threads.
    """
    if idle is None or logical <= 0:
        return max(1, max_threads)
    share = min(1.0, max(0.0, idle / logical))
    return max(1, min(max_threads, math.floor(share * max_threads + 0.5)))


@dataclass(frozen=True)
class ThreadChoice:
    """``threads`` of at most ``limit`` (torch's count), and why: ``idle`` of ``logical`` CPUs were idle
    (None: a fixed setting, or unknown)."""

    threads: int
    limit: int
    idle: float | None = None
    logical: int = 0

    def describe(self, when: str = "at the start") -> str:
        if self.idle is None:
            return f"{self.threads} math threads"
        return (f"{self.threads} of {self.limit} math threads ({self.idle:.1f} of {self.logical} CPUs idle "
                f"{when})")


def idle_thread_choice(limit: int | None = None) -> ThreadChoice:
    """As many of ``limit`` math threads (default torch's count) as cores are idle now: measured for
    half a second, and once more when that finds some busy (the more idle of the two counts), so a
    passing spike costs nothing."""
    if limit is None:
        import torch  # here: this module also serves the torch-free onnxruntime deployment

        limit = torch.get_num_threads()
    limit = max(1, limit)
    if limit == 1:
        return ThreadChoice(1, 1)
    logical = available_cores()
    idle = idle_cores()
    if idle is not None and threads_for_idle_cores(limit, idle, logical) < limit:
        again = idle_cores()
        idle = idle if again is None else max(idle, again)
    return ThreadChoice(threads_for_idle_cores(limit, idle, logical), limit, idle, logical)


@contextlib.contextmanager
def applied(choice: ThreadChoice | None) -> Iterator[None]:
    """torch's math threads set to ``choice`` inside the block and given back after it."""
    if choice is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(choice.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
