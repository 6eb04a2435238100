"""Soft Dice, as nnU-Net trains with it (reference.md §1.5), plus V-Net's squared denominator (§2.4)."""

from __future__ import annotations

import torch
from torch import nn

# reference.md §1.5: soft Dice smoothing term.
DICE_SMOOTH = 1e-5
# Keeps the denominator positive when smooth is 0 and a class is absent from prediction and target.
_MIN_DENOMINATOR = 1e-8


def soft_dice(
    probs: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    batch_dice: bool = True,
    smooth: float = DICE_SMOOTH,
    squared_denominator: bool = False,
) -> torch.Tensor:
    """Per-channel soft Dice ``(2 sum(p g) + s) / (sum p + sum g + s)`` of ``(B, C, *)`` tensors.

    Args:
        probs: probabilities.
        target: binary (one-hot or region) target, same shape.
        mask: ``(B, 1, *)`` with 1 where voxels count (ignore label), or ``None``.
        batch_dice: pool the sums over the batch (nnU-Net's batch Dice) instead of per sample.
        smooth: added to numerator and denominator.
        squared_denominator: V-Net's ``sum p^2 + sum g^2`` denominator.

    Returns:
        ``(C,)`` with batch Dice, else ``(B, C)``.
    """
    if mask is not None:
        probs = probs * mask
        target = target * mask
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0,) + axes
    intersection = (probs * target).sum(axes)
    if squared_denominator:
        denominator = (probs * probs).sum(axes) + (target * target).sum(axes)
    else:
        denominator = probs.sum(axes) + target.sum(axes)
    return (2 * intersection + smooth) / (denominator + smooth).clamp_min(_MIN_DENOMINATOR)


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, 1, *)`` integer labels -> ``(B, C, *)`` float one-hot."""
    encoded = torch.zeros((labels.shape[0], n_classes, *labels.shape[2:]), dtype=torch.float32, device=labels.device)
    return encoded.scatter_(1, labels.long(), 1.0)


def split_ignore(labels: torch.Tensor, ignore_label: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels with the ignore label replaced by background, and the mask of voxels that count."""
    if ignore_label is None:
        return labels, None
    valid = labels != ignore_label
    return torch.where(valid, labels, torch.zeros_like(labels)), valid.float()


class SoftDiceLoss(nn.Module):
    """``1 - mean`` soft Dice of softmax probabilities against integer labels.

    nnU-Net's settings by default: background excluded, smooth 1e-5, batch Dice (reference.md §1.5).
    nnU-Net reports ``-Dice``; ``1 - Dice`` has the same gradient and reads as a loss (0 = perfect).

    Args:
        batch_dice: pool over the batch.
        smooth: smoothing term.
        include_background: also average the background class.
        squared_denominator: V-Net's Dice (reference.md §2.4).
        ignore_label: voxels with this label count neither in prediction nor target.
    """

    def __init__(
        self,
        *,
        batch_dice: bool = True,
        smooth: float = DICE_SMOOTH,
        include_background: bool = False,
        squared_denominator: bool = False,
        ignore_label: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.include_background = include_background
        self.squared_denominator = squared_denominator
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, C, *)``, ``labels`` ``(B, 1, *)`` integers in ``[0, C)`` or the ignore label."""
        labels, mask = split_ignore(labels, self.ignore_label)
        probs = torch.softmax(logits, dim=1)
        with torch.no_grad():
            target = one_hot(labels, logits.shape[1]).to(probs.dtype)
        if not self.include_background:
            probs, target = probs[:, 1:], target[:, 1:]
        dice = soft_dice(
            probs,
            target,
            mask,
            batch_dice=self.batch_dice,
            smooth=self.smooth,
            squared_denominator=self.squared_denominator,
        )
        return 1 - dice.mean()
