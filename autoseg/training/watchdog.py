"""A thread that says so when one training iteration runs far longer than the ones before it.

A kernel that hangs (a corrupted heap in a bf16 backward, a dead data worker) otherwise leaves a
training that looks alive and prints nothing; the watchdog names the iteration, how long it has run
against the measured time, and what to try.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

# An iteration is reported once it has run this many times the expected time...
SLOW_FACTOR = 20.0
# ...and at least this long (the first iterations start data workers and pick kernels).
MIN_WARNING_SECONDS = 60.0
# Weight of the newest iteration in the running estimate of the time per iteration.
EMA_WEIGHT = 0.1

ADVICE = ("if it never finishes, stop it (Ctrl-C; --continue resumes from the last checkpoint) and try "
          "--set mixed_precision=off (bf16/fp16 kernels), --set num_workers=0 (data workers) or a smaller "
          "--set patch_size=[...]")


class IterationWatchdog:
    """``begin()``/``end()`` around each iteration; warnings go to ``log`` from a daemon thread."""

    def __init__(self, expected_seconds: float, log: Callable[[str], None], factor: float = SLOW_FACTOR,
                 floor: float = MIN_WARNING_SECONDS, poll_seconds: float = 1.0) -> None:
        self.expected = max(float(expected_seconds), 1e-3)
        self.log, self.factor, self.floor, self.poll = log, factor, floor, poll_seconds
        self._lock = threading.Lock()
        self._started: float | None = None
        self._iteration = 0
        self._next_warning = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="autoseg-iteration-watchdog", daemon=True)
        self._thread.start()

    @classmethod
    def for_plan(cls, configuration: dict[str, Any], log: Callable[[str], None]) -> "IterationWatchdog":
        """A watchdog expecting the plan's predicted seconds per iteration (1 s where it has none)."""
        return cls(float(configuration.get("predicted_seconds_per_iteration") or 1.0), log)

    def begin(self, iteration: int) -> None:
        with self._lock:
            self._started, self._iteration = time.monotonic(), iteration
            self._next_warning = max(self.floor, self.factor * self.expected)

    def end(self) -> None:
        with self._lock:
            if self._started is not None:
                seconds = time.monotonic() - self._started
                self.expected = (1 - EMA_WEIGHT) * self.expected + EMA_WEIGHT * seconds
            self._started = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            with self._lock:
                if self._started is None:
                    continue
                elapsed = time.monotonic() - self._started
                if elapsed < self._next_warning:
                    continue
                self._next_warning = 2 * elapsed
                message = (f"warning: iteration {self._iteration + 1} has run for {elapsed:.0f} s, "
                           f"{elapsed / self.expected:.0f}x the {self.expected:.2f} s an iteration took so far; {ADVICE}")
            self.log(message)
