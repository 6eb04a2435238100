"""Rotation, scaling and elastic deformation of a batch: batchgenerators' spatial transform, cheaper on labels.

nnU-Net v2 (through batchgenerators' ``SpatialTransform``) resamples a label map by interpolating one
indicator per label, linearly, and taking the per-voxel argmax. At a sample point whose surrounding
2^d voxels (its interpolation cell) all hold one label, that label scores the sum of the weights and
every other label scores exactly 0, so it wins outright: only points on a label boundary need the
per-label interpolation. :func:`interpolate_labels_linear` computes those alone, with scipy's arithmetic
and batchgenerators' tie-break, step by step, on each point's 2^d voxels, and reads the rest from the
cell; with a few labels this takes a fraction of the CPU (a data worker's largest cost, see
docs/benchmarks.md), with many labels far less. :class:`SpatialTransform` draws
its random numbers as batchgenerators' ``augment_spatial`` does, in the same order, and builds the
coordinate grid once per patch size, so a seed gives the same batch, bit for bit
(``tests/test_spatial_transform.py`` compares the two).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from batchgenerators.augmentations.crop_and_pad_augmentations import center_crop
from batchgenerators.augmentations.utils import (
    create_zero_centered_coordinate_mesh,
    elastic_deform_coordinates,
    interpolate_img,
    rotate_coords_2d,
    rotate_coords_3d,
    scale_coords,
)
from batchgenerators.transforms.abstract_transforms import AbstractTransform

Range = tuple[float, float]


def uniform_cells(labels: np.ndarray) -> np.ndarray:
    """``True`` at index ``i`` where the cell of voxels ``i .. i+1`` (on every axis) holds one label;
    the array has the labels' shape, its last index on each axis (no full cell there) ``False``."""
    low = high = labels
    for axis in range(labels.ndim):
        head = tuple(slice(None, -1) if a == axis else slice(None) for a in range(labels.ndim))
        tail = tuple(slice(1, None) if a == axis else slice(None) for a in range(labels.ndim))
        low, high = np.minimum(low[head], low[tail]), np.maximum(high[head], high[tail])
    uniform = np.zeros(labels.shape, dtype=bool)
    uniform[tuple(slice(None, -1) for _ in range(labels.ndim))] = low == high
    return uniform


def interpolate_labels_linear(labels: np.ndarray, coords: np.ndarray, mode: str, cval: float) -> np.ndarray:
    """``interpolate_img(labels, coords, 1, mode, cval, is_seg=True)``, equal to it voxel for voxel.

    Points whose interpolation cell lies inside the image and holds one label take that label; those on a
    label boundary are scored on their own cell (:func:`_interpolate_cells`); points near or outside the
    border go through ``interpolate_img``, which is pointwise.
    """
    dims = labels.ndim
    points = coords.reshape(dims, -1)
    first = points.astype(np.intp)  # each cell's first voxel where the point is >= 0 (truncation is floor there)
    inside = np.ones(points.shape[1], dtype=bool)
    index = np.zeros(points.shape[1], dtype=np.intp)
    strides = np.cumprod((1, *labels.shape[:0:-1]))[::-1]  # C order, in elements
    for axis in range(dims):  # row by row: reductions across rows are slow here
        inside &= (points[axis] >= 0) & (first[axis] <= labels.shape[axis] - 2)
        index += first[axis] * int(strides[axis])
    index[~inside] = 0  # any cell: those points take the border path below
    result = labels.ravel()[index]
    boundary = np.flatnonzero(inside & ~_uniform_cells_compact(labels).ravel()[index])
    if boundary.size:
        at = points[:, boundary]
        result[boundary] = _interpolate_cells(labels, at, np.floor(at), index[boundary])
    border = np.flatnonzero(~inside)
    if border.size:
        result[border] = interpolate_img(labels, points[:, border], 1, mode, cval=cval, is_seg=True)
    return result.reshape(coords.shape[1:])


def _uniform_cells_compact(labels: np.ndarray) -> np.ndarray:
    """:func:`uniform_cells` on 16-bit integers when the labels are such (a label map's usual case), which
    moves a quarter of the float32 bytes through its min/max passes."""
    compact = labels.astype(np.int16)
    return uniform_cells(compact if np.array_equal(compact, labels) else labels)


def _interpolate_cells(labels: np.ndarray, points: np.ndarray, floors: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """``interpolate_img(labels, points, 1, is_seg=True)`` (its default tie-break, ``'nearest'``) at
    ``points`` (dims, n) whose cells lie inside ``labels``: ``floors`` is ``floor(points)``, ``corners``
    the flat index of each cell's first voxel.

    The arithmetic is scipy's ``map_coordinates`` at order 1, step by step in float64: the weights
    ``1 - f`` and ``1 - (1 - f)``, each corner's weight the product over the axes in axis order, a
    label's score the sum over its corners in C order. The winner is the label with the highest score,
    the smallest of those tied, unless the nearest voxel's label (``floor(x + 0.5)`` per axis) is among
    them, as batchgenerators decides. So the scores and the decisions are those of interpolating every
    label's indicator over the whole map, computed on the ``2^d`` voxels of each boundary point alone."""
    dims = labels.ndim
    bits = np.indices((2,) * dims).reshape(dims, -1)  # corner h's offset on each axis, C order
    corner_labels = labels.ravel()[np.ravel_multi_index(tuple(bits), labels.shape)[:, None] + corners]
    low = 1.0 - (points - floors)
    axis_weights = (low, 1.0 - low)
    weights = []
    for h in range(bits.shape[1]):
        weight = axis_weights[bits[0, h]][0]
        for axis in range(1, dims):
            weight = weight * axis_weights[bits[axis, h]][axis]
        weights.append(weight)
    present = np.unique(corner_labels)
    scores = np.zeros((len(present), len(corners)))
    for i, label in enumerate(present):  # a corner adds its weight to its label's score, 0 to the others
        for h, weight in enumerate(weights):
            scores[i] += np.where(corner_labels[h] == label, weight, 0.0)
    winner = np.argmax(scores, axis=0)
    nearest_corner = np.zeros(len(corners), dtype=np.intp)
    for axis in range(dims):
        nearest_corner = nearest_corner * 2 + (np.floor(points[axis] + 0.5) > floors[axis])
    columns = np.arange(len(corners))
    nearest = np.searchsorted(present, corner_labels[nearest_corner, columns])
    nearest_wins = scores[nearest, columns] == scores[winner, columns]
    return present[np.where(nearest_wins, nearest, winner)]


def support_window(coords: np.ndarray, shape: Sequence[int]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The part of an image of ``shape`` that linear (or nearest) interpolation at ``coords`` reads, and the
    coordinates shifted into it.

    The window keeps a voxel on each side beyond every point's cell, or the image's own edge where a point
    comes near it, so every point is as far inside the window as it was inside the image (borders behave
    the same), and the shift subtracts an integer no larger than the coordinate, which is exact in floating
    point: interpolating the window gives the same values as interpolating the image, at a fraction of the
    whole-image passes (type conversion, one indicator per label) when the image is the large region the
    data loader crops for rotation and scaling. Spline orders above 1 prefilter the whole image, so the
    callers give those the image itself."""
    dims = len(shape)
    points = coords.reshape(dims, -1)
    extent = np.asarray(shape)
    low, high = np.array([row.min() for row in points]), np.array([row.max() for row in points])  # rows: fast
    start = np.clip(np.floor(low).astype(np.int64) - 1, 0, extent)
    stop = np.clip(np.floor(high).astype(np.int64) + 3, 0, extent)
    if np.any(stop - start < 2):  # every point beyond one side: nothing to gain, keep the image's own borders
        return tuple(slice(None) for _ in shape), coords
    window = tuple(slice(int(a), int(z)) for a, z in zip(start, stop))
    return window, coords - start.reshape(dims, *([1] * (coords.ndim - 1)))


class SpatialTransform(AbstractTransform):
    """batchgenerators' ``SpatialTransform`` as autoseg configures it (the patch centred, no random crop,
    one scale for all axes): per sample, elastic deformation, rotation and scaling each with its own
    probability, then interpolation at the patch's voxels, or a centre crop where nothing was drawn."""

    def __init__(
        self,
        patch_size: Sequence[int],
        *,
        elastic: tuple[float, Range, Range] = (0.0, (0.0, 0.0), (0.0, 0.0)),
        rotation: tuple[float, Sequence[Range]] = (0.0, ()),
        scaling: tuple[float, Range] = (0.0, (1.0, 1.0)),
        order_data: int = 1,
        border_cval_data: float = 0.0,
        order_seg: int = 1,
        border_cval_seg: float = 0.0,
    ) -> None:
        """``elastic``: (probability, alpha range, sigma range); ``rotation``: (probability, one angle range in
        radians per rotation axis: one for 2D, three (x, y, z) for 3D); ``scaling``: (probability, range).
        Images and labels are sampled with constant borders (``border_cval_*`` outside)."""
        self.patch_size = [int(p) for p in patch_size]
        if rotation[0] > 0 and len(rotation[1]) != (1 if len(self.patch_size) == 2 else 3):
            raise ValueError(f"rotation needs {1 if len(self.patch_size) == 2 else 3} angle ranges for a "
                             f"{len(self.patch_size)}D patch, got {len(rotation[1])}")
        self.elastic, self.rotation, self.scaling = elastic, rotation, scaling
        self.order_data, self.border_cval_data = order_data, border_cval_data
        self.order_seg, self.border_cval_seg = order_seg, border_cval_seg
        self._grid = create_zero_centered_coordinate_mesh(self.patch_size)
        self._grid.setflags(write=False)  # shared by every sample: the draws below never write into it

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data, seg = batch["data"], batch.get("seg")
        out_data = np.zeros((*data.shape[:2], *self.patch_size), dtype=np.float32)
        out_seg = None if seg is None else np.zeros((*seg.shape[:2], *self.patch_size), dtype=np.float32)
        for b in range(data.shape[0]):
            coords = self._sample_coordinates(data.shape[2:])
            if coords is None:
                cropped, cropped_seg = center_crop(data[b : b + 1], self.patch_size, None if seg is None else seg[b : b + 1])
                out_data[b] = cropped[0]
                if out_seg is not None:
                    out_seg[b] = cropped_seg[0]
                continue
            window, inner = support_window(coords, data.shape[2:])
            for c in range(data.shape[1]):
                image, at = (data[b, c][window], inner) if self.order_data <= 1 else (data[b, c], coords)
                out_data[b, c] = interpolate_img(image, at, self.order_data, "constant", cval=self.border_cval_data)
            if out_seg is not None:
                for c in range(seg.shape[1]):
                    labels, at = (seg[b, c][window], inner) if self.order_seg <= 1 else (seg[b, c], coords)
                    out_seg[b, c] = self._interpolate_labels(labels, at)
        batch["data"] = out_data
        if out_seg is not None:
            batch["seg"] = out_seg
        return batch

    def _interpolate_labels(self, labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
        if self.order_seg == 1:
            return interpolate_labels_linear(labels, coords, "constant", self.border_cval_seg)
        return interpolate_img(labels, coords, self.order_seg, "constant", cval=self.border_cval_seg, is_seg=True)

    def _sample_coordinates(self, image_shape: Sequence[int]) -> np.ndarray | None:
        """The patch's sampling coordinates in the image, or ``None`` when no deformation was drawn.

        The draws are ``augment_spatial``'s, one by one, so the random stream stays in step with it."""
        coords = self._grid
        modified = False
        p_elastic, alpha, sigma = self.elastic
        if p_elastic > 0 and np.random.uniform() < p_elastic:
            a, s = np.random.uniform(*alpha), np.random.uniform(*sigma)
            coords = elastic_deform_coordinates(coords, a, s)
            modified = True
        p_rotation, angles = self.rotation
        if p_rotation > 0 and np.random.uniform() < p_rotation:
            drawn = []
            for angle_range in angles:
                np.random.uniform()  # augment_spatial's per-axis draw; its p_rot_per_axis of 1 always passes
                drawn.append(np.random.uniform(*angle_range))
            coords = rotate_coords_3d(coords, *drawn) if len(self.patch_size) == 3 else rotate_coords_2d(coords, drawn[0])
            modified = True
        p_scaling, (low, high) = self.scaling
        if p_scaling > 0 and np.random.uniform() < p_scaling:
            factor = np.random.uniform(low, 1) if np.random.random() < 0.5 and low < 1 else np.random.uniform(max(low, 1), high)
            coords = scale_coords(coords.copy() if coords is self._grid else coords, factor)
            modified = True
        if not modified:
            return None
        coords = coords.copy() if coords is self._grid else coords
        for d, size in enumerate(image_shape):
            coords[d] += size / 2.0 - 0.5
        return coords
