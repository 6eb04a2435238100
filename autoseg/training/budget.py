"""Budgeted schedules: as many iterations as fit before the deadline, the LR schedule completed.

The iteration count is set from the measured speed after a few probe iterations and re-estimated at
every epoch end (which then includes the pseudo-validation and checkpoint costs), keeping a reserve
for the final sliding-window validation. Each re-estimate re-anchors the poly schedule at the current
iteration and learning rate (``PolyAnchor``), so the learning rate stays continuous and still reaches
zero when time runs out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A forward pass costs about a third of a training iteration's forward + backward.
FORWARD_SHARE_OF_ITERATION = 1.0 / 3.0
# The speed probe ends early once its timed iterations took this share of the budget: at 12 s per
# iteration (FC-DenseNet's GPU-sized plan on a loaded CPU) the 10-iteration probe alone spent a
# 3-minute budget.
PROBE_MAX_SHARE = 0.05
# In the last epoch the schedule is shortened at once (not at the epoch's end) when this epoch's speed
# says the rest would overrun the deadline by more than PACE_TOLERANCE of the budget, however small the
# slowdown (a 2-minute plan trains one epoch: a steady 1.2x, under PACE_SLOWDOWN, ended 12% late), e.g.
# another process took the cores after the last estimate (an earlier
# epoch waits for its end's re-plan unless that end itself lies past the deadline). A 5-minute
# Hippocampus run whose last epoch slowed 4x (0.87 s per iteration, planned about 0.2) waited for the
# epoch's end and ended 37 s late (+13%). It is lengthened only when the time left is PACE_SLOWDOWN
# times what the rest takes and more than PACE_TOLERANCE of the budget would go unused (no mirror of the
# cut, which needs the overrun alone: a 1.1x spell early in the last epoch is cut and never lengthened
# back): a run whose middle slowed 7x for 90 s, and whose schedule was cut for it, ended at 209 of 300 s. The
# thresholds keep ordinary jitter (+-10% between epochs) from bending the learning-rate schedule;
# the epoch end still re-plans both ways.
PACE_SLOWDOWN = 1.25
PACE_TOLERANCE = 0.05
# The current epoch's speed is trusted for that decision once its timed iterations (since the probe's
# re-plan, whose tile timing is not training) number 10 and span 5% of the budget: the first
# iterations after an epoch end run about 1 s slower in all (threads and workers wake up), which over
# 10 iterations of 0.19 s looked like a 1.5x slowdown and cut a quiet 5-minute run's schedule by 22%.
PACE_MIN_ITERATIONS = 10
PACE_MIN_SHARE = 0.05


def poly_lr(initial_lr: float, iteration: int, total_iterations: int, exponent: float) -> float:
    """``lr * (1 - iteration / total) ** exponent`` (reference.md §1.5), 0 once the total is reached."""
    progress = min(iteration / max(total_iterations, 1), 1.0)
    return initial_lr * (1.0 - progress) ** exponent


@dataclass(frozen=True)
class PolyAnchor:
    """Where the poly schedule restarts when the budget re-estimates its total: ``fraction`` of the
    initial learning rate at ``iteration``. The schedule decays from there to 0 at the current total,
    so a changed total bends the curve but never makes the learning rate jump (issue 14: a poly over
    a total that keeps changing went 6.3e-3 -> 5.3e-3 -> 2.75e-3 in consecutive epochs)."""

    iteration: int = 0
    fraction: float = 1.0

    def lr(self, initial_lr: float, iteration: int, total_iterations: int, exponent: float) -> float:
        """The anchored poly learning rate; with the default anchor exactly ``poly_lr``."""
        span = total_iterations - self.iteration
        if span <= 0:
            return 0.0
        return self.fraction * poly_lr(initial_lr, iteration - self.iteration, span, exponent)

    def retarget(self, iteration: int, old_total: int, new_total: int, exponent: float) -> "PolyAnchor":
        """The anchor that continues this schedule at ``iteration`` when the total becomes ``new_total``."""
        if new_total == old_total:
            return self
        return PolyAnchor(iteration, self.lr(1.0, iteration, old_total, exponent))


def pace_known(iterations: int, seconds: float, budget_seconds: float | None) -> bool:
    """Whether an epoch's timed ``iterations`` over ``seconds`` say enough about its pace (PACE_MIN_*)."""
    return (budget_seconds is not None and iterations >= PACE_MIN_ITERATIONS
            and seconds >= PACE_MIN_SHARE * budget_seconds)


def affordable_total(done: int, seconds_left: float, seconds_per_iteration: float) -> int:
    """Total iterations (including the ``done`` ones) that fit into ``seconds_left``; at least one."""
    if seconds_per_iteration <= 0:
        raise ValueError("seconds_per_iteration must be positive")
    extra = math.floor(max(seconds_left, 0.0) / seconds_per_iteration)
    return max(done + extra, done, 1)
