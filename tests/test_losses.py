"""Shared losses against small hand-computed examples (reference.md §1.5, §2.4)."""

from __future__ import annotations

import math

import pytest
import torch

from autoseg.training.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    RegionDiceBCELoss,
    SoftDiceLoss,
    deep_supervision_weights,
    downsample_target,
    labels_to_regions,
    soft_dice,
)

S = 1e-5  # reference.md §1.5 smoothing

# One 2x2 image, two classes: foreground probabilities and labels.
P_FG = torch.tensor([[0.8, 0.6], [0.3, 0.1]])
LABELS = torch.tensor([[1, 0], [1, 0]])


def logits_for(p_fg: torch.Tensor) -> torch.Tensor:
    """(1, 2, *) logits whose softmax gives foreground probability ``p_fg``."""
    return torch.stack([torch.zeros_like(p_fg), torch.log(p_fg / (1 - p_fg))])[None]


def test_soft_dice_by_hand() -> None:
    probs, target = P_FG[None, None], LABELS[None, None].float()
    # sum(p g) = 0.8 + 0.3 = 1.1, sum p = 1.8, sum g = 2, sum p^2 = 0.64 + 0.36 + 0.09 + 0.01 = 1.1
    torch.testing.assert_close(soft_dice(probs, target), torch.tensor([(2.2 + S) / (3.8 + S)]))
    torch.testing.assert_close(
        soft_dice(probs, target, squared_denominator=True), torch.tensor([(2.2 + S) / (3.1 + S)])
    )


def test_batch_dice_pools_samples_and_per_sample_does_not() -> None:
    probs = torch.stack([P_FG, torch.full((2, 2), 0.5)])[:, None]  # second sample: no foreground
    target = torch.stack([LABELS, torch.zeros(2, 2, dtype=torch.long)])[:, None].float()
    torch.testing.assert_close(soft_dice(probs, target), torch.tensor([(2.2 + S) / (3.8 + 2.0 + S)]))
    torch.testing.assert_close(
        soft_dice(probs, target, batch_dice=False), torch.tensor([[(2.2 + S) / (3.8 + S)], [S / (2.0 + S)]])
    )


def test_dice_loss_excludes_background_unless_asked() -> None:
    logits, labels = logits_for(P_FG), LABELS[None, None]
    foreground = (2.2 + S) / (3.8 + S)
    # Background: p = 1 - P_FG = [0.2, 0.4, 0.7, 0.9], g = [0, 1, 0, 1]: sum(p g) = 1.3, sum p = 2.2.
    background = (2.6 + S) / (4.2 + S)
    torch.testing.assert_close(SoftDiceLoss()(logits, labels), torch.tensor(1 - foreground))
    torch.testing.assert_close(
        SoftDiceLoss(include_background=True)(logits, labels), torch.tensor(1 - (foreground + background) / 2)
    )
    torch.testing.assert_close(
        SoftDiceLoss(squared_denominator=True)(logits, labels), torch.tensor(1 - (2.2 + S) / (3.1 + S))
    )


def test_dice_ce_by_hand() -> None:
    # Cross-entropy: mean of -log p(true class) = -log of 0.8, 0.4, 0.3, 0.9.
    ce = -(math.log(0.8) + math.log(0.4) + math.log(0.3) + math.log(0.9)) / 4
    dice = 1 - (2.2 + S) / (3.8 + S)
    loss = DiceCELoss()(logits_for(P_FG), LABELS[None, None])
    torch.testing.assert_close(loss, torch.tensor(ce + dice))


def test_ignore_label_is_masked_in_both_terms() -> None:
    # Label 2 (the ignore label) on the two right voxels: only p = 0.8 (g 1) and 0.3 (g 1) count.
    labels = torch.tensor([[1, 2], [1, 2]])[None, None]
    ce = -(math.log(0.8) + math.log(0.3)) / 2
    dice = 1 - (2 * 1.1 + S) / (1.1 + 2 + S)
    logits = logits_for(P_FG).requires_grad_()
    loss = DiceCELoss(ignore_label=2)(logits, labels)
    torch.testing.assert_close(loss, torch.tensor(ce + dice))
    loss.backward()
    assert torch.all(logits.grad[..., 1] == 0) and torch.all(logits.grad[..., 0] != 0)


def test_all_voxels_ignored_gives_finite_loss() -> None:
    labels = torch.full((1, 1, 2, 2), 2)
    loss = DiceCELoss(ignore_label=2)(logits_for(P_FG), labels)
    # CE has nothing to average (0); Dice of an empty foreground is (0 + s) / (0 + s) = 1.
    torch.testing.assert_close(loss, torch.tensor(0.0))


def test_labels_to_regions_by_hand() -> None:
    labels = torch.tensor([[0, 1], [2, 3]])[None, None]
    regions = labels_to_regions(labels, [[1, 2, 3], [2, 3], [3]], ignore_label=None)
    expected = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [1, 1]], [[0, 0], [0, 1]]]).float()[None]
    torch.testing.assert_close(regions, expected)
    with_ignore = labels_to_regions(labels, [[1, 2]], ignore_label=3)
    torch.testing.assert_close(with_ignore, torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 1]]]).float()[None])


def test_region_dice_bce_by_hand() -> None:
    # Logits 0 everywhere: sigmoid 0.5, BCE log 2 per voxel. Region targets have 3 and 2 positives.
    target = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [1, 1]]]).float()[None]
    dice = [(2 * 0.5 * 3 + S) / (2 + 3 + S), (2 * 0.5 * 2 + S) / (2 + 2 + S)]
    loss = RegionDiceBCELoss()(torch.zeros(1, 2, 2, 2), target)
    torch.testing.assert_close(loss, torch.tensor(math.log(2) + 1 - sum(dice) / 2))


def test_region_loss_ignore_channel_masks_voxels() -> None:
    # One region and the ignore channel, which drops the bottom-right voxel; there the prediction is
    # confidently wrong (logit -50 for a positive), which would dominate the loss if it counted.
    target = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 1]]]).float()[None]
    logits = torch.zeros(1, 1, 2, 2)
    logits[..., 1, 1] = -50.0
    # Counted: p = 0.5 at three voxels, g = 0, 1, 1: sum(p g) = 1, sum p = 1.5, sum g = 2.
    dice = (2 * 1.0 + S) / (1.5 + 2 + S)
    loss = RegionDiceBCELoss(has_ignore=True)(logits, target)
    torch.testing.assert_close(loss, torch.tensor(math.log(2) + 1 - dice))


def test_deep_supervision_weights() -> None:
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    weights = deep_supervision_weights(5)  # 1, 1/2, 1/4, 1/8, (1/16 dropped) over 15/8
    assert weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0]) and sum(weights) == pytest.approx(1)


def test_target_downsampling_nearest_and_max() -> None:
    labels = torch.arange(16).reshape(1, 1, 4, 4)
    torch.testing.assert_close(downsample_target(labels, (2, 2)), torch.tensor([[[[5, 7], [13, 15]]]]))
    dot = torch.zeros(1, 1, 4, 4)
    dot[..., 0, 0] = 1.0  # a structure thinner than the stride
    assert downsample_target(dot, (2, 2), "nearest").sum() == 0
    torch.testing.assert_close(downsample_target(dot, (2, 2), "max"), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    assert downsample_target(labels, (4, 4)) is labels
    with pytest.raises(ValueError, match=r"target downsampling mode must be 'nearest' or 'max', got 'area'"):
        downsample_target(dot, (2, 2), "area")  # type: ignore[arg-type]


def test_region_ignore_mask_is_sampled_not_pooled_at_low_resolution() -> None:
    # every other slice ignored (label 3), a region of labels 1-2 on the annotated ones
    labels = torch.zeros(1, 1, 8, 4, 4, dtype=torch.long)
    labels[:, :, 1::2] = 3
    labels[:, :, 0::2, :2] = 1
    target = labels_to_regions(labels, [[1, 2]], ignore_label=3)
    coarse = downsample_target(target, (2, 1, 1), "max", ignore_last=True)
    # the region keeps its max pooling; the mask is nearest-sampled as nnU-Net's label downsampling does:
    # max pooling it ignored every coarse voxel, so the 1/4 output learnt nothing
    torch.testing.assert_close(coarse[:, 0], torch.ones(1, 2, 1, 1))
    # (nearest-exact picks slices 2 and 6, both annotated)
    assert coarse[:, 1].sum() == 0
    assert downsample_target(target, (2, 1, 1), "max")[:, 1].mean() == 1.0

    seen: list[torch.Tensor] = []

    class Recording(RegionDiceBCELoss):
        def forward(self, logits: torch.Tensor, resized: torch.Tensor) -> torch.Tensor:
            seen.append(resized)
            return super().forward(logits, resized)

    outputs = [torch.zeros(1, 1, 8, 4, 4), torch.zeros(1, 1, 2, 1, 1)]
    DeepSupervisionLoss(Recording(has_ignore=True), target_downsampling="max")(outputs, target)
    assert seen[1][:, 1].sum() == 0


def test_deep_supervision_loss_weights_each_output_against_its_resized_target() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    outputs = [torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 4, 4)]
    outputs.append(torch.randn(2, 3, 2, 2, requires_grad=True))
    base = DiceCELoss()
    expected = 2 / 3 * base(outputs[0], labels) + 1 / 3 * base(outputs[1], labels[..., 1::2, 1::2])
    torch.testing.assert_close(DeepSupervisionLoss(base)(outputs, labels), expected)
    DeepSupervisionLoss(base)(outputs, labels).backward()
    # The dropped lowest resolution still takes part in backward, with a zero gradient.
    assert outputs[2].grad is not None and torch.all(outputs[2].grad == 0)
    custom = DeepSupervisionLoss(base, weights=[0.0, 1.0, 0.0])(outputs, labels)
    torch.testing.assert_close(custom, base(outputs[1], labels[..., 1::2, 1::2]))


def test_deep_supervision_with_ignore_label_keeps_it_at_low_resolution() -> None:
    labels = torch.tensor([[0, 0, 2, 2], [0, 1, 2, 2], [1, 1, 0, 0], [1, 1, 0, 1]])[None, None]
    low = torch.zeros(1, 2, 2, 2, requires_grad=True)
    loss = DeepSupervisionLoss(DiceCELoss(ignore_label=2), weights=[1.0])([low], labels)
    loss.backward()
    # Nearest sampling picks labels (1, 2; 1, 1): the top-right voxel is ignored, gradient 0 there.
    assert torch.all(low.grad[..., 0, 1] == 0) and torch.all(low.grad[..., 1, :] != 0)


def test_deep_supervision_weight_count_mismatch() -> None:
    with pytest.raises(ValueError, match=r"2 deep supervision outputs but 3 weights"):
        DeepSupervisionLoss(DiceCELoss(), weights=[1, 1, 1])([torch.zeros(1, 2, 2, 2)] * 2, torch.zeros(1, 1, 2, 2))
