"""Dimension-agnostic building blocks shared by the network families.

One small factory picks the 2D or 3D op (as MONAI's ``Conv[...]`` and nnU-Net's ``conv_op`` do), so
every family is written once for both dimensionalities.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

# VGG16's convs per resolution stage, the encoder FCN and SegNet share.
VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def conv_op(dims: int) -> type[nn.Module]:
    return _CONV[dims]


def conv_transpose_op(dims: int) -> type[nn.Module]:
    return _CONV_T[dims]


def instance_norm_op(dims: int) -> type[nn.Module]:
    return _INSTANCE_NORM[dims]


def dropout_op(dims: int) -> type[nn.Module]:
    return _DROPOUT[dims]


def avg_pool_op(dims: int) -> type[nn.Module]:
    return _AVG_POOL[dims]


def max_pool_op(dims: int) -> type[nn.Module]:
    return _MAX_POOL[dims]


def relu(channels: int) -> nn.Module:
    """ReLU as an activation factory (the channel count is unused; factories share one signature)."""
    del channels
    return nn.ReLU(inplace=True)


def same_padding(kernel_size: Sequence[int], dilation: int = 1) -> list[int]:
    """Padding that keeps the spatial size for odd kernels (per axis)."""
    return [(k - 1) // 2 * dilation for k in kernel_size]


def upsample_mode(dims: int) -> str:
    return "bilinear" if dims == 2 else "trilinear"


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (reference §2.2/§2.3: 8), fewer when a budget-shrunk width
    is not divisible by it (the largest divisor of ``channels`` not above ``groups``)."""
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)

