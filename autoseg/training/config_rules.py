"""The values each training setting may take, checked when the configuration is resolved.

``config.py`` checks an override's type; these rules check its value (a probability between 0 and 1, a
positive learning rate, an ordered ``[low, high]`` pair, one of the named choices), so that `autoseg
train --set num_workers=-1` is refused before the run writes anything into the model folder, with the
setting, the value and what it may be instead of an error from deep inside the trainer.
"""

from __future__ import annotations

import math
import sys

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from autoseg.errors import TrainingError
from autoseg.training.math_threads import MAX_MATH_THREADS_PER_CORE, most_math_threads
from autoseg.training.model_setup import OPTIMIZERS
from autoseg.training.schedule import LR_SCHEDULES
from autoseg.training.steps import DICE_DENOMINATORS
from autoseg.utils.device import MIXED_PRECISION_SETTINGS
from autoseg.utils.finite import is_finite_number
from autoseg.utils.progress import MAX_STAGE_WORKERS_PER_CORE, most_stage_workers


@dataclass(frozen=True)
class Rule:
    """A test of one number (or of each number of a list) and the words that say what it must be.

    ``pair``: the value is ``[low, high]`` with ``low <= high``; ``ordered=False`` for a pair that is not a
    range (Adam's betas). ``whole``: whole numbers only. ``items``: a list of any length (channels, a patch).
    """

    test: Callable[[float], bool]
    words: str
    whole: bool = False
    pair: bool = False
    ordered: bool = True
    items: bool = False

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None."""
        if self.pair or self.items:
            numbers = value if isinstance(value, list) else None
            if numbers is None or self.pair and len(numbers) != 2 or not all(self._fits(v) for v in numbers):
                if self.pair and not self.ordered:
                    return f"must be two {self._kind()} {self.words}"
                return f"must be {'a [low, high] pair' if self.pair else 'a list'} of {self._kind()} {self.words}"
            if self.pair and self.ordered and numbers[0] > numbers[1]:
                return "must be a [low, high] pair with low <= high"
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self.words}"
        if isinstance(value, int) and not isinstance(value, bool) and not is_finite_number(value):
            # an integer of 400 digits was told it "must be >= 1"
            return f"is beyond any float ({sys.float_info.max:.3g}); it must be {self.words}"
        return None if self._fits(value) else f"must be {self.words}"

    def _fits(self, value: Any) -> bool:
        """Finite numbers only: an infinite learning rate or timeout passed '> 0' and trained NaN."""
        return is_finite_number(value, integer=self.whole) and bool(self.test(value))

    def _kind(self) -> str:
        return "whole numbers" if self.whole else "numbers"


@dataclass(frozen=True)
class Choice:
    """One of a few named values (the tuple of the module that acts on them)."""

    names: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        return None if value in self.names else f"choose {', '.join(self.names[:-1])} or {self.names[-1]}"


# More batches ready than an epoch of nnU-Net's 250 iterations uses only holds memory.
MAX_PREFETCH_BATCHES = 250
# The cascade's mask corruption dilates and erodes with a ball of radius up to this; scipy holds offsets growing with
# the radius to the 6th power: on a 64^3 patch radius 8 (nnU-Net's) took 79 MB and 0.4 s per operation, 12 0.85 GB
# and 3.4 s, 16 4.7 GB and 10 s, 32 ran out of memory, and 10**12 stopped numpy (both mid-training, in a data worker).
MAX_CASCADE_BALL_RADIUS = 12
# A patch sampled from more than 10x its extent per axis shows structures at a tenth of their size (nnU-Net: at most
# 1.4x); the size of the region cropped for it overflowed at 1e300 (an internal ValueError mid-training).
MAX_SCALING = 10.0
# Gaussian filters (blur, the elastic field's smoothing) cost time in proportion to sigma: on a 16x24x16 patch a sigma
# of 1000 voxels took 0.06-0.4 s per sample, 1e5 6 s, and 1e300 stopped numpy mid-training (an internal ValueError).
MAX_SIGMA_VOXELS = 1000.0
# The elastic field moves a voxel by up to alpha voxels (sigma 0): beyond a million it leaves any image; at 1e300 the
# sampling coordinates overflowed (an internal IndexError mid-training).
MAX_ELASTIC_ALPHA = 1e6
# Pseudo-validation batches per epoch (nnU-Net: 50): 10**22 validated forever after the first epoch, no error, no end.
MAX_VAL_ITERATIONS_PER_EPOCH = 10_000
# A loss term weighted beyond this (nnU-Net: 1) overflows float32 with its gradient (1e308 stopped training as
# "diverged ... lower the learning rate", naming the wrong setting).
MAX_LOSS_WEIGHT = 1000.0
# Intensity multipliers (brightness, contrast; nnU-Net: 0.75-1.25) and the noise variance (nnU-Net: at most 0.1) act on
# normalized intensities of about unit spread: beyond these the patch is no image, and 1e300 overflowed float32 into a
# loss of inf, reported as a divergence of the learning rate.
MAX_INTENSITY_FACTOR = 100.0
MAX_NOISE_VARIANCE = 100.0
AT_LEAST_1 = Rule(lambda v: v >= 1, ">= 1", whole=True)
NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
POSITIVE = Rule(lambda v: v > 0, "> 0")
SHARE = Rule(lambda v: 0 <= v <= 1, "between 0 and 1")
BELOW_ONE = Rule(lambda v: 0 <= v < 1, ">= 0 and < 1")
BETAS = Rule(lambda v: 0 <= v < 1, ">= 0 and < 1", pair=True, ordered=False)
SIGMA = Rule(lambda v: 0 <= v <= MAX_SIGMA_VOXELS, f">= 0 and <= {MAX_SIGMA_VOXELS:g} (voxels)", pair=True)
LOSS_WEIGHT = Rule(lambda v: 0 <= v <= MAX_LOSS_WEIGHT, f">= 0 and <= {MAX_LOSS_WEIGHT:g}")
INTENSITY_FACTORS = Rule(lambda v: 0 <= v <= MAX_INTENSITY_FACTOR, f">= 0 and <= {MAX_INTENSITY_FACTOR:g} (multipliers)",
                         pair=True)
DEGREES = Rule(lambda v: 0 <= v <= 180, "between 0 and 180 (degrees)")

RULES: dict[str, Rule | Choice] = {
    "num_epochs": AT_LEAST_1,
    "iterations_per_epoch": AT_LEAST_1,
    "val_iterations_per_epoch": Rule(lambda v: 0 <= v <= MAX_VAL_ITERATIONS_PER_EPOCH, f"from 0 to "
                                     f"{MAX_VAL_ITERATIONS_PER_EPOCH} (0: no pseudo-validation)", whole=True),
    "batch_size": AT_LEAST_1,
    "patch_size": Rule(lambda v: v >= 1, ">= 1 (voxels per axis)", whole=True, items=True),
    "budget_probe_iterations": AT_LEAST_1,
    "budget_safety_fraction": BELOW_ONE,
    "optimizer.name": Choice(OPTIMIZERS),
    "optimizer.lr": POSITIVE,
    "optimizer.momentum": BELOW_ONE,
    "optimizer.betas": BETAS,
    "optimizer.weight_decay": NON_NEGATIVE,
    "lr_schedule.name": Choice(LR_SCHEDULES),
    "lr_schedule.exponent": POSITIVE,
    "grad_clip": Rule(lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "loss.weight_ce": LOSS_WEIGHT,
    "loss.weight_dice": LOSS_WEIGHT,
    "loss.dice_denominator": Choice(tuple(DICE_DENOMINATORS)),
    "oversample_foreground": SHARE,
    "pseudo_dice_ema": BELOW_ONE,
    "mixed_precision": Choice(MIXED_PRECISION_SETTINGS),
    "num_workers": Rule(lambda v: 0 <= v <= most_stage_workers(), f">= 0 and at most {most_stage_workers()} ({MAX_STAGE_WORKERS_PER_CORE} "
                        "per core of this machine) or auto (0: batches built in the training process)", whole=True),
    "math_threads": Rule(lambda v: 1 <= v <= most_math_threads(), f">= 1 and at most {most_math_threads()} "
                         f"({MAX_MATH_THREADS_PER_CORE} per core of this machine) or auto", whole=True),
    # each worker's queue holds them (a semaphore: 2**31 stopped training with an internal OverflowError)
    "prefetch_batches": Rule(lambda v: 1 <= v <= MAX_PREFETCH_BATCHES, f"from 1 to {MAX_PREFETCH_BATCHES} (batches each "
                             "worker holds ready in memory)", whole=True),
    "worker_timeout_seconds": Rule(lambda v: v > 0, "> 0 (seconds; fractions too)"),
    "case_cache_mb": Rule(lambda v: v >= 0, ">= 0 or auto (0: every crop read from the store)"),
    "augmentation.anisotropy_threshold": Rule(lambda v: v >= 1, ">= 1 (a ratio of the patch's extents)"),
    "augmentation.rotation.degrees_3d": DEGREES,
    "augmentation.rotation.degrees_2d": DEGREES,
    "augmentation.scaling.range": Rule(lambda v: 0 < v <= MAX_SCALING, f"> 0 and <= {MAX_SCALING:g}", pair=True),
    "augmentation.elastic.alpha": Rule(lambda v: 0 <= v <= MAX_ELASTIC_ALPHA, f">= 0 and <= {MAX_ELASTIC_ALPHA:g}", pair=True),
    "augmentation.elastic.sigma": SIGMA,
    "augmentation.spatial_order_data": Rule(lambda v: 0 <= v <= 5, "from 0 to 5 (a spline order)", whole=True),
    "augmentation.spatial_order_seg": Rule(lambda v: 0 <= v <= 5, "from 0 to 5 (a spline order)", whole=True),
    "augmentation.gaussian_noise.variance": Rule(lambda v: 0 <= v <= MAX_NOISE_VARIANCE, f">= 0 and <= "
                                                 f"{MAX_NOISE_VARIANCE:g}", pair=True),
    "augmentation.gaussian_blur.sigma": SIGMA,
    "augmentation.brightness.range": INTENSITY_FACTORS,
    "augmentation.contrast.range": INTENSITY_FACTORS,
    "augmentation.low_resolution.zoom": Rule(lambda v: 0 < v <= 1, "> 0 and <= 1", pair=True),
    "augmentation.gamma_inverted.range": Rule(lambda v: v > 0, "> 0", pair=True),
    "augmentation.gamma.range": Rule(lambda v: v > 0, "> 0", pair=True),
    "augmentation.mirror.axes": Rule(lambda v: v >= 0, ">= 0 (spatial axes of the patch)", whole=True, items=True),
    "augmentation.mask_channels": Rule(lambda v: v >= 0, ">= 0 (image channel indices)", whole=True, items=True),
    "augmentation.cascade_binary_operation.max_size": Rule(lambda v: 1 <= v <= MAX_CASCADE_BALL_RADIUS, f"from 1 to "
                                                           f"{MAX_CASCADE_BALL_RADIUS} (voxels of a ball's radius)", whole=True),
    "augmentation.cascade_remove_component.max_fraction": Rule(lambda v: 0 < v <= 1, "> 0 and <= 1"),
    "adversarial.discriminator_lr": POSITIVE,
    "adversarial.discriminator_betas": BETAS,
}
# Every probability of the augmentation section: its last key part is one of these.
_PROBABILITY_KEYS = ("p", "p_per_channel")


def rule_for(key: str) -> Rule | Choice | None:
    """The rule of a dotted setting, or None for one its type alone describes (an on/off switch)."""
    if key.startswith("augmentation.") and key.rpartition(".")[2] in _PROBABILITY_KEYS:
        return SHARE
    return RULES.get(key)


def check_value(key: str, value: Any, default: Any, origin: str = "the default") -> None:
    """Refuse ``value`` for the dotted ``key`` with a TrainingError that says what it may be and what
    the setting is without it (``origin``: whose value ``default`` is)."""
    rule = rule_for(key)
    if rule is None or value is None or value == "auto":  # decided later (the plan, the machine)
        return
    problem = rule.problem(value)
    if problem is not None:
        raise TrainingError(f"--set {key}={value!r}: {problem}; {described(default, origin)}")


def described(default: Any, origin: str = "the default") -> str:
    """A setting's value without the refused ``--set``, for its message: null is the plan's or the machine's
    choice, not a value to copy."""
    if default is None:
        return f"{origin} is null (chosen by the plan or for the machine)"
    return f"{origin} is {default!r}"


def named_setting(key: str, value: Any, sources: Mapping[str, str]) -> str:
    """A setting and its value as a refusal names them: ``--set key=value`` where the user gave it, else with where
    it came from (``sources``: dotted key to its origin; a value of the plans file was called ``--set``)."""
    source = sources.get(key, "the default")
    return f"--set {key}={value!r}" if source == "--set" else f"{key}={value!r} ({source})"


def check_together(config: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Rules across settings: a loss with at least one term; SGD's Nesterov step needs momentum (torch refused
    ``--set optimizer.momentum=0`` with the default ``nesterov: true`` as an internal ValueError). ``sources``:
    where each setting not at its default came from (:func:`named_setting`)."""
    loss, optimizer = config["loss"], config["optimizer"]

    def named(section: str, key: str) -> str:
        return named_setting(f"{section}.{key}", config[section][key], sources)

    if loss["weight_ce"] == 0 and loss["weight_dice"] == 0:
        raise TrainingError(f"{named('loss', 'weight_ce')} and {named('loss', 'weight_dice')} leave no loss to train on; "
                            "keep one above 0")
    if optimizer["name"] == "sgd" and optimizer["nesterov"] and optimizer["momentum"] == 0:
        raise TrainingError(f"{named('optimizer', 'momentum')} with optimizer.nesterov=true: a Nesterov step needs "
                            "momentum; add --set optimizer.nesterov=false for plain SGD, or keep a momentum above 0")
