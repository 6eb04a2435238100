"""Shifted-window self-attention for 2D and 3D (Swin, Liu et al. 2021), shared by Swin-UNet and nnFormer.

Tensors are channels-last, ``(B, *spatial, C)``, as in the papers' code. Windows are per axis, so one
implementation serves 2D and 3D and anisotropic windows. Attention itself is
``torch.nn.functional.scaled_dot_product_attention`` with the relative position bias and the shift
mask folded into one additive ``attn_mask``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Swin §3.2 / nnFormer: MLP hidden width = 4 x the embedding; one head per 32 channels (Swin-T: 96 / 3).
MLP_RATIO = 4
HEAD_CHANNELS = 32
# Swin: the relative position bias table is initialised from a truncated normal of std 0.02.
BIAS_INIT_STD = 0.02


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    # Explicit non-negative permutations: the ONNX exporter writes movedim's -1 as an invalid Transpose perm.
    return x.permute(0, *range(2, x.dim()), 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))


def heads_for(channels: int) -> int:
    """One head per ``HEAD_CHANNELS`` channels (at least one), a divisor of ``channels``."""
    heads = max(1, channels // HEAD_CHANNELS)
    while channels % heads:
        heads -= 1
    return heads


def group_blocks(x: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C)`` -> ``(B, *S / block, *block, C)``: each ``block``-sized tile's voxels together."""
    b, *spatial, c = x.shape
    dims = len(spatial)
    split: list[int] = [b]
    for s, w in zip(spatial, block):
        split += [s // w, w]
    order = [0] + [1 + 2 * a for a in range(dims)] + [2 + 2 * a for a in range(dims)] + [1 + 2 * dims]
    return x.reshape(*split, c).permute(order)


def ungroup_blocks(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`group_blocks`: ``(B, *counts, *block, C)`` -> ``(B, *counts x block, C)``."""
    dims = (x.dim() - 2) // 2
    order = [0] + [v for a in range(dims) for v in (1 + a, 1 + dims + a)] + [1 + 2 * dims]
    sizes = [x.shape[1 + a] * x.shape[1 + dims + a] for a in range(dims)]
    return x.permute(order).reshape(x.shape[0], *sizes, x.shape[-1])


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """``(B, *S, C)`` -> ``(B * n_windows, prod(window), C)``; each ``S[a]`` a multiple of ``window[a]``."""
    return group_blocks(x, window).reshape(-1, math.prod(window), x.shape[-1])


def window_reverse(windows: torch.Tensor, window: Sequence[int], batch: int, spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * n_windows, prod(window), C)`` -> ``(B, *S, C)``."""
    counts = [s // w for s, w in zip(spatial, window)]
    return ungroup_blocks(windows.reshape(batch, *counts, *window, windows.shape[-1]))


def shift_mask(spatial: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device) -> torch.Tensor:
    """``(n_windows, N, N)`` boolean: True where two tokens of a shifted window may attend.

    After the cyclic shift a window can hold voxels from opposite borders of the image; Swin labels
    the regions (per axis: before ``-window``, between ``-window`` and ``-shift``, after ``-shift``)
    and lets a token attend only within its own region.
    """
    labels = torch.zeros(1, *spatial, 1, device=device)
    for axis, (s, w, h) in enumerate(zip(spatial, window, shift)):
        if h == 0:
            continue
        region = torch.zeros(s, device=device)
        region[s - w : s - h] = 1
        region[s - h :] = 2
        shape = [1] * (len(spatial) + 2)
        shape[axis + 1] = s
        labels = labels * 3 + region.reshape(shape)
    ids = window_partition(labels, window).squeeze(-1)
    return ids[:, :, None] == ids[:, None, :]


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """``(N, N)`` index into the bias table of every (query, key) offset inside a window."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros(relative.shape[1:], dtype=torch.long)
    for axis, w in enumerate(window):
        index = index * (2 * w - 1) + relative[axis] + w - 1
    return index


class WindowAttention(nn.Module):
    """Multi-head attention inside windows with a learned relative position bias (``window=None``:
    global attention without bias). ``cross=True`` takes keys and values from a second input
    (nnFormer's skip attention)."""

    def __init__(self, dim: int, heads: int, window: Sequence[int] | None, cross: bool = False) -> None:
        super().__init__()
        self.heads, self.cross = heads, cross
        if cross:
            self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table: nn.Parameter | None = None
        if window is not None:
            self.bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in window), heads))
            nn.init.trunc_normal_(self.bias_table, std=BIAS_INIT_STD)
            self.register_buffer("bias_index", relative_position_index(window), persistent=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:-1], self.heads, -1).transpose(-2, -3)  # (..., heads, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``, ``context``: ``(B, n_windows, N, C)``; ``mask``: ``(n_windows, N, N)`` booleans."""
        if self.cross:
            assert context is not None
            q = self._split(self.q(x))
            k, v = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))
        else:
            q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
        bias = None
        if self.bias_table is not None:
            bias = self.bias_table[self.bias_index].permute(2, 0, 1)  # (heads, N, N)
            if mask is not None:
                bias = bias + torch.zeros_like(mask, dtype=bias.dtype).masked_fill(~mask, float("-inf"))[:, None]
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(-2, -3).flatten(-2))


class TransformerBlock(nn.Module):
    """Swin block: (shifted-)window attention and an MLP, each pre-LayerNorm with a residual.

    ``window=None`` attends over all tokens (nnFormer's global bottleneck). With ``cross=True`` the
    forward takes ``context`` (the encoder skip): queries from ``x``, keys/values from ``context``, and
    the residual is ``x + context`` as in nnFormer's skip attention. The shift is half the window on
    every axis the feature map spans more than one window (Swin disables it otherwise).
    """

    def __init__(self, dim: int, heads: int, window: Sequence[int] | None, shifted: bool, cross: bool = False) -> None:
        super().__init__()
        self.window = list(window) if window is not None else None
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.attn = WindowAttention(dim, heads, window, cross)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Linear(MLP_RATIO * dim, dim))

    def _attend(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, *spatial, c = x.shape
        if self.window is None:
            flat = context.reshape(b, 1, -1, c) if context is not None else None
            return self.attn(x.reshape(b, 1, -1, c), flat).reshape(x.shape)
        shift = [w // 2 if self.shifted and s > w else 0 for s, w in zip(spatial, self.window)]
        axes = list(range(1, len(spatial) + 1))
        mask = None
        if any(shift):
            x = torch.roll(x, [-h for h in shift], axes)
            context = torch.roll(context, [-h for h in shift], axes) if context is not None else None
            mask = shift_mask(spatial, self.window, shift, x.device)

        def windows(t: torch.Tensor) -> torch.Tensor:
            return window_partition(t, self.window).reshape(b, -1, math.prod(self.window), c)

        out = self.attn(windows(x), windows(context) if context is not None else None, mask)
        out = window_reverse(out.reshape(-1, math.prod(self.window), c), self.window, b, spatial)
        return torch.roll(out, shift, axes) if any(shift) else out

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_context is not None:
            assert context is not None
            x = x + context + self._attend(self.norm1(x), self.norm_context(context))
        else:
            x = x + self._attend(self.norm1(x), None)
        return x + self.mlp(self.norm2(x))


def space_to_channels(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Swin's patch merging layout: ``(B, *S, C)`` -> ``(B, *S / factor, prod(factor) * C)``."""
    grouped = group_blocks(x, factor)
    return grouped.reshape(*grouped.shape[: x.dim() - 1], -1)


def channels_to_space(x: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Swin-UNet's patch expanding layout, the inverse of :func:`space_to_channels`."""
    return ungroup_blocks(x.reshape(*x.shape[:-1], *factor, x.shape[-1] // math.prod(factor)))


def transformer_stage(dim: int, depth: int, window: Sequence[int] | None, first_cross: bool = False) -> nn.ModuleList:
    """``depth`` blocks alternating regular and shifted windows (Swin's pairs)."""
    return nn.ModuleList(
        TransformerBlock(dim, heads_for(dim), window, shifted=i % 2 == 1, cross=first_cross and i == 0)
        for i in range(depth)
    )
