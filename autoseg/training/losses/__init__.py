"""Losses shared by every network: soft Dice, Dice + CE, region Dice + BCE, deep supervision.

Network-specific extra terms (VAE, context residual, adversarial) live with their family in
``autoseg/networks/`` and reach the training step through the registry.
"""

from autoseg.training.losses.compound import (  # noqa: F401
    DeepSupervisionLoss,
    DiceCELoss,
    RegionDiceBCELoss,
    deep_supervision_weights,
    downsample_target,
    labels_to_regions,
)
from autoseg.training.losses.dice import DICE_SMOOTH, SoftDiceLoss, one_hot, soft_dice, split_ignore  # noqa: F401
