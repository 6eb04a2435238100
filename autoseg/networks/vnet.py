"""V-Net (Milletari et al. 2016), 2D and 3D, from a plan topology (reference.md §2.4)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from autoseg.networks.blocks import conv_op, conv_transpose_op, instance_norm_op
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import (
    INSTANCE_NORM_EPS,
    ConvNormAct,
    UNetDecoder,
    blocks_per_stage,
    require_stages,
)

# reference.md §2.4: 5x5x5 convs, stages of 16/32/64/128/256 channels with 1/2/3/3/3 convs.
VNET_KERNEL_SIZE = 5
VNET_FEATURES = (16, 32, 64, 128, 256)
VNET_CONVS_PER_STAGE = (1, 2, 3, 3, 3)


def prelu(channels: int) -> nn.Module:
    """One PReLU slope per channel (Caffe's default, which the paper's implementation used)."""
    return nn.PReLU(channels)


def vnet_kernel(planned: Sequence[int]) -> list[int]:
    """5 where the plan convolves an axis, 1 where it does not (anisotropic plans)."""
    return [1 if k == 1 else VNET_KERNEL_SIZE for k in planned]


class ChannelRepeat(nn.Module):
    """The paper's input shortcut: the input channels replicated up to the stage's width."""

    def __init__(self, repeats: int) -> None:
        super().__init__()
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.repeats, dim=1)


class ResidualStage(nn.Module):
    """``n_convs`` conv(-norm)-PReLU layers; the stage input is added before the last PReLU.

    When the width changes (input stage only) the shortcut replicates the input channels as in the
    paper, or, when the widths do not divide, projects them with a 1x1 conv.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        n_convs: int,
        norm: bool,
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(
                ConvNormAct(
                    dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size,
                    norm=norm,
                    act=prelu if i < n_convs - 1 else None,
                )
                for i in range(n_convs)
            )
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif out_channels % in_channels == 0:
            self.shortcut = ChannelRepeat(out_channels // in_channels)
        else:
            self.shortcut = conv_op(dims)(in_channels, out_channels, 1)
        self.act = prelu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


class VNet(nn.Module):
    """V-Net: a residual, fully convolutional encoder-decoder with 5x5x5 convs and PReLU.

    Paper: Milletari, Navab, Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical
    Image Segmentation", 3DV 2016, https://arxiv.org/abs/1606.04797 (reference.md §2.4).

    Defaults (the paper's): residual stages of 16/32/64/128/256 channels with 1/2/3/3/3 convs, 2x2x2
    stride-2 convs down, 2x2x2 transposed convs up, concatenated skips; decoder stages work at twice the
    skip's width with as many convs as the encoder stage of the same resolution (3/3/2/1); a 1x1 conv
    head. Use with the squared-denominator Dice loss (``--set loss.dice_denominator=squared``).

    Deviations: the number of stages (at most 5), the per-axis strides and the features come from the
    plan, and a planned kernel of 1 on an axis stays 1 (anisotropic data); with deep supervision a head
    is added to every decoder stage; ``norm=True`` (default) adds InstanceNorm after every conv, which the
    paper does not have, so that the shared training schedule (SGD, lr 1e-2) trains it stably.

    Args:
        topology: the plan's topology (2 to 5 stages).
        in_channels: input channels.
        n_classes: output channels.
        deep_supervision: in training, return logits of every decoder stage.
        norm: InstanceNorm after every conv (``False``: the paper's network).
    """

    def __init__(
        self,
        topology: Topology,
        in_channels: int,
        n_classes: int,
        *,
        deep_supervision: bool = True,
        norm: bool = True,
    ) -> None:
        super().__init__()
        require_stages(topology, "vnet")
        self.topology = topology
        dims, n = topology.spatial_dims, topology.n_stages
        features = topology.features_per_stage
        kernels = [vnet_kernel(k) for k in topology.kernel_sizes]
        convs = blocks_per_stage(topology.blocks_per_stage, VNET_CONVS_PER_STAGE, n)
        # Decoder mirrors the encoder: the stage at level i has the encoder's conv count of level i.
        decoder_convs = blocks_per_stage(
            topology.decoder_blocks_per_stage, convs[-2::-1], n - 1
        )

        def act_norm(channels: int) -> list[nn.Module]:
            norm_layer = [instance_norm_op(dims)(channels, eps=INSTANCE_NORM_EPS, affine=True)] if norm else []
            return norm_layer + [prelu(channels)]

        self.stages = nn.ModuleList([ResidualStage(dims, in_channels, features[0], kernels[0], convs[0], norm)])
        for i in range(1, n):
            stride = list(topology.strides[i])
            down = conv_op(dims)(features[i - 1], features[i], stride, stride)
            stage = ResidualStage(dims, features[i], features[i], kernels[i], convs[i], norm)
            self.stages.append(nn.Sequential(down, *act_norm(features[i]), stage))

        def make_up(up_in: int, up_out: int, stride: Sequence[int]) -> nn.Module:
            return nn.Sequential(conv_transpose_op(dims)(up_in, up_out, list(stride), list(stride)), *act_norm(up_out))

        def make_stage(level: int, stage_in: int) -> tuple[nn.Module, int]:
            n_convs = decoder_convs[n - 2 - level]
            return ResidualStage(dims, stage_in, stage_in, kernels[level], n_convs, norm), stage_in

        self.decoder = UNetDecoder(dims, features, topology.strides, n_classes, deep_supervision, make_stage, make_up)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)


@register_network(
    "vnet",
    paper="Milletari et al., V-Net, 3DV 2016, https://arxiv.org/abs/1606.04797",
    description="residual encoder-decoder, 5x5x5 convs, PReLU, 16-256 channels",
    constraints=TopologyConstraints(
        fixed_features=VNET_FEATURES,
        max_stages=len(VNET_FEATURES),
        default_blocks_per_stage=VNET_CONVS_PER_STAGE,
        kernel_size=VNET_KERNEL_SIZE,
        instance_norm=True,
        norm_option="norm",
    ),
)
def build_vnet(
    topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True, norm: bool = True
) -> nn.Module:
    return VNet(topology, in_channels, n_classes, deep_supervision=deep_supervision, norm=norm)
