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
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

# reference.md §1.6: tiles advance by half a patch.
DEFAULT_STEP = 0.5
# reference.md §1.6: the Gaussian importance map has sigma = patch / 8 on every axis.
GAUSSIAN_SIGMA_SCALE = 1.0 / 8.0
# Voxels per forward pass by default. On a GPU, 4 tiles of 64^3 (16 of 128^2) fill the matrix units
# and keep activations within a few hundred MB. On a CPU, batches beyond about 2 small tiles run slower
# per tile (activations fall out of the caches): nnU-Net's Hippocampus network, 40x56x40 tiles, bf16
# took 1.9 s for 27 tiles at 2 per pass, 2.7 s at 8 (docs/benchmarks.md). MAX_BATCH_TILES caps tiny patches.
BATCH_VOXELS = {"cuda": 4 * 64**3, "cpu": 180_000}
MAX_BATCH_TILES = 16

Activation = Literal["softmax", "sigmoid", "none"]


def _outer(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Outer product of 1D tensors: (n0,), (n1,), ... -> (n0, n1, ...)."""
    return functools.reduce(lambda a, b: a[..., None] * b, rows)


@functools.lru_cache(maxsize=32)
def gaussian_1d(size: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """The Gaussian along one patch axis: centred, sigma = ``size * sigma_scale``, peak 1 (float64).

    Cached per size. The n-D importance map is the outer product of one of these per axis.
    """
    centre = (size - 1) / 2.0
    sigma = size * sigma_scale
    coords = torch.arange(size, dtype=torch.float64)
    gaussian = torch.exp(-((coords - centre) ** 2) / (2.0 * sigma**2))
    return gaussian / gaussian.max()


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """The n-D Gaussian importance map over ``patch_size`` (outer product of ``gaussian_1d``), float32."""
    return _outer([gaussian_1d(int(s), sigma_scale) for s in patch_size]).float()


@functools.lru_cache(maxsize=32)
def blend_weights(image_size: int, patch_size: int, step: float = DEFAULT_STEP) -> torch.Tensor:
    """Per tile along one axis, the Gaussian divided by the Gaussians' sum over all tiles, (n_tiles, patch).

    The product over axes of one row per axis is a tile's share of each of its voxels; the shares of
    all tiles covering a voxel sum to 1.
    """
    starts = tile_starts(image_size, patch_size, step)
    gaussian = gaussian_1d(patch_size)
    total = torch.zeros(image_size, dtype=torch.float64)
    for start in starts:
        total[start : start + patch_size] += gaussian
    return torch.stack([gaussian / total[start : start + patch_size] for start in starts]).float()


def tile_starts(image_size: int, patch_size: int, step: float = DEFAULT_STEP) -> list[int]:
    """Start positions of the tiles along one axis: evenly spread, at most ``step * patch`` (and at least
    one voxel) apart.

    The first tile starts at 0 and the last ends at the image border, so every voxel is covered.
    ``image_size`` must be >= ``patch_size`` (smaller images are padded first).
    """
    if image_size < patch_size:
        raise ValueError(f"image size {image_size} is smaller than the patch {patch_size}; pad first")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    span = image_size - patch_size
    # At least one voxel apart: a one-voxel patch (2D models' slice axis) must not repeat slices.
    n_tiles = math.ceil(span / max(1.0, patch_size * step)) + 1 if span > 0 else 1
    if n_tiles == 1:
        return [0]
    stride = span / (n_tiles - 1)
    return [int(round(i * stride)) for i in range(n_tiles)]


def tile_slices(
    image_shape: Sequence[int], patch_size: Sequence[int], step: float = DEFAULT_STEP
) -> list[tuple[slice, ...]]:
    """Spatial slices of every tile (row-major over the axes)."""
    per_axis = [tile_starts(s, p, step) for s, p in zip(image_shape, patch_size)]
    return [
        tuple(slice(start, start + p) for start, p in zip(starts, patch_size))
        for starts in itertools.product(*per_axis)
    ]


def _tile_indices(image_shape: Sequence[int], patch_size: Sequence[int], step: float) -> list[tuple[int, ...]]:
    """Per tile, its index along each axis, in the order of ``tile_slices``."""
    counts = [len(tile_starts(s, p, step)) for s, p in zip(image_shape, patch_size)]
    return list(itertools.product(*(range(n) for n in counts)))


def default_batch_tiles(patch_size: Sequence[int], device: torch.device | str = "cpu") -> int:
    """Tiles per forward pass: ``BATCH_VOXELS`` of the device type worth of tiles (other accelerators
    as CUDA), at least 1, at most ``MAX_BATCH_TILES``."""
    voxels = BATCH_VOXELS["cpu" if torch.device(device).type == "cpu" else "cuda"]
    return max(1, min(MAX_BATCH_TILES, voxels // math.prod(int(p) for p in patch_size)))


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial mirror axes (2^k, the empty one first): the TTA passes."""
    axes = tuple(sorted(set(int(a) for a in mirror_axes)))
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def _pad_to_patch(data: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad spatial axes smaller than the patch with zeros (centred); return the crop that undoes it."""
    spatial = data.shape[1:]
    pads = [max(p - s, 0) for s, p in zip(spatial, patch_size)]
    if not any(pads):
        return data, tuple(slice(None) for _ in spatial)
    before = [p // 2 for p in pads]
    flat: list[int] = []
    for b, p in zip(reversed(before), reversed(pads)):  # F.pad wants the last axis first
        flat += [b, p - b]
    padded = torch.nn.functional.pad(data, flat)
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    return padded, crop


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``; a no-op for None (and on devices without autocast)."""
    if dtype is None or device.type not in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _activate(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    logits = logits.float()
    if activation == "softmax":
        return torch.softmax(logits, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def _predict_batch(
    networks: Sequence[nn.Module],
    batch: torch.Tensor,
    mirror_passes: Sequence[tuple[int, ...]],
    activation: Activation,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
    passes_per_forward: int = 1,
) -> torch.Tensor:
    """Mean over networks and mirror passes of the activated outputs of one batch of tiles.

    ``passes_per_forward`` mirrored copies of the batch go through the network in one forward pass
    (an image of one tile still fills the batch that way).
    """
    total: torch.Tensor | None = None
    n = batch.shape[0]
    for network in networks:
        for first in range(0, len(mirror_passes), passes_per_forward):
            group = mirror_passes[first : first + passes_per_forward]
            x = torch.cat([torch.flip(batch, [a + 2 for a in axes]) if axes else batch for axes in group])
            if channels_last:
                x = x.contiguous(memory_format=_channels_last_format(x.ndim))
            with _autocast(batch.device, autocast_dtype):
                out = network(x)
            out = _activate(out, activation)
            for k, axes in enumerate(group):
                part = out[k * n : (k + 1) * n]
                part = torch.flip(part, [a + 2 for a in axes]) if axes else part
                # Out of place: a network may return (a view of) its input.
                total = part if total is None else total + part
    assert total is not None
    return total / (len(networks) * len(mirror_passes))


def _channels_last_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def _default_accumulator_device(device: torch.device, n_bytes: int) -> torch.device:
    """Accumulate on the GPU when the accumulator takes at most half its free memory, else on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if n_bytes <= free // 2:
            return device
    return torch.device("cpu") if device.type == "cuda" else device


def _batches(slices: Sequence[tuple[slice, ...]], batch_tiles: int) -> list[range]:
    """Consecutive tiles, ``batch_tiles`` at most per batch; with a patch deeper than one row a batch
    never spans two rows of tiles, so the rows in flight never exceed one patch depth."""
    split_rows = slices[0][0].stop - slices[0][0].start > 1
    batches, first = [], 0
    for i in range(1, len(slices) + 1):
        new_row = i < len(slices) and split_rows and slices[i][0].start != slices[first][0].start
        if i == len(slices) or i - first == batch_tiles or new_row:
            batches.append(range(first, i))
            first = i
    return batches


def _buffer_rows(slices: Sequence[tuple[slice, ...]], batches: Sequence[range]) -> int:
    """Rows (axis 0) the streaming accumulator must hold: from the first row a batch may still touch
    (its first tile's start: every earlier row is final by then) to the end of its last tile."""
    return max(slices[b[-1]][0].stop - slices[b[0]][0].start for b in batches)


def _ring(start: int, stop: int, depth: int) -> list[tuple[slice, int]]:
    """Grid rows ``[start, stop)`` in a ring buffer of ``depth`` rows: (buffer rows, first grid row) pieces."""
    pieces, row = [], start
    while row < stop:
        at = row % depth
        n = min(stop - row, depth - at)
        pieces.append((slice(at, at + n), row))
        row += n
    return pieces


def _check_arguments(networks: Sequence[nn.Module], data: torch.Tensor, patch_size: Sequence[int],
                     mirror_axes: Sequence[int], batch_tiles: int) -> None:
    if not networks:
        raise ValueError("sliding_window_predict needs at least one network")
    spatial_dims = data.ndim - 1
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch size {tuple(patch_size)} does not match the data's {spatial_dims} spatial axes")
    if any(a < 0 or a >= spatial_dims for a in mirror_axes):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} out of range for {spatial_dims} spatial axes")
    if batch_tiles < 1:
        raise ValueError(f"batch_tiles must be >= 1, got {batch_tiles}")


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
    networks = [network] if isinstance(network, nn.Module) else list(network)
    batch_tiles = default_batch_tiles(patch_size, device) if batch_tiles is None else batch_tiles
    batch_voxels = batch_tiles * math.prod(int(p) for p in patch_size)  # per forward pass, mirror copies included
    _check_arguments(networks, data, patch_size, mirror_axes, batch_tiles)
    device = torch.device(device)
    patch = tuple(int(p) for p in patch_size)
    padded, crop = _pad_to_patch(data.float(), patch)
    spatial = tuple(padded.shape[1:])
    slices = tile_slices(spatial, patch, step)
    indices = _tile_indices(spatial, patch, step)
    axis_weights = [blend_weights(s, p, step).to(device) for s, p in zip(spatial, patch)]
    passes = mirror_combinations(mirror_axes)
    batches = _batches(slices, batch_tiles)
    depth = _buffer_rows(slices, batches)
    first_row, n_rows = crop[0].start or 0, data.shape[1]

    buffer: torch.Tensor | None = None  # ring buffer: grid row r lives in buffer row r % depth
    base = 0  # every grid row above it has been handed out
    for number, batch_range in enumerate(batches):
        chunk = [slices[i] for i in batch_range]
        batch = torch.stack([padded[(slice(None), *s)] for s in chunk]).to(device, non_blocking=True)
        together = max(1, min(len(passes), batch_voxels // (len(chunk) * math.prod(patch))))
        prediction = _predict_batch(networks, batch, passes, activation, autocast_dtype, channels_last, together)
        shares = torch.stack([_outer([w[i] for w, i in zip(axis_weights, indices[t])]) for t in batch_range])
        prediction = prediction * shares[:, None]
        if buffer is None:
            shape = (prediction.shape[1], depth, *spatial[1:])
            n_bytes = math.prod(shape) * 4
            target = torch.device(accumulator_device) if accumulator_device else _default_accumulator_device(device, n_bytes)
            buffer = torch.zeros(shape, dtype=torch.float32, device=target)
        prediction = prediction.to(buffer.device, torch.float32)
        for tile, s in zip(prediction, chunk):
            for rows, row in _ring(s[0].start, s[0].stop, depth):
                length = rows.stop - rows.start
                buffer[(slice(None), rows, *s[1:])] += tile[:, row - s[0].start : row - s[0].start + length]
        final = slices[batches[number + 1][0]][0].start if number + 1 < len(batches) else spatial[0]
        # Hand out the final rows that lie inside the image (not in the padding), then clear them.
        for rows, row in _ring(max(base, first_row), min(final, first_row + n_rows), depth):
            yield row - first_row, buffer[(slice(None), rows, *crop[1:])]
        for rows, _ in _ring(base, final, depth):
            buffer[:, rows] = 0
        base = max(base, final)


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
