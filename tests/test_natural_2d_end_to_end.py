"""A 2D RGB dataset in nnU-Net's natural-image layout through the whole command line (issue 13): crops of
real DRIVE fundus photographs (one RGB ``<case>_0000.png`` per case) -> verify -> fingerprint -> plan
(2d) -> preprocess -> train 2 iterations -> find-best -> report -> predict held-out RGB and RGBA PNGs of
another size -> evaluate without a dataset. Each step checks what it wrote."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import read_image
from cli_helpers import TRAIN_SETTINGS, autoseg, set_options
from conftest import DRIVE, make_drive_subset

DATASET = "Dataset996_DriveCrop"
TRAIN_CASES = ["drive_21", "drive_22", "drive_23", "drive_24", "drive_25"]  # 5 folds need 5 cases
MODEL = "unet__autosegPlans__2d"
HELD_OUT_CROP = (slice(200, 270), slice(300, 380))  # 70x80: not the training crops' 64x64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def held_out_folders(base: Path) -> tuple[Path, Path]:
    """drive_30 as RGB and drive_31 as RGBA (alpha dropped: 3 channels declared), labels apart."""
    from skimage import io as skio

    images, labels = base / "held_out_images", base / "held_out_labels"
    images.mkdir()
    labels.mkdir()
    for case, alpha in (("drive_30", False), ("drive_31", True)):
        rgb = skio.imread(DRIVE / "imagesTr" / f"{case}_0000.png")[HELD_OUT_CROP]
        if alpha:
            rgb = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)
        skio.imsave(images / f"{case}_0000.png", rgb, check_contrast=False)
        mask = skio.imread(DRIVE / "labelsTr" / f"{case}.png")[HELD_OUT_CROP]
        skio.imsave(labels / f"{case}.png", mask, check_contrast=False)
    return images, labels


def reference_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's throughput probe replaced by the CPU reference rate, so the plan does not depend on
    this machine's load (load robustness has its own tests in test_budget.py)."""
    import torch

    from autoseg.planning import compute_budget

    rate = compute_budget.reference_seconds_per_gflop(torch.device("cpu"))
    model = compute_budget.TimingModel("reference cpu", 0.0, rate, rate, rate, rate)
    monkeypatch.setattr(compute_budget, "measure_timing", lambda *args, **kwargs: model)


def check_plan(preprocessed: Path) -> None:
    """2D data gets only the 2d configuration, at the images' 1x1 pixel grid and their 3 channels; a
    5-minute budget at the reference speed affords the whole 64x64 image as the patch."""
    autoseg("fingerprint", DATASET, "-np", 1)
    fingerprint = json.loads((preprocessed / DATASET / "fingerprint.json").read_text())
    assert fingerprint["spacings"] == [[999.0, 1.0, 1.0]] * len(TRAIN_CASES)
    assert sorted(fingerprint["foreground_intensity_properties_per_channel"]) == ["0", "1", "2"]
    autoseg("plan", DATASET, "--budget", "5m", "-np", 1)
    plans = json.loads((preprocessed / DATASET / "autosegPlans.json").read_text())
    assert list(plans["configurations"]) == ["2d"]
    configuration = plans["configurations"]["2d"]
    assert configuration["spacing"][-2:] == [1.0, 1.0] and configuration["patch_size"] == [64, 64]


def check_report(results: Path) -> None:
    """find-best on fold 0 and the report: box plot, training curves and the one validation case's overlay."""
    autoseg("find-best", DATASET, "-f", 0, "--no-ensembles", "-np", 1)
    printed = autoseg("report", DATASET, "-np", 1)
    document = (results / DATASET / "report.html").read_text()
    assert printed.strip() == f"written: {results / DATASET / 'report.html'}"
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", document)
    assert len(images) == 3 and all(base64.b64decode(data).startswith(PNG_SIGNATURE) for data in images)
    assert "only: drive_" in document


def test_rgb_png_dataset_end_to_end(roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_drive_subset(roots["raw"], TRAIN_CASES, DATASET)
    assert f"{DATASET}: 5 case(s) checked, no problems found" in autoseg("verify", DATASET, "-np", 1)
    reference_speed(monkeypatch)
    check_plan(roots["preprocessed"])
    autoseg("preprocess", DATASET, "-np", 1)
    store = roots["preprocessed"] / DATASET / "autosegPlans_2d"
    assert sorted(p.stem for p in store.glob("*.json")) == TRAIN_CASES
    assert sorted(p.name for p in (roots["preprocessed"] / DATASET / "gt_segmentations").iterdir()) == [
        f"{c}.png" for c in TRAIN_CASES
    ]

    output = autoseg("train", DATASET, "2d", 0, "--epochs", 1, *set_options(TRAIN_SETTINGS), "--workers", 0)
    assert "trained 2 iterations in 1 epochs" in output and "validation Dice of 1 cases" in output
    model_folder = roots["results"] / DATASET / MODEL
    validation = sorted((model_folder / "fold_0" / "validation").glob("*.png"))
    assert len(validation) == 1 and read_image(validation[0])[0].shape == (1, 64, 64)
    check_report(roots["results"])

    images, labels = held_out_folders(tmp_path)
    predictions = tmp_path / "predictions"
    autoseg("predict", "-i", images, "-o", predictions, "-m", model_folder, "-f", 0, "--no-tta")
    for case in ("drive_30", "drive_31"):
        seg, geometry = read_image(predictions / f"{case}.png")
        assert seg.shape == (1, 70, 80) and seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1}
        assert geometry.spacing == (999.0, 1.0, 1.0)
    printed = autoseg("evaluate", "-p", predictions, "-r", labels, "-np", 1)
    # the labels of the model's dataset.json, found through the predictions' predict_info.json (9165329)
    assert "evaluating the labels found in the references" not in printed and "vessel" in printed
    summary = json.loads((predictions / "summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["classes"] == {"vessel": [1]}
    assert all(0.0 <= row["metrics"]["vessel"]["dice"] <= 1.0 for row in summary["metric_per_case"])
