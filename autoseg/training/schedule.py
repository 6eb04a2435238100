"""The schedule of a fold: how many iterations, the learning rate at each, and where the run stands.

``TrainingState`` is everything about progress that a checkpoint carries (iteration, epoch, total, the
anchor of the continuous poly schedule, the pseudo-Dice EMA and the metrics history); the functions
here read it, so the schedule is testable without a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from autoseg.errors import TrainingError
from autoseg.training.budget import PolyAnchor

# reference.md §1.5: 250 iterations per epoch when neither the config nor the plan says otherwise.
DEFAULT_ITERATIONS_PER_EPOCH = 250


@dataclass
class TrainingState:
    """Where the run stands; all of it goes into the checkpoint's ``trainer_state``."""

    total_iterations: int
    iteration: int = 0
    epoch: int = 0
    lr_anchor: PolyAnchor = field(default_factory=PolyAnchor)
    ema: float | None = None
    best_ema: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    # The final validation's mirroring as the budget decided it (None: not decided, the plan's applies). Kept
    # in the checkpoint: a --continue (which has no budget) after a kill validated mirrored what the budgeted
    # run had found it could not afford.
    validation_tta: bool | None = None
    # Wall seconds of each part (startup, training, checkpoints) of every process of this fold up to this
    # checkpoint: a run killed and continued reported the iterations of both processes and the times of
    # the last alone. Time a killed process spent after its last checkpoint (work redone) is not in it.
    spent_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "total_iterations": self.total_iterations,
            "lr_anchor": [self.lr_anchor.iteration, self.lr_anchor.fraction],
            "ema": self.ema,
            "best_ema": self.best_ema,
            "history": self.history,
            "validation_tta": self.validation_tta,
            "spent_seconds": self.spent_seconds,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "TrainingState":
        # A checkpoint without an anchor (written before the continuous schedule) restarts the plain poly.
        anchor = state.get("lr_anchor", [0, 1.0])
        return cls(
            total_iterations=int(state["total_iterations"]), iteration=int(state["iteration"]), epoch=int(state["epoch"]),
            lr_anchor=PolyAnchor(int(anchor[0]), float(anchor[1])), ema=state["ema"], best_ema=float(state["best_ema"]),
            history=list(state["history"]), validation_tta=state.get("validation_tta"),
            spent_seconds={str(k): float(v) for k, v in (state.get("spent_seconds") or {}).items()},
        )

    def add_pseudo_dice(self, dice: float, smoothing: float) -> bool:
        """Fold an epoch's pseudo-Dice into the EMA (NaN: no foreground seen, EMA kept); True on a new best."""
        if not math.isnan(dice):
            self.ema = dice if self.ema is None else smoothing * self.ema + (1 - smoothing) * dice
        improved = self.ema is not None and self.ema > self.best_ema
        if improved:
            self.best_ema = self.ema
        return improved

    def epoch_end(self, iterations_per_epoch: int) -> int:
        """The iteration at which the current epoch ends (a shorter last epoch at the total)."""
        return self.iteration + min(iterations_per_epoch, self.total_iterations - self.iteration)


def iterations_per_epoch(config: dict[str, Any], plan: dict[str, Any]) -> int:
    """The config's count, else the plan's, else nnU-Net's 250."""
    return int(config["iterations_per_epoch"] or plan.get("iterations_per_epoch") or DEFAULT_ITERATIONS_PER_EPOCH)


def planned_total(config: dict[str, Any], plan: dict[str, Any], per_epoch: int) -> int:
    """Iterations of the schedule before any time budget: the plan's budgeted count (when ``use_plan_schedule``;
    --epochs turns it off and sets ``num_epochs``), else ``num_epochs`` x iterations per epoch."""
    if config["use_plan_schedule"] and plan.get("num_iterations"):
        return int(plan["num_iterations"])
    return int(config["num_epochs"]) * per_epoch


def extended_total(state: TrainingState, epochs: int, per_epoch: int) -> int:
    """Iterations of a run ``--continue``d to ``epochs`` epochs: those trained keep their length, each epoch
    still to come has ``per_epoch`` (``epochs x per_epoch`` ended a run whose earlier epochs had another
    iterations_per_epoch after another number of epochs, and refused a larger N when fewer iterations)."""
    if epochs < state.epoch:
        raise TrainingError(
            f"--epochs {epochs}: the run already trained {state.epoch} epochs ({state.iteration} iterations); "
            "give a larger number to extend it"
        )
    return state.iteration + (epochs - state.epoch) * per_epoch


# lr_schedule.name: the schedules learning_rate follows (config_rules refuses any other name).
LR_SCHEDULES = ("poly", "constant")


def learning_rate(config: dict[str, Any], state: TrainingState) -> float:
    """The learning rate of iteration ``state.iteration``: constant, or the anchored poly decay."""
    schedule, initial = config["lr_schedule"], config["optimizer"]["lr"]
    if schedule["name"] == "constant":
        return initial
    if schedule["name"] == "poly":
        return state.lr_anchor.lr(initial, state.iteration, state.total_iterations, schedule["exponent"])
    raise TrainingError(f"--set lr_schedule.name={schedule['name']!r}: choose poly or constant")


def retarget(config: dict[str, Any], state: TrainingState, total: int) -> None:
    """Set the schedule's total to ``total`` from the current iteration on, the learning rate continuous."""
    exponent = float(config["lr_schedule"].get("exponent", 1.0))
    state.lr_anchor = state.lr_anchor.retarget(state.iteration, state.total_iterations, total, exponent)
    state.total_iterations = total
