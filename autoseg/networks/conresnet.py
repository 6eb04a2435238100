"""ConResNet (Zhang et al., IEEE TMI 2021): inter-slice context residual learning, 3D only; reference.md §2.3."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.errors import NetworkError
from autoseg.networks.blocks import group_norm, same_padding, upsample_mode
from autoseg.networks.registry import TopologyConstraints, register_network
from autoseg.networks.topology import Topology
from autoseg.networks.unet import blocks_per_stage

PAPER = (
    "Zhang et al., Inter-slice context residual learning for 3D medical image segmentation, "
    "IEEE TMI 2021, https://doi.org/10.1109/TMI.2020.3034995"
)
# reference.md §2.3: encoder widths and pre-activation residual blocks per stage.
PAPER_FEATURES = (32, 64, 128, 256, 256)
PAPER_BLOCKS = (1, 2, 2, 2, 2)
# reference.md §2.3: the last stage is dilated with rate 2.
LAST_STAGE_DILATION = 2
# Dropout before the fusion conv, as the authors' implementation.
FUSION_DROPOUT = 0.1
# reference.md §2.3: full-resolution residual loss weight 1, lambda 0.5 for the 1/2 and 1/4 outputs.
CONRES_LOWRES_WEIGHT = 0.5
# A patch needs 2 slices along slice_axis for a nonzero inter-slice residual (check_slices; the planner keeps them).
MIN_SLICES = 2
# Keeps weight standardisation finite for constant filters (the authors use 1e-12).
WS_EPS = 1e-8


class WSConv3d(nn.Conv3d):
    """Conv3d with weight standardisation: each filter is centred and scaled to unit variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3, 4), keepdim=True, unbiased=False)
        return self._conv_forward(x, (self.weight - mean) / torch.sqrt(var + WS_EPS), self.bias)


def ws_conv(
    in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int] | int = 1, dilation: int = 1
) -> WSConv3d:
    return WSConv3d(
        in_channels, out_channels, list(kernel), stride, same_padding(kernel, dilation), dilation, bias=False
    )


def preact_conv(
    in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int] | int = 1, dilation: int = 1
) -> nn.Sequential:
    """GroupNorm(8) -> ReLU -> weight-standardised conv."""
    return nn.Sequential(
        group_norm(in_channels), nn.ReLU(inplace=True), ws_conv(in_channels, out_channels, kernel, stride, dilation)
    )


class PreActBlock(nn.Module):
    """Pre-activation residual block: two ``preact_conv`` plus identity."""

    def __init__(self, channels: int, kernel: Sequence[int], dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            preact_conv(channels, channels, kernel, dilation=dilation),
            preact_conv(channels, channels, kernel, dilation=dilation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def slice_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``|x[s] - x[s-1]|`` along ``dim``, 0 on the first slice: the inter-slice context residual.

    On binary masks this is ``mask[s] XOR mask[s-1]``, the residual ground truth of reference §2.3.
    """
    # Two shifted slices rather than torch.diff, which ONNX has no operator for (export-model --format onnx).
    n = x.shape[dim]
    difference = x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), difference.abs()], dim=dim)


class ContextResidualModule(nn.Module):
    """Joins the segmentation and context-residual decoders at one scale (reference.md §2.3).

    ``F = Conv(I_skip + I_seg)``; ``G = |sigmoid(F)[s] - sigmoid(F)[s-1]|`` along the slice axis;
    ``O_res = Conv(Conv(G) + P(I_res))``; ``O_seg = F * (1 + sigmoid(O_res))``, where ``P`` brings the
    incoming residual features to this scale's width (identity when the widths agree).

    Args:
        res_project: ``P``; a plain conv for the image residual at the first scale, else a
            pre-activation conv or identity.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: Sequence[int], res_project: nn.Module, slice_dim: int
    ) -> None:
        super().__init__()
        self.slice_dim = slice_dim
        self.seg_conv = preact_conv(in_channels, out_channels, kernel)
        self.context_conv = ws_conv(out_channels, out_channels, [1, 1, 1])
        self.res_project = res_project
        self.res_conv = preact_conv(out_channels, out_channels, kernel)

    def forward(self, seg: torch.Tensor, res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.seg_conv(seg)
        g = slice_difference(torch.sigmoid(f), self.slice_dim)
        o_res = self.res_conv(self.context_conv(g) + self.res_project(res))
        return f * (1 + torch.sigmoid(o_res)), o_res


def check_slices(shape: Sequence[int], slice_axis: int) -> None:
    """Refuse a patch of one slice along the slice axis (a 2D-like 3D patch): its inter-slice residual, the
    target of the auxiliary loss, is zero everywhere, so that loss only taught the residual decoder to say 0."""
    if int(shape[slice_axis]) < MIN_SLICES:
        raise NetworkError(
            f"conresnet: the patch {list(shape)} has 1 slice along slice_axis {slice_axis}, so its inter-slice context "
            "residual is zero and its auxiliary loss teaches nothing; use a patch of at least 2 slices on that axis, "
            "another --set network_options.slice_axis, or another network (e.g. --network unet)"
        )


def decoder_stages(strides: Sequence[Sequence[int]]) -> list[int]:
    """Encoder stages whose output is a skip: the last stage of every resolution below the bottom.

    Stages that do not downsample share their predecessor's resolution (the paper's dilated last
    stage), so the paper's strides ``[1, 2, 2, 2, 1]`` give skips from stages 0, 1, 2.
    """
    return [i for i in range(len(strides) - 1) if any(s != 1 for s in strides[i + 1])]


class ConResNet(nn.Module):
    """ConResNet: segmentation decoder and context-residual decoder along the slice axis.

    Paper: Zhang et al., IEEE TMI 2021, https://doi.org/10.1109/TMI.2020.3034995 (reference.md §2.3).
    Weight-standardised convs, GroupNorm(8), ReLU, pre-activation residual blocks; paper encoder
    32-64-128-256-256 with 1-2-2-2-2 blocks, the last stage dilated (rate 2) at 1/8 resolution
    (strides ``[1, 2, 2, 2, 1]``). A fusion conv (GN-ReLU-dropout 0.1-conv) feeds the decoders,
    which meet at every skip resolution (1/4, 1/2, 1/1 in the paper) in a
    :class:`ContextResidualModule`; the residual decoder starts from the image's own inter-slice
    residual. Training also returns residual logits per scale (``aux['residual_<k>']``, ``k = 0``
    at full resolution), trained against ``label[s] XOR label[s-1]``. Every resize follows the
    skip's size, so any input divisible by the total stride works.

    Defaults and deviations: widths, strides and kernels follow the plan topology; a stage is a skip
    when the next one downsamples, so a plan with a strided last stage gets one more decoder scale.
    The slice axis is an option (the plan's largest-spacing axis). The last stage is always
    dilated. Resizing is trilinear without corner alignment. The authors' code also builds unused
    layers (about 0.4M parameters); they are left out. No deep supervision of the segmentation
    output (the design has none): training returns a list of one logits tensor.

    Args:
        topology: the plan's 3D topology with at least one downsampling stage.
        in_channels: input modalities.
        n_classes: output channels (of the segmentation and each residual head).
        slice_axis: spatial axis index (0, 1 or 2) along which slices are compared.
        dropout: dropout before the fusion conv.
    """

    def __init__(
        self,
        topology: Topology,
        in_channels: int,
        n_classes: int,
        *,
        slice_axis: int = 0,
        dropout: float = FUSION_DROPOUT,
    ) -> None:
        super().__init__()
        if slice_axis not in (0, 1, 2):
            raise NetworkError(f"conresnet: slice_axis must be a spatial axis index 0, 1 or 2, got {slice_axis}")
        self.skip_stages = decoder_stages(topology.strides)
        if not self.skip_stages:
            raise NetworkError(
                "conresnet needs at least one downsampling stage in the topology; plan a larger patch "
                "or choose another network"
            )
        self.slice_axis = slice_axis
        self.slice_dim = 2 + slice_axis
        feats, kernels, strides, n = (
            topology.features_per_stage, topology.kernel_sizes, topology.strides, topology.n_stages
        )
        blocks = blocks_per_stage(topology.blocks_per_stage, PAPER_BLOCKS, n)
        self.stem = ws_conv(in_channels, feats[0], kernels[0])
        self.stages = nn.ModuleList()
        for i in range(n):
            layers: list[nn.Module] = []
            if i > 0 and (any(s != 1 for s in strides[i]) or feats[i] != feats[i - 1]):
                layers.append(preact_conv(feats[i - 1], feats[i], kernels[i], strides[i]))
            dilation = LAST_STAGE_DILATION if i == n - 1 else 1
            layers += [PreActBlock(feats[i], kernels[i], dilation) for _ in range(blocks[i])]
            self.stages.append(nn.Sequential(*layers))
        deepest_first = self.skip_stages[::-1]
        self.fusion = nn.Sequential(
            group_norm(feats[-1]),
            nn.ReLU(inplace=True),
            nn.Dropout3d(dropout),
            ws_conv(feats[-1], feats[deepest_first[0]], kernels[-1]),
        )
        # Each scale outputs the width of the next shallower skip (stage 0's width at full resolution).
        widths = [feats[stage] for stage in deepest_first[1:]] + [feats[0]]
        self.levels = nn.ModuleList()
        for j, (stage, c_out) in enumerate(zip(deepest_first, widths)):
            c_in = feats[stage]
            if j == 0:
                project: nn.Module = ws_conv(in_channels, c_out, kernels[stage])
            elif c_in != c_out:
                project = preact_conv(c_in, c_out, kernels[stage])
            else:
                project = nn.Identity()
            self.levels.append(ContextResidualModule(c_in, c_out, kernels[stage], project, self.slice_dim))
        self.seg_head = nn.Conv3d(feats[0], n_classes, 1)
        # res_heads[k] reads the residual decoder at the k-th highest resolution.
        self.res_heads = nn.ModuleList(nn.Conv3d(w, n_classes, 1) for w in widths[::-1])

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-resolution segmentation features and residual features (highest resolution first)."""
        h = self.stem(x)
        skips = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i in self.skip_stages:
                skips.append(h)
        h = self.fusion(h)
        res = slice_difference(x, self.slice_dim)
        residuals = []
        for level, skip in zip(self.levels, reversed(skips)):
            size = list(skip.shape[2:])
            seg = F.interpolate(h, size=size, mode="trilinear", align_corners=False) + skip
            res = F.interpolate(res, size=size, mode="trilinear", align_corners=False)
            h, res = level(seg, res)
            residuals.append(res)
        return h, residuals[::-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h, _ = self._decode(x)
        logits = self.seg_head(h)
        return [logits] if self.training else logits

    def forward_with_aux(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Training outputs plus residual logits ``residual_<k>`` (k = 0 at full resolution)."""
        if self.training:
            check_slices(x.shape[2:], self.slice_axis)
        h, residuals = self._decode(x)
        logits = [self.seg_head(h)]
        if not self.training:
            return logits, {}
        return logits, {f"residual_{k}": head(r) for k, (head, r) in enumerate(zip(self.res_heads, residuals))}


def residual_target(target: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """ConResNet's residual ground truth ``label[s] XOR label[s-1]`` along ``slice_axis`` (spatial
    index) of a ``(B, C, *)`` binary target; the first slice is 0."""
    return slice_difference(target.float(), 2 + slice_axis)


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor | None = None) -> torch.Tensor:
    """Per-channel BCE with positive weight ``log(N / (n_pos + 1))`` (reference.md §2.3), averaged.

    ``N`` and ``n_pos`` count voxels of the channel over the whole batch. Deviation: the weight is
    never below 1 (the paper's formula drops under 1 when over a third of the voxels are positive,
    and turns negative when all are). With ``annotated`` ((B, 1, *), 0 on ignored voxels) only annotated
    voxels are counted and averaged.
    """
    if annotated is None:
        annotated = torch.ones_like(target[:, :1])
    mask = annotated.expand_as(target)
    n_voxels = annotated.sum()
    positives = (target * mask).transpose(0, 1).flatten(1).sum(1)
    pos_weight = torch.log(n_voxels / (positives + 1)).clamp_min(1.0)
    pos_weight = pos_weight.view(-1, *([1] * (target.ndim - 2)))
    per_voxel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    return (per_voxel * mask).sum() / (n_voxels * target.shape[1]).clamp_min(1.0)


def residual_logits(aux: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """ConResNet's ``residual_<k>`` outputs in scale order (``k = 0`` at full resolution)."""
    keys = sorted((k for k in aux if k.startswith("residual_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return [aux[k] for k in keys]


def conresnet_residual_loss(aux: Mapping[str, torch.Tensor], target: torch.Tensor, slice_axis: int,
                            annotated: torch.Tensor | None = None) -> torch.Tensor:
    """``wBCE(res) + 0.5 x sum of wBCE(res at lower scales)`` (reference.md §2.3).

    Lower-scale logits are resized to the target's size first, as in the authors' code.

    Args:
        aux: ``forward_with_aux``'s aux dict of a ConResNet.
        target: ``(B, C, *)`` one-hot classes or region masks (ignore label mapped to background).
        slice_axis: the network's ``slice_axis``.
        annotated: ``(B, 1, *)``, 0 on the ignore label; a residual counts only where both of its slices
            are annotated (an ignored slice next to a labelled one is no edge).
    """
    outputs = residual_logits(aux)
    if not outputs:
        raise ValueError("conresnet_residual_loss: aux holds no 'residual_<k>' outputs (train mode?)")
    size = list(target.shape[2:])
    gt = residual_target(target, slice_axis)
    counted = None if annotated is None else annotated * _previous_slice(annotated, 2 + slice_axis)
    total = outputs[0].new_zeros(())
    for k, logits in enumerate(outputs):
        if list(logits.shape[2:]) != size:
            logits = F.interpolate(logits, size=size, mode=upsample_mode(len(size)), align_corners=False)
        total = total + (1.0 if k == 0 else CONRES_LOWRES_WEIGHT) * weighted_bce(logits, gt, counted)
    return total


def _previous_slice(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x[s-1]`` along ``dim`` (``x[0]`` on the first slice, whose residual is 0 by definition)."""
    return torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


def residual_auxiliary_loss(
    network: nn.Module, aux: Mapping[str, torch.Tensor], image: torch.Tensor, target: torch.Tensor,
    annotated: torch.Tensor | None,
) -> torch.Tensor:
    """The registry's auxiliary-loss hook: the context-residual loss along the network's slice axis."""
    return conresnet_residual_loss(aux, target, network.slice_axis, annotated)


@register_network(
    "conresnet",
    paper=PAPER,
    description="ConResNet: segmentation + inter-slice context residual decoders, weight-standardised convs",
    constraints=TopologyConstraints(
        spatial_dims=(3,),
        max_stages=len(PAPER_FEATURES),
        fixed_features=PAPER_FEATURES,
        default_blocks_per_stage=PAPER_BLOCKS,
        kernel_size=3,
        block_settings=("blocks_per_stage",),
        min_slices=MIN_SLICES,
    ),
    auxiliary_loss=residual_auxiliary_loss,
)
def build_conresnet(
    topology: Topology,
    in_channels: int,
    n_classes: int,
    *,
    deep_supervision: bool = True,
    slice_axis: int = 0,
    dropout: float = FUSION_DROPOUT,
) -> nn.Module:
    """``deep_supervision`` is accepted for the common builder signature; ConResNet's design has no
    segmentation deep supervision, so training always returns one logits tensor in a list."""
    del deep_supervision
    network = ConResNet(topology, in_channels, n_classes, slice_axis=slice_axis, dropout=dropout)
    if "patch_size" in topology.extra:  # the training patch: refused before training starts
        check_slices(topology.extra["patch_size"], slice_axis)
    return network
