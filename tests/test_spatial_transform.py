"""autoseg's spatial transform against batchgenerators' (what nnU-Net v2 runs): the same batch, bit for bit.

The label path computes the per-label interpolation only at label boundaries; these tests compare every
voxel with batchgenerators' ``SpatialTransform`` / ``interpolate_img`` under the same seed, on label maps
with several labels, the -1 padding the data loader puts around small images, points outside the image,
2D and 3D, several channels, and each deformation alone and together.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from batchgenerators.augmentations.utils import interpolate_img
from batchgenerators.transforms.spatial_transforms import SpatialTransform as ReferenceTransform
from scipy import ndimage

from autoseg.training.data_loading import seeded_global_rng
from autoseg.training.spatial_transform import SpatialTransform, interpolate_labels_linear, uniform_cells


def label_map(shape: tuple[int, ...], n_labels: int, seed: int, pad: int = 3) -> np.ndarray:
    """Smooth random regions of labels 0..n_labels-1 (as float32, as batches carry them), framed by -1."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(n_labels, *[s // 4 + 2 for s in shape]))
    zoomed = np.stack([ndimage.zoom(f, [s / f.shape[i] for i, s in enumerate(shape)], order=1)[tuple(slice(0, s) for s in shape)] for f in field])
    labels = np.argmax(zoomed, axis=0).astype(np.float32)
    labels[tuple(slice(0, pad) for _ in shape)] = -1  # a corner of the padding the loader writes
    labels[(slice(None),) * (len(shape) - 1) + (slice(-pad, None),)] = -1
    return labels


def batch(shape: tuple[int, ...], seed: int, n: int = 8, channels: int = 2, seg_channels: int = 1, n_labels: int = 4):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, channels, *shape)).astype(np.float32)
    seg = np.stack([np.stack([label_map(shape, n_labels, seed * 100 + b * 10 + c) for c in range(seg_channels)]) for b in range(n)])
    return data, seg


def reference(patch: list[int], angles: list[tuple[float, float]], p_el: float, p_rot: float, p_scale: float, order_seg: int,
              order_data: int):
    axes = dict(zip(["angle_x", "angle_y", "angle_z"], angles))
    return ReferenceTransform(
        patch, patch_center_dist_from_border=0, do_elastic_deform=p_el > 0, alpha=(0.0, 200.0), sigma=(9.0, 13.0),
        do_rotation=p_rot > 0, **axes, do_scale=p_scale > 0, scale=(0.7, 1.4), border_mode_data="constant",
        border_cval_data=0, order_data=order_data, border_mode_seg="constant", border_cval_seg=-1, order_seg=order_seg,
        random_crop=False, p_el_per_sample=p_el, p_scale_per_sample=p_scale, p_rot_per_sample=p_rot,
    )


def ours(patch: list[int], angles: list[tuple[float, float]], p_el: float, p_rot: float, p_scale: float, order_seg: int,
         order_data: int):
    return SpatialTransform(
        patch, elastic=(p_el, (0.0, 200.0), (9.0, 13.0)), rotation=(p_rot, angles), scaling=(p_scale, (0.7, 1.4)),
        order_data=order_data, border_cval_data=0, order_seg=order_seg, border_cval_seg=-1,
    )


def run_both(shape, patch, probabilities, order_seg=1, seed=0, order_data=1, **batch_kwargs):
    angles = [(-math.pi, math.pi)] if len(patch) == 2 else [(-math.pi / 6, math.pi / 6)] * 3
    data, seg = batch(shape, seed, **batch_kwargs)
    outputs = []
    for make in (reference, ours):
        with seeded_global_rng(seed):
            out = make(patch, angles, *probabilities, order_seg, order_data)(data=data.copy(), seg=seg.copy())
            outputs.append((out["data"], out["seg"], np.random.uniform()))  # the stream's next draw: in step?
    return outputs


@pytest.mark.parametrize(
    ("shape", "patch"),
    [((30, 34, 26), [20, 24, 18]), ((48, 40), [32, 28])],
    ids=["3d", "2d"],
)
@pytest.mark.parametrize(
    "probabilities",
    [(0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.5, 0.5), (1.0, 0.3, 0.3), (0.0, 0.0, 0.0)],
    ids=["rotation", "scaling", "both", "elastic", "none"],
)
def test_same_batch_as_batchgenerators(shape, patch, probabilities) -> None:
    (ref_data, ref_seg, ref_next), (data, seg, next_draw) = run_both(shape, patch, probabilities)
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_array_equal(seg, ref_seg)
    assert next_draw == ref_next  # the same number of random draws
    assert seg.dtype == data.dtype == np.float32


def test_same_labels_with_many_labels_and_several_label_channels() -> None:
    (_, ref_seg, _), (_, seg, _) = run_both((26, 30, 22), [18, 20, 16], (0.0, 1.0, 1.0), seed=3, n_labels=12, seg_channels=2)
    np.testing.assert_array_equal(seg, ref_seg)
    assert len(np.unique(seg)) >= 10  # the many labels survive


def test_other_label_orders_fall_back_to_batchgenerators() -> None:
    (ref_data, ref_seg, _), (data, seg, _) = run_both((24, 24, 20), [16, 16, 16], (0.0, 1.0, 1.0), order_seg=0, seed=5)
    np.testing.assert_array_equal(seg, ref_seg)
    np.testing.assert_array_equal(data, ref_data)


def test_cubic_images_are_interpolated_on_the_whole_crop() -> None:
    """Order 3 (nnU-Net v1's images) prefilters the whole image: a window would change the values."""
    (ref_data, _, _), (data, _, _) = run_both((30, 34, 26), [20, 24, 18], (0.0, 1.0, 1.0), seed=7, order_data=3)
    np.testing.assert_array_equal(data, ref_data)


@pytest.mark.parametrize("dims", [2, 3])
def test_label_interpolation_matches_at_every_point(dims: int) -> None:
    """Random points, many of them outside the image or on its last row, and a tie (a point halfway
    between two labels); every point as batchgenerators resamples it."""
    shape = (20, 24, 18)[:dims]
    labels = label_map(shape, 5, seed=dims)
    rng = np.random.default_rng(dims)
    points = rng.uniform(-3, np.asarray(shape)[:, None] + 2, size=(dims, 4000))
    points[:, :50] = np.floor(points[:, :50])  # integer coordinates: cells with a zero weight
    points[:, 50:60] = np.asarray(shape)[:, None] - 1  # the last voxel on every axis
    labels[(1,) * dims], labels[(2,) + (1,) * (dims - 1)] = 1, 2
    points[:, 60] = [1.5] + [1.0] * (dims - 1)  # halfway between a 1 and a 2: a tie
    expected = interpolate_img(labels, points, 1, "constant", cval=-1, is_seg=True)
    np.testing.assert_array_equal(interpolate_labels_linear(labels, points, "constant", -1), expected)
    grid = points.reshape(dims, 40, 100)  # any output shape: the result takes the coordinates' shape
    assert interpolate_labels_linear(labels, grid, "constant", -1).shape == (40, 100)


def test_uniform_cells_by_hand() -> None:
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 0, 1]], dtype=np.float32)
    expected = np.array([[True, False, False], [False, False, False], [False, False, False]])
    np.testing.assert_array_equal(uniform_cells(labels), expected)
    assert uniform_cells(np.zeros((3, 3, 3))).sum() == 8  # 2x2x2 full cells, the last index on each axis has none


def test_a_rotation_needs_one_angle_range_per_axis() -> None:
    with pytest.raises(ValueError, match="3 angle ranges for a 3D patch, got 1"):
        SpatialTransform([8, 8, 8], rotation=(0.2, [(-1.0, 1.0)]))


@pytest.mark.parametrize("dims", [2, 3])
def test_boundary_points_match_in_every_tie(dims: int) -> None:
    """A label per voxel drawn from three or six (every cell a boundary) sampled at exact fractions of
    a cell (halves, quarters: two, three or four labels tie, the nearest voxel's label among them or
    not), at inexact ones (thirds, tenths: labels tie in exact arithmetic and their float64 scores then
    differ in the last bits, so only scipy's own arithmetic, weights ``1 - f`` and ``1 - (1 - f)``, gives
    batchgenerators' winner) and at random points: every point as batchgenerators resamples it."""
    shape = (9, 8, 7)[:dims]
    rng = np.random.default_rng(10 + dims)
    fractions = [0.0, 0.5, 0.25, 0.75, 0.1, 0.2, 0.3, 0.45, 0.7, 0.9, 1 / 3, 2 / 3, 1 / 6]
    combos = np.stack([g.ravel() for g in np.meshgrid(*[fractions] * dims, indexing="ij")])
    expected, found = [], []
    for n_labels in (3, 6):
        labels = rng.integers(0, n_labels, size=shape).astype(np.float32)
        labels[(slice(0, 2),) * dims] = n_labels - 1  # a few uniform cells too
        cells = rng.integers(0, np.asarray(shape)[:, None] - 1, size=(dims, 40))
        points = (cells[:, :, None] + combos[:, None, :]).reshape(dims, -1)
        points = np.concatenate([points, rng.uniform(0, np.asarray(shape)[:, None] - 1, size=(dims, 2000))], axis=1)
        expected.append(interpolate_img(labels, points, 1, "constant", cval=-1, is_seg=True))
        found.append(interpolate_labels_linear(labels, points, "constant", -1))
    np.testing.assert_array_equal(np.concatenate(found), np.concatenate(expected))


@pytest.mark.parametrize("values", [(0.25, 0.75, 2.5), (0.0, 65536.0, 3.0)], ids=["fractions", "beyond-int16"])
def test_labels_that_are_not_16_bit_integers_keep_their_cells_apart(values: tuple[float, ...]) -> None:
    """The uniform-cell test runs on 16-bit integers only when that conversion keeps every label: 0.25 and
    0.75 (both 0 as integers) or 0 and 65536 (0 as int16 after wrapping) stay different labels."""
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, len(values), size=(4, 4, 3))
    labels = np.asarray(values, dtype=np.float32)[np.kron(blocks, np.ones((4, 4, 4), dtype=int))]  # 16x16x12
    points = rng.uniform(0, 11, size=(3, 3000))
    expected = interpolate_img(labels, points, 1, "constant", cval=-1, is_seg=True)
    np.testing.assert_array_equal(interpolate_labels_linear(labels, points, "constant", -1), expected)
