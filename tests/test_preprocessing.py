"""Preprocessing of one case and its exact inverse: normalization, resampling, store, round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import HIPPOCAMPUS, PLAIN_CASE, UINT8_IMAGE_CASE
from preprocessing_helpers import make_configuration, make_plans
from scipy import ndimage

from autoseg.dataset.imageio import Geometry, read_case_images, read_image
from autoseg.errors import DatasetError, PlanError
from autoseg.preprocessing import (
    class_locations,
    label_to_preprocessed_grid,
    list_cases,
    load_case,
    preprocess_case,
    restore_label,
    restore_probabilities_to_labels,
    save_case,
)
from autoseg.preprocessing import resampling
from autoseg.preprocessing.normalization import normalize
from autoseg.preprocessing.resampling import (
    ResamplingScheme,
    resample_array,
    resample_data,
    resample_block,
    resample_label,
    resampling_work,
    scheme_for,
)
from autoseg.preprocessing.store import chunk_shapes

ZSCORE = {"scheme": "zscore", "use_mask": False, "clip": None, "mean": None, "std": None}


def _hippocampus(case: str) -> tuple[np.ndarray, Geometry, np.ndarray]:
    data, geometry = read_case_images([HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz"])
    seg, _ = read_image(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz")
    return data, geometry, seg


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --- normalization -------------------------------------------------------------------------------

def test_ct_normalization_clips_then_standardises() -> None:
    data = np.array([[[[-2000.0, 0.0, 100.0, 3000.0]]]], dtype=np.float32)
    scheme = {"scheme": "ct", "use_mask": False, "clip": [-1000.0, 1000.0], "mean": 100.0, "std": 50.0}
    normalize(data, [scheme], None)
    np.testing.assert_allclose(data.ravel(), [-22.0, -2.0, 0.0, 18.0])


def test_zscore_inside_mask_leaves_outside_untouched() -> None:
    data = np.array([[[[0.0, 1.0, 2.0, 3.0, 6.0, 0.0]]]], dtype=np.float32)
    mask = np.array([[[False, True, True, True, True, False]]])
    normalize(data, [{**ZSCORE, "use_mask": True}], mask)
    std = math.sqrt((4 + 1 + 0 + 9) / 4)  # values 1, 2, 3, 6: mean 3
    np.testing.assert_allclose(data.ravel(), [0.0, -2 / std, -1 / std, 0.0, 3 / std, 0.0], rtol=1e-6)


def test_zscore_whole_image_and_none() -> None:
    data = np.array([[[[1.0, 3.0]]], [[[5.0, 7.0]]]], dtype=np.float32)
    normalize(data, [ZSCORE, {"scheme": "none", "use_mask": False}], None)
    np.testing.assert_allclose(data.ravel(), [-1.0, 1.0, 5.0, 7.0])


def test_nnunet_rescale_and_rgb_schemes() -> None:
    data = np.array([[[[-10.0, 0.0, 30.0]]], [[[0.0, 51.0, 255.0]]], [[[4.0, 4.0, 4.0]]]], dtype=np.float32)
    rescale = {"scheme": "rescale_to_0_1", "use_mask": False}
    normalize(data, [rescale, {"scheme": "rgb_to_0_1", "use_mask": False}, rescale], None)
    np.testing.assert_allclose(data.ravel(), [0.0, 0.25, 1.0, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0], rtol=1e-6)


def test_rescale_and_zscore_of_float32_extremes_stay_finite() -> None:
    """rescale_to_0_1 of -3e38..3e38 subtracted in float32 overflowed to Inf, then Inf / Inf = NaN."""
    data = np.array([[[[-3e38, 0.0, 3e38]]], [[[-3e38, 0.0, 3e38]]]], dtype=np.float32)
    normalize(data, [{"scheme": "rescale_to_0_1", "use_mask": False}, ZSCORE], None)
    assert np.isfinite(data).all()
    np.testing.assert_allclose(data[0].ravel(), [0.0, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(data[1].ravel(), [-1.2247449, 0.0, 1.2247449], rtol=1e-6)


@pytest.mark.parametrize("values", [[-1.0, 10.0], [0.0, 256.0]])
def test_rgb_scheme_refuses_values_outside_0_255(values: list[float]) -> None:
    data = np.array([[[values]]], dtype=np.float32)
    with pytest.raises(DatasetError, match=rf"a channel named rgb_to_0_1 holds values {values[0]:g}\.\.{values[1]:g}, outside 0\.\.255; store 8-bit"):
        normalize(data, [{"scheme": "rgb_to_0_1", "use_mask": False}], None)


def test_unknown_normalization_scheme_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match=r"normalization scheme 'minmax' is unknown; the plans file must use one of ct, zscore, none, rescale_to_0_1, rgb_to_0_1"):
        normalize(np.zeros((1, 1, 1, 2), np.float32), [{"scheme": "minmax"}], None)


def test_channel_count_mismatch_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match=r"normalization for 1 channel\(s\) but the case has 2"):
        normalize(np.zeros((2, 1, 1, 2), np.float32), [ZSCORE], None)


# --- resampling ----------------------------------------------------------------------------------

def test_image_resampling_matches_scipy_cubic_spline() -> None:
    x = np.random.default_rng(0).random((12, 30, 26)).astype(np.float32)
    shape = (7, 45, 39)
    scale = np.array([i / o for i, o in zip(x.shape, shape)])
    expected = ndimage.affine_transform(
        x.astype(np.float64), scale, offset=0.5 * scale - 0.5, output_shape=shape, order=3, mode="nearest"
    )
    for axis in (None, 0):  # separating an axis with the same order is the same tensor-product spline
        out = resample_array(x, shape, ResamplingScheme(3, 3, axis))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_image_data_is_clipped_to_each_channels_input_range_as_nnunets_resize() -> None:
    # nnU-Net resamples images with skimage.transform.resize(order=3, mode="edge", anti_aliasing=False),
    # whose clip=True keeps the spline's overshoot inside the input's range; a step edge rings without it.
    from skimage.transform import resize

    x = np.random.default_rng(0).random((2, 10, 17, 13)).astype(np.float32)
    x[1, :, 8:] += 1000.0  # a sharp edge in the second channel
    shape = (10, 34, 26)
    out = resample_data(x, shape, ResamplingScheme(3, 3, None))
    assert resample_array(x[1], shape, ResamplingScheme(3, 3, None)).max() > x[1].max()  # it would ring
    for c in range(2):
        expected = resize(x[c].astype(np.float64), shape, order=3, mode="edge", anti_aliasing=False)
        np.testing.assert_allclose(out[c], expected, atol=1e-3)
        assert x[c].min() <= out[c].min() and out[c].max() <= x[c].max()
    linear = resample_data(x, shape, ResamplingScheme(1, 1, None))  # order 1 cannot overshoot: untouched
    np.testing.assert_array_equal(linear[1], resample_array(x[1], shape, ResamplingScheme(1, 1, None)))


@pytest.mark.parametrize("order_z", [0, 1])
def test_slices_resampled_on_their_own_are_clipped_each_to_its_range_as_nnunets_resize(order_z: int) -> None:
    """With a separate z axis nnU-Net resizes each slice on its own (skimage's clip=True: to that slice's range),
    then interpolates along z with order 0 or 1, which cannot overshoot. The whole channel's range let the ringing
    of a dim slice beside a bright one pass (here 0.1 above its 0..1)."""
    from skimage.transform import resize

    x = np.zeros((1, 3, 12, 10), np.float32)
    x[0, 0, :, 5:] = 1.0  # a dim slice with a sharp edge: it rings beyond 1
    x[0, 1:] = np.random.default_rng(0).random((2, 12, 10)) * 1000.0
    shape = (6, 30, 25)
    scheme = scheme_for({"image_order": 3, "label_order": 1, "order_z": order_z, "separate_z_anisotropy_threshold": 3},
                        (5.0, 1.0, 1.0), (2.5, 0.4, 0.4), "image")
    assert (scheme.separate_axis, scheme.clip_slices) == (0, True)
    slices = np.stack([resize(s.astype(np.float64), shape[1:], order=3, mode="edge", anti_aliasing=False) for s in x[0]])
    ringing = resize(x[0, 0].astype(np.float64), shape[1:], order=3, mode="edge", anti_aliasing=False, clip=False)
    assert ringing.max() > 1.05 and slices[0].max() == 1.0  # clip=True clips the ringing to the slice's own 0..1
    z = (np.arange(shape[0]) + 0.5) * x.shape[1] / shape[0] - 0.5  # nnU-Net's map_coordinates along z
    expected = ndimage.map_coordinates(slices, np.meshgrid(z, *map(np.arange, shape[1:]), indexing="ij"), order=order_z,
                                       mode="nearest")
    out = resample_data(x, shape, scheme)[0]
    np.testing.assert_allclose(out, expected, atol=1e-3)
    assert out[0].max() == 1.0  # the first output slice is the dim slice's alone: within its 0..1


def test_nearest_neighbour_resampling_is_scipys_and_the_same_slab_by_slab() -> None:
    """Order 0 picks input voxel floor(c + 0.5) for c = (o + 0.5) * in / out - 0.5, as scipy does, with a tie
    at a half voxel going up whatever block the output is cut into: in floating point a tie fell either way
    depending on where a block began, so slab-by-slab export and whole-volume resampling differed by
    whole slices."""
    x = np.random.default_rng(0).random((6, 3, 4)).astype(np.float32)
    scheme = ResamplingScheme(1, 0, 0)  # only axis 0 changes: one order-0 pass
    whole = resample_array(x, (5, 3, 4), scheme)
    # by hand: c = 0.1, 1.3, 2.5 (a tie: up to 3), 3.7, 4.9
    np.testing.assert_array_equal(whole, x[[0, 1, 3, 4, 5]])
    expected = ndimage.affine_transform(np.arange(37.0), [37 / 23], offset=0.5 * 37 / 23 - 0.5, output_shape=(23,),
                                        order=0, mode="nearest")
    np.testing.assert_array_equal(resample_array(np.arange(37.0, dtype=np.float32), (23,), ResamplingScheme(0, 0, None)),
                                  expected)
    for cut in (1, 2, 3):
        parts = [resample_block(x[lo:], [lo, 0, 0], x.shape, [slice(o0, o1), slice(0, 3), slice(0, 4)], (5, 3, 4), scheme, 1)
                 for lo, o0, o1 in ((0, 0, cut), (max(0, cut - 1), cut, 5))]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize(("shape", "out", "scheme", "expected"), [
    # 3D cubic: the padded input prefiltered along 3 axes, 4^3 taps per output voxel
    ((10, 20, 30), (5, 10, 15), ResamplingScheme(3, 0, None), (34 * 44 * 54 * 3, 5 * 10 * 15 * 64)),
    # in-plane cubic slice by slice (2 axes), then nearest neighbour along axis 0 (1 tap)
    ((10, 20, 30), (5, 10, 15), ResamplingScheme(3, 0, 0), (10 * 44 * 54 * 2, 10 * 10 * 15 * 16 + 5 * 10 * 15)),
    # only the separate axis changes: one order-1 pass, scipy still weighs 2 samples along each of 3 axes
    ((10, 20, 30), (14, 20, 30), ResamplingScheme(3, 1, 0), (0, 14 * 20 * 30 * 8)),
    # one axis of an isotropic scheme changes: the call covers all 3 axes
    ((10, 20, 30), (10, 20, 45), ResamplingScheme(3, 0, None), (34 * 44 * 54 * 3, 10 * 20 * 45 * 64)),
    ((10, 20, 30), (10, 20, 30), ResamplingScheme(3, 0, None), (0, 0)),
])
def test_resampling_work_counts_by_hand(shape, out, scheme, expected) -> None:
    work = resampling_work(shape, out, scheme)
    assert (work.prefilter_voxels, work.taps) == expected


@pytest.mark.parametrize("scheme", [ResamplingScheme(3, 0, None), ResamplingScheme(3, 0, 0), ResamplingScheme(3, 1, 2),
                                    ResamplingScheme(1, 0, None)])
@pytest.mark.parametrize("out", [(5, 31, 20), (12, 30, 26), (20, 13, 26), (12, 30, 40)])
def test_resampling_work_is_what_resample_array_computes(scheme, out, monkeypatch) -> None:
    """The planner's time model counts the calls resample_array really makes (every spline call
    recorded: prefiltered padded voxels x axes, output voxels x (order + 1)^axes)."""
    calls = []
    original, original_nearest = resampling._affine, resampling._take_nearest

    def recording(x, matrix, offset, shape, order):
        calls.append((x.shape, tuple(shape), order))
        return original(x, matrix, offset, shape, order)

    def recording_nearest(x, *args):
        out = original_nearest(x, *args)
        calls.append((x.shape, out.shape, 0))
        return out

    monkeypatch.setattr(resampling, "_affine", recording)
    monkeypatch.setattr(resampling, "_take_nearest", recording_nearest)
    x = np.random.default_rng(0).random((12, 30, 26)).astype(np.float32)
    resample_array(x, out, scheme)
    prefilter = sum(math.prod(s + 2 * resampling.SPLINE_PAD for s in shape) * len(shape)
                    for shape, _, order in calls if order > 1)
    taps = sum(math.prod(o) * (order + 1) ** len(o) for _, o, order in calls)
    work = resampling_work(x.shape, out, scheme)
    assert (work.prefilter_voxels, work.taps) == (prefilter, taps)


def _blobs(shape: tuple[int, ...]) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    seg = np.zeros(shape, np.int16)
    seg[(zz / 0.7) ** 2 + ((yy + 0.3) / 0.5) ** 2 + (xx / 0.6) ** 2 < 1] = 1
    seg[(zz / 0.5) ** 2 + ((yy - 0.4) / 0.35) ** 2 + ((xx - 0.1) / 0.4) ** 2 < 1] = 2
    seg[:2] = -1
    return seg


@pytest.mark.parametrize("slab_voxels", [2**24, 5 * 27 * 50])
@pytest.mark.parametrize("scheme", [ResamplingScheme(1, 0, None), ResamplingScheme(1, 0, 0), ResamplingScheme(1, 1, 2)])
def test_label_resampling_is_the_full_grid_argmax(
    scheme: ResamplingScheme, slab_voxels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-class, per-slab windowed resampling equals the argmax of every class resampled on the whole grid."""
    monkeypatch.setattr(resampling, "LABEL_SLAB_VOXELS", slab_voxels)  # one slab, or slabs of 5 rows
    seg = _blobs((14, 40, 36))
    shape = (33, 27, 50)
    values = np.unique(seg)
    weights = np.stack([resample_array((seg == v).astype(np.float32), shape, scheme) for v in values])
    out = resample_label(seg, shape, scheme)
    assert set(np.unique(out)) == set(values)  # nothing invented, nothing lost
    top2 = np.sort(weights, axis=0)[-2:]
    unique_max = top2[1] - top2[0] > 1e-6  # ties may go either way
    np.testing.assert_array_equal(out[unique_max], values[np.argmax(weights, axis=0)][unique_max])


def test_anisotropic_labels_round_trip_with_dice_above_098() -> None:
    shape = (24, 96, 90)
    seg = _blobs(shape)
    seg[seg < 0] = 0
    data = (seg[None] * 100.0 + 50.0).astype(np.float32)
    geometry = Geometry((4.0, 0.8, 0.75), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    config = make_configuration((1.5, 1.0, 1.0), normalization=[ZSCORE])
    plans = make_plans({"3d_fullres": config})
    data_pp, seg_pp, props = preprocess_case(data, geometry, plans, "3d_fullres", seg)
    assert props["shape_after_resampling"] == [64, 77, 68]
    assert data_pp.shape == (1, 64, 77, 68) and seg_pp.shape == (1, 64, 77, 68)
    restored = restore_label(seg_pp, props, plans, "3d_fullres")
    assert restored.shape == shape and restored.dtype == np.uint8
    for label in (1, 2):
        assert _dice(restored == label, seg == label) >= 0.98


# --- round trips on real cases -------------------------------------------------------------------

@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
@pytest.mark.parametrize("case", [UINT8_IMAGE_CASE, PLAIN_CASE])
def test_isotropic_real_labels_come_back_identical(case: str, transpose: tuple[int, ...]) -> None:
    data, geometry, seg = _hippocampus(case)
    plans = make_plans({"3d_fullres": make_configuration((1.0, 1.0, 1.0))}, transpose_forward=transpose)
    original = data.copy()
    data_pp, seg_pp, props = preprocess_case(data, geometry, plans, "3d_fullres", seg)
    np.testing.assert_array_equal(data, original)  # the caller's array is never modified
    assert props["shape_after_resampling"] == props["shape_after_crop"]
    assert props["shape_before_crop"] == [seg.shape[a] for a in transpose]
    assert list(data_pp.shape[1:]) == [b - a for a, b in props["bbox"]]
    np.testing.assert_array_equal(restore_label(seg_pp, props, plans, "3d_fullres"), seg.astype(np.uint8))
    # The same labels through the probability path (one-hot "softmax") and the cascade's forward map.
    onehot = np.stack([(np.maximum(seg_pp[0], 0) == c).astype(np.float32) for c in range(3)])
    np.testing.assert_array_equal(restore_probabilities_to_labels(onehot, props, plans, "3d_fullres"), seg)
    forward = label_to_preprocessed_grid(seg, props, plans, "3d_fullres")
    np.testing.assert_array_equal(forward, np.maximum(seg_pp[0], 0))


def test_preprocessed_image_is_the_normalized_crop() -> None:
    data, geometry, seg = _hippocampus(PLAIN_CASE)
    plans = make_plans({"3d_fullres": make_configuration((1.0, 1.0, 1.0))})
    data_pp, _, props = preprocess_case(data, geometry, plans, "3d_fullres")
    crop = data[(0, *(slice(a, b) for a, b in props["bbox"]))].astype(np.float64)
    np.testing.assert_allclose(data_pp[0], (crop - crop.mean()) / crop.std(), atol=1e-5)
    assert props["spacing"] == props["target_spacing"] == [1.0, 1.0, 1.0]
    assert props["geometry"] == geometry.to_dict() and props["shape_original"] == list(seg.shape)


def test_probabilities_restore_with_regions_and_return_probabilities() -> None:
    data, geometry, seg = _hippocampus(PLAIN_CASE)
    plans = make_plans(
        {"3d_fullres": make_configuration((1.0, 1.0, 1.0))},
        labels={"background": 0, "hippocampus": [1, 2], "posterior": 2}, regions_class_order=[1, 2],
    )
    data[:, :3] = 0  # a crop that removes slices, so the un-crop is exercised
    _, seg_pp, props = preprocess_case(data, geometry, plans, "3d_fullres", seg)
    assert props["bbox"][0][0] == 3
    regions = np.stack([(seg_pp[0] > 0), (seg_pp[0] == 2)]).astype(np.float32)
    label, probs = restore_probabilities_to_labels(regions, props, plans, "3d_fullres", return_probabilities=True)
    expected = seg.copy()
    expected[:3] = 0
    np.testing.assert_array_equal(label, expected)
    assert probs.shape == (2, *seg.shape) and probs.dtype == np.float16
    np.testing.assert_array_equal(probs[1], (expected == 2).astype(np.float32))


def test_softmax_probabilities_outside_the_crop_are_background() -> None:
    data, geometry, seg = _hippocampus(PLAIN_CASE)
    plans = make_plans({"3d_fullres": make_configuration((1.0, 1.0, 1.0))})
    data[:, :, -4:] = 0
    _, seg_pp, props = preprocess_case(data, geometry, plans, "3d_fullres", seg)
    probs = np.full((3, *seg_pp.shape[1:]), 1 / 3, np.float32)
    probs[2] += 0.1
    label, full = restore_probabilities_to_labels(probs, props, plans, "3d_fullres", return_probabilities=True)
    assert (label[:, :-4] == 2).all() and (label[:, -4:] == 0).all()
    np.testing.assert_array_equal(full[:, :, -4:].reshape(3, -1).T, np.tile([1.0, 0.0, 0.0], (label[:, -4:].size, 1)))


def test_unknown_configuration_is_a_plan_error() -> None:
    data, geometry, _ = _hippocampus(PLAIN_CASE)
    plans = make_plans({"3d_fullres": make_configuration((1.0, 1.0, 1.0))})
    with pytest.raises(PlanError, match=r"configuration '2d' is not in plans 'autosegPlans' \(available: 3d_fullres\)"):
        preprocess_case(data, geometry, plans, "2d")


def test_2d_configuration_never_resamples_the_slice_axis() -> None:
    data, geometry, seg = _hippocampus(PLAIN_CASE)
    config = make_configuration((99.0, 0.5, 0.5), patch_size=(56, 40), spatial_dims=2)
    plans = make_plans({"2d": config})
    data_pp, seg_pp, props = preprocess_case(data, geometry, plans, "2d", seg)
    crop = props["shape_after_crop"]
    assert data_pp.shape[1:] == (crop[0], 2 * crop[1], 2 * crop[2])
    restored = restore_label(seg_pp, props, plans, "2d")
    for label in (1, 2):
        assert _dice(restored == label, seg == label) >= 0.95


# --- store ---------------------------------------------------------------------------------------

def test_store_round_trip_patch_reads_and_completion_marker(tmp_path) -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((2, 30, 41, 50)).astype(np.float32)
    seg = rng.integers(-1, 3, (1, 30, 41, 50)).astype(np.int16)
    save_case(tmp_path, "case_a", data, seg, {"spacing": [1, 1, 1]}, patch_size=(16, 32, 32))
    (tmp_path / "case_b.b2nd").write_bytes(b"half-written")  # no properties JSON: not complete
    assert list_cases(tmp_path) == ["case_a"]
    handle, seg_handle, props = load_case(tmp_path, "case_a")
    assert handle.chunks == (1, 16, 32, 32) and props == {"spacing": [1, 1, 1]}
    np.testing.assert_array_equal(handle[:, 3:20, 10:41, 7:9], data[:, 3:20, 10:41, 7:9])
    np.testing.assert_array_equal(seg_handle[0, 5:6], seg[0, 5:6])
    full, full_seg, _ = load_case(tmp_path, "case_a", mmap=False)
    assert isinstance(full, np.ndarray) and np.array_equal(full, data) and np.array_equal(full_seg, seg)


def test_chunks_follow_the_patch_and_blocks_stay_small() -> None:
    chunks, blocks = chunk_shapes((2, 300, 400, 400), (64, 128, 128), 4)
    assert chunks == (1, 64, 128, 128)
    assert math.prod(blocks) * 4 <= 32 * 1024 and all(c % b == 0 for c, b in zip(chunks, blocks))
    assert chunk_shapes((1, 20, 30, 30), (56, 40), 4)[0] == (1, 1, 30, 30)  # 2D patch, clipped


def test_class_locations_count_rule_and_coordinates() -> None:
    seg = np.zeros((1, 50, 100, 600), np.int16)
    seg[0, 0, 0, :50] = 1  # n = 50 -> all 50
    seg[0, 10:30, :, :] = 2  # n = 1.2e6 -> ceil(0.01 n) = 12000
    seg[0, 40, :20, :] = 3  # n = 12000 -> 10000
    locations = class_locations(seg, [1, 2, 3, 4], seed=7)
    assert {k: len(v) for k, v in locations.items()} == {"1": 50, "2": 12000, "3": 10000, "4": 0}
    for label, coords in locations.items():
        assert all(seg[0, z, y, x] == int(label) for z, y, x in coords[:200])
        assert len({tuple(c) for c in coords}) == len(coords)
    assert class_locations(seg, [3], seed=7) == {"3": locations["3"]}  # seeded


def _export_case(out_shape, spacing, target, label_order=1, classes=4, seed=0):
    """Plans, properties and random class probabilities on the preprocessed grid of a synthetic case."""
    config = make_configuration(target)
    config["resampling"]["label_order"] = label_order
    plans = make_plans({"3d_fullres": config}, labels={"background": 0, **{f"c{i}": i for i in range(1, classes)}})
    in_shape = resampling.new_shape(out_shape, spacing, target)
    properties = {
        "shape_after_resampling": list(in_shape), "shape_after_crop": list(out_shape),
        "shape_before_crop": list(out_shape), "bbox": [[0, s] for s in out_shape], "transpose_forward": [0, 1, 2],
        "spacing": list(spacing), "target_spacing": list(target),
    }
    logits = 3.0 * np.random.default_rng(seed).standard_normal((classes, *in_shape)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    return plans, properties, probs


@pytest.mark.parametrize(
    "spacing, target, label_order",
    [
        ((3.0, 0.5, 0.5), (1.0, 1.0, 1.0), 1),  # anisotropic: in-plane linear, then nearest along z
        ((1.3, 1.1, 0.9), (1.0, 1.0, 1.0), 1),  # isotropic linear, upsampling z, downsampling x
        ((0.7, 1.0, 1.0), (1.0, 1.0, 1.0), 3),  # cubic: the prefilter's reach is covered by a wider halo
        ((0.25, 1.0, 1.0), (1.0, 1.0, 1.0), 3),  # cubic, 4x upsampling: more output rows per slab
    ],
)
def test_slab_by_slab_export_equals_the_whole_volume(spacing, target, label_order) -> None:
    from autoseg.preprocessing.inverse import ProbabilityExport, _scheme

    plans, properties, probs = _export_case((23, 30, 26), spacing, target, label_order)
    scheme = _scheme(properties, plans, "3d_fullres")
    expected = np.stack([resample_array(p, properties["shape_after_crop"], scheme) for p in probs])
    export = ProbabilityExport(properties, plans, "3d_fullres", return_probabilities=True)
    row, sizes = 0, iter([1, 4, 2, 7, 3] * 10)
    while row < probs.shape[1]:
        size = next(sizes)
        export.add(row, probs[:, row : row + size])
        row += size
    labels, restored = export.finish()
    np.testing.assert_array_equal(labels, expected.argmax(axis=0))
    np.testing.assert_allclose(restored, expected, atol=1e-3)
    assert labels.dtype == np.uint8 and restored.dtype == np.float16


def test_slab_export_rejects_slabs_out_of_order_and_an_early_finish() -> None:
    from autoseg.preprocessing.inverse import ProbabilityExport

    plans, properties, probs = _export_case((12, 10, 10), (1.5, 1.0, 1.0), (1.0, 1.0, 1.0))
    export = ProbabilityExport(properties, plans, "3d_fullres")
    export.add(0, probs[:, :5])
    with pytest.raises(ValueError, match=r"at row 7 does not continue the rows so far \(5\)"):
        export.add(7, probs[:, 7:9])
    with pytest.raises(ValueError, match="does not continue"):
        export.add(5, probs[:, 5:9, :4])
    with pytest.raises(ValueError, match=r"only \d+ of 12 output rows"):
        export.finish()


def test_slab_export_memory_stays_a_few_slabs() -> None:
    """14 classes streamed in 4-row slabs: numpy's peak stays far below one float32 copy of all classes."""
    import tracemalloc

    from autoseg.preprocessing.inverse import ProbabilityExport

    plans, properties, probs = _export_case((80, 96, 96), (2.0, 0.8, 0.8), (1.0, 1.0, 1.0), classes=14)
    slabs = [np.ascontiguousarray(probs[:, r : r + 4]) for r in range(0, probs.shape[1], 4)]
    whole_output = 14 * math.prod(properties["shape_after_crop"]) * 4
    tracemalloc.start()
    export = ProbabilityExport(properties, plans, "3d_fullres")
    for i, slab in enumerate(slabs):
        export.add(4 * i, slab)
    labels = export.finish()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert labels.shape == (80, 96, 96)
    assert peak < whole_output / 4, f"peak {peak / 2**20:.1f} MiB vs {whole_output / 2**20:.1f} MiB for all classes"
