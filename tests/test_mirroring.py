"""The mirroring rule: label centroids in the fingerprint, the axes along which labels keep a fixed order,
the plan's ``mirror_axes`` and what training makes of them."""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.errors import FingerprintError, TrainingError
from autoseg.fingerprint.label_layout import class_centroids
from autoseg.planning.mirroring import FixedOrder, fixed_orders, mirror_axes, mirroring_notes, sign_test_p
from autoseg.training.augmentation import (
    MirrorPerAxis,
    auto_degrees_2d,
    resolve_augmentation,
    sampling_size,
    training_transforms,
)
from autoseg.training.config import resolve_config
from autoseg.training.data_loading import seeded_global_rng

from test_augmentation import ZSCORE, only
from test_planning import fingerprint, plan

pytestmark = pytest.mark.usefixtures("memoized_gflop")
LABELS = {"background": 0, "front": 1, "back": 2}


# ----------------------------------------------------------------------------------- centroids
def test_centroids_by_hand_and_absent_labels_are_none() -> None:
    label = np.zeros((4, 5, 6), np.uint8)
    label[1, 2, 3] = 1
    label[3, 4, 5] = 1
    label[0, 0:2, 0] = 2  # (0, 0, 0) and (0, 1, 0)
    assert class_centroids(label, [1, 2, 3]) == {"1": [2.0, 3.0, 4.0], "2": [0.0, 0.5, 0.0], "3": None}


def test_centroids_of_a_2d_case_and_of_float_labels_match_argwhere() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(1, 17, 23))
    for array in (label, label.astype(np.float32), label.astype(np.int16)):
        got = class_centroids(array, [1, 2, 3])
        for v in (1, 2, 3):
            assert np.allclose(got[str(v)], np.argwhere(label == v).mean(axis=0))


# ----------------------------------------------------------------------------------- the rule
def test_sign_test_by_hand() -> None:
    assert sign_test_p(6, 6) == pytest.approx(2 / 64)
    assert sign_test_p(5, 6) == pytest.approx(2 * 7 / 64)
    assert sign_test_p(3, 6) == 1.0


def _centroids(offsets: list[list[float]], absent: int = 0) -> dict:
    """Label 1 at the origin, label 2 at each offset; ``absent`` more cases without label 2."""
    return {"1": [[0.0, 0.0, 0.0]] * (len(offsets) + absent), "2": [list(o) for o in offsets] + [None] * absent}


def test_an_axis_with_a_fixed_order_in_every_case_is_found_with_its_evidence() -> None:
    rng = np.random.default_rng(1)
    offsets = [[float(rng.normal()), -3.0 - rng.random(), float(rng.normal())] for _ in range(20)]
    [order] = fixed_orders({"class_centroids": _centroids(offsets, absent=5)})
    assert (order.axis, order.before, order.after, order.agreeing, order.cases) == (1, "2", "1", 20, 20)
    assert order.p_value == pytest.approx(2 / 2**20)


@pytest.mark.parametrize("agreeing, cases, fixed", [
    (19, 20, True),    # 95% agree, far past chance
    (18, 20, False),   # 90%: under the share
    (6, 6, False),     # every case agrees, but six fair coins do that once in 32 (BraTS-mini's six cases)
    (13, 13, True),    # the fewest unanimous cases that pass one pair's three tests (p = 2.4e-4 < 1e-3 / 3)
    (12, 12, False),
])
def test_share_and_significance_both_decide(agreeing: int, cases: int, fixed: bool) -> None:
    along = [1.0] * agreeing + [-1.0] * (cases - agreeing)
    alternating = [(-1.0) ** i for i in range(cases)]  # the other two axes: no order, but tested (Bonferroni)
    offsets = [[a, b, -a] for a, b in zip(alternating, along)]
    assert [o.axis for o in fixed_orders({"class_centroids": _centroids(offsets)})] == ([1] if fixed else [])


def test_scattered_labels_ties_and_old_fingerprints_fix_nothing() -> None:
    rng = np.random.default_rng(2)
    assert fixed_orders({"class_centroids": _centroids(rng.normal(size=(200, 3)).tolist())}) == []
    # a 2D dataset: every centroid at index 0 of the first axis (ties are no evidence either way)
    assert [o.axis for o in fixed_orders({"class_centroids": _centroids([[0.0, 0.0, 2.0]] * 30)})] == [2]
    assert fixed_orders({"class_centroids": {"1": [[1.0, 2.0, 3.0]] * 30}}) == []  # one label: no pair
    assert fixed_orders({}) == []  # written before autoseg recorded centroids: every axis mirrored


@pytest.mark.parametrize("centroids", [
    {"1": [[0.0, 0.0, 0.0]] * 3},           # 3 cases where the fingerprint has 4
    {"1": [[0.0, 0.0]] * 4},                # 2 coordinates
    {"1": [[0.0, "a", 0.0]] * 4},            # not a number
    {"one": [[0.0, 0.0, 0.0]] * 4},          # not a label value
    {"1": 5},
])
def test_malformed_centroids_ask_for_a_new_fingerprint(centroids: dict) -> None:
    fp = {"dataset_name": "Dataset999_Test", "spacings": [[1.0, 1.0, 1.0]] * 4, "class_centroids": centroids}
    with pytest.raises(FingerprintError, match=r"Dataset999_Test: class_centroids must hold.*each of its 4 cases.*"
                                               r"re-run `autoseg fingerprint`"):
        fixed_orders(fp)


def test_axes_follow_the_transpose_and_the_2d_slice_axes() -> None:
    fixed = [FixedOrder(axis=2, before="1", after="2", agreeing=20, cases=20, p_value=1e-6)]
    assert mirror_axes(fixed, [0, 1, 2], 3) == [0, 1] and mirror_axes(fixed, [0, 1, 2], 2) == [0]
    assert mirror_axes(fixed, [2, 0, 1], 3) == [1, 2] and mirror_axes(fixed, [2, 0, 1], 2) == [0, 1]
    assert mirror_axes([], [1, 0, 2], 3) == [0, 1, 2] and mirror_axes([], [1, 0, 2], 2) == [0, 1]


def test_the_note_names_labels_and_counts_and_asks_old_fingerprints_to_be_redone() -> None:
    order = FixedOrder(axis=1, before="2", after="1", agreeing=208, cases=208, p_value=4.9e-63)
    [note] = mirroring_notes({"labels": LABELS, "class_centroids": {}}, [order])
    assert "image axis 1" in note and "back (2) lies at lower indices than front (1) in 208 of 208 cases" in note
    assert mirroring_notes({"labels": LABELS, "class_centroids": {}}, []) == []
    [old] = mirroring_notes({"labels": LABELS, "dataset_name": "Dataset004_Hippocampus"}, [])
    assert "every axis, unchecked" in old and "re-run `autoseg fingerprint Dataset004_Hippocampus`" in old


# ----------------------------------------------------------------------------------- the plan
def test_the_plan_mirrors_every_axis_but_the_ordered_one() -> None:
    """Spacing (0.7, 0.7, 3) transposes the thick axis first: a fixed order along array axis 0 is the
    3D configurations' axis 1 and the 2D configuration's axis 0."""
    fp = fingerprint([[0.7, 0.7, 3.0]] * 20, [[200, 200, 40]] * 20, labels=LABELS)
    fp["class_centroids"] = _centroids([[-5.0, 0.0, 0.0]] * 20)
    plans = plan(fp, configs=["2d", "3d_fullres"])
    assert plans["transpose_forward"] == [2, 0, 1]
    assert plans["configurations"]["3d_fullres"]["mirror_axes"] == [0, 2]
    assert plans["configurations"]["2d"]["mirror_axes"] == [1]
    assert any("off along image axis 0" in n and "back (2) lies at lower indices than front (1)" in n for n in plans["notes"])
    del fp["class_centroids"]
    plans = plan(fp, configs=["2d", "3d_fullres"])
    assert plans["configurations"]["3d_fullres"]["mirror_axes"] == [0, 1, 2] and plans["configurations"]["2d"]["mirror_axes"] == [0, 1]


# ----------------------------------------------------------------------------------- training
def _mirror_transform(aug: dict, patch: list[int]) -> MirrorPerAxis | None:
    found = [t for t in training_transforms(patch, aug, None, 1).transforms if isinstance(t, MirrorPerAxis)]
    return found[0] if found else None


def test_auto_axes_are_the_plans_and_an_explicit_list_wins() -> None:
    aug = resolve_config("unet", [])["augmentation"]
    assert resolve_augmentation(aug, [16, 16, 16], [ZSCORE], [2])["mirror"]["axes"] == [2]
    assert resolve_augmentation(aug, [16, 16, 16], [ZSCORE], None)["mirror"]["axes"] == [0, 1, 2]  # an older plan
    assert resolve_augmentation(aug, [16, 16], [ZSCORE], None)["mirror"]["axes"] == [0, 1]
    chosen = resolve_config("unet", ["augmentation.mirror.axes=[0]"])["augmentation"]
    assert resolve_augmentation(chosen, [16, 16, 16], [ZSCORE], [2])["mirror"]["axes"] == [0]
    assert _mirror_transform(resolve_augmentation(aug, [16, 16, 16], [ZSCORE], [2]), [16, 16, 16]).axes == (2,)
    assert _mirror_transform(resolve_augmentation(aug, [16, 16, 16], [ZSCORE], []), [16, 16, 16]) is None


@pytest.mark.parametrize("axes", ["[3]", "[0, 0]"])
def test_axes_the_patch_lacks_are_refused(axes: str) -> None:
    chosen = resolve_config("unet", [f"augmentation.mirror.axes={axes}"])["augmentation"]
    with pytest.raises(TrainingError, match=r"augmentation.mirror.axes=.*distinct spatial axes of the 3D patch"):
        resolve_augmentation(chosen, [16, 16, 16], [ZSCORE])


@pytest.mark.parametrize("axes", ["[1.5]", "[-1]", "2"])
def test_axes_that_are_no_axes_are_refused_with_the_setting(axes: str) -> None:
    with pytest.raises(TrainingError, match=r"--set augmentation.mirror.axes="):
        resolve_config("unet", [f"augmentation.mirror.axes={axes}"])


def test_only_the_listed_axes_are_flipped() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(64, 1, 4, 5, 6)).astype(np.float32)
    seg = rng.integers(0, 3, size=(64, 1, 4, 5, 6)).astype(np.int16)
    out = MirrorPerAxis([2], 0.5)(data=data.copy(), seg=seg.copy())
    flipped = [np.array_equal(out["data"][b], data[b, :, :, :, ::-1]) for b in range(64)]
    assert 16 < sum(flipped) < 48  # about half, each along the last axis only
    for b in range(64):
        expected = data[b, :, :, :, ::-1] if flipped[b] else data[b]
        assert np.array_equal(out["data"][b], expected)
        assert np.array_equal(out["seg"][b], seg[b, :, :, :, ::-1] if flipped[b] else seg[b])


# ----------------------------------------------------------------------------------- in-plane rotation
@pytest.mark.parametrize(
    ("patch", "plan_axes", "degrees"),
    [
        ([16, 16], None, 180.0), ([16, 16], [0, 1], 180.0),  # every in-plane axis mirrored: nnU-Net v2's range
        ([16, 16], [1], 30.0), ([16, 16], [0], 30.0), ([16, 16], [], 30.0),
        ([64, 97], [1], 15.0),  # an elongated 2D patch keeps its smaller range
        ([4, 32, 32], [0, 1], 30.0),  # ACDC: x (axis 2) ordered
        ([4, 32, 32], [1, 2], 180.0),  # an order across slices is not what an in-plane rotation turns
        ([4, 32, 32], [0, 1, 2], 180.0),
    ],
)
def test_in_plane_rotation_narrows_where_the_plan_keeps_an_in_plane_order(patch, plan_axes, degrees) -> None:
    assert auto_degrees_2d(patch, plan_axes) == degrees
    aug = resolve_config("unet", [])["augmentation"]
    assert resolve_augmentation(aug, patch, [ZSCORE], plan_axes)["rotation"]["degrees_2d"] == degrees
    chosen = resolve_config("unet", ["augmentation.rotation.degrees_2d=90"])["augmentation"]
    assert resolve_augmentation(chosen, patch, [ZSCORE], plan_axes)["rotation"]["degrees_2d"] == 90.0


def _order_kept(plan_axes: list[int] | None) -> np.ndarray:
    """Rotate (p = 1, nothing else) 200 label maps holding a class left of another along axis 1, at
    angles up to 50 deg off that axis; per sample, whether class 1 still lies at lower axis-1 indices."""
    patch = [24, 24]
    aug = only("rotation", patch=patch, plan_mirror_axes=plan_axes, p=1.0)
    region = sampling_size(patch, aug)
    rng = np.random.default_rng(0)
    seg = np.zeros((200, 1, *region), np.float32)
    centre = np.array(region) / 2
    for b, angle in enumerate(rng.uniform(-np.radians(50), np.radians(50), 200)):
        offset = 5 * np.array([np.sin(angle), np.cos(angle)])  # class 2 lies at +offset, class 1 at -offset
        for label, at in ((1, centre - offset), (2, centre + offset)):
            i, j = np.round(at).astype(int)
            seg[b, 0, i - 2:i + 2, j - 2:j + 2] = label
    with seeded_global_rng(1):
        out = training_transforms(patch, aug)(data=seg.copy(), seg=seg.copy())["seg"][:, 0]
    mean_columns = [[np.nonzero(sample == label)[1].mean() for label in (1, 2)] for sample in out]
    return np.array([first < second for first, second in mean_columns])


def test_a_narrowed_rotation_never_reverses_the_order_a_half_turn_does() -> None:
    assert _order_kept([0]).all()  # axis 1 ordered: at most 30 deg
    kept = _order_kept(None)  # nnU-Net v2's 180 deg
    assert 0.35 < 1 - kept.mean() < 0.65  # half of the turns, as for any direction
