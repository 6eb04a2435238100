"""Network-specific extra loss terms, added by the training loop to the shared segmentation loss.

SegResNet's VAE regulariser (reference.md §2.2), ConResNet's context-residual loss (§2.3) and
Vox2Vox's least-squares adversarial losses with generalised Dice (§2.5).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from autoseg.networks.blocks import upsample_mode
from autoseg.networks.conresnet import slice_difference
from autoseg.training.losses.dice import one_hot

# reference.md §2.2: Dice + 0.1 x L2(reconstruction) + 0.1 x KL.
VAE_L2_WEIGHT = 0.1
VAE_KL_WEIGHT = 0.1
# reference.md §2.3: full-resolution residual loss weight 1, lambda 0.5 for the 1/2 and 1/4 outputs.
CONRES_LOWRES_WEIGHT = 0.5
# reference.md §2.5: G = LSGAN + 5 x generalised Dice.
VOX2VOX_DICE_WEIGHT = 5.0
# Keeps log(sigma^2) finite when softplus underflows.
_MIN_VARIANCE = 1e-12
# Generalised Dice denominator guard for all-empty batches.
_GDICE_EPS = 1e-8


def binary_target(target: torch.Tensor, n_channels: int) -> torch.Tensor:
    """A ``(B, C, *)`` float binary target: one-hot of ``(B, 1, *)`` integer labels when the channel
    counts differ, else the given region/one-hot masks as float."""
    if target.shape[1] == n_channels:
        return target.float()
    return one_hot(target, n_channels)


def vae_loss(reconstruction: torch.Tensor, image: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``0.1 x L2 + 0.1 x KL`` of SegResNet's VAE (reference.md §2.2).

    L2 is the mean squared reconstruction error (the paper's squared norm divided by the number of
    values, so the weight does not scale with the patch size); ``KL = mean(mu^2 + sigma^2 -
    log sigma^2 - 1)`` over latent entries and batch.
    """
    l2 = F.mse_loss(reconstruction, image)
    variance = sigma.pow(2)
    kl = (mu.pow(2) + variance - torch.log(variance.clamp_min(_MIN_VARIANCE)) - 1).mean()
    return VAE_L2_WEIGHT * l2 + VAE_KL_WEIGHT * kl


def residual_target(target: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """ConResNet's residual ground truth ``label[s] XOR label[s-1]`` along ``slice_axis`` (spatial
    index) of a ``(B, C, *)`` binary target; the first slice is 0."""
    return slice_difference(target.float(), 2 + slice_axis)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-channel BCE with positive weight ``log(N / (n_pos + 1))`` (reference.md §2.3), averaged.

    ``N`` and ``n_pos`` count voxels of the channel over the whole batch. Deviation: the weight is
    never below 1 (the paper's formula drops under 1 when over a third of the voxels are positive,
    and turns negative when all are).
    """
    channel_first = target.transpose(0, 1).flatten(1)
    n_voxels = channel_first.shape[1]
    positives = channel_first.sum(1)
    pos_weight = torch.log(n_voxels / (positives + 1)).clamp_min(1.0)
    pos_weight = pos_weight.view(-1, *([1] * (target.ndim - 2)))
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


def residual_logits(aux: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """ConResNet's ``residual_<k>`` outputs in scale order (``k = 0`` at full resolution)."""
    keys = sorted((k for k in aux if k.startswith("residual_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [aux[k] for k in keys]


def conresnet_residual_loss(aux: Mapping[str, torch.Tensor], target: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """``wBCE(res) + 0.5 x sum of wBCE(res at lower scales)`` (reference.md §2.3).

    Lower-scale logits are resized to the target's size first, as in the authors' code.

    Args:
        aux: ``forward_with_aux``'s aux dict of a ConResNet.
        target: ``(B, 1, *)`` integer labels (one-hot encoded here) or ``(B, C, *)`` region masks;
            map an ignore label to background beforehand.
        slice_axis: the network's ``slice_axis``.
    """
    outputs = residual_logits(aux)
    if not outputs:
        raise ValueError("conresnet_residual_loss: aux holds no 'residual_<k>' outputs (train mode?)")
    size = list(target.shape[2:])
    gt = residual_target(binary_target(target, outputs[0].shape[1]), slice_axis)
    total = outputs[0].new_zeros(())
    for k, logits in enumerate(outputs):
        if list(logits.shape[2:]) != size:
            logits = F.interpolate(logits, size=size, mode=upsample_mode(len(size)), align_corners=False)
        total = total + (1.0 if k == 0 else CONRES_LOWRES_WEIGHT) * weighted_bce(logits, gt)
    return total


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``0.5 [MSE(D(x, y), 1) + MSE(D(x, G(x)), 0)]`` (reference.md §2.5)."""
    real = F.mse_loss(real_scores, torch.ones_like(real_scores))
    fake = F.mse_loss(fake_scores, torch.zeros_like(fake_scores))
    return 0.5 * (real + fake)


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``MSE(D(x, G(x)), 1)``: the generator wants its output scored as real."""
    return F.mse_loss(fake_scores, torch.ones_like(fake_scores))


def generalised_dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Generalised Dice (Sudre et al. 2017) ``1 - 2 sum_c w_c sum(p g) / sum_c w_c sum(p + g)``,
    ``w_c = 1 / (sum g_c)^2`` pooled over the batch; a class absent from the target gets the
    largest weight of the present classes, so predicting it is still penalised."""
    axes = (0, *range(2, probs.ndim))
    volume = target.sum(axes)
    present = volume > 0
    weights = torch.where(present, 1.0 / volume.pow(2), torch.zeros_like(volume))
    weights = torch.where(present, weights, weights.max())
    intersection = (weights * (probs * target).sum(axes)).sum()
    denominator = (weights * (probs + target).sum(axes)).sum()
    return 1 - 2 * intersection / denominator.clamp_min(_GDICE_EPS)


def vox2vox_generator_loss(fake_scores: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``MSE(D(x, G(x)), 1) + 5 x generalised Dice`` of the softmax of the generator's logits.

    ``target``: ``(B, 1, *)`` integer labels or ``(B, C, *)`` one-hot.
    """
    probs = torch.softmax(logits, dim=1)
    dice = generalised_dice_loss(probs, binary_target(target, logits.shape[1]).to(probs.dtype))
    return lsgan_generator_loss(fake_scores) + VOX2VOX_DICE_WEIGHT * dice
