"""Budget re-planning during training: fit the schedule to the deadline from the measured speed.

Under a time budget the run must end, final validation included, at ``start + budget x (1 - safety)``.
After a few probe iterations and at every epoch end the total is re-estimated from the seconds per
iteration actually measured, less a reserve for the final sliding-window validation (its tiles from
the validation cases' real shapes, their forward time timed on this network at every re-estimate and
pooled: a single timed pass of FC-DenseNet came out at about 0.4 s per tile where the validation then ran at
0.8, and the 10-minute run took 12.1). The learning rate schedule is re-anchored so it stays continuous
(training/budget.py). Mirroring in the final validation follows the planner's rule: when its forward
passes would take more than ``VALIDATION_MAX_SHARE`` of the budget, the validation runs unmirrored.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch

from autoseg.inference.tiling import default_batch_tiles
from autoseg.planning import accounting
from autoseg.planning.constants import VALIDATION_MAX_SHARE
from autoseg.preprocessing.store import load_case_waiting
from autoseg.training import budget as budget_rules
from autoseg.training.distributed import DistributedContext, broadcast_value
from autoseg.training.model_setup import ModelSetup
from autoseg.training.schedule import TrainingState, retarget
from autoseg.training.splits import FOLD_ALL
from autoseg.training.steps import autocast

# Timed passes per measurement of the final validation's network cost (after one warm-up pass).
TIMING_REPEATS = 3
# Under DDP the pace check is a collective (rank 0 decides): every this many iterations, not every one.
PACE_CHECK_EVERY_DISTRIBUTED = 10


def deadline(start_time: float, budget_seconds: float | None, safety_fraction: float) -> float | None:
    """When training must stop (monotonic clock), or None without a time budget."""
    if budget_seconds is None:
        return None
    return start_time + budget_seconds * (1 - safety_fraction)


def validation_passes(mirror_axes: list[int], plan: dict[str, Any]) -> int:
    """Forward passes per tile in the final validation: every mirroring, unless the plan turned
    test-time augmentation off for validation to fit the budget."""
    return 2 ** len(mirror_axes) if plan.get("validation_tta", True) else 1


def validation_reserve_inputs(store: Any, fold: str, val_cases: list[str], patch_size: list[int],
                              n_outputs: int) -> tuple[list[int], list[float]]:
    """Sliding-window tiles and export seconds of every validation case (for the final validation's
    time reserve, from the cases' real shapes); fold ``all`` has no final validation."""
    tiles: list[int] = []
    export: list[float] = []
    if fold == FOLD_ALL:
        return tiles, export
    for case_id in val_cases:
        properties = load_case_waiting(store, case_id)[2]  # waits for a preprocess storing it again
        tiles.append(accounting.tiles_per_case(properties["shape_after_resampling"], patch_size))
        resampled = list(properties["shape_after_resampling"]) != list(properties["shape_after_crop"])
        export.append(accounting.export_seconds(math.prod(properties["shape_original"]), n_outputs, resampled))
    return tiles, export


def tile_seconds_samples(setup: ModelSetup, in_channels: int, patch_size: list[int], device: torch.device) -> list[float]:
    """Forward time of one sliding-window tile in eval mode: one sample per timed pass, after a
    warm-up pass. A pass holds as many tiles as the validation's sliding window puts in one
    (``default_batch_tiles``: up to 16 small tiles on a CPU, whose per-tile cost two alone overstate)."""
    batch = default_batch_tiles(patch_size, device.type)
    tiles = torch.zeros((batch, in_channels, *patch_size), device=device)
    samples: list[float] = []
    setup.network.eval()
    with torch.inference_mode(), autocast(device, setup.amp_dtype):
        setup.network(tiles)  # warm-up
        for _ in range(TIMING_REPEATS):
            start = time.perf_counter()
            setup.network(tiles)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples.append((time.perf_counter() - start) / batch)
    setup.network.train()
    return samples


class BudgetReplanner:
    """Re-sets a run's total iterations so that training plus the final validation end at the deadline."""

    def __init__(self, deadline: float, budget_seconds: float, reserve_inputs: tuple[list[int], list[float]],
                 passes: int, tile_seconds: Callable[[], list[float]], config: dict[str, Any],
                 context: DistributedContext, log: Callable[[str], None]) -> None:
        self.deadline, self.budget_seconds, self.passes = deadline, budget_seconds, passes
        self.config, self.context, self.log = config, context, log
        self.tiles, self.export = reserve_inputs
        self._measure_tile = tile_seconds
        self._tile_samples: list[float] = []
        self.validation_estimate: float | None = None
        self.planned_speed: float | None = None  # seconds per iteration of the last re-plan

    @property
    def mirroring(self) -> bool:
        """Whether the final validation mirrors (False once the budget could not afford it)."""
        return self.passes > 1

    def _validation_reserve(self) -> float:
        """The final validation's seconds from the median of every tile timing so far. On the first
        estimate the planner's mirroring rule (``accounting.validation_passes``) is applied to the
        fastest timing, the least disturbed, as the planner takes its probe's fastest step: a 5-minute
        Hippocampus run of 2026-12-03 timed 20 ms per tile (the median) at its first estimate and
        dropped mirroring for 103 s of forward passes; its model's mirrored validation, re-timed on the
        quiet machine, ran at 10 ms per tile pass."""
        first = not self._tile_samples
        self._tile_samples += self._measure_tile()
        tile = statistics.median(self._tile_samples)
        if first and self.passes > 1:
            fastest = min(self._tile_samples)
            if accounting.validation_passes(sum(self.tiles), self.passes, fastest, self.budget_seconds) == 1:
                self.log(f"time budget: the final validation's {self.passes} mirrorings would take "
                         f"{sum(self.tiles) * self.passes * fastest:.0f} s, more than {VALIDATION_MAX_SHARE:.0%} of the "
                         f"{self.budget_seconds:.0f} s budget: validating without mirroring")
                self.passes = 1
        return accounting.final_validation_seconds(self.tiles, self.passes, tile, self.export)

    def replan(self, state: TrainingState, seconds_per_iteration: float) -> None:
        """Set ``state.total_iterations`` (and the schedule's anchor) from the measured speed."""
        reserve = self._validation_reserve()
        self.validation_estimate, self.planned_speed = reserve, seconds_per_iteration
        left = self.deadline - time.monotonic() - reserve
        total = int(broadcast_value(budget_rules.affordable_total(state.iteration, left, seconds_per_iteration), self.context))
        if total != state.total_iterations:
            self.log(
                f"time budget: {seconds_per_iteration:.3f} s per iteration measured, final validation estimated "
                f"{reserve:.0f} s; schedule set to {total} iterations (was {state.total_iterations})"
            )
        retarget(self.config, state, total)

    def start(self, state: TrainingState) -> None:
        """Before the first step: a budget the startup already spent affords no iteration beyond those done
        (at least one, as ``affordable_total``), and the schedule is set to that now, so the poly rule holds
        over what is trained. The probe used to find it out: its warm-up and timed iterations trained on the
        plan's schedule, the learning rate undecayed, and the schedule then ended where they stopped. The
        final validation's mirroring is decided as the probe's re-plan decides it."""
        left = self.deadline - time.monotonic()
        total = broadcast_value(max(state.iteration, 1) if left <= 0 else None, self.context)
        if total is None:
            return
        self.validation_estimate = self._validation_reserve()
        self.log(f"time budget: the {self.budget_seconds:.0f} s budget was spent before training began; schedule "
                 f"set to {total} iterations (was {state.total_iterations})")
        retarget(self.config, state, total)

    def keep_pace(self, state: TrainingState, seconds_per_iteration: float | None, epoch_end: int) -> None:
        """Within an epoch: re-set the schedule now when ``seconds_per_iteration`` (this epoch's speed,
        pseudo-validation share included; None while too little is timed) says the epoch end's re-plan
        would come too late. In the last epoch (ending at the total) there is no later re-plan: the
        schedule is shortened when the rest overruns the time left by more than budget.PACE_TOLERANCE of
        the budget (whatever the slowdown: a 2-minute plan's one epoch at a steady 1.2x ended 12% late), and lengthened when the time left is PACE_SLOWDOWN times
        what the rest takes and more than PACE_TOLERANCE of the budget would go unused (the load that
        slowed an earlier epoch went away). In an earlier epoch (ending at ``epoch_end``) only when even
        its end lies past the time left. The final validation's reserve grows by a slowdown. Under DDP
        every rank calls it at every iteration and every 10th is a collective in which rank 0 decides."""
        if self.context.enabled and state.iteration % PACE_CHECK_EVERY_DISTRIBUTED:
            return
        total = None
        if seconds_per_iteration is not None and self.planned_speed is not None and self.validation_estimate is not None:
            total = self._paced_total(state, seconds_per_iteration, epoch_end)
        total = broadcast_value(total, self.context)
        if total is None or total == state.total_iterations:
            return
        pace = f"{seconds_per_iteration:.3f}" if seconds_per_iteration is not None else "?"  # ranks > 0 may not know
        change = "would overrun the deadline" if total < state.total_iterations else "would end early"
        self.log(f"time budget: this epoch runs at {pace} s per iteration, the schedule {change}; "
                 f"schedule set to {total} iterations (was {state.total_iterations})")
        retarget(self.config, state, total)

    def _paced_total(self, state: TrainingState, seconds_per_iteration: float, epoch_end: int) -> int | None:
        """The total keep_pace sets at this epoch's speed, or None to leave the schedule alone."""
        slowdown = max(1.0, seconds_per_iteration / self.planned_speed)
        left = self.deadline - time.monotonic() - self.validation_estimate * slowdown
        affordable = budget_rules.affordable_total(state.iteration, left, seconds_per_iteration)
        if epoch_end < state.total_iterations:  # the epoch end re-plans in time unless it comes too late
            return affordable if (epoch_end - state.iteration) * seconds_per_iteration > left else None
        needed = (state.total_iterations - state.iteration) * seconds_per_iteration
        margin = budget_rules.PACE_TOLERANCE * self.budget_seconds
        if needed - left > margin:  # a steady slowdown under PACE_SLOWDOWN overran short budgets by 10-12%
            return affordable
        if budget_rules.PACE_SLOWDOWN * needed < left and left - needed > margin:
            return affordable
        return None
