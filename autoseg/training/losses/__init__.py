"""Losses shared by every network: soft Dice, Dice + CE, region Dice + BCE, deep supervision.

Network-specific extra terms (VAE, ConRes, adversarial) live in their own modules here and are added
to these by the training loop.
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
