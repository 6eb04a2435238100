"""nnU-Net's plain U-Net (``unet``) and residual-encoder U-Net (``resenc``), from a plan topology.

Both share one decoder (:class:`UNetDecoder`), which V-Net reuses with its own up and stage blocks.
Facts from reference.md §2.1; deep supervision heads as §1.5 expects them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.blocks import (
    avg_pool_op,
    conv_op,
    conv_transpose_op,
    instance_norm_op,
    same_padding,
)
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology

# reference.md §2.1: conv -> InstanceNorm(affine) -> LeakyReLU(0.01).
LEAKY_RELU_SLOPE = 0.01
INSTANCE_NORM_EPS = 1e-5
# reference.md §2.1: 2 convs per stage in encoder and decoder of the plain U-Net.
UNET_CONVS_PER_STAGE = (2,)
# reference.md §2.1: ResEnc encoder residual blocks per stage, the last value repeated.
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6)
RESENC_DECODER_CONVS = 1

ActFactory = Callable[[int], nn.Module]
# make_stage(level, in_channels) -> (stage module, its output channels)
StageFactory = Callable[[int, int], tuple[nn.Module, int]]
# make_up(in_channels, out_channels, stride) -> upsampling module
UpFactory = Callable[[int, int, Sequence[int]], nn.Module]


def leaky_relu(channels: int) -> nn.Module:
    """nnU-Net's nonlinearity (the channel count is unused; factories share one signature)."""
    del channels
    return nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)


class ConvNormAct(nn.Sequential):
    """conv -> InstanceNorm(affine) -> activation; ``norm=False`` / ``act=None`` drop a part."""

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int] | int = 1,
        *,
        norm: bool = True,
        act: ActFactory | None = leaky_relu,
    ) -> None:
        layers: list[nn.Module] = [
            conv_op(dims)(in_channels, out_channels, list(kernel_size), stride, same_padding(kernel_size))
        ]
        if norm:
            layers.append(instance_norm_op(dims)(out_channels, eps=INSTANCE_NORM_EPS, affine=True))
        if act is not None:
            layers.append(act(out_channels))
        super().__init__(*layers)


def conv_stack(
    dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int],
    n_convs: int,
    first_stride: Sequence[int] | int = 1,
) -> nn.Sequential:
    """``n_convs`` ConvNormAct blocks; the first one carries the stride (nnU-Net's strided conv)."""
    return nn.Sequential(
        *(
            ConvNormAct(
                dims,
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size,
                first_stride if i == 0 else 1,
            )
            for i in range(n_convs)
        )
    )


def transposed_up(dims: int) -> UpFactory:
    """nnU-Net's upsampling: a transposed conv whose kernel equals its stride."""

    def make(in_channels: int, out_channels: int, stride: Sequence[int]) -> nn.Module:
        return conv_transpose_op(dims)(in_channels, out_channels, list(stride), list(stride))

    return make


def blocks_per_stage(values: Sequence[int] | None, default: Sequence[int], n: int) -> list[int]:
    """The plan's block counts (``Topology.validate`` checked them), or the family default repeated with its
    last value to ``n`` stages."""
    counts = list(values) if values is not None else list(default[:n]) + [default[-1]] * max(0, n - len(default))
    return [int(c) for c in counts]


def require_stages(topology: Topology, name: str, minimum: int = 2) -> None:
    if topology.n_stages < minimum:
        raise NetworkError(
            f"network {name!r} needs at least {minimum} resolution stages, the topology has "
            f"{topology.n_stages}; plan a larger patch or choose another network"
        )


class UNetDecoder(nn.Module):
    """Upsample, concatenate the encoder skip, run a stage; a 1x1 head per stage for deep supervision.

    Args:
        dims: 2 or 3.
        encoder_channels: output channels of each encoder stage (full resolution first).
        strides: the topology's strides (``strides[i]`` leads into encoder stage ``i``).
        n_classes: output channels of every head.
        deep_supervision: build a head on every decoder stage (else only on the last).
        make_stage: ``(level, in_channels) -> (module, out_channels)``; ``level`` is the encoder stage
            whose resolution the decoder stage works at, ``in_channels`` = upsampled + skip channels.
        make_up: ``(in_channels, out_channels, stride) -> module``; it must output the skip's channels.
    """

    def __init__(
        self,
        dims: int,
        encoder_channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        n_classes: int,
        deep_supervision: bool,
        make_stage: StageFactory,
        make_up: UpFactory | None = None,
    ) -> None:
        super().__init__()
        make_up = make_up or transposed_up(dims)
        self.deep_supervision = deep_supervision
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        head_channels: list[int] = []
        channels = encoder_channels[-1]
        for level in range(len(encoder_channels) - 2, -1, -1):
            skip = encoder_channels[level]
            self.ups.append(make_up(channels, skip, strides[level + 1]))
            stage, channels = make_stage(level, 2 * skip)
            self.stages.append(stage)
            head_channels.append(channels)
        if not deep_supervision:
            head_channels = head_channels[-1:]
        self.heads = nn.ModuleList(conv_op(dims)(c, n_classes, 1) for c in head_channels)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Training: logits per decoder stage, full resolution first. Eval: full-resolution logits."""
        supervise_all = self.deep_supervision and self.training
        x = skips[-1]
        outputs: list[torch.Tensor] = []
        for j, (up, stage) in enumerate(zip(self.ups, self.stages)):
            x = stage(torch.cat([up(x), skips[-2 - j]], dim=1))
            if supervise_all:
                outputs.append(self.heads[j](x))
        if not supervise_all:
            outputs.append(self.heads[-1](x))
        if self.training:
            return outputs[::-1]
        return outputs[-1]


class UNet(nn.Module):
    """nnU-Net's plain U-Net, 2D or 3D, from a per-axis plan topology.

    Paper: Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
    segmentation", Nature Methods 2021, https://doi.org/10.1038/s41592-020-01008-z (reference.md §2.1).

    Defaults: per stage 2 x (conv -> InstanceNorm(affine) -> LeakyReLU 0.01) in encoder and decoder,
    strided conv downsampling (the first conv of a stage), transposed conv upsampling (kernel = stride),
    concatenated skips, a 1x1 head per decoder stage. Features, per-axis kernels and strides come from
    the topology. Same layers and parameter count as nnU-Net's ``PlainConvUNet``.
    Deviation: without deep supervision only the full-resolution head is built (nnU-Net builds all
    heads and leaves the unused ones without gradient).

    Args:
        topology: the plan's topology (at least 2 stages).
        in_channels: input channels.
        n_classes: output channels (classes incl. background, or regions).
        deep_supervision: in training, return logits of every decoder stage.
    """

    def __init__(
        self,
        topology: Topology,
        in_channels: int,
        n_classes: int,
        *,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        require_stages(topology, type(self).__name__)
        self.topology = topology
        dims, n = topology.spatial_dims, topology.n_stages
        self.encoder = self._build_encoder(topology, in_channels)
        decoder_convs = blocks_per_stage(
            topology.decoder_blocks_per_stage, self._default_decoder_convs(), n - 1
        )

        def make_stage(level: int, stage_in: int) -> tuple[nn.Module, int]:
            out = topology.features_per_stage[level]
            # decoder_blocks_per_stage is deepest first; level n-2 is the deepest decoder stage.
            n_convs = decoder_convs[n - 2 - level]
            return conv_stack(dims, stage_in, out, topology.kernel_sizes[level], n_convs), out

        self.decoder = UNetDecoder(
            dims, topology.features_per_stage, topology.strides, n_classes, deep_supervision, make_stage
        )

    def _default_decoder_convs(self) -> Sequence[int]:
        return UNET_CONVS_PER_STAGE

    def _build_encoder(self, topology: Topology, in_channels: int) -> nn.Module:
        n, dims = topology.n_stages, topology.spatial_dims
        counts = blocks_per_stage(topology.blocks_per_stage, UNET_CONVS_PER_STAGE, n)
        stages = []
        channels = in_channels
        for i, features in enumerate(topology.features_per_stage):
            kernel, stride = topology.kernel_sizes[i], topology.strides[i]
            stages.append(conv_stack(dims, channels, features, kernel, counts[i], stride))
            channels = features
        return SkipEncoder(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))


class SkipEncoder(nn.Module):
    """Runs stages in sequence and returns every stage's output (the decoder's skips)."""

    def __init__(self, stages: Sequence[nn.Module], stem: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem if stem is not None else nn.Identity()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualBlock(nn.Module):
    """Two convs plus a shortcut (average pool when strided, 1x1 conv + norm when channels change)."""

    def __init__(
        self, dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: Sequence[int]
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(dims, in_channels, out_channels, kernel_size, stride)
        self.conv2 = ConvNormAct(dims, out_channels, out_channels, kernel_size, act=None)
        shortcut: list[nn.Module] = []
        if any(s != 1 for s in stride):
            shortcut.append(avg_pool_op(dims)(list(stride), list(stride)))
        if in_channels != out_channels:
            shortcut.append(ConvNormAct(dims, in_channels, out_channels, [1] * dims, act=None))
        self.shortcut = nn.Sequential(*shortcut)
        self.act = leaky_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResEncUNet(UNet):
    """Residual-encoder U-Net (nnU-Net ResEnc), 2D or 3D, from a per-axis plan topology.

    Paper: Isensee et al., "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image
    Segmentation", MICCAI 2024, https://arxiv.org/abs/2404.09556 (reference.md §2.1, §1.8).

    Defaults: a stem conv to the first stage's features, then (1, 3, 4, 6, 6, 6, ...) residual blocks
    per encoder stage (conv-norm-LeakyReLU, conv-norm, add shortcut, LeakyReLU; the first block of a
    stage is strided, its shortcut is average pool + 1x1 conv + norm), the plain U-Net decoder with one
    conv per stage. The ResEnc M/L/XL presets of the paper differ only in features and patch size,
    which the planner decides. Deviation: as for :class:`UNet`, no unused heads without deep
    supervision.
    """

    def _default_decoder_convs(self) -> Sequence[int]:
        return (RESENC_DECODER_CONVS,)

    def _build_encoder(self, topology: Topology, in_channels: int) -> nn.Module:
        n, dims = topology.n_stages, topology.spatial_dims
        counts = blocks_per_stage(topology.blocks_per_stage, RESENC_BLOCKS_PER_STAGE, n)
        stem = ConvNormAct(dims, in_channels, topology.features_per_stage[0], topology.kernel_sizes[0])
        stages = []
        channels = topology.features_per_stage[0]
        for i, features in enumerate(topology.features_per_stage):
            kernel, stride = topology.kernel_sizes[i], topology.strides[i]
            blocks = [ResidualBlock(dims, channels, features, kernel, stride)]
            blocks += [ResidualBlock(dims, features, features, kernel, [1] * dims) for _ in range(counts[i] - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = features
        return SkipEncoder(stages, stem)


# Short budgeted schedules: AdamW at 1e-3 beat nnU-Net's SGD at equal time on Hippocampus (10 and 30
# minutes) and ACDC (10 and 30), level on BraTS-mini (docs/benchmarks.md, "AdamW for short schedules").
UNET_SHORT_SCHEDULE_TRAINING = {"optimizer": {"name": "adamw", "lr": 1.0e-3}}


@register_network(
    "unet",
    paper="Isensee et al., nnU-Net, Nature Methods 2021, https://doi.org/10.1038/s41592-020-01008-z",
    description="nnU-Net's plain U-Net: 2 conv-IN-LeakyReLU per stage, deep supervision",
    constraints=TopologyConstraints(default_blocks_per_stage=UNET_CONVS_PER_STAGE, kernel_size=3, instance_norm=True),
    short_schedule_training=UNET_SHORT_SCHEDULE_TRAINING,
    default=True,
)
def build_unet(
    topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True
) -> nn.Module:
    return UNet(topology, in_channels, n_classes, deep_supervision=deep_supervision)


@register_network(
    "resenc",
    paper="Isensee et al., nnU-Net Revisited, MICCAI 2024, https://arxiv.org/abs/2404.09556",
    description="U-Net with a residual encoder (1,3,4,6,6,6 blocks) and a 1-conv decoder",
    constraints=TopologyConstraints(
        default_blocks_per_stage=RESENC_BLOCKS_PER_STAGE, kernel_size=3, instance_norm=True
    ),
)
def build_resenc(
    topology: Topology, in_channels: int, n_classes: int, *, deep_supervision: bool = True
) -> nn.Module:
    return ResEncUNet(topology, in_channels, n_classes, deep_supervision=deep_supervision)
