"""Dice + cross-entropy (softmax), Dice + BCE (regions, sigmoid), and the deep supervision wrapper.

reference.md §1.5 (nnU-Net's loss) and §1.1 (region-based training, ignore label).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.training.losses.dice import DICE_SMOOTH, SoftDiceLoss, soft_dice

TargetDownsampling = Literal["nearest", "max"]


class DiceCELoss(nn.Module):
    """``weight_ce * CE + weight_dice * (1 - soft Dice)`` for softmax training on integer labels.

    Args:
        ignore_label: label excluded from both terms (cross-entropy averages over counted voxels).
        batch_dice, smooth, squared_denominator: passed to :class:`SoftDiceLoss` (background excluded).
        weight_ce, weight_dice: term weights (nnU-Net: 1 and 1).
    """

    def __init__(
        self,
        *,
        ignore_label: int | None = None,
        batch_dice: bool = True,
        smooth: float = DICE_SMOOTH,
        squared_denominator: bool = False,
        weight_ce: float = 1.0,
        weight_dice: float = 1.0,
    ) -> None:
        super().__init__()
        self.ignore_label = ignore_label
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.dice = SoftDiceLoss(
            batch_dice=batch_dice,
            smooth=smooth,
            squared_denominator=squared_denominator,
            ignore_label=ignore_label,
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, C, *)``, ``labels`` ``(B, 1, *)`` integers in ``[0, C)`` or the ignore label."""
        target = labels[:, 0].long()
        if self.ignore_label is None:
            ce = F.cross_entropy(logits, target)
        else:
            # Sum / count instead of mean: a batch with every voxel ignored gives 0, not NaN.
            n_counted = (target != self.ignore_label).sum().clamp_min(1)
            ce = F.cross_entropy(logits, target, ignore_index=self.ignore_label, reduction="sum") / n_counted
        return self.weight_ce * ce + self.weight_dice * self.dice(logits, labels)


def labels_to_regions(
    labels: torch.Tensor, regions: Sequence[Sequence[int]], ignore_label: int | None = None
) -> torch.Tensor:
    """``(B, 1, *)`` integer labels -> ``(B, R, *)`` binary region targets (a region is a set of labels).

    With an ignore label, a last channel marks the ignored voxels (1 = ignored), which
    :class:`RegionDiceBCELoss` with ``has_ignore=True`` expects. Convert before deep supervision
    downsampling so that max pooling can keep thin regions.
    """
    channels = [torch.isin(labels, torch.as_tensor(list(region), device=labels.device)) for region in regions]
    if ignore_label is not None:
        channels.append(labels == ignore_label)
    return torch.cat(channels, dim=1).float()


class RegionDiceBCELoss(nn.Module):
    """``weight_bce * BCE + weight_dice * (1 - soft Dice)`` on sigmoid outputs, one channel per region.

    Every region is foreground, so all channels enter the Dice (as nnU-Net's region training does).

    Args:
        has_ignore: the target's last channel is an ignore mask (see :func:`labels_to_regions`).
        batch_dice, smooth, squared_denominator: soft Dice settings.
        weight_bce, weight_dice: term weights.
    """

    def __init__(
        self,
        *,
        has_ignore: bool = False,
        batch_dice: bool = True,
        smooth: float = DICE_SMOOTH,
        squared_denominator: bool = False,
        weight_bce: float = 1.0,
        weight_dice: float = 1.0,
    ) -> None:
        super().__init__()
        self.has_ignore = has_ignore
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.squared_denominator = squared_denominator
        self.weight_bce = weight_bce
        self.weight_dice = weight_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, R, *)``; ``target`` ``(B, R, *)`` binary, plus the ignore channel if set."""
        mask = None
        if self.has_ignore:
            mask = 1 - target[:, -1:].float()
            target = target[:, :-1]
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if mask is None:
            bce = bce.mean()
        else:
            bce = (bce * mask).sum() / (mask.sum() * logits.shape[1]).clamp_min(1)
        dice = soft_dice(
            torch.sigmoid(logits),
            target,
            mask,
            batch_dice=self.batch_dice,
            smooth=self.smooth,
            squared_denominator=self.squared_denominator,
        )
        return self.weight_bce * bce + self.weight_dice * (1 - dice.mean())


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """1/2^i per output (full resolution first), the lowest resolution set to 0, normalised to sum 1.

    reference.md §1.5. A single output keeps weight 1.
    """
    weights = [1 / 2**i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(
    target: torch.Tensor, size: Sequence[int], mode: TargetDownsampling = "nearest", ignore_last: bool = False
) -> torch.Tensor:
    """Resize a ``(B, C, *)`` target to spatial ``size``.

    ``nearest`` (nnU-Net's, 'nearest-exact' sampling) suits integer labels; ``max`` pools binary
    channels (region targets), so a region thinner than the stride is not lost at low resolution.
    With ``ignore_last`` (region targets with an ignore mask, :func:`labels_to_regions`) the mask is
    sampled as nnU-Net samples it, nearest: max pooling it ignored a coarse voxel if any voxel under it
    was, so with every other slice ignored the 1/4 and coarser outputs were ignored everywhere.
    """
    size = list(size)
    if list(target.shape[2:]) == size:
        return target
    if mode == "nearest":
        return F.interpolate(target.float(), size=size, mode="nearest-exact").to(target.dtype)
    if mode == "max":
        pool = F.adaptive_max_pool2d if target.ndim == 4 else F.adaptive_max_pool3d
        if ignore_last:
            regions = pool(target[:, :-1].float(), size)
            ignored = F.interpolate(target[:, -1:].float(), size=size, mode="nearest-exact")
            return torch.cat([regions, ignored], dim=1).to(target.dtype)
        return pool(target.float(), size).to(target.dtype)
    raise ValueError(f"target downsampling mode must be 'nearest' or 'max', got {mode!r}")


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over deep supervision outputs, each against a resized target.

    Args:
        loss: loss for one output, ``loss(logits, target)``.
        target_downsampling: ``nearest`` for integer labels, ``max`` for binary region targets.
        weights: per-output weights (full resolution first); default :func:`deep_supervision_weights`.
    """

    def __init__(
        self,
        loss: nn.Module,
        *,
        target_downsampling: TargetDownsampling = "nearest",
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if target_downsampling not in ("nearest", "max"):
            raise ValueError(f"target_downsampling must be 'nearest' or 'max', got {target_downsampling!r}")
        self.loss = loss
        self.target_downsampling = target_downsampling
        # region targets' ignore mask (the last channel) is sampled, not pooled: see downsample_target
        self.ignore_last = bool(getattr(loss, "has_ignore", False))
        self.weights = list(weights) if weights is not None else None

    def forward(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``outputs``: logits, full resolution first (a single tensor counts as one output)."""
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        weights = self.weights if self.weights is not None else deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} deep supervision outputs but {len(weights)} weights")
        # Zero-weight outputs are still evaluated, so every head gets a (zero) gradient: distributed
        # training requires every parameter to take part in backward.
        total = outputs[0].new_zeros(())
        for weight, logits in zip(weights, outputs):
            resized = downsample_target(target, logits.shape[2:], self.target_downsampling, self.ignore_last)
            total = total + weight * self.loss(logits, resized)
        return total
