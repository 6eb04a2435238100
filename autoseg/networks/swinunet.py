"""Swin-UNet (Cao et al. 2021), 2D, from a plan topology; reference.md §5.2."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.attention import (
    channels_to_space,
    space_to_channels,
    to_channels_first,
    to_channels_last,
    transformer_stage,
)
from autoseg.networks.blocks import conv_op
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import blocks_per_stage, require_stages

PAPER = "Cao et al., Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation, ECCVW 2022, https://arxiv.org/abs/2105.05537"
# reference.md §5.2: patch size 4, window 7, 2 blocks per encoder stage, 4 stages below the input.
PATCH_SIZE = 4
WINDOW_SIZE = 7
BLOCKS_PER_STAGE = (2,)
MAX_STAGES = 5  # the full-resolution output + 4 token stages (1/4 .. 1/32)


class PatchMerging(nn.Module):
    """Concatenate each ``stride`` neighbourhood, LayerNorm, linear to the next width (Swin §3.1)."""

    def __init__(self, in_dim: int, out_dim: int, stride: Sequence[int]) -> None:
        super().__init__()
        self.stride = list(stride)
        factor = math.prod(stride)
        self.norm = nn.LayerNorm(factor * in_dim)
        self.reduce = nn.Linear(factor * in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.norm(space_to_channels(x, self.stride)))


class PatchExpanding(nn.Module):
    """Linear to ``prod(stride) x out_dim``, rearranged into space, LayerNorm (Swin-UNet §3.4)."""

    def __init__(self, in_dim: int, out_dim: int, stride: Sequence[int]) -> None:
        super().__init__()
        self.stride = list(stride)
        self.expand = nn.Linear(in_dim, math.prod(stride) * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(channels_to_space(self.expand(x), self.stride))


class SwinUNet(nn.Module):
    """Swin-UNet: a pure-transformer U-Net of shifted-window blocks.

    Paper: Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation", ECCV
    workshops 2022, https://arxiv.org/abs/2105.05537 (reference.md §5.2).

    A 4x4 patch embedding (conv + LayerNorm), per token stage 2 Swin blocks (regular then shifted
    windows, relative position bias), patch merging down, patch expanding up, skips concatenated and
    projected back by a linear layer, 2 blocks per decoder stage, a final 4x patch expanding and a
    1x1 head. Topology: ``strides[1]`` is the patch embedding, ``window_sizes`` the windows (the
    planner keeps every patch a multiple of ``size_multiple``), ``features_per_stage[0]`` the width
    after the final expansion (Swin-UNet: the embedding width).

    Deviations: widths follow the plan (the planner's 32, doubling; the paper's Swin-T uses 96) with
    one head per 32 channels as in the paper; windows shrink to the deepest stage's extent when a
    plan's patch is smaller than 32 x 7; no stochastic depth; with deep supervision a linear head on
    every decoder stage (the paper has none).

    Args:
        topology: the plan's 2D topology (2 to 5 stages, ``window_sizes`` set).
        in_channels: input channels.
        n_classes: output channels.
        deep_supervision: in training, also return logits of the coarser decoder stages.
    """

    def __init__(self, topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> None:
        super().__init__()
        require_stages(topology, "swinunet")
        if topology.window_sizes is None:
            raise NetworkError("swinunet: the topology has no window_sizes; plan it with `autoseg plan --network swinunet`")
        self.topology = topology
        n, feats, windows, strides = topology.n_stages, topology.features_per_stage, topology.window_sizes, topology.strides
        depth = blocks_per_stage(topology.blocks_per_stage, BLOCKS_PER_STAGE, n)
        up_depth = blocks_per_stage(topology.decoder_blocks_per_stage, BLOCKS_PER_STAGE, n - 1)
        self.embed = conv_op(2)(in_channels, feats[1], list(strides[1]), list(strides[1]))
        self.embed_norm = nn.LayerNorm(feats[1])
        self.merges = nn.ModuleList(PatchMerging(feats[i - 1], feats[i], strides[i]) for i in range(2, n))
        self.encoder = nn.ModuleList(transformer_stage(feats[i], depth[i], windows[i]) for i in range(1, n))
        levels = range(n - 2, 0, -1)  # decoder stages, deepest first
        self.expands = nn.ModuleList(PatchExpanding(feats[i + 1], feats[i], strides[i + 1]) for i in levels)
        self.fuse = nn.ModuleList(nn.Linear(2 * feats[i], feats[i]) for i in levels)
        self.decoder = nn.ModuleList(transformer_stage(feats[i], up_depth[n - 2 - i], windows[i]) for i in levels)
        self.final_expand = PatchExpanding(feats[1], feats[0], strides[1])
        self.head = conv_op(2)(feats[0], n_classes, 1)
        self.deep_supervision = deep_supervision
        self.ds_heads = nn.ModuleList(nn.Linear(feats[i], n_classes) for i in range(1, n - 1)) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h = self.embed_norm(to_channels_last(self.embed(x)))
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                h = self.merges[i - 1](h)
            for block in stage:
                h = block(h)
            skips.append(h)
        decoded = []  # decoder outputs, deepest first
        for j, (expand, fuse, stage) in enumerate(zip(self.expands, self.fuse, self.decoder)):
            h = fuse(torch.cat([expand(h), skips[-2 - j]], dim=-1))
            for block in stage:
                h = block(h)
            decoded.append(h)
        logits = self.head(to_channels_first(self.final_expand(h)))
        if not self.training:
            return logits
        outputs = [logits]
        if self.deep_supervision:
            outputs += [to_channels_first(head(d)) for head, d in zip(self.ds_heads, decoded[::-1])]
        return outputs


@register_network(
    "swinunet",
    paper=PAPER,
    description="Swin-UNet (2D): patch-4 embedding, shifted-window transformer U-Net, patch merging/expanding",
    constraints=TopologyConstraints(
        spatial_dims=(2,),
        max_stages=MAX_STAGES,
        default_blocks_per_stage=BLOCKS_PER_STAGE,
        stem_stride=PATCH_SIZE,
        window_size=WINDOW_SIZE,
    ),
)
def build_swinunet(topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> nn.Module:
    return SwinUNet(topology, in_channels, n_classes, deep_supervision=deep_supervision)
