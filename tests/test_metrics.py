"""Metric values against hand computations and against an independent SimpleITK implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from autoseg.evaluation.metrics import (
    binary_metrics,
    size_unit,
    case_metrics,
    evaluation_classes,
    mean_metrics,
    surface,
    surface_distances,
)


def test_overlap_metrics_by_hand():
    pred = np.zeros((2, 2, 2), bool)
    ref = np.zeros((2, 2, 2), bool)
    pred[0] = True  # 4 voxels
    ref[0, 0] = True  # 2 voxels, both predicted
    ref[1, 1, 1] = True  # 1 voxel missed
    m = binary_metrics(pred, ref, spacing=(2.0, 1.0, 0.5), surface_metrics=False)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 1)
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["volume_pred_mm3"] == pytest.approx(4.0)  # voxel = 2 * 1 * 0.5 mm^3
    assert m["volume_ref_mm3"] == pytest.approx(3.0)
    assert "hd95" not in m


def test_line_against_point_anisotropic():
    # pred: 3 voxels along x (spacing 0.5 mm), ref: the first of them. A line is all surface.
    pred = np.zeros((3, 3, 4), bool)
    ref = np.zeros((3, 3, 4), bool)
    pred[1, 1, 0:3] = True
    ref[1, 1, 0] = True
    m = binary_metrics(pred, ref, spacing=(2.0, 1.0, 0.5), tolerance_mm=0.5)
    # pred -> ref distances 0, 0.5, 1.0; ref -> pred 0.
    # 95th percentile of (0, 0.5, 1.0) with linear interpolation: 0.5 + 0.9 * 0.5.
    assert m["hd95"] == pytest.approx(0.95)
    assert m["assd"] == pytest.approx(1.5 / 4)
    assert m["nsd"] == pytest.approx(3 / 4)
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(1 / 3)


def test_shifted_cubes_by_hand():
    # 3x3x3 cubes, the reference one slice further along z (spacing 2 mm); surface = 26 voxels each.
    pred = np.zeros((5, 5, 5), bool)
    ref = np.zeros((5, 5, 5), bool)
    pred[1:4, 1:4, 1:4] = True
    ref[2:5, 1:4, 1:4] = True
    m = binary_metrics(pred, ref, spacing=(2.0, 1.0, 1.0), tolerance_mm=1.0)
    # Per mask: 9 face voxels at 2 mm, 16 shared surface voxels at 0, one face centre at 1 mm (in-plane).
    assert m["assd"] == pytest.approx(2 * 19 / 52)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["nsd"] == pytest.approx(2 * 17 / 52)
    assert m["dice"] == pytest.approx(2 * 18 / 54)


def test_surface_convention_full_connectivity_and_image_border():
    cube = np.ones((3, 3, 3), bool)  # touches the image border on every side
    s = surface(cube)
    assert s.sum() == 26 and not s[1, 1, 1]
    # A plus-shaped 2D mask: with full connectivity the centre is surface too (its diagonals are empty).
    plus = np.zeros((3, 3), bool)
    plus[1, :] = plus[:, 1] = True
    assert surface(plus).sum() == 5


def test_single_slice_image_is_measured_in_2d():
    # A 2D image read as (1, y, x) with placeholder slice spacing 999: the slice axis must not matter.
    pred = np.zeros((1, 5, 5), bool)
    ref = np.zeros((1, 5, 5), bool)
    pred[0, 1:4, 1:4] = True
    ref[0, 1:4, 2:5] = True
    m = binary_metrics(pred, ref, spacing=(999.0, 1.0, 0.5), tolerance_mm=0.25)
    # 8 surface voxels each (the 3x3 square minus its centre). Per mask, 4 are 0.5 mm (one x step) from
    # the other surface: the 3 of the column the other lacks, and the one on the other's centre voxel.
    assert m["hd95"] == pytest.approx(0.5)
    assert m["assd"] == pytest.approx(8 * 0.5 / 16)
    assert m["nsd"] == pytest.approx(8 / 16)
    assert m["volume_pred_mm3"] == pytest.approx(9 * 0.5)  # area in mm^2 for 2D images


def test_empty_in_both_is_reported_and_nan():
    empty = np.zeros((3, 4, 5), bool)
    m = binary_metrics(empty, empty, spacing=(2.0, 1.0, 0.5))
    assert m["empty_in_both"] is True
    for key in ("dice", "iou", "hd95", "assd", "nsd", "precision", "recall"):
        assert math.isnan(m[key]), key
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)


def test_one_side_empty_distances_are_the_image_diagonal():
    empty = np.zeros((3, 4, 5), bool)
    ref = empty.copy()
    ref[1, 1, 1] = True
    m = binary_metrics(empty, ref, spacing=(2.0, 1.0, 0.5))
    diagonal = math.sqrt((3 * 2.0) ** 2 + (4 * 1.0) ** 2 + (5 * 0.5) ** 2)
    assert m["hd95"] == pytest.approx(diagonal) and m["assd"] == pytest.approx(diagonal)
    assert m["nsd"] == 0.0 and m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["empty_prediction"] is True and m["empty_reference"] is False and m["empty_in_both"] is False
    assert math.isnan(m["precision"]) and m["recall"] == 0.0
    flipped = binary_metrics(ref, empty, spacing=(2.0, 1.0, 0.5))
    assert flipped["empty_reference"] is True and flipped["hd95"] == pytest.approx(diagonal)


def test_ignore_label_is_masked_and_regions_are_unions():
    labels = {"background": 0, "a": 1, "b": 2, "ab": [1, 2], "ignore": 3}
    classes, ignore = evaluation_classes(labels)
    assert classes == [("a", (1,)), ("b", (2,)), ("ab", (1, 2))] and ignore == 3
    ref = np.array([[[1, 1, 2, 3, 3, 0]]])
    pred = np.array([[[1, 2, 2, 1, 2, 0]]])  # the predictions under the ignore label must not count
    m = case_metrics(pred, ref, (1.0, 1.0, 1.0), classes, ignore, surface_metrics=False)
    assert (m["a"]["tp"], m["a"]["fp"], m["a"]["fn"]) == (1, 0, 1)
    assert (m["b"]["tp"], m["b"]["fp"], m["b"]["fn"]) == (1, 1, 0)
    assert (m["ab"]["tp"], m["ab"]["fp"], m["ab"]["fn"]) == (3, 0, 0)
    assert m["ab"]["dice"] == 1.0


def test_means_skip_nan_but_count_empty_cases():
    classes = [("a", (1,)), ("b", (2,))]
    ref = np.zeros((1, 1, 4), int)
    ref[0, 0, :2] = 1
    case1 = case_metrics(ref, ref, (1.0, 1.0, 1.0), classes)  # a perfect, b empty in both
    pred = ref.copy()
    pred[0, 0, 1] = 2
    case2 = case_metrics(pred, ref, (1.0, 1.0, 1.0), classes)  # a: Dice 2/3, b: Dice 0
    summary = mean_metrics([case1, case2], classes)
    assert summary["mean"]["a"]["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert summary["mean"]["b"]["dice"] == 0.0
    assert summary["mean"]["b"]["n_cases"] == 2 and summary["mean"]["b"]["n_empty_in_both"] == 1
    assert summary["foreground_mean"]["dice"] == pytest.approx(((1 + 2 / 3) / 2 + 0.0) / 2)


# --- independent implementation: SimpleITK erosion + signed Maurer distance maps on the full volume ---


def _sitk_image(mask: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in reversed(spacing)])
    return image


def _sitk_surface(mask: np.ndarray, spacing) -> np.ndarray:
    padded = np.pad(mask, 1)  # ITK's erosion treats the border as foreground; pad with background instead
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(_sitk_image(padded, spacing), [1, 1, 1], sitk.sitkBox, 0, 1))
    return (padded & ~eroded.astype(bool))[1:-1, 1:-1, 1:-1]


def _sitk_distance_to(surface_mask: np.ndarray, spacing) -> np.ndarray:
    signed = sitk.SignedMaurerDistanceMap(
        _sitk_image(surface_mask, spacing), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    distance = np.abs(sitk.GetArrayFromImage(signed))
    distance[surface_mask] = 0.0
    return distance


def _maurer_distances(pred, ref, spacing):
    """Surface distances read from SimpleITK's signed Maurer maps (float32), C order of surface voxels."""
    sp, sr = _sitk_surface(pred, spacing), _sitk_surface(ref, spacing)
    return _sitk_distance_to(sr, spacing)[sp], _sitk_distance_to(sp, spacing)[sr]


def _brute_force_distances(pred, ref, spacing):
    """Exact float64 surface distances: the minimum over all pairs of SimpleITK surface voxel centres."""
    points_pred = np.argwhere(_sitk_surface(pred, spacing)) * np.asarray(spacing)
    points_ref = np.argwhere(_sitk_surface(ref, spacing)) * np.asarray(spacing)
    pairwise = np.linalg.norm(points_pred[:, None, :] - points_ref[None, :, :], axis=-1)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def _random_blobs(rng, shape, threshold):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0) > threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_simpleitk_maurer_distance(seed):
    rng = np.random.default_rng(seed)
    shape = (18, 22, 26)
    spacing = (2.5, 0.8, 1.1)
    pred = _random_blobs(rng, shape, 0.12)
    ref = _random_blobs(rng, shape, 0.12)
    if seed == 2:  # objects away from the border so the bounding-box crop is exercised
        pred[:4], ref[:, :5], pred[..., -6:] = False, False, False
    assert pred.any() and ref.any()
    ours_pred, ours_ref = surface_distances(pred, ref, spacing)
    exact_pred, exact_ref = _brute_force_distances(pred, ref, spacing)
    np.testing.assert_allclose(ours_pred, exact_pred, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours_ref, exact_ref, rtol=0, atol=1e-9)
    # ITK writes float32 maps: they agree to 1e-6 relative (a few float32 steps), not better.
    maurer_pred, maurer_ref = _maurer_distances(pred, ref, spacing)
    np.testing.assert_allclose(ours_pred, maurer_pred, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours_ref, maurer_ref, rtol=1e-6, atol=1e-6)
    tolerance = 1.7
    for d_pred, d_ref in ((exact_pred, exact_ref), (maurer_pred.astype(np.float64), maurer_ref.astype(np.float64))):
        both = np.concatenate([d_pred, d_ref])
        expected = {
            "hd95": max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)),
            "assd": both.mean(),
            "nsd": np.mean(both <= tolerance),
        }
        got = binary_metrics(pred, ref, spacing, tolerance_mm=tolerance)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("shape, unit", [((4, 5, 6), "mm^3"), ((1, 5, 6), "mm^2"), ((5, 1, 6), "mm^2"),
                                         ((1, 1, 6), "mm"), ((1, 6, 1), "mm"), ((1, 1, 1), "voxels")])
def test_size_unit_follows_the_axes_longer_than_one(shape, unit):
    """A line of voxels (1, 1, N), whose sizes are lengths, was said to measure mm^2."""
    assert size_unit(shape) == unit
