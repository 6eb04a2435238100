"""Pseudo-validation: the epoch-end check on un-augmented validation patches (nnU-Net's "pseudo Dice").

TP, FP and FN of each class (or region) are pooled over the epoch's validation batches and all ranks,
then turned into one Dice per class; a class absent from both patches and predictions has no Dice (NaN)
and does not count in the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from autoseg.training.data_loading import batch_to_device
from autoseg.training.distributed import DistributedContext, all_reduce_sum
from autoseg.training.model_setup import ModelSetup
from autoseg.training.steps import LabelSpec, autocast


@dataclass
class PseudoValidationResult:
    loss: float  # NaN without pseudo-validation batches
    dice: float  # mean over the classes that have one; NaN when none has
    per_class: list[float]


def epoch_batches(per_epoch: int, trained: int, iterations_per_epoch: int) -> int:
    """Pseudo-validation batches after an epoch of ``trained`` iterations: ``per_epoch`` after a full
    epoch, proportionally fewer (at least one) after a short last one, so that a budget affording less
    than an epoch does not spend it validating (a 45-iteration FC-DenseNet run validated 50 batches)
    and the per-iteration share the budget probe assumes holds for any epoch length."""
    if per_epoch <= 0:
        return 0
    return max(1, min(per_epoch, math.ceil(per_epoch * trained / max(iterations_per_epoch, 1))))


def confusion(logits: torch.Tensor, labels: torch.Tensor, spec: LabelSpec) -> torch.Tensor:
    """(3, classes) TP, FP, FN of the batch; ignore-label voxels do not count."""
    target, annotated = spec.binary_target(labels)
    if spec.regions:
        predicted = logits > 0
        target = target.bool()
    else:
        predicted = torch.nn.functional.one_hot(logits.argmax(1), spec.n_outputs).movedim(-1, 1)[:, 1:].bool()
        target = target[:, 1:].bool()
    if annotated is not None:
        valid = annotated.bool()
        predicted, target = predicted & valid, target & valid
    axes = [0, *range(2, predicted.ndim)]
    tp = (predicted & target).sum(axes)
    fp = (predicted & ~target).sum(axes)
    fn = (~predicted & target).sum(axes)
    return torch.stack([tp, fp, fn]).double()


def dice_from_counts(counts: torch.Tensor) -> tuple[float, list[float]]:
    """Mean foreground Dice and the Dice of each class from (3, classes) TP, FP, FN."""
    tp, fp, fn = counts
    denominator = 2 * tp + fp + fn
    per_class = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.full_like(tp, math.nan))
    valid = per_class[~per_class.isnan()]
    return (float(valid.mean()) if len(valid) else math.nan), per_class.tolist()


def n_scored_classes(spec: LabelSpec) -> int:
    """Regions, or the foreground classes."""
    return len(spec.regions) if spec.regions else spec.n_outputs - 1


@torch.no_grad()
def pseudo_validate(setup: ModelSetup, loss: Any, spec: LabelSpec, batches: Iterator[dict[str, Any]], n_batches: int,
                    device: torch.device, context: DistributedContext) -> PseudoValidationResult:
    """Mean loss and Dice over ``n_batches`` batches of ``batches`` with the network in eval mode
    (full-resolution output, dropout off), pooled over all ranks."""
    n_classes = n_scored_classes(spec)
    counts = torch.zeros(3, n_classes, dtype=torch.float64)
    loss_sum = 0.0
    setup.model.eval()
    try:
        for _ in range(n_batches):
            data, labels = batch_to_device(next(batches), device, setup.memory_format)
            with autocast(device, setup.amp_dtype):
                logits = setup.network(data)
            logits = (logits[0] if isinstance(logits, (list, tuple)) else logits).float()
            loss_sum += float(loss([logits], spec.loss_target(labels)))
            counts += confusion(logits, labels, spec).cpu()
    finally:
        setup.model.train()
    totals = all_reduce_sum(torch.cat([counts.flatten(), torch.tensor([loss_sum, n_batches], dtype=torch.float64)]), context)
    dice, per_class = dice_from_counts(totals[: 3 * n_classes].view(3, n_classes))
    batches_seen = float(totals[-1])
    return PseudoValidationResult(float(totals[-2]) / batches_seen if batches_seen else math.nan, dice, per_class)
