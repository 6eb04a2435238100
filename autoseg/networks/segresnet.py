"""SegResNet (Myronenko 2018), 2D and 3D, with the optional VAE regulariser; reference.md §2.2."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.blocks import conv_op, dropout_op, group_norm, same_padding, upsample_mode
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import blocks_per_stage

PAPER = (
    "Myronenko, 3D MRI brain tumor segmentation using autoencoder regularization, BrainLes 2018, "
    "https://arxiv.org/abs/1810.11654"
)
# reference.md §2.2: stage widths and residual blocks per encoder stage, one block per decoder stage.
PAPER_FEATURES = (32, 64, 128, 256)
PAPER_BLOCKS = (1, 2, 2, 4)
DECODER_BLOCKS = 1
# Myronenko §2.1: spatial dropout 0.2 after the initial encoder convolution.
INITIAL_DROPOUT = 0.2
# reference.md §2.2: VAE reduces the deepest features to 16 channels and a 128-d latent.
VAE_CHANNELS = 16
VAE_LATENT = 128
# reference.md §2.2: Dice + 0.1 x L2(reconstruction) + 0.1 x KL.
VAE_L2_WEIGHT = 0.1
VAE_KL_WEIGHT = 0.1
# Keeps log(sigma^2) finite when softplus underflows.
_MIN_VARIANCE = 1e-12


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm -> ReLU -> conv) twice, plus identity."""

    def __init__(self, dims: int, channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        conv, pad = conv_op(dims), same_padding(kernel)
        self.body = nn.Sequential(
            group_norm(channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, list(kernel), padding=pad, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, list(kernel), padding=pad, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpStage(nn.Module):
    """1x1 conv to the shallower width, linear upsampling to ``size``, optional skip ADD, blocks."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel: Sequence[int], n_blocks: int) -> None:
        super().__init__()
        self.mode = upsample_mode(dims)
        self.reduce = conv_op(dims)(in_channels, out_channels, 1, bias=False)
        self.blocks = nn.Sequential(*(ResBlock(dims, out_channels, kernel) for _ in range(n_blocks)))

    def forward(self, x: torch.Tensor, size: Sequence[int], skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=list(size), mode=self.mode, align_corners=False)
        if skip is not None:
            x = x + skip
        return self.blocks(x)


class VAEBranch(nn.Module):
    """Myronenko's variational auto-encoder branch: deepest features -> 128-d latent -> input.

    Its dense layers fix the deepest feature size, hence the input size. The extra stride-2
    reduction is applied on every axis whose deepest size is even (all axes in the paper).
    """

    def __init__(self, topology: Topology, in_channels: int, input_size: Sequence[int]) -> None:
        super().__init__()
        dims, feats = topology.spatial_dims, topology.features_per_stage
        self.mode = upsample_mode(dims)
        self.stage_sizes = _stage_sizes(topology, input_size)
        deepest = self.stage_sizes[-1]
        reduce_stride = [2 if s % 2 == 0 else 1 for s in deepest]
        self.latent_grid = [s // r for s, r in zip(deepest, reduce_stride)]
        conv, kernel = conv_op(dims), topology.kernel_sizes[-1]
        self.down = nn.Sequential(
            group_norm(feats[-1]),
            nn.ReLU(inplace=True),
            conv(feats[-1], VAE_CHANNELS, list(kernel), reduce_stride, same_padding(kernel), bias=False),
        )
        flat = VAE_CHANNELS * math.prod(self.latent_grid)
        self.to_stats = nn.Linear(flat, 2 * VAE_LATENT)
        self.from_latent = nn.Linear(VAE_LATENT, flat)
        self.expand = conv(VAE_CHANNELS, feats[-1], 1, bias=False)
        self.ups = nn.ModuleList(
            UpStage(dims, feats[i + 1], feats[i], topology.kernel_sizes[i], DECODER_BLOCKS)
            for i in reversed(range(topology.n_stages - 1))
        )
        self.out = conv(feats[0], in_channels, 1)

    def forward(self, deepest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction, mu, sigma); sigma > 0 through softplus (the paper leaves it open)."""
        stats = self.to_stats(self.down(deepest).flatten(1))
        mu, sigma = stats[:, :VAE_LATENT], F.softplus(stats[:, VAE_LATENT:])
        z = mu + sigma * torch.randn_like(sigma)
        h = F.relu(self.from_latent(z)).view(z.shape[0], VAE_CHANNELS, *self.latent_grid)
        h = F.interpolate(self.expand(h), size=self.stage_sizes[-1], mode=self.mode, align_corners=False)
        for up, size in zip(self.ups, reversed(self.stage_sizes[:-1])):
            h = up(h, size)
        return self.out(h), mu, sigma


def _checked_input_size(input_size: object, spatial_dims: int) -> list[int]:
    """The VAE's ``input_size`` as ``spatial_dims`` positive ints, else ``NetworkError``: a text, a single
    number or a size <= 0 (``--set network_options.input_size=...``) failed inside torch as an internal error."""
    values = input_size if isinstance(input_size, (list, tuple)) else None
    if (
        values is None or len(values) != spatial_dims
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values)
    ):
        raise NetworkError(
            f"segresnet: option input_size must be {spatial_dims} positive integers (the training patch size), "
            f"got {input_size!r}; fix --set network_options.input_size=[...] or leave it out to use the plan's patch size"
        )
    return [int(v) for v in values]


def _stage_sizes(topology: Topology, input_size: Sequence[int]) -> list[list[int]]:
    """Spatial size of every encoder stage for ``input_size``."""
    topology.check_input_shape(list(input_size))
    sizes, size = [], list(input_size)
    for stride in topology.strides:
        size = [s // t for s, t in zip(size, stride)]
        sizes.append(size)
    return sizes


class SegResNet(nn.Module):
    """SegResNet: residual encoder, additive-skip decoder, optional VAE regulariser (training only).

    Paper: Myronenko 2018, https://arxiv.org/abs/1810.11654 (reference.md §2.2). Encoder: conv to
    ``features[0]``, then per stage a stride conv (doubling width in the paper) and residual blocks
    (GN -> ReLU -> conv, twice, plus identity); paper widths 32/64/128/256 with 1/2/2/4 blocks.
    Decoder per level: 1x1 conv to the shallower width, linear upsampling, ADD the encoder output,
    one residual block; 1x1 head. With ``vae=True``, ``forward_with_aux`` also returns the VAE's
    ``reconstruction``, ``mu`` and ``sigma`` (loss: :func:`vae_auxiliary_loss`, declared to the registry).

    Defaults and deviations: widths, strides and kernels come from the plan topology (the paper is
    isotropic 3D); GroupNorm uses fewer than 8 groups only when a width is not divisible by 8;
    ``deep_supervision=True`` adds a 1x1 head on every decoder level, as Auto3DSeg's SegResNetDS does
    (the paper has one head); the VAE's std goes through softplus; the head returns logits (the
    loss applies sigmoid or softmax). The 18.8M parameters of reference.md §2.2 are the network
    without the VAE branch (4 in, 3 out, 32 filters); the VAE adds about 7.2M at 160x192x128.

    Args:
        topology: the plan's topology.
        in_channels: input modalities.
        n_classes: output channels.
        deep_supervision: heads on every decoder level (training mode only).
        vae: build the VAE regulariser; needs ``input_size``.
        input_size: the training patch size (spatial) the VAE's dense layers are sized for.
        dropout: spatial dropout after the first conv.
    """

    def __init__(
        self,
        topology: Topology,
        in_channels: int,
        n_classes: int,
        *,
        deep_supervision: bool = True,
        vae: bool = False,
        input_size: Sequence[int] | None = None,
        dropout: float = INITIAL_DROPOUT,
    ) -> None:
        super().__init__()
        dims, feats, n = topology.spatial_dims, topology.features_per_stage, topology.n_stages
        conv = conv_op(dims)
        blocks = blocks_per_stage(topology.blocks_per_stage, PAPER_BLOCKS, n)
        up_blocks = blocks_per_stage(
            topology.decoder_blocks_per_stage, (DECODER_BLOCKS,), n - 1
        )
        kernels, strides = topology.kernel_sizes, topology.strides
        self.stem = nn.Sequential(
            conv(in_channels, feats[0], list(kernels[0]), padding=same_padding(kernels[0]), bias=False),
            dropout_op(dims)(dropout),
        )
        self.stages = nn.ModuleList()
        for i in range(n):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(
                    conv(feats[i - 1], feats[i], list(kernels[i]), strides[i], same_padding(kernels[i]), bias=False)
                )
            layers += [ResBlock(dims, feats[i], kernels[i]) for _ in range(blocks[i])]
            self.stages.append(nn.Sequential(*layers))
        # Decoder levels deepest first: level j upsamples stage n-1-j into stage n-2-j.
        self.ups = nn.ModuleList(
            UpStage(dims, feats[i + 1], feats[i], kernels[i], up_blocks[n - 2 - i]) for i in reversed(range(n - 1))
        )
        n_heads = max(n - 1, 1) if deep_supervision else 1
        # heads[k] reads the decoder output at stage k (highest resolution first).
        self.heads = nn.ModuleList(conv(feats[k], n_classes, 1) for k in range(n_heads))
        self.vae: VAEBranch | None = None
        if vae:
            if input_size is None:
                raise NetworkError(
                    "segresnet: vae=True needs the training patch size to size its dense layers; "
                    "plan it (topology.extra['patch_size']) or pass the option input_size=[...]"
                )
            self.input_size = _checked_input_size(input_size, topology.spatial_dims)
            self.vae = VAEBranch(topology, in_channels, self.input_size)

    def _encode_decode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Decoder outputs (highest resolution first) and the deepest encoder features."""
        h = self.stem(x)
        skips = []
        for stage in self.stages:
            h = stage(h)
            skips.append(h)
        deepest = h
        outputs = [h]
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            h = up(h, skip.shape[2:], skip)
            outputs.append(h)
        return outputs[::-1], deepest

    def _heads(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(out) for head, out in zip(self.heads, outputs)]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs, _ = self._encode_decode(x)
        if not self.training:
            return self.heads[0](outputs[0])
        return self._heads(outputs)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Training outputs plus the VAE's ``reconstruction``, ``mu``, ``sigma`` (empty without VAE)."""
        outputs, deepest = self._encode_decode(x)
        logits = self._heads(outputs) if self.training else [self.heads[0](outputs[0])]
        if self.vae is None or not self.training:
            return logits, {}
        if list(x.shape[2:]) != self.input_size:
            raise NetworkError(
                f"segresnet: the VAE branch was built for input size {self.input_size}, got "
                f"{list(x.shape[2:])}; train on patches of the planned size"
            )
        reconstruction, mu, sigma = self.vae(deepest)
        return logits, {"reconstruction": reconstruction, "mu": mu, "sigma": sigma}


def vae_loss(reconstruction: torch.Tensor, image: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``0.1 x L2 + 0.1 x KL`` of SegResNet's VAE (reference.md §2.2).

    L2 is the mean squared reconstruction error (the paper's squared norm divided by the number of
    values, so the weight does not scale with the patch size); ``KL = mean(mu^2 + sigma^2 -
    log sigma^2 - 1)`` over latent entries and batch.
    """
    l2 = F.mse_loss(reconstruction, image)
    variance = sigma.pow(2)
    kl = (mu.pow(2) + variance - torch.log(variance.clamp_min(_MIN_VARIANCE)) - 1).mean()
    return VAE_L2_WEIGHT * l2 + VAE_KL_WEIGHT * kl


def vae_auxiliary_loss(
    network: nn.Module, aux: Mapping[str, torch.Tensor], image: torch.Tensor, target: torch.Tensor,
    annotated: torch.Tensor | None,
) -> torch.Tensor:
    """The registry's auxiliary-loss hook: the VAE term, zero when the network has no VAE branch (it
    reconstructs the image, so labels and their ignored voxels play no part)."""
    if not aux:
        return image.new_zeros(())
    return vae_loss(aux["reconstruction"], image, aux["mu"], aux["sigma"])


@register_network(
    "segresnet",
    paper=PAPER,
    description="SegResNet: GroupNorm residual encoder, additive-skip decoder, optional VAE regulariser",
    constraints=TopologyConstraints(
        max_stages=len(PAPER_FEATURES),
        fixed_features=PAPER_FEATURES,
        default_blocks_per_stage=PAPER_BLOCKS,
        kernel_size=3,
    ),
    auxiliary_loss=vae_auxiliary_loss,
)
def build_segresnet(
    topology: Topology,
    in_channels: int,
    n_classes: int,
    *,
    deep_supervision: bool = True,
    vae: bool = False,
    input_size: Sequence[int] | None = None,
    dropout: float = INITIAL_DROPOUT,
) -> nn.Module:
    """``input_size`` defaults to the plan's ``topology.extra['patch_size']`` (needed only with ``vae``)."""
    planned = topology.extra.get("patch_size")
    if input_size is None:
        input_size = planned
    elif vae and planned is not None and _checked_input_size(input_size, topology.spatial_dims) != list(planned):
        # Else the VAE built for input_size refused the first training patch, after train had set up the fold.
        raise NetworkError(
            f"segresnet: option input_size {list(input_size)} differs from the training patch size {list(planned)}; "
            "the VAE's dense layers take the training patch only: leave --set network_options.input_size out "
            "or set it to the patch size"
        )
    return SegResNet(
        topology, in_channels, n_classes, deep_supervision=deep_supervision, vae=vae, input_size=input_size,
        dropout=dropout,
    )
