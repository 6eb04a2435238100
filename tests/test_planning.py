"""Planner rules, topology, configurations and the plans file, on fingerprints built here."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from autoseg.errors import FingerprintError, PlanError
from autoseg.networks import get_network_spec
from autoseg.networks.registry import TopologyConstraints
from autoseg.planning import constants as C
from autoseg.planning import rules
from autoseg.planning.compute_budget import TimingModel, schedule
from autoseg.planning.context import memory_budget, output_channels
from autoseg.planning.planner import build_plans
from autoseg.planning.plans import format_plan_table, get_configuration, load_plans, plans_path, write_plans
from autoseg.planning.topology import divisible_patch, features_per_stage, plan_topology, shrink_patch
from autoseg.utils.shapes import single_slice_axis

# FLOP counts of the planner's candidates are counted once per session (see conftest.memoize_gflop).
pytestmark = pytest.mark.usefixtures("memoized_gflop")

GIB = 2**30
UNET = get_network_spec("unet").constraints


def fingerprint(spacings, shapes, channels=None, labels=None, relative_size=1.0):
    channels = channels or {"0": "MRI"}
    stats = {"mean": 10.0, "median": 9.0, "std": 2.0, "min": -5.0, "max": 50.0,
             "percentile_00_5": -1.0, "percentile_99_5": 40.0, "num_samples": 100}
    return {
        "version": 1, "dataset_name": "Dataset999_Test", "channel_names": channels,
        "labels": labels or {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz",
        "spacings": [list(s) for s in spacings], "shapes_after_crop": [list(s) for s in shapes],
        "median_relative_size_after_crop": relative_size,
        "foreground_intensity_properties_per_channel": {k: dict(stats) for k in channels},
        "is_2d": all(s[0] == 1 for s in shapes),
        "class_centroids": {},  # no label positions: every axis mirrored (tests/test_mirroring.py)
    }


def fake_timing(dims: int, width: int, mixed_precision: str = "auto") -> TimingModel:
    # 10 ms overhead + 1 ms per GFLOP at width 32, narrower networks run less efficiently
    return TimingModel("fake", 0.01, 0.001 * C.BASE_FEATURES / width)


def plan(fp, gpu_gb=8.0, **kw):
    return build_plans(fp, memory_budget_bytes=gpu_gb * GIB * C.GPU_MEMORY_USABLE_FRACTION,
                       timing_factory=fake_timing, **kw)


MRI_SMALL = fingerprint([[1.0, 1.0, 1.0]] * 200, [[36, 50, 35]] * 200)
ANISO = fingerprint([[3.0, 0.7, 0.7]] * 10, [[40, 400, 400]] * 10)
CT_LARGE = fingerprint([[1.5, 0.8, 0.8]] * 30, [[300, 512, 512]] * 30, channels={"0": "CT"})
DATA_2D = fingerprint([[999.0, 1.0, 1.0]] * 30, [[1, 512, 512]] * 30)


# ------------------------------------------------------------------------------------------ rules
def test_target_spacing_anisotropy_rule_takes_10th_percentile_of_thick_axis():
    spacings = [[2.5, 0.7, 0.7]] * 2 + [[3.0, 0.7, 0.7]] * 6 + [[5.0, 0.7, 0.7]] * 2
    short = rules.target_spacing(spacings, [[40, 400, 400]] * 10)
    assert short == pytest.approx([2.5, 0.7, 0.7])  # np.percentile(..., 10) of the z spacings
    long = rules.target_spacing(spacings, [[200, 400, 400]] * 10)  # 200 x 3 >= 400: plain median
    assert long == pytest.approx([3.0, 0.7, 0.7])


def test_target_spacing_never_below_other_axes():
    spacings = [[0.5, 1.0, 1.0]] * 2 + [[4.0, 1.0, 1.0]] * 9
    assert rules.target_spacing(spacings, [[20, 300, 300]] * 11) == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("spacing, forward, backward", [
    ([1.0, 1.0, 1.0], [0, 1, 2], [0, 1, 2]),
    ([0.7, 3.0, 0.7], [1, 0, 2], [1, 0, 2]),
    ([0.7, 0.7, 3.0], [2, 0, 1], [1, 2, 0]),
])
def test_transpose_puts_coarsest_axis_first(spacing, forward, backward):
    assert rules.transpose_axes(spacing) == (forward, backward)
    assert [forward[b] for b in backward] == [0, 1, 2]


def test_normalization_per_channel_name():
    fp = fingerprint([[1, 1, 1]], [[10, 10, 10]], channels={"0": "CT", "1": "T2", "2": "noNorm"}, relative_size=0.6)
    ct, t2, none = rules.normalization_schemes(fp)
    assert ct == {"scheme": "ct", "use_mask": False, "clip": [-1.0, 40.0], "mean": 10.0, "std": 2.0}
    assert t2 == {"scheme": "zscore", "use_mask": True, "clip": None, "mean": None, "std": None}
    assert none["scheme"] == "none"
    fp["median_relative_size_after_crop"] = 0.8  # cropping removed less than 25%: whole image
    assert rules.normalization_schemes(fp)[1]["use_mask"] is False


def test_nnunet_channel_names_with_their_own_scheme():
    """nnU-Net v2's rescale_to_0_1 and rgb_to_0_1 (any case) are kept, not z-scored; zscore is z-score."""
    fp = fingerprint([[1, 1, 1]], [[10, 10, 10]], channels={"0": "rescale_to_0_1", "1": "RGB_to_0_1", "2": "zscore"})
    assert [s["scheme"] for s in rules.normalization_schemes(fp)] == ["rescale_to_0_1", "rgb_to_0_1", "zscore"]


def test_separate_z_axis():
    assert rules.separate_z_axis([3.0, 0.7, 0.7], [3.0, 0.7, 0.7]) == 0
    assert rules.separate_z_axis([1.0, 1.0, 1.0], [1.0, 1.0, 4.0]) == 2  # target anisotropic
    assert rules.separate_z_axis([1.0, 1.0, 1.0], [2.0, 1.0, 1.0]) is None
    assert rules.resampling_parameters() == {
        "image_order": 3, "label_order": 1, "order_z": 0, "separate_z_anisotropy_threshold": 3.0}


def test_initial_patch_follows_inverse_spacing_and_reference_volume():
    assert rules.initial_patch_size([1.0, 1.0, 1.0], [300, 300, 300]) == [256, 256, 256]
    # (256^3 / 0.5)^(1/3) = 322.54 -> (161, 323, 323)
    assert rules.initial_patch_size([2.0, 1.0, 1.0], [999, 999, 999]) == [161, 323, 323]
    assert rules.initial_patch_size([1.0, 1.0, 1.0], [36, 50, 35]) == [36, 50, 35]
    assert rules.initial_patch_size([1.0, 1.0], [600, 3000]) == [600, 2048]  # clipped, not redistributed


def test_batch_cap_is_5_percent_of_dataset_but_at_least_2():
    assert rules.max_batch_size([10, 10, 10], 1e6) == 50
    assert rules.max_batch_size([10, 10, 10], 1e4) == 2


def test_lowres_spacing_grows_finer_axes_first_when_anisotropic():
    assert rules.grow_lowres_spacing([3.0, 1.0, 1.0]) == pytest.approx([3.0, 1.03, 1.03])
    assert rules.grow_lowres_spacing([1.5, 0.8, 0.8]) == pytest.approx([1.545, 0.824, 0.824])
    # nnU-Net v2 grows only the axes more than 2x finer than the coarsest (1.5 mm is not: it stays)
    assert rules.grow_lowres_spacing([2.5, 1.5, 0.7]) == pytest.approx([2.5, 1.5, 0.721])


# --------------------------------------------------------------------------------------- topology
def test_anisotropic_topology_uses_in_plane_kernels_until_spacings_meet():
    topo = plan_topology([24, 192, 256], [3.0, 0.7, 0.7], UNET)
    assert topo.kernel_sizes[:3] == [[1, 3, 3], [1, 3, 3], [3, 3, 3]]
    assert topo.strides[:4] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert topo.features_per_stage == [32, 64, 128, 256, 320, 320, 320][: topo.n_stages]
    assert topo.blocks_per_stage == [2] * topo.n_stages


def test_isotropic_topology_stops_at_min_feature_map():
    topo = plan_topology([40, 56, 40], [1.0, 1.0, 1.0], UNET)
    # 40 -> 20 -> 10 -> 5: a 4th pool would leave 2.5 < 4 voxels
    assert topo.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert topo.total_stride == [8, 8, 8]
    assert divisible_patch([36, 50, 35], topo) == [40, 56, 40]


def test_family_constraints_bound_the_topology():
    vnet = get_network_spec("vnet").constraints
    topo = plan_topology([256, 256, 256], [1.0, 1.0, 1.0], vnet)
    assert topo.n_stages == len(vnet.fixed_features)
    assert topo.features_per_stage == list(vnet.fixed_features)
    assert topo.kernel_sizes[0] == [vnet.kernel_size] * 3
    iso_only = TopologyConstraints(isotropic_only=True, max_stages=3, kernel_size=3)
    topo = plan_topology([24, 192, 256], [3.0, 0.7, 0.7], iso_only)
    assert topo.strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert topo.kernel_sizes == [[3, 3, 3]] * 3


def test_features_scale_with_width_and_cap():
    assert features_per_stage(6, UNET, 3) == [32, 64, 128, 256, 320, 320]
    assert features_per_stage(6, UNET, 2) == [32, 64, 128, 256, 512, 512]
    assert features_per_stage(6, UNET, 3, width=16) == [16, 32, 64, 128, 160, 160]


def test_shrink_takes_one_step_from_the_axis_largest_relative_to_median():
    topo = plan_topology([64, 64, 64], [1.0, 1.0, 1.0], UNET)  # total stride 16
    assert shrink_patch([64, 64, 64], [100, 64, 200], topo) == [64, 48, 64]
    assert shrink_patch([16, 16, 16], [10, 10, 10], topo) is None


def test_shrink_breaks_a_tie_toward_the_first_axis():
    # docs/planning.md: on a tie the first tied axis shrinks (nnU-Net v2's argsort would take the last)
    topo = plan_topology([64, 64, 64], [1.0, 1.0, 1.0], UNET)
    assert shrink_patch([64, 64, 64], [64, 64, 64], topo) == [48, 64, 64]
    assert shrink_patch([32, 64, 64], [64, 64, 64], topo) == [32, 48, 64]


def test_shrink_and_rounding_keep_a_family_s_min_slices():
    # ConResNet (min_slices 2) was planned a [1, 32, 24] patch that its builder then refused at train time
    topo = plan_topology([3, 32, 24], [10.0, 1.5625, 1.5625], UNET)  # axis 0 never pooled: step 1
    assert shrink_patch([2, 32, 24], [9, 256, 216], topo) == [1, 32, 24]
    assert shrink_patch([2, 32, 24], [9, 256, 216], topo, min_slices=2) == [2, 28, 24]
    _, y, x = topo.size_multiple  # [1, 4, 4]
    assert shrink_patch([2, y, x], [9, 256, 216], topo, min_slices=2) is None
    assert divisible_patch([1, 30, 24], topo, min_slices=2) == [2, 32, 24]


# ---------------------------------------------------------------------------------- configurations
def test_isotropic_small_mri_patch_covers_median_image():
    plans = plan(MRI_SMALL)
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}
    full = plans["configurations"]["3d_fullres"]
    assert full["patch_size"] == [40, 56, 40]
    assert all(p >= m for p, m in zip(full["patch_size"], full["median_shape"]))
    # 5% of 200 x 36*50*35 voxels / (40*56*40) = 7.03 -> 7
    assert full["batch_size"] == 7
    assert full["predicted_memory_bytes"] <= 8 * GIB * C.GPU_MEMORY_USABLE_FRACTION
    assert full["num_iterations"] == C.MAX_ITERATIONS and full["iterations_per_epoch"] == 250
    assert full["data_identifier"] == "autosegPlans_3d_fullres"
    assert plans["transpose_forward"] == [0, 1, 2]
    assert "3d_lowres: not needed" in plans["notes"][0]


def test_anisotropic_plan_first_stages_in_plane_and_separate_z():
    plans = plan(ANISO)
    full = plans["configurations"]["3d_fullres"]
    kernels = full["network"]["topology"]["kernel_sizes"]
    assert kernels[0] == [1, 3, 3] and kernels[1] == [1, 3, 3]
    assert full["spacing"] == pytest.approx([3.0, 0.7, 0.7])
    axis = rules.separate_z_axis(ANISO["spacings"][0], full["spacing"],
                                 full["resampling"]["separate_z_anisotropy_threshold"])
    assert axis == 0 and full["resampling"]["order_z"] == 0


def test_large_ct_plans_lowres_and_cascade():
    plans = plan(CT_LARGE)
    configs = plans["configurations"]
    assert list(configs) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    full, low, cascade = configs["3d_fullres"], configs["3d_lowres"], configs["3d_cascade_fullres"]
    assert np.prod(full["patch_size"]) / np.prod(full["median_shape"]) < C.LOWRES_TRIGGER_COVERAGE
    assert np.prod(low["patch_size"]) / np.prod(low["median_shape"]) >= C.LOWRES_TRIGGER_COVERAGE
    assert np.prod(full["median_shape"]) / np.prod(low["median_shape"]) >= C.LOWRES_MIN_VOXEL_RATIO
    assert all(lo > f for lo, f in zip(low["spacing"], full["spacing"]))
    assert (low["next_stage"], cascade["previous_stage"]) == ("3d_cascade_fullres", "3d_lowres")
    assert cascade["data_identifier"] == full["data_identifier"] == "autosegPlans_3d_fullres"
    assert low["data_identifier"] == "autosegPlans_3d_lowres"
    # two foreground labels become two more input channels: a little more memory than fullres
    assert cascade["predicted_memory_bytes"] > full["predicted_memory_bytes"]
    assert full["normalization"] == [{"scheme": "ct", "use_mask": False, "clip": [-1.0, 40.0], "mean": 10.0, "std": 2.0}]


def test_2d_data_plans_only_2d():
    plans = plan(DATA_2D)
    assert list(plans["configurations"]) == ["2d"]
    config = plans["configurations"]["2d"]
    assert config["spatial_dims"] == 2 and config["patch_size"] == [512, 512]
    assert config["spacing"] == [999.0, 1.0, 1.0]
    with pytest.raises(PlanError, match=r"configuration\(s\) 3d_fullres cannot be planned for this 2D dataset"):
        plan(DATA_2D, configs=["3d_fullres"])


def test_a_case_whose_spacing_resamples_beyond_any_memory_is_refused_by_name():
    """A header in microns among millimetres planned '1 iteration, 17893h' and failed in preprocess as
    'out of memory; retry with fewer workers'."""
    fp = fingerprint([[1.0, 1.0, 1.0]] * 5 + [[1000.0, 1000.0, 1000.0]], [[24, 32, 32]] * 6)
    fp["case_ids"] = [f"case{i}" for i in range(6)]
    with pytest.raises(PlanError, match=r"Dataset999_Test: case case5 has voxel spacing 1000 x 1000 x 1000 mm \(z, y, x\) "
                                        r"against the planned 1 x 1 x 1 mm: its 24 x 32 x 32 voxels would resample to "
                                        r"2\.46e\+13 voxels; fix that case's header voxel size"):
        plan(fp)
    fp["spacings"][5] = [0.001, 0.001, 0.001]  # metres: was preprocessed to one voxel and trained on
    with pytest.raises(PlanError, match=r"case case5 has voxel spacing 0\.001 x 0\.001 x 0\.001 mm \(z, y, x\) against the "
                                        r"planned 1 x 1 x 1 mm: its 24 x 32 x 32 voxels would resample to 1 x 1 x 1; fix "
                                        r"that case's header voxel size \(metres or cm instead of mm\?\)"):
        plan(fp)
    fp["spacings"][5] = [10.0, 10.0, 10.0]  # coarse but real (24,576,000 voxels at 1 mm): planned
    assert "3d_fullres" in plan(fp)["configurations"]
    fp["spacings"][5] = [0.02, 0.02, 0.02]  # 50x finer than the others: a real outlier, planned
    assert "3d_fullres" in plan(fp)["configurations"]


def test_compute_budget_narrows_and_shortens_to_fit():
    budget = 4 * 3600.0  # 30 cases of 300x512x512: preprocessing and validation export alone take ~30 min
    plans = plan(CT_LARGE, budget_seconds=budget, configs=["3d_fullres"])
    full = plans["configurations"]["3d_fullres"]
    parts = full["predicted_seconds"]
    # the floor holds at the recipe speed; the measured speed is within 2x of it
    assert full["num_iterations"] >= C.ITERATION_FLOOR // 2 and not any("affords no recipe" in n for n in plans["notes"])
    assert full["predicted_total_seconds"] == parts["total"] <= budget
    assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"], abs=0.3)
    assert full["batch_size"] == C.MIN_BATCH_SIZE
    assert full["network"]["topology"]["features_per_stage"][0] == full["width"]
    training = full["num_iterations"] * full["predicted_seconds_per_iteration"] * C.VALIDATION_COST_FACTOR
    assert parts["training"] == pytest.approx(training, rel=0.01)


def test_budget_sweep_never_trades_resolution_for_more_time():
    """More budget never makes the spacing coarser, and every plan keeps the context rule."""
    from autoseg.planning.recipes import context_ok

    previous = None
    for budget in (120.0, 600.0, 3000.0, 15000.0):
        full = plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=budget)["configurations"]["3d_fullres"]
        assert context_ok(full["patch_size"], full["median_shape"])
        if previous is not None:
            assert full["spacing"][0] <= previous["spacing"][0]
        previous = full
    assert previous["spacing"] == [1.0, 1.0, 1.0]


def test_generous_budget_keeps_the_memory_plan():
    free = plan(MRI_SMALL, configs=["3d_fullres"])["configurations"]["3d_fullres"]
    rich = plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=1e9)["configurations"]["3d_fullres"]
    recipe = ("spacing", "patch_size", "batch_size", "network", "num_iterations", "validation_tta")
    assert {k: rich[k] for k in recipe} == {k: free[k] for k in recipe}
    assert free["predicted_seconds"] is None and rich["predicted_seconds"]["total"] <= 1e9


def test_schedule_rounds_to_whole_epochs():
    assert schedule(2999) == (2992, 272)  # 11 epochs of 272: at most 10 iterations lost
    assert schedule(500) == (500, 250)
    assert schedule(120) == (120, 120)


def test_planning_is_deterministic():
    first = json.dumps(plan(CT_LARGE), sort_keys=True)
    assert json.dumps(plan(CT_LARGE), sort_keys=True) == first


def test_output_channels_for_classes_and_regions():
    assert output_channels({"background": 0, "a": 1, "b": 2, "ignore": 3}) == (3, 2)
    assert output_channels({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3}) == (3, 3)


# ------------------------------------------------------------------------------------------- errors
def test_fingerprint_errors_are_clear():
    bad = dict(MRI_SMALL)
    del bad["spacings"]
    with pytest.raises(FingerprintError, match=r"^fp.json: missing spacings; delete it and re-run `autoseg fingerprint`$"):
        build_plans(bad, memory_budget_bytes=GIB, source="fp.json")
    bad = dict(MRI_SMALL, spacings=MRI_SMALL["spacings"][:3])
    with pytest.raises(FingerprintError, match="3 spacings for 200 shapes"):
        build_plans(bad, memory_budget_bytes=GIB)
    bad = dict(MRI_SMALL, spacings=[[0.0, 1.0, 1.0]] * 200)
    with pytest.raises(FingerprintError, match="spacings must be > 0"):
        build_plans(bad, memory_budget_bytes=GIB)
    with pytest.raises(FingerprintError, match="must be a JSON object"):
        build_plans([], memory_budget_bytes=GIB)



@pytest.mark.parametrize(("change", "message"), [
    (lambda fp: fp.update(labels=[0, 1, 2]), "labels must be a JSON object"),
    (lambda fp: fp.update(median_relative_size_after_crop=None), "median_relative_size_after_crop must be a number"),
    (lambda fp: fp.update(median_relative_size_after_crop=10**400), "median_relative_size_after_crop must be a number"),
    (lambda fp: fp.update(median_relative_size_after_crop=-3), "median_relative_size_after_crop must be a number > 0 and <= 1"),
    (lambda fp: fp.update(channel_names={}), "channel_names must name at least one channel"),
    (lambda fp: fp.update(median_structure_thickness_mm=[3.2]), "median_structure_thickness_mm must map each target"),
    (lambda fp: fp.update(median_structure_thickness_mm={"a": "3"}), "median_structure_thickness_mm must map each target"),
    (lambda fp: fp.update(median_structure_thickness_mm={"a": -5.0, "b": None}),
     "median_structure_thickness_mm must map each target to its thickness in mm, a number > 0"),
    (lambda fp: fp["foreground_intensity_properties_per_channel"]["0"].update(mean=10**400),
     "the intensity statistics of CT channel 0 need a finite number"),
    (lambda fp: fp.update(case_ids=["case0"]), "case_ids must list one id per case (4)"),
    (lambda fp: fp["shapes_after_crop"][1].__setitem__(0, 36.5), "shapes_after_crop must hold whole voxel counts, got 36.5"),
    (lambda fp: fp.update(is_2d="yes"), "is_2d must be true or false, got 'yes'"),
    (lambda fp: fp.update(file_ending=5), "file_ending must be one of .nii.gz"),
    (lambda fp: fp.update(spacings=[["1", "1", "1"]] * 4), "spacings and shapes must be lists of 3 numbers per case"),
    (lambda fp: fp["foreground_intensity_properties_per_channel"].update({"0": 5}),
     "the intensity statistics of channel 0 must be a JSON object"),
    (lambda fp: fp["foreground_intensity_properties_per_channel"]["0"].pop("percentile_00_5"),
     "the intensity statistics of CT channel 0 need a finite number for each of percentile_00_5, percentile_99_5, mean, std"),
    (lambda fp: fp["foreground_intensity_properties_per_channel"]["0"].update(mean=float("nan")),
     "the intensity statistics of CT channel 0 need a finite number"),
])
def test_a_fingerprint_field_of_the_wrong_type_is_named(change, message):
    """Hand-edited fingerprints stopped planning with an internal AttributeError, TypeError, KeyError or
    ValueError (labels as a list, a null relative size, "1" for a spacing, a CT channel without its
    percentiles, thicknesses as a list or "3"), a NaN CT mean planned a normalization into NaN, a relative size
    of -3 or a thickness of -5 mm planned on, and no channel at all failed in the network's words; a shape
    of 36.5, is_2d "yes" and a file_ending of 5 were planned on without a word."""
    fp = fingerprint([[1.0, 1.0, 1.0]] * 4, [[30, 40, 30]] * 4, channels={"0": "CT"})
    change(fp)
    with pytest.raises(FingerprintError, match=rf"^fp\.json: {re.escape(message)}.*; delete it and re-run `autoseg fingerprint`$"):
        plan(fp, source="fp.json")

@pytest.mark.parametrize("spacing", [[1e200, 1e200, 1.0], [float("inf"), 1.0, 1.0]])
def test_a_fingerprint_spacing_verify_refuses_names_the_fingerprint(spacing):
    """A hand-edited fingerprint.json with a 1e200 mm voxel side planned into an internal OverflowError
    (and a spacing no header can give blamed the case's header): the fingerprint is named, to re-run."""
    fp = fingerprint([[1.0, 1.0, 1.0]] * 3 + [spacing], [[24, 32, 32]] * 4)
    fp["case_ids"] = [f"case{i}" for i in range(4)]
    with pytest.raises(FingerprintError, match=r"^fp\.json: case case3 has voxel spacing .* mm, beyond the 100000 mm "
                                               r"`autoseg verify` accepts .*; delete it and re-run `autoseg fingerprint`$"):
        plan(fp, source="fp.json")


def test_a_resampled_size_beyond_any_float_is_refused_in_words():
    """A case at 1e5 mm (what verify accepts) among cases at 1e-100 mm resamples to 2.46e+319 voxels,
    which f"{count:.3g}" could not write (OverflowError)."""
    fp = fingerprint([[1e-100] * 3] * 5 + [[1e5] * 3], [[24, 32, 32]] * 6)
    with pytest.raises(PlanError, match=r"case 5 has voxel spacing .* would resample to 2\.46e\+319 voxels; fix that case's header"):
        plan(fp)


def test_planning_errors_are_clear():
    with pytest.raises(PlanError, match="unknown configuration"):
        plan(MRI_SMALL, configs=["3d_highres"])
    with pytest.raises(PlanError, match="3d_lowres/3d_cascade_fullres do not apply"):
        plan(MRI_SMALL, configs=["3d_lowres"])
    with pytest.raises(PlanError, match="does not fit in 0.00 GiB"):
        build_plans(MRI_SMALL, memory_budget_bytes=1000, timing_factory=fake_timing)


def test_images_too_small_to_downsample_are_named_as_such_not_as_memory():
    """6x6-pixel images under 8 GB: 'does not fit in 6.40 GiB usable memory ... give more memory', a fix
    that cannot help; no patch of theirs can be pooled even once."""
    tiny = fingerprint([(999.0, 1.0, 1.0)] * 5, [(1, 6, 6)] * 5)
    with pytest.raises(PlanError, match=r"the median image, 6x6 voxels per slice at the planned spacing, is too small "
                       r"for network 'unet' to downsample once \(a pooling step needs 8 voxels along two axes, 12 "
                       r"along one\); pad the images or resample them finer"):
        plan(tiny, configs=["2d"])
    cubes = fingerprint([(1.0, 1.0, 1.0)] * 5, [(3, 3, 3)] * 5)  # a 3D size was printed with two numbers
    with pytest.raises(PlanError, match=r"the median image, 3x3 voxels per slice at the planned"):
        plan(cubes, configs=["2d"])
    with pytest.raises(PlanError, match=r"the median image, 3x3x3 voxels at the planned"):
        plan(cubes, configs=["3d_fullres"])


@pytest.mark.parametrize("network, config, shape", [("swinunet", "2d", (1, 12, 12)), ("nnformer", "3d_fullres", (12, 12, 12))])
def test_images_too_small_for_a_patch_embedding_say_what_it_needs(network, config, shape):
    """Was: "a pooling step needs 8 voxels along two axes" for 12x12 images, which have them; a stride-4 patch
    embedding needs 16, and an image with 16 along one axis plans."""
    with pytest.raises(PlanError, match=rf"is too small for network '{network}' to downsample once \(its stride-4 patch "
                                        r"embedding needs 16 voxels along an axis\)"):
        plan(fingerprint([(1.0, 1.0, 1.0)] * 5, [shape] * 5), configs=[config], network=network)
    plans = plan(fingerprint([(1.0, 1.0, 1.0)] * 5, [(*shape[:-1], 16)] * 5), configs=[config], network=network)
    assert plans["configurations"][config]["patch_size"][-1] == 16


@pytest.mark.parametrize("gpu_memory", [float("nan"), float("inf"), 1e300, -3.0, 0.0])
def test_gpu_memory_that_is_not_a_positive_finite_number_is_refused(gpu_memory):
    """--gpu-memory nan, inf and 1e300 ended in an internal error (int() of NaN/infinite usable bytes)."""
    with pytest.raises(PlanError, match=r"--gpu-memory must be a positive, finite number of GB, got .*; e.g. --gpu-memory 8"):
        memory_budget(torch.device("cpu"), gpu_memory)


@pytest.mark.parametrize("budget", ["30m", float("nan"), float("inf"), True, 0, pytest.param(10**400, id="401-digits")])
def test_a_budget_that_is_not_a_positive_number_of_seconds_is_refused(budget):
    """From Python, budget_seconds='30m' raised TypeError and NaN planned as if no budget were given."""
    with pytest.raises(PlanError, match=r"--budget must be a positive, finite number of seconds, got .*parse_duration"):
        build_plans(MRI_SMALL, memory_budget_bytes=GIB, budget_seconds=budget, timing_factory=fake_timing)


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"gpu_memory_gb": "8"}, r"--gpu-memory must be a positive, finite number of GB, got '8'"),
    ({"gpu_memory_gb": True}, r"--gpu-memory must be a positive, finite number of GB, got True"),
    ({"budget_seconds": "30m"}, r"--budget must be a positive, finite number of seconds, got '30m'"),
])
def test_plan_dataset_refuses_numbers_that_are_not_numbers_before_fingerprinting(small_dataset, roots, arguments,
                                                                                  expected):
    """From Python, plan_dataset(gpu_memory_gb="8") raised a bare TypeError ("can't multiply sequence ...") after
    fingerprinting, and True planned for a 1 GB GPU."""
    from autoseg.planning.planner import plan_dataset

    with pytest.raises(PlanError, match=expected):
        plan_dataset("Dataset999", num_workers=1, **arguments)
    assert not any(roots["preprocessed"].rglob("*.json"))  # refused before fingerprinting


def test_one_configuration_name_is_one_configuration_not_its_letters():
    """configs='3d_fullres' was read letter by letter: 'unknown configuration(s) 3, _, d, e, ...'."""
    assert list(plan(MRI_SMALL, configs="3d_fullres")["configurations"]) == ["3d_fullres"]


# ------------------------------------------------------------------------------------- plans file
@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "my__plans", "a\\b", "myPlans_"])
def test_plans_names_that_are_not_plain_file_names_are_refused(tmp_path, name):
    """'../evil' wrote the plans file outside the dataset folder; '__' would split a model folder's name wrongly,
    and so did a trailing '_' (unet__myPlans___3d_fullres read as plans 'myPlans', configuration '_3d_fullres')."""
    with pytest.raises(PlanError, match=r"--plans-name .*: give a plain name \(letters, digits, _ \. \+ -"):
        plans_path(tmp_path, name)
    assert plans_path(tmp_path, "gpu8Plans_v2.1").name == "gpu8Plans_v2.1.json"


@pytest.mark.parametrize("name", ["fingerprint", "splits_final", "Fingerprint"])
def test_plans_names_of_the_datasets_other_files_are_refused(tmp_path, name):
    """`--plans-name fingerprint --overwrite` replaced fingerprint.json with a plans file."""
    with pytest.raises(PlanError, match=rf"--plans-name '{name}': {name}.json is the dataset's {name.lower()} file, which a "
                       "plans file must not replace; choose another name"):
        plans_path(tmp_path, name)


def test_plans_file_round_trip_and_overwrite_refusal(tmp_path):
    plans = plan(MRI_SMALL, configs=["3d_fullres"])
    path = plans_path(tmp_path, "autosegPlans")
    assert path == tmp_path / "autosegPlans.json"
    assert write_plans(plans, path) is True
    assert load_plans(path) == json.loads(json.dumps(plans))
    assert write_plans(plans, path) is False  # identical: nothing to do
    other = plan(MRI_SMALL, configs=["3d_fullres"], gpu_gb=1.0)
    other["configurations"]["3d_fullres"]["batch_size"] = 3
    with pytest.raises(PlanError, match="a different plan with this name exists .* --plans-name, or pass --overwrite"):
        write_plans(other, path)
    assert load_plans(path)["configurations"]["3d_fullres"]["batch_size"] == 7  # untouched
    assert write_plans(other, path, overwrite=True) is True
    assert get_configuration(load_plans(path), "3d_fullres")["batch_size"] == 3
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_plans_errors(tmp_path):
    with pytest.raises(PlanError, match="plans file not found; run `autoseg plan DATASET`"):
        load_plans(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plans(bad)
    plans = plan(MRI_SMALL, configs=["3d_fullres"])
    del plans["configurations"]["3d_fullres"]["patch_size"]
    bad.write_text(json.dumps(plans))
    with pytest.raises(PlanError, match=r"configuration '3d_fullres' lacks patch_size; re-run `autoseg plan`"):
        load_plans(bad)
    plans["version"] = 99
    bad.write_text(json.dumps(plans))
    with pytest.raises(PlanError, match="plans version 99 but this autoseg reads version 1"):
        load_plans(bad)
    with pytest.raises(PlanError, match="configuration '2d' is not in plans 'autosegPlans' .* planned: 3d_fullres"):
        get_configuration(plan(MRI_SMALL, configs=["3d_fullres"]), "2d")


@pytest.mark.parametrize("key, value, problem", [
    ("spacing", [-1.0, 1.0, 1.0], r"configuration spacing \[-1.0, 1.0, 1.0\] is not a list of 3 positive numbers \(mm; configuration '3d_fullres'\)"),
    ("spacing", [0, 1.0, 1.0], r"configuration spacing \[0, 1.0, 1.0\] is not a list of 3 positive numbers"),
    ("patch_size", [41, 56, 40], r"configuration '3d_fullres': patch_size \[41, 56, 40\] is not a multiple of \[8, 8, 8\], which network 'unet' needs"),
    ("patch_size", [0, 56, 40], r"configuration patch_size \[0, 56, 40\] is not a list of 3 positive numbers \(whole voxels"),
    ("batch_size", 0, r"configuration '3d_fullres': batch_size 0 is not a positive integer"),
    # integers beyond any float (a JSON number of 401 digits) raised an internal OverflowError
    pytest.param("batch_size", 10**400, r"configuration '3d_fullres': batch_size 10+ is not a positive integer",
                 id="batch-of-401-digits"),
    pytest.param("spacing", [10**400, 1.0, 1.0], r"configuration spacing \[10+, 1.0, 1.0\] is not a list of 3 positive numbers",
                 id="spacing-of-401-digits"),
    # the costs --transfer-plans-from refits a schedule with: internal TypeError/ValueError, or 1 iteration for -1
    ("predicted_seconds_per_iteration", "fast", r"configuration '3d_fullres': predicted_seconds_per_iteration 'fast' is not a number >= 0 \(or null\)"),
    ("predicted_seconds_per_iteration", float("nan"), r"configuration '3d_fullres': predicted_seconds_per_iteration nan is not a number >= 0"),
    ("recipe_seconds_per_iteration", -1.0, r"configuration '3d_fullres': recipe_seconds_per_iteration -1.0 is not a number >= 0"),
    ("memory_model", 5, r"configuration '3d_fullres': memory_model 5 is not a JSON object \(or null\)"),
    # other keys, or a count that is no number, stopped training with an internal TypeError
    ("memory_model", {"bytes": 5}, r"configuration '3d_fullres': memory_model \{'bytes': 5\} is not a JSON object \(or null\) "
                                   r"holding numbers for parameter_bytes, activation_intercept, activation_per_voxel"),
    ("memory_model", {"parameter_bytes": "5", "activation_intercept": 0.0, "activation_per_voxel": 1.0},
     r"configuration '3d_fullres': memory_model .* holding numbers for"),
    ("memory_model", {"parameter_bytes": 5, "activation_intercept": 0.0, "activation_per_voxel": -1.0},
     r"configuration '3d_fullres': memory_model .* >= 0 except the intercept"),
    ("normalization", [{"scheme": "zcore"}], r"configuration '3d_fullres': normalization\[0\] scheme 'zcore' is not one of ct, zscore"),
    ("normalization", [{"scheme": "ct", "clip": [-100.0, 200.0], "mean": 10.0, "std": None}],
     r"configuration '3d_fullres': normalization\[0\] \(ct\) needs clip \[low, high\] with low <= high, a finite mean and std >= 0, got .* std None"),
    ("normalization", [], r"configuration '3d_fullres': normalization must list one entry per channel \(1\)"),
    ("resampling", {"image_order": 7, "label_order": 1, "order_z": 0, "separate_z_anisotropy_threshold": 3.0},
     r"configuration '3d_fullres': resampling .* needs image_order, label_order and order_z in 0..5"),
])
def test_hand_edited_spacing_or_patch_is_refused_naming_file_and_key(tmp_path, key, value, problem):
    """A negative spacing was preprocessed into one-slice cases, a patch the strides do not divide
    crashed training inside the network (reported as a bf16 fault, then an internal error), and a
    misspelt normalization failed every case on its own without naming the plans file."""
    plans = plan(MRI_SMALL, configs=["3d_fullres"])
    plans["configurations"]["3d_fullres"][key] = value
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(plans))
    with pytest.raises(PlanError, match=rf"edited.json: {problem}.*re-run `autoseg plan`"):
        load_plans(bad)


def test_a_negative_memory_model_intercept_is_a_plan(tmp_path):
    """The fitted activation line's intercept may be negative (nnFormer's plan: -5632 bytes); the memory model
    check took it for a hand edit and refused every nnFormer model zip at import."""
    plans = plan(MRI_SMALL, configs=["3d_fullres"])
    plans["configurations"]["3d_fullres"]["memory_model"] = {
        "parameter_bytes": 974204, "activation_intercept": -5632.0, "activation_per_voxel": 205.5, "optimizer_buffers": 1}
    assert load_plans(_written(tmp_path, plans))["configurations"]["3d_fullres"]["memory_model"]["activation_intercept"] == -5632.0


@pytest.mark.parametrize("budget", [{"seconds": "600"}, [600], {"seconds": float("nan")}, {"seconds": -5}])
def test_a_hand_edited_plan_budget_is_refused_naming_the_file(tmp_path, budget):
    """Training takes the plan's budget when given neither --epochs nor --budget: "600" or [600] stopped it with an
    internal TypeError or AttributeError, and NaN trained towards a deadline of NaN."""
    plans = plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=600)
    assert load_plans(_written(tmp_path, plans))["budget"]["seconds"] == 600
    plans["budget"] = budget
    with pytest.raises(PlanError, match=r"edited.json: budget .* must be a JSON object whose \"seconds\" is a number > 0, "
                                        r"or null for no budget; re-run `autoseg plan`"):
        load_plans(_written(tmp_path, plans))


def _written(folder, plans):
    path = folder / "edited.json"
    path.write_text(json.dumps(plans))
    return path


def test_a_fractional_width_in_a_plans_file_gives_its_advice_once(tmp_path):
    plans = plan(MRI_SMALL, configs=["3d_fullres"])
    plans["configurations"]["3d_fullres"]["network"]["topology"]["features_per_stage"][0] = 32.5
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(plans))
    with pytest.raises(PlanError, match=r"edited.json: configuration '3d_fullres': network topology in the plan is "
                                        r"malformed .*32\.5 is not a whole number.*\); re-run `autoseg plan` to write") as error:
        load_plans(bad)
    assert str(error.value).count("re-run") == 1


def test_transfer_from_plans_naming_an_unknown_network_is_refused_naming_the_source(tmp_path):
    """A source plan naming network 'unetx' was transferred as is; training then said only "unknown network"."""
    from autoseg.planning.transfer import transfer_plans

    source = plan(MRI_SMALL, configs=["3d_fullres"])
    source["configurations"]["3d_fullres"]["network"]["name"] = "unetx"
    with pytest.raises(PlanError, match=r"source.json: configuration '3d_fullres': unknown network 'unetx'; choose one of: .*unet"):
        transfer_plans(plan(MRI_SMALL, configs=["3d_fullres"]), source, "source.json")


@pytest.mark.parametrize("forward, backward", [([0, 0, 1], [0, 1, 2]), ([0, 1], [0, 1]), ([2, 0, 1], [2, 0, 1]), ("abc", [0, 1, 2])])
def test_a_hand_edited_transpose_is_refused_naming_the_file(tmp_path, forward, backward):
    """Was: every case failed in numpy's words ('repeated axis in transpose', 'axes don't match array')."""
    plans = plan(MRI_SMALL, configs=["3d_fullres"])
    plans["transpose_forward"], plans["transpose_backward"] = forward, backward
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(plans))
    with pytest.raises(PlanError, match=r"edited.json: transpose_forward .* and transpose_backward .* must be permutations "
                       r"of 0, 1, 2 and each other's inverse; re-run `autoseg plan`"):
        load_plans(bad)


def test_a_case_too_large_as_stored_is_not_blamed_on_its_header():
    """1500^3 voxels at 0.3 mm, planned at 0.3 mm, was told to fix its header ('microns or cm instead of mm?')."""
    fp = fingerprint([[0.3, 0.3, 0.3]] * 4, [[1500, 1500, 1500]] * 4, channels={"0": "CT"})
    with pytest.raises(PlanError, match=r"case 0 holds 1500 x 1500 x 1500 = 3.38e\+09 voxels after cropping, more than one "
                       r"case may hold \(2.15e\+09, 8 GiB per float32 channel\); crop it to the region of interest"):
        plan(fp)


def test_a_3d_only_family_on_a_2d_dataset_says_so():
    """Was: "configuration(s) (none) cannot be planned for this 2D dataset ...; possible: none"."""
    with pytest.raises(PlanError, match=r"network 'nnformer' builds 3D networks only and this dataset is 2D: nothing can "
                       r"be planned; choose a family with 2D in `autoseg networks`"):
        plan(DATA_2D, network="nnformer")


def test_plan_table_lists_every_configuration():
    table = format_plan_table(plan(MRI_SMALL))
    lines = table.splitlines()
    assert lines[1].split() == ["configuration", "spacing", "(mm)", "median", "shape", "patch", "batch", "network",
                                "stages", "features", "memory", "s/iter", "iterations", "total"]
    row = lines[4].split()
    assert row[:8] == ["3d_fullres", "1x1x1", "36x50x35", "40x56x40", "7", "unet", "4", "32-256"]
    assert lines[-1].startswith("note: 3d_lowres: not needed")


def test_plan_table_gives_a_small_memory_in_mib() -> None:
    """A small network on a small patch showed 'memory 0.00 GiB'."""
    plans = plan(MRI_SMALL)
    plans["configurations"]["3d_fullres"]["predicted_memory_bytes"] = 3 * 2**20
    row = format_plan_table(plans).splitlines()[4]
    assert row.startswith("3d_fullres") and "  3 MiB  " in row


def test_a_3d_patch_one_voxel_thick_is_noted() -> None:
    """Two-slice volumes: 3d_fullres was planned with a [1, y, x] patch, a 2D model at 3D cost, without a word."""
    from autoseg.planning.planner import _flat_3d_patch_notes

    configurations = {"2d": {"patch_size": [32, 32]}, "3d_fullres": {"patch_size": [1, 32, 32]}}
    assert _flat_3d_patch_notes(configurations, 60.0) == [
        "3d_fullres: its patch [1, 32, 32] is one voxel thick, so the 3D network sees no context across that axis and "
        "does what 2d does at more cost; compare them by cross-validation (find-best), or give a larger --budget"
    ]
    assert _flat_3d_patch_notes({"3d_fullres": {"patch_size": [2, 32, 32]}}, None) == []
    assert plan(fingerprint([[3.0, 1.0, 1.0]] * 10, [[2, 96, 96]] * 10))["configurations"]["3d_fullres"]["patch_size"][0] == 2


def test_single_slice_volumes_say_why_no_3d_configuration() -> None:
    """NIfTI cases of one slice each planned 2d alone, the table showing no 3D row and no reason."""
    assert "3d_fullres: not planned, every case holds a single slice (after cropping): a 2D dataset" in plan(DATA_2D)["notes"]
    natural = dict(DATA_2D, file_ending=".png")
    assert not [n for n in plan(natural)["notes"] if "single slice" in n]


@pytest.mark.parametrize("slice_spacing", [0.5, 5.0])
def test_single_slice_volumes_slice_along_their_single_slice_axis_whichever_it_is(slice_spacing) -> None:
    """A single sagittal slice in RAS order holds its one voxel last: it was planned 3D (patch 32x32x1) and
    a 2d configuration slicing along axis 0 (patch 24x1, strips one voxel wide)."""
    fp = fingerprint([[0.9, 0.9, slice_spacing]] * 10, [[40, 44, 1]] * 10)
    fp["is_2d"] = False  # as fingerprints written before the single-slice axis was looked for on every axis
    plans = plan(fp)
    assert list(plans["configurations"]) == ["2d"]
    assert plans["transpose_forward"] == [2, 0, 1] and plans["transpose_backward"] == [1, 2, 0]
    config = plans["configurations"]["2d"]
    assert config["spacing"][1:] == [0.9, 0.9] and config["patch_size"] == [40, 48]
    assert single_slice_axis([[40, 44, 1], [38, 50, 1]]) == 2
    assert single_slice_axis([[40, 44, 1], [1, 50, 3]]) is None


def test_the_spacing_ladder_lands_on_whole_multiples() -> None:
    """Was: two sqrt(2) steps gave 2.0000000000000004 mm, so a 35-voxel axis at 1 mm was resampled to 17 voxels
    (35 / 2.0000000000000004 rounds down) where 2 mm gives nnU-Net's 18."""
    from autoseg.planning.budget_search import spacing_ladder
    from autoseg.preprocessing.resampling import new_shape

    ladder = spacing_ladder([1.0, 1.0, 1.0], lambda spacing: [100.0] * 3, 3)
    assert ladder[2] == [2.0, 2.0, 2.0] and ladder[4] == [4.0, 4.0, 4.0]
    assert list(new_shape([35, 51, 35], [1.0, 1.0, 1.0], ladder[2])) == [18, 26, 18]


def test_a_budget_the_fixed_parts_use_up_is_refused():
    """Was: --budget 5s planned the largest network at 0 iterations (one step, 13 s) with only a note."""
    with pytest.raises(PlanError, match=r"3d_fullres: --budget 5 s leaves no time to train on this machine: a fold's fixed "
                                        r"parts \(startup, preprocessing, checkpoints, final validation\) take about 2\d s"):
        plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=5.0)
    assert plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=60.0)["configurations"]["3d_fullres"]["num_iterations"] > 0


def test_plan_that_fingerprints_prints_the_fingerprint_warnings_once(small_dataset, roots, capsys):
    """autoseg plan run on a dataset not yet fingerprinted fingerprinted it without its warnings (cases stored in
    another axis order): a user who ran plan directly never saw them. Reading an existing fingerprint.json prints
    none (autoseg fingerprint, or the plan that wrote it, warned then)."""
    from autoseg.planning.planner import plan_dataset
    from preprocessing_helpers import store_hippocampus_006_in_another_axis_order

    store_hippocampus_006_in_another_axis_order(small_dataset)
    plan_dataset("Dataset999", gpu_memory_gb=8, configs=["2d"], num_workers=1)
    printed = capsys.readouterr().err
    assert printed.count("WARNING") == 1, printed
    assert printed.startswith("WARNING 1 case(s) have their coarsest spacing on another array axis than the 3 of 4 "
                              "that have it on axis 0: hippocampus_006 (1, 1, 3) mm;"), printed
    assert printed.endswith("in the other cases' axis order, then fingerprint again\n"), printed
    plan_dataset("Dataset999", gpu_memory_gb=8, configs=["2d"], num_workers=1, plans_name="againPlans")
    assert "WARNING" not in capsys.readouterr().err
