"""Plans for the shared real datasets at 8 GB, pinned by values reasoned from the planning rules.

The fingerprints are computed once per session from every training image of the real datasets
(tests/shared_fingerprints.py); the plans are made for an 8 GB CUDA GPU that the test machine need not
have (``--gpu-memory 8`` without a GPU: memory modelled, nothing timed). Each expected value is derived
in the comments from the rules of docs/planning.md; docs/planning.md §4 sets the same plans beside
nnU-Net v2's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.planning import constants as C
from autoseg.planning import rules
from autoseg.planning.memory import MemoryModel
from autoseg.planning.planner import build_plans
from autoseg.planning.plans import load_plans
from cli_helpers import runner
from conftest import SHARED_DATA
from shared_fingerprints import planning_fingerprint

from autoseg.cli import app

GIB = 2**30
USABLE = 8 * GIB * C.GPU_MEMORY_USABLE_FRACTION
HIPPOCAMPUS, ACDC, BRATS = "Dataset004_Hippocampus", "Dataset027_ACDC", "Dataset905_BraTS2015Mini"
DRIVE, EM = "Dataset906_DRIVE", "Dataset907_EMMembrane"


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("preprocessed")


@pytest.fixture(scope="module")
def fingerprints(preprocessed: Path):
    """name -> planning fingerprint of the real dataset, computed on first use and written where
    ``autoseg plan`` reads it."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            if not (SHARED_DATA / name / "dataset.json").is_file():
                pytest.skip(f"{SHARED_DATA / name} is not available")
            cache[name] = planning_fingerprint(SHARED_DATA / name)
            (preprocessed / name).mkdir(exist_ok=True)
            (preprocessed / name / "fingerprint.json").write_text(json.dumps(cache[name]))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def plans_8gb(fingerprints, preprocessed: Path):
    """name -> plans for an 8 GB GPU not on this machine (calibrations cached beside the fingerprint)."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            description = json.loads((SHARED_DATA / name / "dataset.json").read_text())
            cache[name] = build_plans(
                fingerprints(name), memory_budget_bytes=USABLE, device="cuda", device_present=False,
                budget_record={"device": "cuda", "device_name": None, "gpu_memory_gb": 8.0},
                regions_class_order=description.get("regions_class_order"),
                cache_dir=preprocessed / name / "planning_cache",
            )
        return cache[name]

    return get


def dataset_voxels(fingerprint: dict, spacing) -> float:
    return float(sum(np.prod(rules.shape_at_spacing(s, sp, spacing))
                     for s, sp in zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])))


def expected_batch(config: dict, voxels: float) -> int:
    """Batch rule: what the memory model fits in 80% of 8 GB, capped at 5% of the dataset, at least 2."""
    model = MemoryModel(**config["memory_model"])
    cap = math.floor(C.MAX_BATCH_DATASET_FRACTION * voxels / np.prod(config["patch_size"]))
    return max(C.MIN_BATCH_SIZE, min(model.max_batch(config["patch_size"], USABLE), cap))


def topology(config: dict) -> dict:
    return config["network"]["topology"]


def check_common(config: dict, fingerprint: dict) -> None:
    """Rules every configuration obeys: divisible patch within the median shape rounded up, memory fits."""
    stride = np.prod(np.asarray(topology(config)["strides"]), axis=0)
    patch, median = np.asarray(config["patch_size"]), np.asarray(config["median_shape"][-len(stride):])
    assert np.all(patch % stride == 0)
    assert np.all(patch <= np.ceil(median / stride) * stride)
    assert config["batch_size"] >= C.MIN_BATCH_SIZE
    assert config["predicted_memory_bytes"] <= USABLE
    assert config["planned_for"] == {"device": "cuda", "device_name": None, "gpu_memory_gb": 8.0,
                                     "memory_bytes_usable": int(USABLE), "timed_on_device": False}


def test_hippocampus(fingerprints, plans_8gb):
    fp, plans = fingerprints(HIPPOCAMPUS), plans_8gb(HIPPOCAMPUS)
    # every case is 1 mm isotropic: the median, no anisotropy, nothing to transpose
    assert plans["target_spacing"] == [1.0, 1.0, 1.0] and plans["transpose_forward"] == [0, 1, 2]
    assert list(plans["configurations"]) == ["2d", "3d_fullres"]  # the fullres patch covers the median image
    full, flat = plans["configurations"]["3d_fullres"], plans["configurations"]["2d"]
    # nothing is cropped (relative size 1 >= 0.75): z-score over the whole image
    assert full["normalization"] == [{"scheme": "zscore", "use_mask": False, "clip": None, "mean": None, "std": None}]
    # median 36x50.5x35; the 256^3 start is clipped to 36x50x35; each axis halves 3 times before
    # dropping below 8 (36-18-9-5, 50-25-13-7, 35-18-9-5): 4 stages, stride 8, patch rounded up to 40x56x40
    assert full["median_shape"] == [36.0, 50.5, 35.0]
    assert full["patch_size"] == [40, 56, 40]
    assert topology(full)["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert topology(full)["kernel_sizes"] == [[3, 3, 3]] * 4
    assert topology(full)["features_per_stage"] == [32, 64, 128, 256]
    # a small network: memory allows far more than the 5% cap of 13.08M voxels / 89600 = 7
    voxels = dataset_voxels(fp, plans["target_spacing"])
    assert full["batch_size"] == expected_batch(full, voxels) == 7
    # 2d: 50x35 -> 56x40 by the same halvings; the cap 0.05 x 13.08M / 2240 = 292
    assert flat["patch_size"] == [56, 40] and flat["batch_size"] == expected_batch(flat, voxels) == 292
    assert topology(flat)["strides"] == [[1, 1]] + [[2, 2]] * 3
    # Anterior (1) lies at lower indices than Posterior (2) along axis 0 and at higher ones along axis
    # 1 in all 208 cases: training mirrors axis 2 only (the 2d slices' axis 1)
    assert full["mirror_axes"] == [2] and flat["mirror_axes"] == [1]
    assert sum("mirroring: off along image axis" in n and "in 208 of 208 cases" in n for n in plans["notes"]) == 2
    for config in (full, flat):
        check_common(config, fp)


def test_acdc(fingerprints, plans_8gb):
    fp, plans = fingerprints(ACDC), plans_8gb(ACDC)
    # 10 mm slices vs 1.5625 mm in-plane: > 3x coarser and 9 slices x 3 < 216, so the anisotropy rule
    # takes the 10th percentile of the slice spacings: every case has 10 mm
    assert plans["target_spacing"] == [10.0, 1.5625, 1.5625]
    assert plans["transpose_forward"] == [0, 1, 2]  # the coarse axis is already first
    assert list(plans["configurations"]) == ["2d", "3d_fullres"]
    full, flat = plans["configurations"]["3d_fullres"], plans["configurations"]["2d"]
    assert full["normalization"][0]["scheme"] == "zscore" and not full["normalization"][0]["use_mask"]
    # start 9x256x216 (median). In-plane axes pool alone while z is >= 2x coarser (1.5625 -> 3.125
    # -> 6.25 mm: 10/6.25 < 2 from the 3rd stage on, when z gets kernel 3 and pools once, 9 -> 5);
    # then y, x pool until x has 7 < 8 voxels and y alone (8) is below 12: 6 stages, stride 2x32x16
    assert topology(full)["strides"] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert topology(full)["kernel_sizes"] == [[1, 3, 3], [1, 3, 3]] + [[3, 3, 3]] * 4
    assert topology(full)["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    # 9x256x216 rounded up to the stride: nnU-Net's 10x256x224, which fits 80% of 8 GB at batch 2
    assert full["patch_size"] == [10, 256, 224]
    voxels = dataset_voxels(fp, plans["target_spacing"])
    # the cap is 0.05 x 82.9M / 573440 = 7 (nnU-Net's batch); autoseg's float32 count of the saved
    # activations fits 4 in 6.4 GiB (docs/planning.md §4: why it is below nnU-Net's 7)
    assert full["batch_size"] == expected_batch(full, voxels) == 4
    # 2d: 256x216 -> 6 stages (same halvings in-plane), patch 256x224
    assert flat["patch_size"] == [256, 224] and topology(flat)["strides"] == [[1, 1]] + [[2, 2]] * 5
    assert topology(flat)["features_per_stage"] == [32, 64, 128, 256, 512, 512]
    assert flat["batch_size"] == expected_batch(flat, voxels)
    # the right ventricle (1) lies at lower x than the myocardium (2) in all 160 cases: x is not mirrored
    assert full["mirror_axes"] == [0, 1] and flat["mirror_axes"] == [0]
    assert any("off along image axis 2" in n and "RV (1) lies at lower indices than" in n for n in plans["notes"])
    for config in (full, flat):
        check_common(config, fp)


def test_brats(fingerprints, plans_8gb):
    fp, plans = fingerprints(BRATS), plans_8gb(BRATS)
    assert plans["target_spacing"] == [1.0, 1.0, 1.0] and plans["transpose_forward"] == [0, 1, 2]
    full, flat = plans["configurations"]["3d_fullres"], plans["configurations"]["2d"]
    # two channels, each z-scored; the source's background is not 0, so nothing is cropped (no mask)
    assert [n["scheme"] for n in full["normalization"]] == ["zscore", "zscore"]
    assert not any(n["use_mask"] for n in full["normalization"])
    assert plans["regions_class_order"] == [2, 1, 4]
    assert full["median_shape"] == [155.0, 240.0, 240.0]
    # the whole 155x240x240 volume does not fit: the patch shrinks (largest patch/median axis first)
    # to the first one that fits at batch 2; nnU-Net's 96x160x160 does not fit autoseg's count
    model = MemoryModel(**full["memory_model"])
    assert full["patch_size"] == [96, 128, 128] and full["batch_size"] == 2
    assert model.predict([96, 160, 160], 2) > USABLE
    assert topology(full)["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]]
    # lowres would have to cover 25% of the image; at 1.03x steps it saves < 2x voxels: dropped
    assert "3d_lowres" not in plans["configurations"]
    assert any("3d_lowres: dropped" in note for note in plans["notes"])
    # 2d: 240 halves (rounding up) 240-120-60-30-15-8-4: 7 stages, stride 64, patch 256x256
    assert flat["patch_size"] == [256, 256] and topology(flat)["strides"] == [[1, 1]] + [[2, 2]] * 6
    voxels = dataset_voxels(fp, plans["target_spacing"])
    assert flat["batch_size"] == expected_batch(flat, voxels)
    # six cases cannot show a fixed order (six in the same order happen by chance once in 32): all axes
    assert full["mirror_axes"] == [0, 1, 2] and flat["mirror_axes"] == [0, 1]
    for config in (full, flat):
        check_common(config, fp)


def test_drive(fingerprints, plans_8gb):
    fp, plans = fingerprints(DRIVE), plans_8gb(DRIVE)
    # 20 RGB photographs, one PNG per case holding R, G, B: three channels of one 584x565 slice
    assert fp["is_2d"] and plans["target_spacing"] == [999.0, 1.0, 1.0] and list(plans["configurations"]) == ["2d"]
    flat = plans["configurations"]["2d"]
    assert [n["scheme"] for n in flat["normalization"]] == ["zscore"] * 3
    assert flat["median_shape"][-2:] == [584.0, 565.0]
    # 584-292-146-73-37-19-10-5 and 565-283-142-71-36-18-9-5: 7 halvings each before a map would go
    # below 4 voxels: 8 stages, stride 128, the median rounded up to 640x640 (nnU-Net's patch)
    assert flat["patch_size"] == [640, 640] and topology(flat)["strides"] == [[1, 1]] + [[2, 2]] * 7
    assert topology(flat)["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512, 512]
    # 5% of 20 images is less than one patch: the batch is the minimum, 2
    assert flat["batch_size"] == expected_batch(flat, dataset_voxels(fp, plans["target_spacing"])) == 2
    assert flat["mirror_axes"] == [0, 1]  # one foreground label: no pair to order
    check_common(flat, fp)


def test_em_membrane(fingerprints, plans_8gb):
    fp, plans = fingerprints(EM), plans_8gb(EM)
    # 30 grey 512x512 PNG slices, read as nnU-Net does: one slice of spacing 999 x 1 x 1
    assert fp["is_2d"] and plans["target_spacing"] == [999.0, 1.0, 1.0] and plans["transpose_forward"] == [0, 1, 2]
    assert list(plans["configurations"]) == ["2d"]
    flat = plans["configurations"]["2d"]
    assert flat["normalization"][0]["scheme"] == "zscore" and not flat["normalization"][0]["use_mask"]
    # 512 halves 7 times before a map would drop below 4 voxels (512 ... 8 -> 4): 8 stages, stride 128
    assert flat["patch_size"] == [512, 512] and topology(flat)["strides"] == [[1, 1]] + [[2, 2]] * 7
    assert topology(flat)["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512, 512]
    # 5% of 30 slices is 1.5 patches: the batch is the minimum, 2
    assert flat["batch_size"] == expected_batch(flat, dataset_voxels(fp, plans["target_spacing"])) == 2
    check_common(flat, fp)


def test_plan_for_a_gpu_on_a_machine_without_one(fingerprints, preprocessed, monkeypatch):
    """`autoseg plan Dataset027_ACDC --gpu-memory 8` with no CUDA: the GPU plan, memory modelled."""
    fingerprints(ACDC)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("AUTOSEG_RAW", str(SHARED_DATA))  # read only: planning reads dataset.json
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    result = runner.invoke(app, ["plan", ACDC, "--gpu-memory", "8", "--plans-name", "gpu8"])
    assert result.exit_code == 0, result.output
    assert "device cuda 8 GB, usable memory 6.4 GiB" in result.stdout
    assert "memory is modelled (saved-tensor count on the meta device), not measured there" in result.stdout
    plans = load_plans(preprocessed / ACDC / "gpu8.json")
    assert plans["budget"] == {"device": "cuda", "device_name": None, "gpu_memory_gb": 8.0,
                               "memory_bytes_usable": int(USABLE), "seconds": None}
    full = plans["configurations"]["3d_fullres"]
    assert full["planned_for"]["device"] == "cuda" and full["planned_for"]["timed_on_device"] is False
    # not timed: no seconds, nnU-Net's schedule
    assert full["predicted_seconds_per_iteration"] is None and full["num_iterations"] == C.MAX_ITERATIONS
    assert full["patch_size"] == [10, 256, 224]

    for args, message in (
        (["--device", "cuda"], "CUDA is not available on this machine; give --gpu-memory GB to plan for a GPU elsewhere"),
        (["--device", "cuda", "--gpu-memory", "8", "--budget", "1h"], "drop --budget to plan for a GPU elsewhere"),
    ):
        failed = runner.invoke(app, ["plan", ACDC, "--plans-name", "other", *args])
        assert failed.exit_code == 2 and message in failed.output
        assert not (preprocessed / ACDC / "other.json").exists()


def test_an_adversarial_network_for_a_region_dataset_is_refused_at_plan_time(preprocessed, monkeypatch):
    """`plan 905 --network vox2vox` and preprocess accepted BraTS' regions; only train refused them."""
    monkeypatch.setenv("AUTOSEG_RAW", str(SHARED_DATA))  # read only: the refusal reads dataset.json alone
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    failed = runner.invoke(app, ["plan", BRATS, "--network", "vox2vox", "--plans-name", "adversarial"])
    assert failed.exit_code == 2, failed.output
    assert "vox2vox trains adversarially on softmax outputs; region-based datasets need another network" in failed.output
    assert not (preprocessed / BRATS / "adversarial.json").exists()
