"""Sliding-window prediction on the preprocessed grid (reference.md §1.6, §4).

Tiles overlap by ``1 - step`` of the patch and are blended with a Gaussian importance map, so the
patch centre (where the network saw the most context) counts most. Unlike nnU-Net, tiles are run in
batches, several networks (the folds of a model) are averaged tile by tile (the same result as
averaging full maps, at a fraction of the memory), mirroring TTA is batched too, and the result is
handed out slab by slab along axis 0 as soon as no remaining tile touches it (``sliding_window_slabs``):
the float32 accumulator holds about one patch depth of rows, never all classes over the whole image.

Blending: the Gaussian is separable and the tile starts are a Cartesian product, so the sum of the
weights of all tiles covering a voxel factors into one 1D sum per axis. Each tile's contribution is
therefore divided by that sum as it is added (``blend_weights``): the accumulator holds the final
weighted mean, with no weight-sum array, no normalisation pass, and no tiny weights at tile corners
to underflow in float16 (nnU-Net floors its map instead). The function is pure: the same input gives
the same output, the networks are only called.

The arithmetic lives in ``tiling.py``, written once for torch tensors (here) and numpy arrays (the
onnxruntime engine, which needs no torch); this module supplies torch's array operations, devices,
autocast and channels-last.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from autoseg.inference import tiling
from autoseg.inference.tiling import (  # noqa: F401 - the sliding window's public names
    BATCH_VOXELS,
    DEFAULT_STEP,
    GAUSSIAN_SIGMA_SCALE,
    MAX_BATCH_TILES,
    Activation,
    mirror_combinations,
    tile_slices,
    tile_starts,
)


@functools.lru_cache(maxsize=32)
def gaussian_1d(size: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """``tiling.gaussian_1d`` as a float64 tensor (cached per size)."""
    return torch.tensor(tiling.gaussian_1d(size, sigma_scale))


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """The n-D Gaussian importance map over ``patch_size`` (outer product of ``gaussian_1d``), float32."""
    return tiling.outer([gaussian_1d(int(s), sigma_scale) for s in patch_size]).float()


@functools.lru_cache(maxsize=32)
def blend_weights(image_size: int, patch_size: int, step: float = DEFAULT_STEP) -> torch.Tensor:
    """``tiling.blend_weights`` as a float32 tensor (n_tiles, patch) (cached)."""
    return torch.tensor(tiling.blend_weights(image_size, patch_size, step))


def default_batch_tiles(patch_size: Sequence[int], device: torch.device | str = "cpu") -> int:
    """Tiles per forward pass on ``device`` (``tiling.default_batch_tiles``)."""
    return tiling.default_batch_tiles(patch_size, torch.device(device).type)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``; a no-op for None (and on devices without autocast)."""
    if dtype is None or device.type not in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def _default_accumulator_device(device: torch.device, n_bytes: int) -> torch.device:
    """Accumulate on the GPU when the accumulator takes at most half its free memory, else on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if n_bytes <= free // 2:
            return device
    return torch.device("cpu") if device.type == "cuda" else device


class TorchOps(tiling.ArrayOps):
    """torch tensors for ``tiling.window_slabs``: tiles on ``device``, networks under autocast."""

    def __init__(self, device: torch.device, autocast_dtype: torch.dtype | None, channels_last: bool,
                 accumulator_device: torch.device | str | None) -> None:
        self.device, self.autocast_dtype, self.channels_last = device, autocast_dtype, channels_last
        self.accumulator_device = accumulator_device

    def pad(self, data: torch.Tensor, widths: Sequence[tuple[int, int]]) -> torch.Tensor:
        flat = [w for pair in reversed(widths) for w in pair]  # F.pad wants the last axis first
        return torch.nn.functional.pad(data.float(), flat) if any(flat) else data.float()

    def weights(self, array: Any) -> torch.Tensor:
        return torch.tensor(array, device=self.device)

    def stack(self, arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(arrays)).to(self.device, non_blocking=True)

    def concatenate(self, arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(arrays))

    def flip(self, x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
        return torch.flip(x, list(axes))

    def run(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=_channels_last_format(x.ndim))
        with _autocast(self.device, self.autocast_dtype):
            return network(x)

    def activate(self, logits: torch.Tensor, activation: Activation) -> torch.Tensor:
        logits = logits.float()
        if activation == "softmax":
            return torch.softmax(logits, dim=1)
        if activation == "sigmoid":
            return torch.sigmoid(logits)
        return logits

    def accumulator(self, shape: Sequence[int]) -> torch.Tensor:
        n_bytes = math.prod(shape) * 4
        target = (torch.device(self.accumulator_device) if self.accumulator_device
                  else _default_accumulator_device(self.device, n_bytes))
        return torch.zeros(tuple(shape), dtype=torch.float32, device=target)

    def like(self, x: torch.Tensor, accumulator: torch.Tensor) -> torch.Tensor:
        return x.to(accumulator.device, torch.float32)


@torch.inference_mode()
def sliding_window_slabs(
    network: nn.Module | Sequence[nn.Module],
    data: torch.Tensor,
    patch_size: Sequence[int],
    *,
    step: float = DEFAULT_STEP,
    mirror_axes: Sequence[int] = (),
    batch_tiles: int | None = None,
    device: torch.device | str = "cpu",
    activation: Activation = "softmax",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    accumulator_device: torch.device | str | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Predict an image (C, *spatial) tile by tile, yielding its final prediction slab by slab along axis 0.

    Yields ``(row, slab)``: ``slab`` (n_outputs, rows, *rest) float32 holds rows ``row ..`` of the result,
    in order, together covering the image. ``slab`` is a view into the accumulator, valid until the
    generator resumes: copy what must outlive that. Tiles run in row-major order, so once every tile
    starting above row ``r`` is added, rows below ``r`` receive nothing more and are handed out: the
    accumulator is a ring of one patch depth of rows, not the whole image (14 classes of a 300x512x512 CT:
    0.9 GB of float32 at a 64-row patch, against 2.2 GB of float16 for the full grid). The arguments are
    those of ``sliding_window_predict``.
    """
    networks = [network] if callable(network) else list(network)
    device = torch.device(device)
    batch_tiles = default_batch_tiles(patch_size, device) if batch_tiles is None else batch_tiles
    ops = TorchOps(device, autocast_dtype, channels_last, accumulator_device)
    yield from tiling.window_slabs(ops, networks, data, patch_size, step=step, mirror_axes=mirror_axes,
                                   batch_tiles=batch_tiles, activation=activation)


@torch.inference_mode()
def sliding_window_predict(
    network: nn.Module | Sequence[nn.Module],
    data: torch.Tensor,
    patch_size: Sequence[int],
    *,
    step: float = DEFAULT_STEP,
    mirror_axes: Sequence[int] = (),
    batch_tiles: int | None = None,
    device: torch.device | str = "cpu",
    activation: Activation = "softmax",
    accumulator_dtype: torch.dtype = torch.float32,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    accumulator_device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predict a whole image (C, *spatial) tile by tile; return (n_outputs, *spatial) on the same grid.

    The whole result in one tensor, gathered from ``sliding_window_slabs``; a consumer that can take
    the result slab by slab (the export to the input grid) should use that instead.

    Args:
        network: one network, or several (the folds of a model) whose outputs are averaged. Each maps
            (B, C, *patch) to (B, n_outputs, *patch) logits; they must be in eval mode on ``device``.
        data: preprocessed image (C, *spatial), 2D or 3D, on any device.
        patch_size: tile size, one value per spatial axis.
        step: tile offset as a fraction of the patch (0.5: tiles overlap by half, reference §1.6).
        mirror_axes: spatial axes (0-based) for mirroring TTA; all 2^k combinations are averaged.
        batch_tiles: tiles per forward pass (default ``default_batch_tiles(patch_size, device)``); when an image
            has fewer tiles, mirrored copies fill the forward pass up to the same number of voxels.
        device: where the networks run.
        activation: "softmax" (classes) or "sigmoid" (regions) gives probabilities; "none" averages
            raw logits.
        accumulator_dtype: dtype of the returned tensor: float32, or float16 to halve its memory
            (reference §4); the rows still being summed are always float32.
        autocast_dtype: run the networks under autocast to this dtype (bf16, fp16) or None (float32);
            outputs are cast to float32 before the activation.
        channels_last: feed tiles in channels-last memory format (pays with GroupNorm / on CPU convs).
        accumulator_device: where the result and the rows being summed live; default the GPU when the
            result fits in half of its free memory, else the CPU.
    """
    result: torch.Tensor | None = None
    for row, slab in sliding_window_slabs(
        network, data, patch_size, step=step, mirror_axes=mirror_axes, batch_tiles=batch_tiles, device=device,
        activation=activation, autocast_dtype=autocast_dtype, channels_last=channels_last,
        accumulator_device=accumulator_device,
    ):
        if result is None:
            n_bytes = slab.shape[0] * math.prod(data.shape[1:]) * torch.finfo(accumulator_dtype).bits // 8
            target = (torch.device(accumulator_device) if accumulator_device
                      else _default_accumulator_device(torch.device(device), n_bytes))
            result = torch.empty((slab.shape[0], *data.shape[1:]), dtype=accumulator_dtype, device=target)
        result[:, row : row + slab.shape[1]] = slab
    assert result is not None
    return result
