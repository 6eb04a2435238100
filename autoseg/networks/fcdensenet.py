"""FC-DenseNet "Tiramisu" 56/67/103 (Jegou et al. 2017), 2D and 3D, from a plan topology; reference.md §5.2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.blocks import conv_op, conv_transpose_op, instance_norm_op, max_pool_op, same_padding
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import INSTANCE_NORM_EPS, require_stages

PAPER = (
    "Jegou et al., The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic Segmentation, "
    "CVPRW 2017, https://arxiv.org/abs/1611.09326"
)
# reference.md §5.2: a 3x3 stem of 48 filters, dropout 0.2 after every conv.
STEM_FEATURES = 48
DROPOUT = 0.2


@dataclass(frozen=True)
class Variant:
    """Layers per dense block on the way down (shallowest first), in the bottleneck, and the growth rate."""

    down: tuple[int, ...]
    bottleneck: int
    growth: int


# reference.md §5.2 (Jegou et al. Table 2); the way up mirrors the way down.
VARIANTS = {
    "56": Variant((4, 4, 4, 4, 4), 4, 12),
    "67": Variant((5, 5, 5, 5, 5), 5, 16),
    "103": Variant((4, 5, 7, 10, 12), 15, 16),
}
DEFAULT_VARIANT = "56"  # the smallest: CPU budgets; 67 and 103 via network_options.variant


def variant_layers(variant: Variant, n_stages: int) -> tuple[list[int], int]:
    """Dense layers of the ``n_stages - 1`` down blocks a plan has room for, and of the bottleneck."""
    if not 2 <= n_stages <= len(variant.down) + 1:
        raise NetworkError(
            f"fcdensenet: the topology has {n_stages} stages, the design takes 2 to {len(variant.down) + 1}; re-plan"
        )
    return list(variant.down[: n_stages - 1]), variant.bottleneck


def stage_widths(variant: Variant, n_stages: int) -> list[int]:
    """Channels each stage passes on: a down block's input plus its new maps (the skip and the
    transition down), and the bottleneck's new maps only (the transition up)."""
    down, bottleneck = variant_layers(variant, n_stages)
    widths, channels = [], STEM_FEATURES
    for layers in down:
        channels += layers * variant.growth
        widths.append(channels)
    return widths + [bottleneck * variant.growth]


def default_stage_widths(n_stages: int) -> tuple[int, ...]:
    """The planner's view: the default variant's widths (a plan is made without network options)."""
    return tuple(stage_widths(VARIANTS[DEFAULT_VARIANT], n_stages))


def norm_relu_conv(dims: int, in_channels: int, out_channels: int, kernel: Sequence[int]) -> list[nn.Module]:
    """The paper's pre-activation layer: norm -> ReLU -> conv -> dropout 0.2."""
    return [
        instance_norm_op(dims)(in_channels, eps=INSTANCE_NORM_EPS, affine=True),
        nn.ReLU(inplace=True),
        conv_op(dims)(in_channels, out_channels, list(kernel), padding=same_padding(kernel)),
        nn.Dropout(DROPOUT),
    ]


class DenseBlock(nn.Module):
    """``n_layers`` layers of ``growth`` maps, each reading the concatenation of everything before.

    Returns the input with all new maps concatenated, or only the new maps (``new_only``: the way up,
    so widths do not explode)."""

    def __init__(self, dims: int, in_channels: int, n_layers: int, growth: int, kernel: Sequence[int], new_only: bool) -> None:
        super().__init__()
        self.new_only = new_only
        self.layers = nn.ModuleList(
            nn.Sequential(*norm_relu_conv(dims, in_channels + i * growth, growth, kernel)) for i in range(n_layers)
        )
        self.out_channels = n_layers * growth + (0 if new_only else in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = []
        for layer in self.layers:
            out = layer(x)
            new.append(out)
            x = torch.cat([x, out], dim=1)
        return torch.cat(new, dim=1) if self.new_only else x


def transition_up(dims: int, channels: int, stride: Sequence[int]) -> nn.Module:
    """The paper's 3x3 stride-2 transposed conv, per axis (kernel ``2s - 1``, exact ``s`` x size)."""
    return conv_transpose_op(dims)(
        channels, channels, [2 * s - 1 for s in stride], list(stride), [s - 1 for s in stride], [s - 1 for s in stride]
    )


class FCDenseNet(nn.Module):
    """FC-DenseNet: dense blocks on the way down and up, transitions down and up, concatenated skips.

    Paper: Jegou et al., "The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic
    Segmentation", CVPR workshops 2017, https://arxiv.org/abs/1611.09326 (reference.md §5.2).

    A 3x3 stem of 48 maps; per level a dense block (norm-ReLU-conv3x3 of ``growth`` maps, dropout
    0.2, concatenated) whose output is the skip and feeds the transition down (norm-ReLU-conv1x1,
    dropout, max-pool by the plan's stride); a bottleneck block; on the way up a transposed conv of
    only the previous block's new maps, concatenated with the skip, and a dense block; a 1x1 head on
    the last block's full output. Widths follow from the variant (56, 67, 103) and the number of
    stages, not from ``features_per_stage`` (the planner writes the default variant's widths there).

    Deviations: InstanceNorm instead of BatchNorm (batch 2); a plan with fewer than 6 stages keeps
    the shallowest down blocks (and the bottleneck) of the variant; with deep supervision a 1x1 head
    on the new maps of every up block above the last.

    Args:
        topology: the plan's topology (2 to 6 stages).
        in_channels: input channels.
        n_classes: output channels.
        deep_supervision: in training, also return logits of the coarser up blocks.
        variant: "56", "67" or "103".
    """

    def __init__(
        self, topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True, variant: str = DEFAULT_VARIANT
    ) -> None:
        super().__init__()
        require_stages(topology, "fcdensenet")
        if str(variant) not in VARIANTS:
            raise NetworkError(f"fcdensenet: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        spec = VARIANTS[str(variant)]
        self.topology = topology
        dims, n, k = topology.spatial_dims, topology.n_stages, spec.growth
        down, bottleneck = variant_layers(spec, n)
        kernels = topology.kernel_sizes
        self.stem = conv_op(dims)(in_channels, STEM_FEATURES, list(kernels[0]), padding=same_padding(kernels[0]))
        self.down_blocks, self.transitions_down = nn.ModuleList(), nn.ModuleList()
        channels, skips = STEM_FEATURES, []
        for i, layers in enumerate(down):
            block = DenseBlock(dims, channels, layers, k, kernels[i], new_only=False)
            channels = block.out_channels
            skips.append(channels)
            self.down_blocks.append(block)
            self.transitions_down.append(
                nn.Sequential(*norm_relu_conv(dims, channels, channels, [1] * dims), max_pool_op(dims)(list(topology.strides[i + 1])))
            )
        self.bottleneck = DenseBlock(dims, channels, bottleneck, k, kernels[n - 1], new_only=True)
        self.transitions_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        new = self.bottleneck.out_channels
        for level in range(n - 2, -1, -1):
            self.transitions_up.append(transition_up(dims, new, topology.strides[level + 1]))
            block = DenseBlock(dims, new + skips[level], down[level], k, kernels[level], new_only=level > 0)
            self.up_blocks.append(block)
            new = block.out_channels
        self.head = conv_op(dims)(new, n_classes, 1)
        self.ds_heads = nn.ModuleList(
            conv_op(dims)(down[level] * k, n_classes, 1) for level in range(1, n - 1)
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for block, down in zip(self.down_blocks, self.transitions_down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        coarse = []  # new maps of the up blocks above the last, deepest first
        for up, block, skip in zip(self.transitions_up, self.up_blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
            coarse.append(x)
        logits = self.head(x)
        if not self.training:
            return logits
        return [logits] + [head(c) for head, c in zip(self.ds_heads, coarse[-2::-1])]


@register_network(
    "fcdensenet",
    paper=PAPER,
    description="FC-DenseNet (Tiramisu) 56/67/103: dense blocks, transitions down/up, only new maps upsampled",
    constraints=TopologyConstraints(
        max_stages=len(VARIANTS[DEFAULT_VARIANT].down) + 1, stage_features=default_stage_widths, kernel_size=3,
        block_settings=(), instance_norm=True,
    ),
)
def build_fcdensenet(
    topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True, variant: str = DEFAULT_VARIANT
) -> nn.Module:
    return FCDenseNet(topology, in_channels, n_classes, deep_supervision=deep_supervision, variant=variant)
