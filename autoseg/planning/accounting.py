"""The time of a whole budgeted run, part by part (docs/planning.md, "The whole run fits the budget").

A fold's budget pays for data preparation, start-up, the training loop (with its pseudo-validation),
checkpoint writes and the final validation (sliding window over the validation cases, optionally
mirrored, then export to the input geometry and scoring). Each part is predicted by one formula
here; the planner sizes the training to what the other parts leave, and training reports each
part's actual time against these predictions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from autoseg.planning import constants as C
from autoseg.preprocessing.resampling import ResamplingWork

PARTS = ("preprocess", "startup", "training", "checkpoints", "final_validation")


@dataclass(frozen=True)
class BudgetParts:
    """Seconds of each part of one fold's run."""

    preprocess: float
    startup: float
    training: float
    checkpoints: float
    final_validation: float

    @property
    def total(self) -> float:
        return self.preprocess + self.startup + self.training + self.checkpoints + self.final_validation

    def to_dict(self) -> dict[str, float]:
        return {**{k: round(v, 1) for k, v in asdict(self).items()}, "total": round(self.total, 1)}


def tiles_per_case(shape: Sequence[int], patch_size: Sequence[int], step: float = C.VALIDATION_STEP) -> int:
    """Sliding-window tiles for an image of ``shape`` (as the inference's tiling, step x patch apart);
    a 2D patch tiles every slice of a 3D ``shape``."""
    count = 1
    for size, patch in zip(shape[-len(patch_size):], patch_size):
        span = max(size - patch, 0)
        count *= math.ceil(span / (patch * step)) + 1 if span > 0 else 1
    if len(shape) > len(patch_size):
        count *= int(math.prod(shape[: len(shape) - len(patch_size)]))
    return count


def export_seconds(input_voxels: float, n_outputs: int, resampled: bool) -> float:
    """Restoring one prediction to its input geometry, writing and scoring it: a fixed cost, the
    write and evaluation per input voxel, and restoring every output channel (resampled when the
    configuration's spacing differs from the case's)."""
    per_channel = C.EXPORT_SECONDS_PER_VOXEL_CHANNEL + (C.EXPORT_RESAMPLE_SECONDS_PER_VOXEL_CHANNEL if resampled else 0.0)
    per_voxel = C.EXPORT_SECONDS_PER_VOXEL + per_channel * n_outputs
    return C.EXPORT_SECONDS_PER_CASE + input_voxels * per_voxel


def validation_passes(tiles: float, mirrored_passes: int, seconds_per_tile: float, budget_seconds: float,
                      margin: float = 1.0) -> int:
    """Forward passes per tile in the final validation: every mirroring (``mirrored_passes``) while
    they stay within the validation's share of the budget with ``margin`` to spare, else 1. The
    planner applies it at the measured speed with ``VALIDATION_PLAN_MARGIN`` and training to its own
    timing without, so a plan that mirrors is not overruled by training's slightly slower tiles."""
    if within_validation_share(tiles * mirrored_passes * seconds_per_tile * margin, budget_seconds):
        return mirrored_passes
    return 1


def within_validation_share(seconds: float, budget_seconds: float) -> bool:
    """Whether the final validation's ``seconds`` stay within ``VALIDATION_MAX_SHARE`` of the budget
    (beyond it, validation runs unmirrored; the planner and training's re-estimate both apply it)."""
    return seconds <= C.VALIDATION_MAX_SHARE * budget_seconds


def final_validation_seconds(tiles: Sequence[int], mirror_passes: int, seconds_per_tile: float,
                             export: Sequence[float]) -> float:
    """Every tile's forward passes (``mirror_passes`` each) plus each case's export."""
    return sum(tiles) * mirror_passes * seconds_per_tile + sum(export)


def preprocess_case_seconds(input_voxels: float, channels: int, image_work: ResamplingWork | None,
                            output_voxels: float, label_values: int) -> float:
    """Preparing one case: reading, cropping, normalising and writing each voxel of each channel and
    the label map; where the spacing changes (``image_work`` is the resampling of one image channel),
    each channel's spline prefilter and interpolation taps, and each class but the most frequent
    interpolated at every output voxel."""
    seconds = C.PREPROCESS_SECONDS_PER_CASE + input_voxels * (channels + 1) * C.PREPROCESS_SECONDS_PER_VOXEL_CHANNEL
    if image_work is not None:
        seconds += channels * (image_work.prefilter_voxels * C.PREFILTER_SECONDS_PER_VOXEL
                               + image_work.taps * C.INTERPOLATION_SECONDS_PER_TAP)
        seconds += output_voxels * max(label_values - 1, 0) * C.RESAMPLE_LABEL_SECONDS_PER_VOXEL_LABEL
    return seconds


def preprocess_seconds(case_seconds: Sequence[float], workers: int) -> float:
    """Preparing every case once (shared by the folds), the cases spread over ``workers`` processes, plus
    the command's fixed start-up, which on a tiny dataset is most of its time (``PREPROCESS_STARTUP_SECONDS``)."""
    return C.PREPROCESS_STARTUP_SECONDS + sum(case_seconds) / max(1, min(workers, len(case_seconds)))


def checkpoint_bytes(parameters: int, optimizer: str = "sgd") -> int:
    """One checkpoint file's tensors: the weights and the optimizer's buffers, all fp32 (SGD keeps one
    momentum buffer, Adam and AdamW two moments: a third more bytes than SGD's checkpoint)."""
    return parameters * 4 * (1 + C.OPTIMIZER_BUFFERS_PER_PARAMETER[optimizer])


def checkpoint_seconds(parameters: int, optimizer: str = "sgd") -> float:
    """Writing one checkpoint file of a network trained with ``optimizer``, plus a fixed cost."""
    return C.CHECKPOINT_SECONDS_PER_FILE + checkpoint_bytes(parameters, optimizer) / C.CHECKPOINT_BYTES_PER_SECOND


def checkpoint_files(iterations: int, iterations_per_epoch: int) -> float:
    """Files written for a schedule: the latest (and, about every other epoch, a new best) at each
    epoch end, and the final one."""
    epochs = math.ceil(iterations / max(iterations_per_epoch, 1))
    return epochs * C.CHECKPOINT_FILES_PER_EPOCH + 1


def split_budget(budget_seconds: float, preprocess: float, final_validation: float, seconds_per_iteration: float,
                 seconds_per_checkpoint: float, iterations_per_epoch: int = C.ITERATIONS_PER_EPOCH) -> tuple[int, BudgetParts]:
    """(iterations, parts): the iterations the budget affords once the fixed parts are paid, with a
    safety share kept free. The pseudo-validation is inside ``seconds_per_iteration``."""
    usable = budget_seconds * (1 - C.BUDGET_SAFETY_FRACTION) - preprocess - C.STARTUP_SECONDS - final_validation
    # checkpoints are paid per epoch: spread their cost over the iterations of an epoch
    per_iteration = seconds_per_iteration + seconds_per_checkpoint * C.CHECKPOINT_FILES_PER_EPOCH / iterations_per_epoch
    iterations = int(max(usable - seconds_per_checkpoint, 0.0) // per_iteration)
    iterations = min(C.MAX_ITERATIONS, iterations)
    return iterations, parts_for(iterations, preprocess, final_validation, seconds_per_iteration, seconds_per_checkpoint,
                                 iterations_per_epoch)


def parts_for(iterations: int, preprocess: float, final_validation: float, seconds_per_iteration: float,
              seconds_per_checkpoint: float, iterations_per_epoch: int) -> BudgetParts:
    """The predicted parts of a run of ``iterations``."""
    return BudgetParts(
        preprocess=preprocess,
        startup=C.STARTUP_SECONDS,
        training=iterations * seconds_per_iteration,
        checkpoints=checkpoint_files(iterations, iterations_per_epoch) * seconds_per_checkpoint,
        final_validation=final_validation,
    )
