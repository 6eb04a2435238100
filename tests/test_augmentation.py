"""The augmentation pipeline, one transform at a time, against nnU-Net v2 (reference.md §1.5).

Each transform is switched on alone on a batch of many small synthetic samples: the share of samples
it changes matches its probability, its parameters come from the config, it does what it says to the
image, and it leaves the labels alone (or moves them with the image). The rules nnU-Net v2 applies per
run (2D rotation range, re-zeroing outside the nonzero mask) are checked on their own.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from scipy import ndimage

from autoseg.errors import TrainingError
from autoseg.training import augmentation
from autoseg.training.augmentation import (
    CorruptMasks,
    MaskOutsideNonzero,
    auto_degrees_2d,
    resolve_augmentation,
    round_structure,
    sampling_size,
    training_transforms,
    validation_transforms,
)
from autoseg.training.config import load_defaults
from autoseg.training.data_loading import seeded_global_rng
from autoseg.training.spatial_transform import SpatialTransform

DEFAULTS = load_defaults()["augmentation"]
RANDOM_TRANSFORMS = [
    "rotation", "scaling", "elastic", "gaussian_noise", "gaussian_blur", "brightness", "contrast",
    "low_resolution", "gamma_inverted", "gamma", "mirror",
]
PATCH = [16, 16]
N = 400  # samples per batch: the changed share is binomial(N, p)
LABELS = (0, 1, 3)
ZSCORE = {"scheme": "zscore", "use_mask": False}
ZSCORE_MASKED = {"scheme": "zscore", "use_mask": True}


def only(name: str | None = None, patch: list[int] = PATCH, normalization=(ZSCORE,), plan_mirror_axes=None,
         **changes) -> dict:
    """The default augmentation with every random transform off except ``name`` (updated by ``changes``),
    resolved for a plan with ``plan_mirror_axes``."""
    aug = copy.deepcopy(DEFAULTS)
    for key in RANDOM_TRANSFORMS:
        aug[key]["p"] = 0.0
    if name is not None:
        aug[name]["p"] = DEFAULTS[name]["p"]
        aug[name].update(changes)
    return resolve_augmentation(aug, patch, list(normalization), plan_mirror_axes)


def sample_batch(shape: list[int], n: int = N, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth positive images (no two voxels alike) and blob label maps with labels 0, 1, 3."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(n, channels, *shape))
    data = np.stack([[ndimage.gaussian_filter(c, 1.5) for c in s] for s in noise])
    ramp = np.indices(shape).sum(0) / sum(shape)
    data = (data / data.std() + 3 + ramp).astype(np.float32)
    fields = ndimage.gaussian_filter(rng.normal(size=(n, *shape)), [0, *[2] * len(shape)])
    seg = np.where(fields > 0.1, 1, np.where(fields < -0.1, 3, 0))[:, None].astype(np.float32)
    return data, seg


def apply(aug: dict, data: np.ndarray, seg: np.ndarray, patch: list[int] = PATCH, seed: int = 1) -> dict:
    with seeded_global_rng(seed):
        return training_transforms(patch, aug)(data=data.copy(), seg=seg.copy())


def centre(array: np.ndarray, patch: list[int]) -> np.ndarray:
    starts = [(n - p) // 2 for n, p in zip(array.shape[2:], patch)]
    return array[(slice(None), slice(None), *[slice(s, s + p) for s, p in zip(starts, patch)])]


def changed(out: np.ndarray, before: np.ndarray) -> np.ndarray:
    return ~np.all(np.isclose(out, before, rtol=0, atol=1e-6).reshape(len(out), -1), axis=1)


def assert_share(count: int, p: float, n: int = N) -> None:
    """``count`` of ``n`` is within 4 standard deviations of binomial(n, p)."""
    assert abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1, (count, n * p)


def first(transforms, kind):
    return next(t for t in transforms.transforms if isinstance(t, kind))


# ----------------------------------------------------------------------------------- intensity transforms

# name -> share of samples it changes (the probability per sample x per channel where it applies).
INTENSITY = {
    "gaussian_noise": 0.1,
    "gaussian_blur": 0.2 * 0.5,
    "brightness": 0.15,
    "contrast": 0.15,
    # a zoom above 15.5/16 rounds to the same 16 voxels and changes nothing
    "low_resolution": 0.25 * 0.5 * (1 - (1 - 15.5 / 16) / 0.5),
    "gamma_inverted": 0.1,
    "gamma": 0.3,
}


@pytest.mark.parametrize("name", sorted(INTENSITY))
def test_intensity_transform_applies_at_its_rate_and_keeps_labels(name: str) -> None:
    data, seg = sample_batch(PATCH)
    out = apply(only(name), data, seg)
    assert_share(int(changed(out["data"], data).sum()), INTENSITY[name])
    np.testing.assert_array_equal(out["seg"], seg)


def test_intensity_transforms_do_what_they_say() -> None:
    data, seg = sample_batch(PATCH)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    for name, check in {
        # v1 and v2 both draw the noise's standard deviation from the "variance" range
        "gaussian_noise": lambda o, i: np.all(np.abs(flat(o - i).std(1)) <= 0.1 * 1.2) and np.all(np.abs(flat(o - i).mean(1)) < 0.05),
        "gaussian_blur": lambda o, i: np.all(np.abs(np.diff(o, axis=-1)).sum((1, 2, 3)) < np.abs(np.diff(i, axis=-1)).sum((1, 2, 3))),
        "brightness": lambda o, i: np.all((np.ptp(flat(o / i), 1) < 1e-5) & (flat(o / i)[:, 0] >= 0.75) & (flat(o / i)[:, 0] <= 1.25)),
        "contrast": lambda o, i: np.all((flat(o).min(1) >= flat(i).min(1) - 1e-5) & (flat(o).max(1) <= flat(i).max(1) + 1e-5)),
        "gamma": lambda o, i: np.allclose(flat(o).mean(1), flat(i).mean(1), atol=1e-4) and np.allclose(flat(o).std(1), flat(i).std(1), rtol=1e-3),
        "gamma_inverted": lambda o, i: np.allclose(flat(o).mean(1), flat(i).mean(1), atol=1e-4) and np.allclose(flat(o).std(1), flat(i).std(1), rtol=1e-3),
    }.items():
        out = apply(only(name, p=1.0), data, seg)["data"]
        hit = changed(out, data)
        assert hit.sum() > N // 3, name
        assert check(out[hit], data[hit]), name


def test_gamma_keeps_the_order_of_intensities_and_contrast_scales_about_the_mean() -> None:
    data, seg = sample_batch(PATCH, n=20)
    for name in ("gamma", "gamma_inverted"):
        out = apply(only(name, p=1.0), data, seg)["data"]
        for o, i in zip(out, data):
            assert np.array_equal(np.argsort(o, axis=None), np.argsort(i, axis=None)), name
    out = apply(only("contrast", p=1.0, range=[0.75, 1.0]), data, seg)["data"]  # factors <= 1: no clipping
    mean = data.mean((2, 3), keepdims=True)
    factor = ((out - mean) / (data - mean)).reshape(len(data), -1)
    assert np.all(np.ptp(factor, 1) < 1e-3) and np.all((factor >= 0.75 - 1e-4) & (factor <= 1 + 1e-4))


def test_blur_and_low_resolution_follow_nnunet_v2_parameters() -> None:
    defaults = resolve_augmentation(DEFAULTS, PATCH, [ZSCORE])
    blur = first(training_transforms(PATCH, defaults), GaussianBlurTransform)
    assert blur.different_sigma_per_axis and blur.p_isotropic == 0 and blur.different_sigma_per_channel
    assert (blur.blur_sigma, blur.p_per_sample, blur.p_per_channel) == ((0.5, 1.0), 0.2, 0.5)
    low = first(training_transforms(PATCH, defaults), SimulateLowResolutionTransform)
    assert (low.p_per_sample, low.zoom_range, low.p_per_channel, low.order_downsample, low.order_upsample, low.ignore_axes) == (0.25, (0.5, 1.0), 0.5, 0, 1, None)
    dummy_2d = [4, 32, 32]
    low = first(training_transforms(dummy_2d, only(patch=dummy_2d)), SimulateLowResolutionTransform)
    assert low.ignore_axes == (0,)  # anisotropic patch: the coarse axis is never resampled


# ----------------------------------------------------------------------------------- spatial transforms


@pytest.mark.parametrize("name", ["rotation", "scaling"])
def test_spatial_transform_applies_at_its_rate(name: str) -> None:
    aug = only(name)
    region = sampling_size(PATCH, aug)
    data, seg = sample_batch(region)
    out = apply(aug, data, seg)
    assert out["data"].shape == (N, 1, *PATCH)
    assert_share(int(changed(out["data"], centre(data, PATCH)).sum()), DEFAULTS[name]["p"])


def test_rotation_and_scaling_move_image_and_labels_together() -> None:
    # Nearest-neighbour for both: an image equal to the label map stays equal to it.
    aug = only("rotation", p=1.0)
    aug["scaling"]["p"] = 1.0
    aug["spatial_order_data"] = aug["spatial_order_seg"] = 0
    region = sampling_size(PATCH, aug)
    _, seg = sample_batch(region, n=50)
    out = apply(aug, seg.copy(), seg)
    assert changed(out["seg"], centre(seg, PATCH)).sum() > 40
    np.testing.assert_array_equal(out["data"], out["seg"])


@pytest.mark.parametrize("patch", [[16, 16], [8, 12, 12]])
@pytest.mark.parametrize("order", [1, 3])
def test_label_map_is_never_interpolated_into_new_values(patch: list[int], order: int) -> None:
    aug = only("rotation", patch=patch, p=1.0)
    aug["scaling"]["p"] = aug["elastic"]["p"] = 1.0
    aug["spatial_order_seg"] = order
    region = sampling_size(patch, aug)
    data, seg = sample_batch(region, n=30)
    out = apply(aug, data, seg, patch)
    assert set(np.unique(out["seg"]).tolist()) <= set(LABELS)
    assert set(np.unique(out["seg"]).tolist()) == set(LABELS)


def test_spatial_parameters_come_from_the_config() -> None:
    spatial = first(training_transforms([16, 16, 16], only(patch=[16, 16, 16])), SpatialTransform)
    p_rotation, angles = spatial.rotation
    assert [tuple(a) for a in angles] == [pytest.approx((-math.pi / 6, math.pi / 6))] * 3  # x, y, z
    assert (spatial.scaling, p_rotation, spatial.elastic[0]) == ((0.0, (0.7, 1.4)), 0.0, 0.0)
    assert (spatial.order_data, spatial.order_seg, spatial.border_cval_seg) == (1, 1, -1)


# ----------------------------------------------------------------------------------- 2D rotation rule


@pytest.mark.parametrize(
    ("patch", "degrees"),
    [
        ([64, 64], 180.0), ([64, 96], 180.0),  # ratio 1.5 is not above 1.5
        ([64, 97], 15.0), ([320, 64], 15.0),
        ([8, 64, 64], 180.0),  # anisotropic 3D: in-plane rotation stays 180 (nnU-Net v2's dummy 2D)
    ],
)
def test_2d_rotation_follows_nnunet_v2s_patch_shape_rule(patch: list[int], degrees: float) -> None:
    assert auto_degrees_2d(patch) == degrees
    aug = resolve_augmentation(DEFAULTS, patch, [ZSCORE])
    assert aug["rotation"]["degrees_2d"] == degrees  # visible in the resolved config
    spatial = first(training_transforms(patch, aug), SpatialTransform)
    assert spatial.rotation[1][0] == pytest.approx((-math.radians(degrees), math.radians(degrees)))


def test_elongated_2d_patch_samples_a_smaller_region_and_a_set_angle_wins() -> None:
    # 15 deg at scale 1.4: (64 cos + 128 sin, 64 sin + 128 cos) x 1.4
    a = math.radians(15)
    expected = [math.ceil(1.4 * (64 * math.cos(a) + 128 * math.sin(a))), math.ceil(1.4 * (64 * math.sin(a) + 128 * math.cos(a)))]
    assert sampling_size([64, 128], resolve_augmentation(DEFAULTS, [64, 128], [ZSCORE])) == expected
    chosen = copy.deepcopy(DEFAULTS)
    chosen["rotation"]["degrees_2d"] = 90.0
    assert resolve_augmentation(chosen, [64, 128], [ZSCORE])["rotation"]["degrees_2d"] == 90.0


# ----------------------------------------------------------------------------------- mirror


def test_mirror_flips_each_axis_at_its_rate_with_the_labels() -> None:
    data, seg = sample_batch(PATCH)
    data[:] = seg  # image equal to labels: a flip must move both the same way
    out = apply(only("mirror"), data, seg)
    np.testing.assert_array_equal(out["data"], out["seg"])
    flips = {axes: 0 for axes in [(), (1,), (2,), (1, 2)]}
    for o, i in zip(out["seg"], seg):
        match = [axes for axes in flips if np.array_equal(o, np.flip(i, axes) if axes else i)]
        assert match
        flips[match[0]] += 1
    for axes, count in flips.items():
        assert_share(count, 0.25)


# ----------------------------------------------------------------------------------- nonzero mask


def test_mask_channels_resolve_from_the_plans_use_mask() -> None:
    ct = {"scheme": "ct", "use_mask": False}
    assert resolve_augmentation(DEFAULTS, PATCH, [ZSCORE_MASKED, ct, ZSCORE_MASKED])["mask_channels"] == [0, 2]
    assert resolve_augmentation(DEFAULTS, PATCH, [ZSCORE])["mask_channels"] == []
    chosen = {**DEFAULTS, "mask_channels": [3]}
    with pytest.raises(TrainingError, match=r"augmentation.mask_channels=\[3\]: channels \[3\] do not exist \(the plan has 2\)"):
        resolve_augmentation(chosen, PATCH, [ZSCORE, ZSCORE])
    with pytest.raises(TrainingError, match="resolve the config with resolve_augmentation first"):
        training_transforms(PATCH, DEFAULTS)


def test_voxels_outside_the_nonzero_mask_return_to_zero_after_intensity_transforms() -> None:
    data, seg = sample_batch(PATCH, n=50, channels=2)
    seg[:, :, :4] = -1  # outside the nonzero mask (as the store marks it)
    data[:, :, :4] = 0
    aug = only("gaussian_noise", normalization=[ZSCORE_MASKED, ZSCORE], p=1.0, variance=[0.05, 0.1])
    assert isinstance(training_transforms(PATCH, aug).transforms[-2], MaskOutsideNonzero)
    out = apply(aug, data, seg)
    assert np.all(out["data"][:, 0, :4] == 0)  # masked channel: set back to 0
    assert np.all(out["data"][:, 1, :4] != 0)  # channel normalized without the mask keeps the noise
    assert np.all(out["data"][:, 0, 4:] != data[:, 0, 4:])
    assert np.all(out["seg"][:, :, :4] == 0)  # -1 becomes background for the loss
    val = validation_transforms()(data=data.copy(), seg=seg.copy())
    np.testing.assert_array_equal(val["data"], data)


# ----------------------------------------------------------------------------------- determinism


def test_pipeline_is_a_function_of_the_seed() -> None:
    aug = resolve_augmentation(DEFAULTS, PATCH, [ZSCORE_MASKED])
    for key in RANDOM_TRANSFORMS:
        if key != "elastic":
            aug[key]["p"] = 1.0
    data, seg = sample_batch(sampling_size(PATCH, aug), n=4)
    a, b, c = apply(aug, data, seg, seed=5), apply(aug, data, seg, seed=5), apply(aug, data, seg, seed=6)
    np.testing.assert_array_equal(a["data"], b["data"])
    np.testing.assert_array_equal(a["seg"], b["seg"])
    assert not np.array_equal(a["data"], c["data"])


def test_seeded_global_rng_gives_the_callers_state_back() -> None:
    np.random.seed(3)
    random.seed(3)
    expected = (np.random.rand(), random.random())
    np.random.seed(3)
    random.seed(3)
    with seeded_global_rng(99):
        inside = (np.random.rand(), random.random())
    assert (np.random.rand(), random.random()) == expected
    with seeded_global_rng(99):
        assert (np.random.rand(), random.random()) == inside


# ----------------------------------------------------------------------------------- cascade masks


def _one_hot_blocks(n: int) -> np.ndarray:
    """``n`` samples: an image channel and the one-hot masks of two touching blocks (labels 1 and 2)."""
    labels = np.zeros((n, 20, 20, 20))
    labels[:, 4:10, 4:16, 4:16], labels[:, 10:16, 4:16, 4:16] = 1, 2
    image = np.random.default_rng(0).random((n, 1, 20, 20, 20))
    return np.concatenate([image, (labels == 1)[:, None], (labels == 2)[:, None]], 1).astype(np.float32)


def test_cascade_mask_corruption_keeps_the_masks_one_hot() -> None:
    # nnU-Net (ApplyRandomBinaryOperatorTransform): what a dilation adds to one label is taken from the
    # others, as the previous stage's prediction never gives a voxel two labels.
    data = _one_hot_blocks(60)
    with seeded_global_rng(0):
        out = CorruptMasks([1, 2], 1.0, 4, 0.5, 0.15)(data=data.copy())["data"]
    assert changed(out[:, 1:], data[:, 1:]).sum() > 30
    assert not np.any((out[:, 1] > 0.5) & (out[:, 2] > 0.5))
    np.testing.assert_array_equal(out[:, 0], data[:, 0])


def _skimage_round_structure(radius: float, ndim: int) -> np.ndarray:
    """skimage's ball / disk of a real radius, built by hand: the ball samples ``int(2r + 1)`` points evenly
    over [-r, r] per axis, the disk steps by 1 from -r; a point is in when within ``r`` of the centre."""
    axis = np.linspace(-radius, radius, int(2 * radius + 1)) if ndim == 3 else np.arange(-radius, radius + 1)
    return sum(g**2 for g in np.meshgrid(*(axis,) * ndim, indexing="ij")) <= radius**2


@pytest.mark.parametrize("ndim", [2, 3])
def test_cascade_mask_corruption_draws_a_real_radius_and_a_ball_of_it(ndim: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # nnU-Net's ApplyRandomBinaryOperatorTransform: ball(np.random.uniform(1, 8)) (disk in 2D), a real
    # radius; whole radii 1..8 left out every ball between them. The 6-connected structure iterated radius
    # times was a diamond, which the hand-built ball tells apart.
    drawn: list[tuple[float, np.ndarray]] = []

    def recording(radius: float, dims: int) -> np.ndarray:
        drawn.append((radius, round_structure(radius, dims)))
        return drawn[-1][1]

    monkeypatch.setattr(augmentation, "round_structure", recording)
    monkeypatch.setattr(CorruptMasks, "OPERATIONS", (ndimage.binary_dilation,))
    mask = np.zeros((8, 2, *(21,) * ndim), np.float32)
    mask[(slice(None), 1, *(10,) * ndim)] = 1
    with seeded_global_rng(2):
        out = CorruptMasks([1], 1.0, 8, 0.0, 0.15)(data=mask.copy())["data"][:, 1]
    radii = [radius for radius, _ in drawn]
    assert len(radii) == 8 and all(1 <= r < 8 for r in radii)
    assert all(r != int(r) for r in radii) and max(radii) - min(radii) > 3
    for (radius, structure), dilated in zip(drawn, out):
        np.testing.assert_array_equal(structure, _skimage_round_structure(radius, ndim))
        assert dilated.sum() == structure.sum()  # the dilated point is the structure itself


@pytest.mark.parametrize("ndim", [2, 3])
def test_cascade_component_removal_counts_diagonal_neighbours_as_one_component(ndim: int) -> None:
    # nnU-Net (RemoveRandomConnectedComponentFromOneHotEncodingTransform) labels with skimage's default full
    # connectivity: two blocks that touch only at a corner are one component, removed whole; scipy's default
    # (faces only) made them two, and a removal left one of them.
    mask = np.zeros((1, 2, *(20,) * ndim), np.float32)
    mask[(0, 1, *(slice(4, 6),) * ndim)] = 1
    mask[(0, 1, *(slice(6, 8),) * ndim)] = 1
    with seeded_global_rng(0):
        out = CorruptMasks([1], 0.0, 8, 1.0, 0.15)(data=mask.copy())["data"][0, 1]
    assert not out.any()


def test_cascade_mask_corruption_takes_the_world_beyond_the_patch_for_the_mask() -> None:
    # nnU-Net's skimage erosion pads with foreground; scipy's default (background) ate a mask that touches
    # the patch border up to the radius from that border, in erosion, opening and even closing. A mask of
    # the half-space x < 10 then stays a half-space x < k whatever the operation and radius.
    data = np.zeros((40, 2, 20, 20, 20), np.float32)
    data[:, 1, :, :, :10] = 1
    with seeded_global_rng(3):
        out = CorruptMasks([1], 1.0, 4, 0.0, 0.15)(data=data.copy())["data"][:, 1]
    np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1, :1, :], out.shape))
    reach = out[:, 0, 0, :].sum(1)
    assert {int(k) for k in reach} >= {10} and reach.min() < 10 < reach.max()  # unchanged, eroded, dilated


def test_cascade_mask_corruption_draws_its_probability_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    # nnU-Net applies the operation to a sample's masks all together (p per sample, then every label in a
    # random order); a dilation always changes both blocks, so both change in the same samples.
    monkeypatch.setattr(CorruptMasks, "OPERATIONS", (ndimage.binary_dilation,))
    n = 200
    data = _one_hot_blocks(n)
    with seeded_global_rng(1):
        out = CorruptMasks([1, 2], 0.4, 2, 0.0, 0.15)(data=data.copy())["data"]
    first, second = changed(out[:, 1:2], data[:, 1:2]), changed(out[:, 2:3], data[:, 2:3])
    np.testing.assert_array_equal(first, second)
    assert_share(int(first.sum()), 0.4, n)
