"""FCN-8s (Long, Shelhamer, Darrell 2015), 2D and 3D, from a plan topology; reference.md §5.2."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from autoseg.networks.blocks import VGG16_CONVS_PER_STAGE, conv_op, conv_transpose_op, max_pool_op, relu
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import ConvNormAct, blocks_per_stage, require_stages

PAPER = "Long, Shelhamer, Darrell, Fully Convolutional Networks for Semantic Segmentation, CVPR 2015, https://arxiv.org/abs/1411.4038"
# FCN-8s scores the three deepest depths (pool3, pool4, fc7).
SCORED_DEPTHS = 3


def bilinear_kernel(size: int) -> torch.Tensor:
    """1D bilinear interpolation filter of ``size`` taps (FCN's ``upsample_filt``)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    return 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor


class BilinearUp(nn.Module):
    """Learned per-axis upsampling by ``stride``: a transposed conv initialised to bilinear
    interpolation of every channel (kernel ``2s - s % 2``, padding ``s // 2``, so the output is
    exactly ``s`` times the input without FCN's crop)."""

    def __init__(self, dims: int, channels: int, stride: Sequence[int]) -> None:
        super().__init__()
        kernel = [2 * s - s % 2 for s in stride]
        self.up = conv_transpose_op(dims)(channels, channels, kernel, list(stride), [s // 2 for s in stride], bias=False)
        weight = bilinear_kernel(kernel[0])
        for k in kernel[1:]:
            weight = weight[..., None] * bilinear_kernel(k)
        with torch.no_grad():
            self.up.weight.zero_()
            for c in range(channels):
                self.up.weight[c, c] = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class FCN(nn.Module):
    """FCN-8s: a fully convolutional VGG-style encoder, class scores at the three deepest depths,
    learned transposed-conv upsampling, fusion by addition.

    Paper: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR
    2015, https://arxiv.org/abs/1411.4038 (reference.md §5.2).

    Encoder stage i: max-pool by the plan's stride (i >= 1), then VGG's convs (2, 2, 3, 3, 3, ...).
    After the deepest stage the paper's fc6/fc7 as convs (the stage kernel, then 1x1). 1x1 scoring of
    fc7 and of the two stages above it (their weights start at zero as in the paper, so training
    begins as FCN-32s), each coarser score upsampled x2 by a bilinear-initialised transposed conv and
    added, then one transposed conv to full resolution.

    Deviations: conv -> InstanceNorm -> ReLU (batch 2 rules out BatchNorm; VGG had no norm and
    ImageNet weights); fc6/fc7 keep the last stage's width and kernel instead of 4096 channels with
    7x7 (the plan's deepest maps are 4-8 voxels); no dropout; exact-size padding instead of the
    100-pixel pad and crop; with deep supervision the coarser fused scores are returned too.

    Args:
        topology: the plan's topology (at least 2 stages; with 2, FCN-16s).
        in_channels: input channels.
        n_classes: output channels.
        deep_supervision: in training, also return the coarser fused scores.
    """

    def __init__(self, topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> None:
        super().__init__()
        require_stages(topology, "fcn")
        self.topology = topology
        dims, n, feats = topology.spatial_dims, topology.n_stages, topology.features_per_stage
        convs = blocks_per_stage(topology.blocks_per_stage, VGG16_CONVS_PER_STAGE, n)
        self.stages = nn.ModuleList()
        channels = in_channels
        for i in range(n):
            layers: list[nn.Module] = [max_pool_op(dims)(list(topology.strides[i]))] if i else []
            for _ in range(convs[i]):
                layers.append(ConvNormAct(dims, channels, feats[i], topology.kernel_sizes[i], act=relu))
                channels = feats[i]
            self.stages.append(nn.Sequential(*layers))
        self.fc = nn.Sequential(
            ConvNormAct(dims, feats[-1], feats[-1], topology.kernel_sizes[-1], act=relu),
            ConvNormAct(dims, feats[-1], feats[-1], [1] * dims, act=relu),
        )
        self.scored = list(range(max(0, n - SCORED_DEPTHS), n))  # shallowest first
        self.scores = nn.ModuleList(conv_op(dims)(feats[i], n_classes, 1) for i in self.scored)
        for score in self.scores[:-1]:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.ups = nn.ModuleList(BilinearUp(dims, n_classes, topology.strides[i + 1]) for i in self.scored[:-1])
        to_full = [math.prod(s[a] for s in topology.strides[: self.scored[0] + 1]) for a in range(dims)]
        self.final_up = BilinearUp(dims, n_classes, to_full) if any(s > 1 for s in to_full) else nn.Identity()
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        h = self.scores[-1](self.fc(x))
        fused = [h]  # deepest first
        for k in range(len(self.scored) - 2, -1, -1):
            h = self.ups[k](h) + self.scores[k](features[self.scored[k]])
            fused.append(h)
        full = self.final_up(h)
        if not self.training:
            return full
        return [full] + (fused[:-1][::-1] if self.deep_supervision else [])


@register_network(
    "fcn",
    paper=PAPER,
    description="FCN-8s: VGG-style conv encoder, class scores at 3 depths, bilinear-initialised transposed convs, additive fusion",
    constraints=TopologyConstraints(
        default_blocks_per_stage=VGG16_CONVS_PER_STAGE, kernel_size=3, block_settings=("blocks_per_stage",),
        instance_norm=True,
    ),
)
def build_fcn(topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> nn.Module:
    return FCN(topology, in_channels, n_classes, deep_supervision=deep_supervision)
