"""SegNet (Badrinarayanan, Kendall, Cipolla 2017), 2D and 3D, from a plan topology; reference.md §5.2."""

from __future__ import annotations

import math

import torch
from torch import nn

from autoseg.networks.blocks import VGG16_CONVS_PER_STAGE, conv_op, max_pool_op, relu
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import ConvNormAct, blocks_per_stage, require_stages

PAPER = (
    "Badrinarayanan, Kendall, Cipolla, SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image "
    "Segmentation, IEEE TPAMI 2017, https://arxiv.org/abs/1511.00561"
)


class MaxUnpool(nn.Module):
    """Values back to the argmax positions of a max-pool whose kernel equals its ``stride``, zeros
    elsewhere (``nn.MaxUnpool`` as a scatter: torch's own cannot be traced for export)."""

    def __init__(self, stride: list[int]) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        size = [s * k for s, k in zip(x.shape[2:], self.stride)]
        out = x.new_zeros(x.shape[0], x.shape[1], math.prod(size))
        return out.scatter(2, indices.flatten(2), x.flatten(2)).reshape(x.shape[0], x.shape[1], *size)


def conv_block(dims: int, in_channels: int, out_channels: int, kernel: list[int], n_convs: int) -> nn.Sequential:
    """``n_convs`` conv-norm-ReLU; the last one changes the width to ``out_channels``."""
    return nn.Sequential(
        *(
            ConvNormAct(dims, in_channels, in_channels if i < n_convs - 1 else out_channels, kernel, act=relu)
            for i in range(n_convs)
        )
    )


class SegNet(nn.Module):
    """SegNet: max-pool indices of a VGG-style encoder carried to a mirrored decoder.

    Paper: Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
    Architecture for Image Segmentation", IEEE TPAMI 2017, https://arxiv.org/abs/1511.00561
    (reference.md §5.2).

    Encoder stage i: max-pool by the plan's (per-axis) stride keeping the argmax indices (i >= 1),
    then conv-norm-ReLU x (2, 2, 3, 3, 3, ...). Decoder level i (deepest first): the mirrored convs,
    the last one to the width of stage i-1, then max-unpooling with stage i's indices (values return
    to the argmax positions, zeros elsewhere); no skip features are passed. A 1x1 head at full
    resolution (the paper's classifier before softmax).

    Deviations: InstanceNorm instead of BatchNorm (batch 2); the shared Dice + CE loss replaces the
    median-frequency-weighted CE (Dice already balances classes); with deep supervision a 1x1 head on
    every decoder level above the deepest.

    Args:
        topology: the plan's topology (at least 2 stages).
        in_channels: input channels.
        n_classes: output channels.
        deep_supervision: in training, also return logits of the coarser decoder levels.
    """

    def __init__(self, topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> None:
        super().__init__()
        require_stages(topology, "segnet")
        self.topology = topology
        dims, n, feats, kernels = topology.spatial_dims, topology.n_stages, topology.features_per_stage, topology.kernel_sizes
        convs = blocks_per_stage(topology.blocks_per_stage, VGG16_CONVS_PER_STAGE, n)
        self.pools = nn.ModuleList(max_pool_op(dims)(list(s), return_indices=True) for s in topology.strides[1:])
        self.unpools = nn.ModuleList(MaxUnpool(list(s)) for s in topology.strides[1:])
        self.encoder = nn.ModuleList(
            nn.Sequential(
                ConvNormAct(dims, in_channels if i == 0 else feats[i - 1], feats[i], kernels[i], act=relu),
                *(ConvNormAct(dims, feats[i], feats[i], kernels[i], act=relu) for _ in range(convs[i] - 1)),
            )
            for i in range(n)
        )
        # decoder[i] works at stage i's resolution and ends at stage i-1's width (stage 0: its own).
        self.decoder = nn.ModuleList(conv_block(dims, feats[i], feats[max(i - 1, 0)], kernels[i], convs[i]) for i in range(n))
        head_levels = range(n - 1) if deep_supervision else range(1)
        self.heads = nn.ModuleList(conv_op(dims)(feats[max(i - 1, 0)], n_classes, 1) for i in head_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        indices = []
        for i, stage in enumerate(self.encoder):
            if i:
                x, index = self.pools[i - 1](x)
                indices.append(index)
            x = stage(x)
        outputs = []  # deepest first
        for i in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[i](x)
            if i < len(self.heads) and (self.training or i == 0):
                outputs.append(self.heads[i](x))
            if i:
                x = self.unpools[i - 1](x, indices[i - 1])
        return outputs[::-1] if self.training else outputs[-1]


@register_network(
    "segnet",
    paper=PAPER,
    description="SegNet: VGG-style encoder, decoder upsampling with the encoder's max-pool indices, no skip features",
    constraints=TopologyConstraints(
        default_blocks_per_stage=VGG16_CONVS_PER_STAGE, kernel_size=3, block_settings=("blocks_per_stage",),
        instance_norm=True,
    ),
)
def build_segnet(topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> nn.Module:
    return SegNet(topology, in_channels, n_classes, deep_supervision=deep_supervision)
