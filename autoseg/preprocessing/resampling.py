"""Resampling of images, labels and probabilities between spacings (reference §1.3, §1.4).

Images: spline of ``image_order`` (3). Labels: each class's one-hot mask is interpolated with
``label_order`` (1) and every voxel takes the class of highest weight, so no label value is ever invented.
When the spacing ratio exceeds ``separate_z_anisotropy_threshold``, the low-resolution axis is resampled
on its own with ``order_z`` after the in-plane axes.

Memory: one channel / one class at a time, float32 throughout (scipy's own spline prefilter would make a
float64 copy, so the prefilter is run here, in place on a float32 padded copy). Pixel centres are aligned (like
``skimage.transform.resize``): output voxel ``o`` samples input coordinate ``(o + 0.5) * in / out - 0.5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.planning import constants as C
from autoseg.planning.rules import separate_z_axis

Shape = Sequence[int]
LABEL_SLAB_VOXELS = 16 * 2**20  # output voxels per label slab: bounds the per-class work arrays
SPLINE_PAD = 12  # edge padding before the spline prefilter (scipy uses the same for mode "nearest")


@dataclass(frozen=True)
class ResamplingScheme:
    """How to move between two grids: the orders, if any, the axis resampled on its own, and whether image
    slices along it are clipped each to its own range after the in-plane spline (``resample_data``)."""

    order: int
    order_z: int
    separate_axis: int | None
    clip_slices: bool = False


def new_shape(shape: Shape, old_spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape after resampling ``shape`` from ``old_spacing`` to ``new_spacing`` (rounded, at least 1)."""
    return tuple(
        max(1, int(round(s * o / n))) for s, o, n in zip(shape, old_spacing, new_spacing)
    )


def implausible_resampling(
    shape: Shape, spacing: Sequence[float], target: Sequence[float]
) -> tuple[str, tuple[int, ...]] | None:
    """(``"voxels"`` or ``"shrink"``, the resampled shape) when resampling ``shape`` from ``spacing`` to
    ``target`` gives more than ``MAX_RESAMPLED_VOXELS`` voxels, or shrinks an axis of more than one voxel
    over ``MAX_CASE_DOWNSAMPLING`` times: no real image does (a header in microns or metres among
    millimetres), so plan and predict refuse it, each in its words. None for a plausible resampling."""
    resampled = new_shape(shape, spacing, target)
    if math.prod(resampled) > C.MAX_RESAMPLED_VOXELS:
        return "voxels", resampled
    if any(t / s > C.MAX_CASE_DOWNSAMPLING for s, t, n in zip(spacing, target, shape) if n > 1):
        return "shrink", resampled
    return None


def scheme_for(
    resampling: dict, case_spacing: Sequence[float], target_spacing: Sequence[float], kind: str,
    spatial_dims: int = 3,
) -> ResamplingScheme:
    """The scheme for ``kind`` ('image' or 'label') from a configuration's ``resampling`` dict.

    The separate axis is decided from the case's spacing and the configuration's target spacing in that
    order (``planning.rules.separate_z_axis``), whichever direction is resampled, so the inverse uses
    the same axis as the forward pass. 2D configurations resample each slice in-plane only: axis 0 is
    always separated (and unchanged). Slices are clipped one by one where nnU-Net separates an axis (it
    resizes each slice on its own then), so a 2D configuration of isotropic data clips whole channels.
    """
    order = int(resampling["image_order" if kind == "image" else "label_order"])
    order_z = int(resampling["order_z"])
    threshold = float(resampling["separate_z_anisotropy_threshold"])
    axis = separate_z_axis(case_spacing, target_spacing, threshold)
    return ResamplingScheme(order, order_z, 0 if spatial_dims == 2 else axis, clip_slices=axis is not None)


def _affine(x: np.ndarray, matrix: Sequence[float], offset: Sequence[float], shape: Shape, order: int) -> np.ndarray:
    """``ndimage.affine_transform`` (diagonal matrix) into float32, the spline prefilter run in float32.

    Like scipy's own prefilter for mode 'nearest', the input is edge-padded first so the spline sees a
    constant continuation beyond the border. Orders <= 1 read ``x`` in its own dtype (uint8 one-hot
    masks stay 1 byte per voxel).
    """
    offset = np.asarray(offset, dtype=float)
    if order > 1:
        x = np.pad(np.asarray(x, dtype=np.float32), SPLINE_PAD, mode="edge")
        ndimage.spline_filter(x, order=order, output=x, mode="mirror")  # in place: one copy, not two
        offset = offset + SPLINE_PAD
    return ndimage.affine_transform(
        x, np.asarray(matrix, dtype=float), offset=offset, output_shape=tuple(shape),
        output=np.float32, order=order, mode="nearest", prefilter=False,
    )


def _nearest_indices(n_in: int, n_out: int, out_start: int, out_len: int, in_start: int, block_len: int) -> np.ndarray:
    """Block index of each output voxel's nearest input voxel along one axis, in exact integers:
    ``floor(c + 0.5)`` of ``c = (o + 0.5) * n_in / n_out - 0.5`` is ``(2o + 1) * n_in // (2 n_out)`` (a tie
    at a half voxel goes up, as scipy's order 0). In floating point a tie fell either way depending on
    where the block started, so predict's slab-by-slab export and a whole-volume resampling picked
    different slices."""
    o = np.arange(out_start, out_start + out_len, dtype=np.int64)
    full = np.minimum((2 * o + 1) * n_in // (2 * n_out), n_in - 1)
    return np.clip(full - in_start, 0, block_len - 1)  # mode 'nearest' on the block, as scipy's


def _take_nearest(
    x: np.ndarray, axes: Sequence[int], in_start: Sequence[int], out_start: Sequence[int], out_len: Sequence[int],
    grid: tuple[Shape, Shape],
) -> np.ndarray:
    """Order 0 along ``axes``: each output voxel takes its nearest input voxel (``_nearest_indices``); float32."""
    for a in axes:
        x = np.take(x, _nearest_indices(grid[0][a], grid[1][a], out_start[a], out_len[a], in_start[a], x.shape[a]), axis=a)
    return x.astype(np.float32, copy=False)


def _pass(
    x: np.ndarray, axes: Sequence[int], order: int, scale: Sequence[float], in_start: Sequence[int],
    out_start: Sequence[int], out_len: Sequence[int], grid: tuple[Shape, Shape] | None = None,
) -> np.ndarray:
    """Resample ``x`` along ``axes`` only; ``x`` is a block starting at ``in_start`` of the full input grid.

    Output voxel ``out_start + j`` (full output grid) samples full-input coordinate
    ``(out_start + j + 0.5) * scale - 0.5``. With one axis left out of a 3D pass, slices along it are
    resampled one by one in 2D (cheaper than a 3D kernel that is the identity on that axis). Order 0
    with ``grid`` (the full input and output shapes) picks its voxels in integers (``_nearest_indices``).
    """
    if order == 0 and grid is not None:
        return _take_nearest(x, axes, in_start, out_start, out_len, grid)
    matrix = [scale[a] if a in axes else 1.0 for a in range(x.ndim)]
    offset = [(out_start[a] + 0.5) * scale[a] - 0.5 - in_start[a] if a in axes else 0.0 for a in range(x.ndim)]
    shape = [out_len[a] if a in axes else x.shape[a] for a in range(x.ndim)]
    keep = [a for a in range(x.ndim) if a not in axes]
    if x.ndim == 3 and len(keep) == 1:
        k = keep[0]
        moved = np.moveaxis(x, k, 0)
        plane = [a for a in range(x.ndim) if a != k]
        out = np.empty((moved.shape[0], *(shape[a] for a in plane)), dtype=np.float32)
        for i in range(moved.shape[0]):
            out[i] = _affine(
                np.ascontiguousarray(moved[i]), [matrix[a] for a in plane], [offset[a] for a in plane],
                out.shape[1:], order,
            )
        return np.moveaxis(out, 0, k)
    return _affine(x, matrix, offset, shape, order)


def _passes(scheme: ResamplingScheme, order: int, ndim: int) -> list[tuple[list[int], int]]:
    """(axes, order) of each pass: all axes at ``order``, or the in-plane axes at ``order`` and then
    the separate axis at ``scheme.order_z``."""
    axes = list(range(ndim))
    if scheme.separate_axis is None:
        return [(axes, order)]
    return [([a for a in axes if a != scheme.separate_axis], order), ([scheme.separate_axis], scheme.order_z)]


@dataclass(frozen=True)
class ResamplingWork:
    """What ``resample_array`` computes for one array, for the planner's time model: voxels the spline
    prefilter sweeps (padded, once per axis of the call) and interpolation taps (output voxels x
    (order + 1) per axis of the call), summed over its passes."""

    prefilter_voxels: float
    taps: float


def resampling_work(in_shape: Shape, out_shape: Shape, scheme: ResamplingScheme, order: int | None = None) -> ResamplingWork:
    """The work of ``resample_array`` from ``in_shape`` to ``out_shape``, pass by pass as ``_pass``
    runs it: a 3D pass moving two axes interpolates slice by slice in 2D, any other pass over every
    axis (scipy weighs (order + 1) samples along each axis of the call, moved or not)."""
    order = scheme.order if order is None else order
    shape = list(in_shape)
    prefilter = taps = 0.0
    for axes, pass_order in _passes(scheme, order, len(shape)):
        moving = [a for a in axes if shape[a] != out_shape[a]]
        if not moving:
            continue
        slicewise = len(shape) == 3 and len(moving) == 2
        call_axes = moving if slicewise else list(range(len(shape)))
        if pass_order > 1:
            padded = [shape[a] + 2 * SPLINE_PAD if a in call_axes else shape[a] for a in range(len(shape))]
            prefilter += math.prod(padded) * len(call_axes)
        for a in moving:
            shape[a] = out_shape[a]
        taps += math.prod(shape) * (pass_order + 1) ** len(call_axes)
    return ResamplingWork(prefilter, taps)


def resample_block(
    x: np.ndarray, in_start: Sequence[int], in_shape: Shape, out_window: Sequence[slice], out_shape: Shape,
    scheme: ResamplingScheme, order: int,
) -> np.ndarray:
    """Resample a block ``x`` of a full grid ``in_shape`` onto ``out_window`` of the full grid ``out_shape``."""
    scale = [i / o for i, o in zip(in_shape, out_shape)]
    out_start = [w.start for w in out_window]
    out_len = [w.stop - w.start for w in out_window]
    start = list(in_start)
    for pass_axes, pass_order in _passes(scheme, order, x.ndim):
        moving = [
            a for a in pass_axes
            if not (in_shape[a] == out_shape[a] and start[a] == out_start[a] and x.shape[a] == out_len[a])
        ]
        if moving:
            x = _pass(x, moving, pass_order, scale, start, out_start, out_len, (in_shape, out_shape))
            for a in moving:
                start[a] = out_start[a]
    return x


def resample_array(x: np.ndarray, shape: Shape, scheme: ResamplingScheme, order: int | None = None) -> np.ndarray:
    """Resample one spatial array (no channel axis) to ``shape``; float32 out (``x`` itself if unchanged)."""
    if tuple(x.shape) == tuple(shape):
        return x
    order = scheme.order if order is None else order
    window = [slice(0, s) for s in shape]
    return resample_block(x, [0] * x.ndim, x.shape, window, shape, scheme, order)


def resample_data(data: np.ndarray, shape: Shape, scheme: ResamplingScheme) -> np.ndarray:
    """Resample image data (C, *spatial) channel by channel into one new float32 array.

    A spline above order 1 overshoots at sharp edges (ringing: air next to bone in CT); the result is clipped
    to its input's range, as nnU-Net's ``skimage.transform.resize`` (``clip=True``) does, so no resampled
    intensity lies outside what the scanner recorded: each channel, or with ``scheme.clip_slices`` each slice
    after the in-plane pass (nnU-Net resizes slice by slice then; its order 0 or 1 along the separate axis
    cannot overshoot, and a higher ``order_z`` is clipped to the channel's range)."""
    if tuple(data.shape[1:]) == tuple(shape):
        return data
    out = np.empty((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        channel = data[c]
        if scheme.clip_slices and scheme.separate_axis is not None and scheme.order > 1 and channel.size:
            channel = _in_plane_clipped(channel, shape, scheme)
        out[c] = resample_array(channel, shape, scheme)
        if (scheme.order_z if scheme.clip_slices else max(scheme.order, scheme.order_z)) > 1 and data[c].size:
            np.clip(out[c], data[c].min(), data[c].max(), out=out[c])
    return out


def _in_plane_clipped(channel: np.ndarray, shape: Shape, scheme: ResamplingScheme) -> np.ndarray:
    """``channel`` resampled in-plane only (its separate axis kept), each slice clipped to its own input range:
    clipping the whole channel after both passes let a slice next to a brighter one keep its overshoot."""
    axis = scheme.separate_axis
    assert axis is not None
    in_plane = [n if a == axis else s for a, (n, s) in enumerate(zip(channel.shape, shape))]
    resampled = resample_array(channel, in_plane, scheme)
    plane = tuple(a for a in range(channel.ndim) if a != axis)
    low, high = channel.min(axis=plane, keepdims=True), channel.max(axis=plane, keepdims=True)
    return np.clip(resampled, low, high, out=resampled if resampled is not channel else None)


def _bbox(mask: np.ndarray, margin: int) -> list[slice]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(hit[0]) - margin), min(mask.shape[axis], int(hit[-1]) + 1 + margin)))
    return box


def _output_window(box: Sequence[slice], in_shape: Shape, out_shape: Shape, margin: int) -> list[slice]:
    """Output voxels that may receive weight from the class inside ``box`` (which includes ``margin``).

    A sample at input coordinate ``p`` reads input voxels within ``margin - 1`` of it, so only outputs
    sampling inside ``[box.start + margin - 1, box.stop - margin]`` can be nonzero; the rest stay 0.
    """
    window = []
    for s, n_in, n_out in zip(box, in_shape, out_shape):
        scale = n_in / n_out
        lo_p = s.start + margin - 1 if s.start > 0 else -np.inf
        hi_p = s.stop - margin if s.stop < n_in else np.inf
        lo = 0 if lo_p == -np.inf else int(np.ceil((lo_p + 0.5) / scale - 0.5))
        hi = n_out if hi_p == np.inf else int(np.floor((hi_p + 0.5) / scale - 0.5)) + 1
        window.append(slice(max(0, lo), max(max(0, lo), min(hi, n_out))))
    return window


def _label_slab(
    block: np.ndarray, block_start: int, in_shape: Shape, out_rows: tuple[int, int], out_shape: Shape,
    ordered: Sequence[int], scheme: ResamplingScheme, margin: int,
) -> np.ndarray:
    """Output rows ``out_rows`` (axis 0) of ``resample_label``, from input rows ``block`` (from ``block_start``)."""
    z0, z1 = out_rows
    shape = (z1 - z0, *out_shape[1:])
    out = np.full(shape, ordered[0], dtype=block.dtype)
    best = np.zeros(shape, dtype=np.float32)
    total = np.zeros(shape, dtype=np.float32)
    for value in ordered[1:]:
        mask = block == value
        if not mask.any():
            continue
        box = _bbox(mask, margin)
        box_in_grid = [slice(box[0].start + block_start, box[0].stop + block_start), *box[1:]]
        window = _output_window(box_in_grid, in_shape, out_shape, margin)
        window[0] = slice(max(window[0].start, z0), max(min(window[0].stop, z1), z0))
        if any(w.stop <= w.start for w in window):
            continue
        weight = resample_block(
            mask[tuple(box)].view(np.uint8), [b.start for b in box_in_grid], in_shape, window, out_shape,
            scheme, scheme.order,
        )
        local = (slice(window[0].start - z0, window[0].stop - z0), *window[1:])
        out[local][weight > best[local]] = value
        np.maximum(best[local], weight, out=best[local])
        total[local] += weight
        del mask, weight
    reference = np.subtract(1.0, total, out=total)
    out[reference >= best] = ordered[0]
    return out


def _values_by_frequency(seg: np.ndarray) -> list[int]:
    """Label values present, most frequent first (counted slab by slab: no full-size integer copy)."""
    low, high = int(seg.min()), int(seg.max())
    counts = np.zeros(high - low + 1, dtype=np.int64)
    rows = max(1, LABEL_SLAB_VOXELS // max(1, math.prod(seg.shape[1:])))
    for z0 in range(0, seg.shape[0], rows):
        counts += np.bincount(seg[z0 : z0 + rows].reshape(-1).astype(np.int64) - low, minlength=counts.size)
    present = np.flatnonzero(counts)
    return [int(v) + low for v in present[np.argsort(-counts[present], kind="stable")]]


def resample_label(seg: np.ndarray, shape: Shape, scheme: ResamplingScheme) -> np.ndarray:
    """Resample a label map (spatial, any integer dtype, -1 allowed) to ``shape``; never invents a value.

    Each class's one-hot mask is interpolated (``scheme.order``) and every voxel takes the class of
    highest weight. The most frequent class is the reference and is never resampled: interpolation
    preserves sums, so its weight is ``1 - sum(others)``. Every other class is resampled only around its
    bounding box (exact for orders <= 1, where the support is finite). The output is built in slabs of
    about ``LABEL_SLAB_VOXELS`` along axis 0, so memory stays a few slabs whatever the image size.
    """
    if tuple(seg.shape) == tuple(shape):
        return seg
    ordered = _values_by_frequency(seg)
    margin = max(scheme.order, scheme.order_z) + 2
    out = np.empty(tuple(shape), dtype=seg.dtype)
    rows = max(1, LABEL_SLAB_VOXELS // max(1, math.prod(shape[1:])))
    scale = seg.shape[0] / shape[0]
    for z0 in range(0, shape[0], rows):
        z1 = min(shape[0], z0 + rows)
        i0 = max(0, int(np.floor((z0 + 0.5) * scale - 0.5)) - margin)
        i1 = min(seg.shape[0], int(np.ceil((z1 - 0.5) * scale - 0.5)) + 1 + margin)
        out[z0:z1] = _label_slab(seg[i0:i1], i0, seg.shape, (z0, z1), shape, ordered, scheme, margin)
    return out
