"""nnFormer (Zhou et al. 2023), 3D, from a plan topology; reference.md §5.2."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.attention import to_channels_first, to_channels_last, transformer_stage
from autoseg.networks.blocks import conv_op, conv_transpose_op
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import blocks_per_stage, require_stages

PAPER = "Zhou et al., nnFormer: Volumetric Medical Image Segmentation via a 3D Transformer, IEEE TIP 2023, https://arxiv.org/abs/2109.03201"
# reference.md §5.2 / the authors' Synapse configuration: a stride-4 conv stem, 2 blocks per stage,
# windows of 4 (their 8 at 1/16 covers the whole map there, which our global bottleneck does).
STEM_STRIDE = 4
WINDOW_SIZE = 4
BLOCKS_PER_STAGE = (2,)
MAX_STAGES = 5  # the full-resolution output + 4 token stages (1/4 .. 1/32)


class ConvLayerNorm(nn.Module):
    """conv (channels-first) -> LayerNorm over channels (channels-last out): nnFormer's stem and down."""

    def __init__(self, in_channels: int, out_channels: int, stride: Sequence[int]) -> None:
        super().__init__()
        self.conv = conv_op(3)(in_channels, out_channels, 3, list(stride), 1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(to_channels_last(self.conv(x)))


def stem_strides(stride: Sequence[int]) -> tuple[list[int], list[int]]:
    """The embedding's stride split over its two stride-2 convs (nnFormer: 3x3x3, stride 2, twice)."""
    if any(s not in (1, 2, 4) for s in stride):
        raise NetworkError(f"nnformer: the stem stride {list(stride)} must be 1, 2 or 4 per axis; re-plan")
    first = [min(s, 2) for s in stride]
    return first, [s // f for s, f in zip(stride, first)]


class NnFormer(nn.Module):
    """nnFormer: conv stem, local (shifted-window) volume attention, global attention at the
    bottleneck, stride-2 conv down, transposed conv up, skip attention, deep supervision.

    Paper: Zhou et al., "nnFormer: Volumetric Medical Image Segmentation via a 3D Transformer", IEEE
    TIP 2023, https://arxiv.org/abs/2109.03201 (reference.md §5.2).

    Stem: two 3x3x3 convs (stride 2 each on an axis the plan embeds by 4) with GELU and LayerNorm.
    Token stages 1..n-2: 2 LV-MSA blocks (windows of ``topology.window_sizes``, every second one
    shifted, relative position bias); stage n-1: 2 GV-MSA blocks over all tokens. Down: 3x3x3 conv of
    the plan's stride + LayerNorm; up: transposed conv (kernel = stride). Each decoder stage starts
    with skip attention (queries from the upsampled decoder tokens, keys and values from the encoder
    skip, residual = both summed), then LV-MSA blocks. Heads: a transposed conv of the stem's stride
    to the classes on every decoder stage (full resolution from stage 1, half from stage 2, ...).

    Deviations: widths follow the plan (the planner's 32, doubling; Synapse uses 192), one head per
    32 channels (the paper: 6/12/24/48 heads at 192..1536, also 32 per head); the global bottleneck
    has no relative position bias (its extent depends on the input size); no stochastic depth;
    the number of stages (at most 5) and per-axis strides come from the plan.

    Args:
        topology: the plan's 3D topology (at least 2 stages, ``window_sizes`` set).
        in_channels: input channels.
        n_classes: output channels.
        deep_supervision: in training, return logits of every decoder stage.
    """

    def __init__(self, topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> None:
        super().__init__()
        require_stages(topology, "nnformer")
        if topology.window_sizes is None:
            raise NetworkError("nnformer: the topology has no window_sizes; plan it with `autoseg plan --network nnformer`")
        self.topology = topology
        n, feats, windows, strides = topology.n_stages, topology.features_per_stage, topology.window_sizes, topology.strides
        depth = blocks_per_stage(topology.blocks_per_stage, BLOCKS_PER_STAGE, n)
        up_depth = blocks_per_stage(topology.decoder_blocks_per_stage, BLOCKS_PER_STAGE, n - 1)
        first, second = stem_strides(strides[1])
        self.stem1 = ConvLayerNorm(in_channels, feats[1] // 2, first)
        self.stem2 = ConvLayerNorm(feats[1] // 2, feats[1], second)
        self.downs = nn.ModuleList(ConvLayerNorm(feats[i - 1], feats[i], strides[i]) for i in range(2, n))
        self.encoder = nn.ModuleList(
            transformer_stage(feats[i], depth[i], None if i == n - 1 else windows[i]) for i in range(1, n)
        )
        levels = list(range(n - 2, 0, -1))  # decoder stages, deepest first
        self.ups = nn.ModuleList(
            conv_transpose_op(3)(feats[i + 1], feats[i], list(strides[i + 1]), list(strides[i + 1])) for i in levels
        )
        self.decoder = nn.ModuleList(
            transformer_stage(feats[i], up_depth[n - 2 - i], windows[i], first_cross=True) for i in levels
        )
        head_levels = range(1, n - 1 if deep_supervision and n > 2 else 2)
        self.heads = nn.ModuleList(
            conv_transpose_op(3)(feats[i], n_classes, list(strides[1]), list(strides[1])) for i in head_levels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h = self.stem2(to_channels_first(nn.functional.gelu(self.stem1(x))))
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                h = self.downs[i - 1](to_channels_first(h))
            for block in stage:
                h = block(h)
            skips.append(h)
        decoded = [h]  # token maps per level, deepest first; the bottleneck when there is no decoder
        for j, (up, stage) in enumerate(zip(self.ups, self.decoder)):
            h = to_channels_last(up(to_channels_first(h)))
            h = stage[0](h, skips[-2 - j])
            for block in stage[1:]:
                h = block(h)
            decoded.append(h)
        levels = decoded[::-1][: len(self.heads) if self.training else 1]
        outputs = [head(to_channels_first(d)) for head, d in zip(self.heads, levels)]
        return outputs if self.training else outputs[0]


@register_network(
    "nnformer",
    paper=PAPER,
    description="nnFormer (3D): conv stem, shifted-window local + global volume attention, skip attention",
    constraints=TopologyConstraints(
        spatial_dims=(3,),
        max_stages=MAX_STAGES,
        default_blocks_per_stage=BLOCKS_PER_STAGE,
        stem_stride=STEM_STRIDE,
        window_size=WINDOW_SIZE,
        global_last_stage=True,
    ),
)
def build_nnformer(topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True) -> nn.Module:
    return NnFormer(topology, in_channels, n_classes, deep_supervision=deep_supervision)
