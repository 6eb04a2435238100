"""Dimension-agnostic building blocks shared by the network families.

One small factory picks the 2D or 3D op (as MONAI's ``Conv[...]`` and nnU-Net's ``conv_op`` do), so
every family is written once for both dimensionalities.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# VGG16's convs per resolution stage, the encoder FCN and SegNet share.
VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def conv_op(dims: int) -> type[nn.Module]:
    return _CONV[dims]


def conv_transpose_op(dims: int) -> type[nn.Module]:
    return _CONV_T[dims]


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalisation over the spatial axes with a learned scale and shift
    (nnU-Net's norm), for 2D and 3D alike.

    Same function, parameters and state-dict keys as ``nn.InstanceNorm{2,3}d(affine=True)``. On CPU it
    runs as ``group_norm`` with one channel per group: ``instance_norm`` reshapes the batch into a
    batch norm and copies channels-last tensors on the way; without it the training step of every
    family using this norm ran 1.00-1.16x as fast, about 1.06x typically, in bf16 and float32
    (docs/benchmarks.md, "InstanceNorm as one-channel GroupNorm on CPU"). On other devices it stays
    ``instance_norm``, the kernel measured there.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


def instance_norm_op(dims: int) -> type[nn.Module]:
    """The instance norm of either dimensionality (one class: it normalises whatever spatial axes come)."""
    del dims
    return InstanceNorm


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

