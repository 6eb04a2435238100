"""Vox2Vox (Cirillo et al. 2020): 3D U-Net generator and 3D PatchGAN discriminator; reference.md §2.5."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.networks.blocks import instance_norm_op
from autoseg.networks.registry import Adversary, TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import require_stages

PAPER = (
    "Cirillo et al., Vox2Vox: 3D-GAN for brain tumour segmentation, BrainLes 2020, "
    "https://arxiv.org/abs/2003.13653"
)
# reference.md §2.5: dropout 0.2, a bottleneck of 4 concatenating blocks, widths up to 512.
DROPOUT = 0.2
BOTTLENECK_BLOCKS = 4
MAX_FEATURES = 512
# pix2pix's LeakyReLU slope, used by Vox2Vox's generator and discriminator.
LEAKY_SLOPE = 0.2
# PatchGAN (reference §2.5): k4 stride-2 convs of 64/128/256, then 512 and a 1-channel score map.
DISCRIMINATOR_FEATURES = (64, 128, 256)
DISCRIMINATOR_HEAD_FEATURES = 512
# The three k4 stride-2 convs need at least 2^3 voxels per axis; shorter axes are zero-padded to it.
DISCRIMINATOR_MIN_SIZE = 2 ** len(DISCRIMINATOR_FEATURES)
# reference.md §2.5: G = LSGAN + 5 x generalised Dice.
VOX2VOX_DICE_WEIGHT = 5.0
# Generalised Dice denominator guard for all-empty batches.
_GDICE_EPS = 1e-8
# reference.md §2.5: Adam 2e-4, beta1 0.5 for generator and discriminator, no LR decay, no clipping.
TRAINING_DEFAULTS = {
    "optimizer": {"name": "adam", "lr": 2.0e-4, "betas": [0.5, 0.999], "weight_decay": 0.0},
    "lr_schedule": {"name": "constant"},
    "grad_clip": 0.0,
    "adversarial": {"discriminator_lr": 2.0e-4, "discriminator_betas": [0.5, 0.999]},
}


def strided_geometry(kernel: Sequence[int], stride: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Kernel, padding and transposed-conv output padding per axis: k4/p1 on stride-2 axes (the paper's
    ``2 x stride`` kernels), the plan's kernel with same padding on axes that keep their size.

    Padding ``ceil(s / 2)`` and output padding ``s % 2`` make a stride-``s`` axis exactly ``s`` times
    smaller and back for odd strides too (``s // 2`` gave a stride-3 axis of 12 voxels 3, not 4, and the
    skip then failed to concatenate in the first forward pass).
    """
    k = [2 * s if s > 1 else kk for kk, s in zip(kernel, stride)]
    p = [(s + 1) // 2 if s > 1 else (kk - 1) // 2 for kk, s in zip(kernel, stride)]
    return k, p, [s % 2 if s > 1 else 0 for s in stride]


def norm_act(channels: int) -> list[nn.Module]:
    return [instance_norm_op(3)(channels, affine=True), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]


class DenseBottleneckBlock(nn.Module):
    """conv -> InstanceNorm -> LeakyReLU, output concatenated to the block's input."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        padding = [(k - 1) // 2 for k in kernel]
        conv = nn.Conv3d(in_channels, out_channels, list(kernel), padding=padding)
        self.body = nn.Sequential(conv, *norm_act(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class Vox2VoxGenerator(nn.Module):
    """Vox2Vox generator: a 3D U-Net with strided-conv encoder, concatenating bottleneck, transposed-conv
    decoder with concatenated skips.

    Paper: Cirillo et al. 2020, https://arxiv.org/abs/2003.13653 (reference.md §2.5): k4 stride-2
    convs of 64/128/256/512 with InstanceNorm, LeakyReLU and dropout 0.2 (no norm on the first), a
    bottleneck of 4 blocks concatenating input and output at 8^3, transposed-conv decoder with
    concatenated skips and dropout, softmax head. Trained adversarially against
    :func:`build_discriminator` with the losses below (declared as the family's ``Adversary``).

    Defaults and deviations: stages, widths and strides follow the plan topology; stage 0 is a
    stride-1 conv at full resolution, so the head is a 1x1 conv (the paper's last layer is a
    transposed conv from half resolution); the encoder/decoder kernel is ``2 x stride`` on strided
    axes (k4 as the paper) and the plan's kernel on axes with stride 1; bottleneck blocks use the
    plan's kernel (the authors' code: 5) and concatenate input and output, so the bottleneck
    outputs ``5 x`` the deepest width; the head returns logits (softmax in the loss). No deep
    supervision (the design has none): training returns a list of one logits tensor.

    Args:
        topology: the plan's 3D topology (at least 2 stages).
        in_channels: input modalities.
        n_classes: output channels.
        dropout: dropout after every encoder and decoder step.
    """

    def __init__(self, topology: Topology, in_channels: int, n_classes: int, *, dropout: float = DROPOUT) -> None:
        super().__init__()
        feats, kernels, strides, n = (
            topology.features_per_stage, topology.kernel_sizes, topology.strides, topology.n_stages
        )
        first_padding = [(k - 1) // 2 for k in kernels[0]]
        self.encoder = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv3d(in_channels, feats[0], list(kernels[0]), padding=first_padding),
                    nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
                    nn.Dropout3d(dropout),
                )
            ]
        )
        for i in range(1, n):
            k, p, _ = strided_geometry(kernels[i], strides[i])
            layers = [nn.Conv3d(feats[i - 1], feats[i], k, strides[i], p), *norm_act(feats[i])]
            if i < n - 1:
                layers.append(nn.Dropout3d(dropout))
            self.encoder.append(nn.Sequential(*layers))
        self.bottleneck = nn.Sequential(
            *(DenseBottleneckBlock((b + 1) * feats[-1], feats[-1], kernels[-1]) for b in range(BOTTLENECK_BLOCKS))
        )
        self.decoder = nn.ModuleList()
        channels = (BOTTLENECK_BLOCKS + 1) * feats[-1]
        for i in reversed(range(n - 1)):
            k, p, output_padding = strided_geometry(kernels[i + 1], strides[i + 1])
            up = nn.ConvTranspose3d(channels, feats[i], k, strides[i + 1], p, output_padding)
            self.decoder.append(nn.Sequential(up, *norm_act(feats[i])))
            channels = 2 * feats[i]
        self.decoder_dropout = nn.Dropout3d(dropout)
        self.head = nn.Conv3d(channels, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for step in self.encoder:
            x = step(x)
            skips.append(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            x = self.decoder_dropout(torch.cat([up(x), skip], dim=1))
        logits = self.head(x)
        return [logits] if self.training else logits


def discriminator_shortfall(shape: Sequence[int]) -> list[int]:
    """Voxels to add per axis before the discriminator's strided convs: every axis reaches
    ``DISCRIMINATOR_MIN_SIZE``, and the longest twice that when all are shorter. A patch under 16 on
    every axis (12x12x12) left a 1x1x1 map after the third stride-2 conv, whose InstanceNorm at batch 1
    (``--set batch_size=1``, or a batch of 2 split over two DDP ranks) raised a ValueError at the first
    adversarial step."""
    target = [max(size, DISCRIMINATOR_MIN_SIZE) for size in shape]
    if all(t < 2 * DISCRIMINATOR_MIN_SIZE for t in target):
        longest = target.index(max(target))
        target[longest] = 2 * DISCRIMINATOR_MIN_SIZE
    return [t - size for t, size in zip(target, shape)]


class PatchDiscriminator(nn.Module):
    """3D PatchGAN over ``concat(image, segmentation)``: one realness score per receptive-field patch.

    Reference.md §2.5 / the authors' code: three k4 stride-2 convs (64/128/256; InstanceNorm from the
    second; LeakyReLU; dropout 0.2), then a 512-channel conv and a 1-channel score conv. Deviation:
    the last two convs are k3 with same padding (the authors' k4 valid convs shrink the map by 2 per
    conv, which small or anisotropic patches cannot afford). An axis shorter than
    ``DISCRIMINATOR_MIN_SIZE`` (8; a thin-slab patch such as 4 x 64 x 64) is zero-padded to it on both
    sides, since the strided convs cannot run on it (that was an internal error at the first step), and
    the longest axis to 16 when every axis is shorter (``discriminator_shortfall``).

    Args:
        in_channels: image channels.
        n_classes: segmentation channels (one-hot target or softmax of the generator's logits).
    """

    def __init__(self, in_channels: int, n_classes: int, *, dropout: float = DROPOUT) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels + n_classes
        for i, features in enumerate(DISCRIMINATOR_FEATURES):
            layers.append(nn.Conv3d(channels, features, 4, 2, 1))
            layers += norm_act(features) if i > 0 else [nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
            layers.append(nn.Dropout3d(dropout))
            channels = features
        layers.append(nn.Conv3d(channels, DISCRIMINATOR_HEAD_FEATURES, 3, padding=1))
        layers += norm_act(DISCRIMINATOR_HEAD_FEATURES)
        layers.append(nn.Conv3d(DISCRIMINATOR_HEAD_FEATURES, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:
        pair = torch.cat([image, segmentation], dim=1)
        short = discriminator_shortfall(pair.shape[2:])
        if any(short):
            # F.pad lists the last axis first, each as (before, after).
            pair = F.pad(pair, [side for n in reversed(short) for side in (n // 2, n - n // 2)])
        return self.net(pair)


def build_discriminator(in_channels: int, n_classes: int) -> nn.Module:
    """The PatchGAN discriminator the adversarial training loop pairs with ``vox2vox``."""
    return PatchDiscriminator(in_channels, n_classes)


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``0.5 [MSE(D(x, y), 1) + MSE(D(x, G(x)), 0)]`` (reference.md §2.5)."""
    real = F.mse_loss(real_scores, torch.ones_like(real_scores))
    fake = F.mse_loss(fake_scores, torch.zeros_like(fake_scores))
    return 0.5 * (real + fake)


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``MSE(D(x, G(x)), 1)``: the generator wants its output scored as real."""
    return F.mse_loss(fake_scores, torch.ones_like(fake_scores))


def generalised_dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Generalised Dice (Sudre et al. 2017) ``1 - 2 sum_c w_c sum(p g) / sum_c w_c sum(p + g)``,
    ``w_c = 1 / (sum g_c)^2`` pooled over the batch; a class absent from the target gets the
    largest weight of the present classes, so predicting it is still penalised."""
    axes = (0, *range(2, probs.ndim))
    volume = target.sum(axes)
    present = volume > 0
    weights = torch.where(present, 1.0 / volume.pow(2), torch.zeros_like(volume))
    weights = torch.where(present, weights, weights.max())
    intersection = (weights * (probs * target).sum(axes)).sum()
    denominator = (weights * (probs + target).sum(axes)).sum()
    return 1 - 2 * intersection / denominator.clamp_min(_GDICE_EPS)


def vox2vox_generator_loss(fake_scores: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                           annotated: torch.Tensor | None = None) -> torch.Tensor:
    """``MSE(D(x, G(x)), 1) + 5 x generalised Dice`` of the softmax of the generator's logits.

    ``target``: ``(B, C, *)`` one-hot classes; ``annotated``: ``(B, 1, *)``, 0 on the ignore label,
    whose voxels the Dice leaves out.
    """
    probs = torch.softmax(logits, dim=1)
    target = target.to(probs.dtype)
    if annotated is not None:
        probs, target = probs * annotated, target * annotated
    dice = generalised_dice_loss(probs, target)
    return lsgan_generator_loss(fake_scores) + VOX2VOX_DICE_WEIGHT * dice


@register_network(
    "vox2vox",
    paper=PAPER,
    description="Vox2Vox: 3D U-Net generator trained against a 3D PatchGAN (LSGAN + 5 x generalised Dice)",
    constraints=TopologyConstraints(
        spatial_dims=(3,), kernel_size=3, max_features=MAX_FEATURES, block_settings=(), instance_norm=True
    ),
    training_defaults=TRAINING_DEFAULTS,
    adversary=Adversary(build_discriminator, lsgan_discriminator_loss, vox2vox_generator_loss),
)
def build_vox2vox(
    topology: Topology,
    in_channels: int,
    n_classes: int,
    *,
    deep_supervision: bool = True,
    dropout: float = DROPOUT,
) -> nn.Module:
    """The generator; ``deep_supervision`` is accepted for the common builder signature, the design
    has none. The discriminator comes from :func:`build_discriminator`."""
    del deep_supervision
    require_stages(topology, "vox2vox")
    return Vox2VoxGenerator(topology, in_channels, n_classes, dropout=dropout)
