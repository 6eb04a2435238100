"""The sliding window's arithmetic, once for both engines: torch (``sliding_window.py``) and numpy.

Tile positions, Gaussian blend weights, mirroring TTA, fold averaging and the ring buffer that hands
the result out slab by slab are written here against a few array operations (``ArrayOps``); torch
tensors and numpy arrays each supply them. ``numpy_sliding_window_slabs`` runs networks that take and
return numpy arrays (onnxruntime sessions), so a deployment predicts without torch installed. This
module imports numpy only (not torch, not scipy): see ``sliding_window.py``'s docstring for the method.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

# reference.md §1.6: tiles advance by half a patch.
DEFAULT_STEP = 0.5
# nnU-Net takes any tile_step_size in (0, 1]; the tiles grow as (0.5 / step) ** dims, so below this a
# prediction takes over 125x the default's time in 3D (5x the tiles per axis) for no measurable gain.
MIN_STEP = 0.1
# reference.md §1.6: the Gaussian importance map has sigma = patch / 8 on every axis.
GAUSSIAN_SIGMA_SCALE = 1.0 / 8.0
# Voxels per forward pass by default. On a GPU, 4 tiles of 64^3 (16 of 128^2) fill the matrix units
# and keep activations within a few hundred MB. On a CPU, batches beyond about 2 small tiles run slower
# per tile (activations fall out of the caches): nnU-Net's Hippocampus network, 40x56x40 tiles, bf16
# took 1.9 s for 27 tiles at 2 per pass, 2.7 s at 8 (docs/benchmarks.md). MAX_BATCH_TILES caps tiny patches.
BATCH_VOXELS = {"cuda": 4 * 64**3, "cpu": 180_000}
MAX_BATCH_TILES = 16


def check_step(step: float, error: Callable[[str], Exception] = ValueError, name: str = "step") -> None:
    """Raise ``error`` for a sliding-window ``step`` (a fraction of the patch) outside (0, 1], or below
    ``MIN_STEP``, where the tiles multiply by ``(DEFAULT_STEP / step) ** dims``: ``--step 0.001`` was
    accepted and ran for days. ``name`` is the setting as the caller spelled it (``--step``)."""
    if not 0 < step <= 1:
        raise error(f"{name} {step:g}: must be in (0, 1] (a fraction of the patch; 0.5 overlaps tiles by half)")
    if step < MIN_STEP:
        per_axis = DEFAULT_STEP / step
        raise error(
            f"{name} {step:g}: tiles would start {step:g} of a patch apart, up to {1 / step:.0f} per patch length on "
            f"each axis: {per_axis:.3g}x the tiles of the default {DEFAULT_STEP} per axis, {per_axis ** 3:.3g}x in 3D; "
            f"give a step from {MIN_STEP} to 1"
        )


def check_batch_tiles(batch_tiles: int | None, error: Callable[[str], Exception] = ValueError) -> None:
    """Raise ``error`` for tiles per forward pass (``None``: the default from the patch) that are not a whole
    number of at least 1; callers check it before the first case, not inside every sliding window."""
    if batch_tiles is not None and (isinstance(batch_tiles, bool) or not isinstance(batch_tiles, numbers.Integral) or batch_tiles < 1):
        raise error(f"batch_tiles {batch_tiles!r}: give a whole number of tiles per forward pass, at least 1 (or None for the default)")


Activation = Literal["softmax", "sigmoid", "none"]
Network = Callable[[Any], Any]


def outer(rows: Sequence[Any]) -> Any:
    """Outer product of 1D arrays (numpy or torch): (n0,), (n1,), ... -> (n0, n1, ...)."""
    return functools.reduce(lambda a, b: a[..., None] * b, rows)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # cached: a caller must not change what the next one gets
    return array


@functools.lru_cache(maxsize=32)
def gaussian_1d(size: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """The Gaussian along one patch axis: centred, sigma = ``size * sigma_scale``, peak 1 (float64).

    Cached per size. The n-D importance map is the outer product of one of these per axis.
    """
    centre = (size - 1) / 2.0
    sigma = size * sigma_scale
    gaussian = np.exp(-((np.arange(size, dtype=np.float64) - centre) ** 2) / (2.0 * sigma**2))
    return _read_only(gaussian / gaussian.max())


@functools.lru_cache(maxsize=32)
def blend_weights(image_size: int, patch_size: int, step: float = DEFAULT_STEP) -> np.ndarray:
    """Per tile along one axis, the Gaussian divided by the Gaussians' sum over all tiles, (n_tiles, patch).

    The product over axes of one row per axis is a tile's share of each of its voxels; the shares of
    all tiles covering a voxel sum to 1. float32, cached.
    """
    starts = tile_starts(image_size, patch_size, step)
    gaussian = gaussian_1d(patch_size)
    total = np.zeros(image_size, dtype=np.float64)
    for start in starts:
        total[start : start + patch_size] += gaussian
    return _read_only(np.stack([gaussian / total[start : start + patch_size] for start in starts]).astype(np.float32))


def tile_starts(image_size: int, patch_size: int, step: float = DEFAULT_STEP) -> list[int]:
    """Start positions of the tiles along one axis: evenly spread, at most ``step * patch`` (and at least
    one voxel) apart.

    The first tile starts at 0 and the last ends at the image border, so every voxel is covered.
    ``image_size`` must be >= ``patch_size`` (smaller images are padded first).
    """
    if image_size < patch_size:
        raise ValueError(f"image size {image_size} is smaller than the patch {patch_size}; pad first")
    check_step(step)
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


def tile_indices(image_shape: Sequence[int], patch_size: Sequence[int], step: float) -> list[tuple[int, ...]]:
    """Per tile, its index along each axis, in the order of ``tile_slices``."""
    counts = [len(tile_starts(s, p, step)) for s, p in zip(image_shape, patch_size)]
    return list(itertools.product(*(range(n) for n in counts)))


def default_batch_tiles(patch_size: Sequence[int], device_type: str = "cpu") -> int:
    """Tiles per forward pass: ``BATCH_VOXELS`` of the device type worth of tiles (other accelerators
    as CUDA), at least 1, at most ``MAX_BATCH_TILES``."""
    voxels = BATCH_VOXELS["cpu" if device_type == "cpu" else "cuda"]
    return max(1, min(MAX_BATCH_TILES, voxels // math.prod(int(p) for p in patch_size)))


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial mirror axes (2^k, the empty one first): the TTA passes."""
    axes = tuple(sorted(set(int(a) for a in mirror_axes)))
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def padding(spatial: Sequence[int], patch_size: Sequence[int]) -> tuple[list[tuple[int, int]], tuple[slice, ...]]:
    """Zero padding (before, after) per spatial axis that brings axes smaller than the patch up to it
    (centred), and the crop that undoes it."""
    pads = [max(p - s, 0) for s, p in zip(spatial, patch_size)]
    widths = [(p // 2, p - p // 2) for p in pads]
    crop = tuple(slice(before, before + s) for (before, _), s in zip(widths, spatial))
    return widths, crop


def batches(slices: Sequence[tuple[slice, ...]], batch_tiles: int) -> list[range]:
    """Consecutive tiles, ``batch_tiles`` at most per batch; with a patch deeper than one row a batch
    never spans two rows of tiles, so the rows in flight never exceed one patch depth."""
    split_rows = slices[0][0].stop - slices[0][0].start > 1
    found, first = [], 0
    for i in range(1, len(slices) + 1):
        new_row = i < len(slices) and split_rows and slices[i][0].start != slices[first][0].start
        if i == len(slices) or i - first == batch_tiles or new_row:
            found.append(range(first, i))
            first = i
    return found


def buffer_rows(slices: Sequence[tuple[slice, ...]], batch_ranges: Sequence[range]) -> int:
    """Rows (axis 0) the streaming accumulator must hold: from the first row a batch may still touch
    (its first tile's start: every earlier row is final by then) to the end of its last tile."""
    return max(slices[b[-1]][0].stop - slices[b[0]][0].start for b in batch_ranges)


def ring(start: int, stop: int, depth: int) -> list[tuple[slice, int]]:
    """Grid rows ``[start, stop)`` in a ring buffer of ``depth`` rows: (buffer rows, first grid row) pieces."""
    pieces, row = [], start
    while row < stop:
        at = row % depth
        n = min(stop - row, depth - at)
        pieces.append((slice(at, at + n), row))
        row += n
    return pieces


def check_arguments(networks: Sequence[Network], spatial_dims: int, patch_size: Sequence[int],
                    mirror_axes: Sequence[int], batch_tiles: int) -> None:
    if not networks:
        raise ValueError("sliding_window_predict needs at least one network")
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch size {tuple(patch_size)} does not match the data's {spatial_dims} spatial axes")
    if any(a < 0 or a >= spatial_dims for a in mirror_axes):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} out of range for {spatial_dims} spatial axes")
    check_batch_tiles(batch_tiles)


class ArrayOps:
    """The array operations the sliding window needs; numpy's here, torch's in ``sliding_window.py``."""

    def pad(self, data: Any, widths: Sequence[tuple[int, int]]) -> Any:
        """``data`` (C, *spatial) as float32, zero-padded by ``widths`` per spatial axis."""
        data = np.asarray(data, dtype=np.float32)
        return np.pad(data, [(0, 0), *widths]) if any(sum(w) for w in widths) else data

    def weights(self, array: np.ndarray) -> Any:
        """A float32 numpy array where the tiles are computed."""
        return array

    def stack(self, arrays: Sequence[Any]) -> Any:
        return np.stack(arrays)

    def concatenate(self, arrays: Sequence[Any]) -> Any:
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def flip(self, x: Any, axes: Sequence[int]) -> Any:
        return np.flip(x, tuple(axes))

    def run(self, network: Network, x: Any) -> Any:
        """The network's logits for a batch ``x`` (B, C, *patch)."""
        return network(np.ascontiguousarray(x))

    def activate(self, logits: Any, activation: Activation) -> Any:
        logits = np.asarray(logits, dtype=np.float32)
        if activation == "softmax":
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            return exp / exp.sum(axis=1, keepdims=True)
        if activation == "sigmoid":
            from scipy.special import expit  # scipy only when a model has regions

            return expit(logits)
        return logits

    def accumulator(self, shape: Sequence[int]) -> Any:
        """Zeroed float32 rows being summed."""
        return np.zeros(shape, dtype=np.float32)

    def like(self, x: Any, accumulator: Any) -> Any:
        """``x`` as float32 where ``accumulator`` lives."""
        return x.astype(np.float32, copy=False)


def predict_batch(
    ops: ArrayOps,
    networks: Sequence[Network],
    batch: Any,
    mirror_passes: Sequence[tuple[int, ...]],
    activation: Activation,
    passes_per_forward: int = 1,
) -> Any:
    """Mean over networks and mirror passes of the activated outputs of one batch of tiles.

    ``passes_per_forward`` mirrored copies of the batch go through the network in one forward pass
    (an image of one tile still fills the batch that way).
    """
    total = None
    n = batch.shape[0]
    for network in networks:
        for first in range(0, len(mirror_passes), passes_per_forward):
            group = mirror_passes[first : first + passes_per_forward]
            x = ops.concatenate([ops.flip(batch, [a + 2 for a in axes]) if axes else batch for axes in group])
            out = ops.activate(ops.run(network, x), activation)
            for k, axes in enumerate(group):
                part = out[k * n : (k + 1) * n]
                part = ops.flip(part, [a + 2 for a in axes]) if axes else part
                # Out of place: a network may return (a view of) its input.
                total = part if total is None else total + part
    assert total is not None
    return total / (len(networks) * len(mirror_passes))


def window_slabs(
    ops: ArrayOps,
    networks: Sequence[Network],
    data: Any,
    patch_size: Sequence[int],
    *,
    step: float,
    mirror_axes: Sequence[int],
    batch_tiles: int,
    activation: Activation,
) -> Iterator[tuple[int, Any]]:
    """The sliding window over ``data`` (C, *spatial) in ``ops``' arrays; yields ``(row, slab)`` as
    ``sliding_window.sliding_window_slabs`` documents (``slab`` is a view, valid until the next step)."""
    check_arguments(networks, data.ndim - 1, patch_size, mirror_axes, batch_tiles)
    patch = tuple(int(p) for p in patch_size)
    batch_voxels = batch_tiles * math.prod(patch)  # per forward pass, mirror copies included
    widths, crop = padding(data.shape[1:], patch)
    padded = ops.pad(data, widths)
    spatial = tuple(padded.shape[1:])
    slices = tile_slices(spatial, patch, step)
    indices = tile_indices(spatial, patch, step)
    axis_weights = [ops.weights(blend_weights(s, p, step)) for s, p in zip(spatial, patch)]
    passes = mirror_combinations(mirror_axes)
    batch_ranges = batches(slices, batch_tiles)
    depth = buffer_rows(slices, batch_ranges)
    first_row, n_rows = crop[0].start, data.shape[1]

    buffer = None  # ring buffer: grid row r lives in buffer row r % depth
    base = 0  # every grid row above it has been handed out
    for number, batch_range in enumerate(batch_ranges):
        chunk = [slices[i] for i in batch_range]
        batch = ops.stack([padded[(slice(None), *s)] for s in chunk])
        together = max(1, min(len(passes), batch_voxels // (len(chunk) * math.prod(patch))))
        prediction = predict_batch(ops, networks, batch, passes, activation, together)
        shares = ops.stack([outer([w[i] for w, i in zip(axis_weights, indices[t])]) for t in batch_range])
        prediction = prediction * shares[:, None]
        if buffer is None:
            buffer = ops.accumulator((prediction.shape[1], depth, *spatial[1:]))
        prediction = ops.like(prediction, buffer)
        for tile, s in zip(prediction, chunk):
            for rows, row in ring(s[0].start, s[0].stop, depth):
                length = rows.stop - rows.start
                buffer[(slice(None), rows, *s[1:])] += tile[:, row - s[0].start : row - s[0].start + length]
        final = slices[batch_ranges[number + 1][0]][0].start if number + 1 < len(batch_ranges) else spatial[0]
        # Hand out the final rows that lie inside the image (not in the padding), then clear them.
        for rows, row in ring(max(base, first_row), min(final, first_row + n_rows), depth):
            yield row - first_row, buffer[(slice(None), rows, *crop[1:])]
        for rows, _ in ring(base, final, depth):
            buffer[:, rows] = 0
        base = max(base, final)


def numpy_sliding_window_slabs(
    network: Network | Sequence[Network],
    data: np.ndarray,
    patch_size: Sequence[int],
    *,
    step: float = DEFAULT_STEP,
    mirror_axes: Sequence[int] = (),
    batch_tiles: int | None = None,
    activation: Activation = "softmax",
) -> Iterator[tuple[int, np.ndarray]]:
    """``sliding_window.sliding_window_slabs`` for networks that map numpy (B, C, *patch) float32 to
    (B, n_outputs, *patch) logits (onnxruntime sessions), on the CPU, in float32, without torch."""
    networks = [network] if callable(network) else list(network)
    batch_tiles = default_batch_tiles(patch_size, "cpu") if batch_tiles is None else batch_tiles
    yield from window_slabs(ArrayOps(), networks, data, patch_size, step=step, mirror_axes=mirror_axes,
                            batch_tiles=batch_tiles, activation=activation)
