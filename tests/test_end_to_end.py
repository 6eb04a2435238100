"""The whole pipeline through the command line, on real Hippocampus cases with a tiny budget (issue 8,
"Done when"): plan (hand-made, tiny) -> preprocess -> train folds 0-4 -> find-best -> postprocess
determine/apply -> export-model -> import-model into a clean results root -> predict with the command
find-best printed -> evaluate -> report. Each step checks what it wrote, not only that it ran."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.dataset.imageio import read_image
from autoseg.postprocessing.determine import apply_postprocessing
from autoseg.training.checkpoints import load_checkpoint
from cli_helpers import TRAIN_SETTINGS, autoseg, set_options
from conftest import HIPPOCAMPUS, make_hippocampus_subset
from preprocessing_helpers import make_configuration, make_plans
from training_helpers import CASES, PATCH, TINY_TOPOLOGY

DATASET = "Dataset997_EndToEnd"
TRAIN_CASES = CASES + ["hippocampus_017", "hippocampus_019"]  # 10 cases: 2 validation cases per fold
HELD_OUT = ["hippocampus_020", "hippocampus_023"]  # never seen by training
FOLDS = ["0", "1", "2", "3", "4"]
MODEL = "unet__autosegPlans__3d_fullres"
CROSSVAL = "crossval_folds_0_1_2_3_4"
CHECKPOINT = "checkpoint_final.safetensors"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def declared_labels() -> set[int]:
    return set(json.loads((HIPPOCAMPUS / "dataset.json").read_text())["labels"].values())


def assert_dice_values(summary: dict, num_cases: int) -> None:
    """Every case and class has a Dice in [0, 1] (each reference holds both classes, so none is NaN)."""
    assert summary["num_cases"] == len(summary["metric_per_case"]) == num_cases
    for row in summary["metric_per_case"]:
        assert set(row["metrics"]) == {"Anterior", "Posterior"}
        for metrics in row["metrics"].values():
            assert isinstance(metrics["dice"], float) and 0.0 <= metrics["dice"] <= 1.0, row
    for metrics in summary["mean"].values():
        assert 0.0 <= metrics["dice"] <= 1.0


def write_tiny_plans(preprocessed: Path) -> None:
    """The training tests' tiny plan (1 mm, 8-16-32 UNet, 16^3 patch) for this dataset."""
    configuration = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
    configuration["network"]["topology"] = TINY_TOPOLOGY
    plans = make_plans({"3d_fullres": configuration})
    plans["dataset_name"] = DATASET
    (preprocessed / DATASET).mkdir(parents=True)
    (preprocessed / DATASET / "autosegPlans.json").write_text(json.dumps(plans))


def held_out_folders(base: Path) -> tuple[Path, Path]:
    """Images and labels of the held-out cases, in separate folders as a user would have them."""
    images, labels = base / "held_out_images", base / "held_out_labels"
    images.mkdir()
    labels.mkdir()
    for case in HELD_OUT:
        shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz", images)
        shutil.copy(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz", labels)
    return images, labels


def train_five_folds(results: Path) -> Path:
    """Train folds 0-4 (1 epoch of 2 iterations); each validates its 2 cases with probabilities."""
    settings = set_options(TRAIN_SETTINGS)
    validated: list[str] = []
    for fold in FOLDS:
        output = autoseg("train", DATASET, "3d_fullres", fold, "--epochs", 1, *settings, "--workers", 0, "--save-probabilities")
        assert "trained 2 iterations in 1 epochs" in output
        assert "validation Dice of 2 cases" in output
        validation = results / DATASET / MODEL / f"fold_{fold}" / "validation"
        cases = sorted(p.name.removesuffix(".nii.gz") for p in validation.glob("*.nii.gz"))
        assert len(cases) == 2 and all((validation / f"{c}.npz").is_file() for c in cases)
        assert_dice_values(json.loads((validation / "summary.json").read_text()), 2)
        validated += cases
    assert sorted(validated) == sorted(TRAIN_CASES)  # the folds partition the training cases
    return results / DATASET / MODEL


def check_find_best(results: Path, model_folder: Path) -> list[str]:
    """find-best ranks the one configuration and prints a predict command for it; returns that command."""
    output = autoseg("find-best", DATASET)
    text = (results / DATASET / "inference_instructions.txt").read_text()
    assert output.strip() == text.strip()
    instructions = json.loads((results / DATASET / "inference_instructions.json").read_text())
    assert [c["name"] for c in instructions["candidates"]] == [MODEL]
    assert instructions["best"]["name"] == MODEL and instructions["num_cases"] == len(TRAIN_CASES)
    assert 0.0 <= instructions["best"]["foreground_dice"] <= 1.0
    assert_dice_values(json.loads((model_folder / CROSSVAL / "summary.json").read_text()), len(TRAIN_CASES))
    predict = [line for line in text.splitlines() if line.startswith("autoseg predict")]
    assert len(predict) == 1 and "3d_fullres" in predict[0]
    argv = shlex.split(predict[0])
    assert argv[argv.index("-m") + 1] == str(model_folder)
    assert argv[argv.index("-f") + 1 : argv.index("-f") + 6] == FOLDS
    return argv[1:]


def check_postprocessing(preprocessed: Path, model_folder: Path, tmp_path: Path) -> None:
    """determine on the merged cross-validation agrees with find-best's decision; apply replays it."""
    crossval, gt = model_folder / CROSSVAL, preprocessed / DATASET / "gt_segmentations"
    autoseg("postprocess", "determine", "-p", crossval, "-r", gt)
    decision = json.loads((crossval / "postprocessing.json").read_text())
    assert decision["steps"] == json.loads((model_folder / "postprocessing.json").read_text())["steps"]
    assert decision["num_cases"] == len(TRAIN_CASES)
    for key in ("dice_before", "dice_after"):
        assert all(0.0 <= value <= 1.0 for value in decision[key].values()), decision[key]
    output = tmp_path / "crossval_postprocessed"
    printed = autoseg("postprocess", "apply", "-i", crossval, "-o", output, "--decision", crossval / "postprocessing.json")
    assert f"{len(TRAIN_CASES)} label map(s) written" in printed
    for case in TRAIN_CASES:
        seg, geometry = read_image(crossval / f"{case}.nii.gz")
        applied, applied_geometry = read_image(output / f"{case}.nii.gz")
        assert applied_geometry == geometry
        np.testing.assert_array_equal(applied, apply_postprocessing(decision, seg, geometry.spacing))


def check_export_import(model_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Export, import into an empty results root: the same weights and description files, nothing else."""
    archive = tmp_path / "model.zip"
    autoseg("export-model", "-m", model_folder, "-o", archive)
    clean = tmp_path / "clean_results"
    clean.mkdir()
    monkeypatch.setenv("AUTOSEG_RESULTS", str(clean))
    imported = clean / DATASET / MODEL
    assert autoseg("import-model", archive).strip() == f"installed: {imported}"
    description_files = ["dataset.json", "plans.json", "postprocessing.json", "training_config.yaml"]
    expected = sorted(description_files + [f"fold_{f}/{CHECKPOINT}" for f in FOLDS])
    assert sorted(str(p.relative_to(imported)) for p in imported.rglob("*") if p.is_file()) == expected
    for name in description_files:
        assert (imported / name).read_bytes() == (model_folder / name).read_bytes(), name
    for fold in FOLDS:
        original = load_checkpoint(model_folder / f"fold_{fold}" / CHECKPOINT)
        copy = load_checkpoint(imported / f"fold_{fold}" / CHECKPOINT)
        assert copy["network_weights"].keys() == original["network_weights"].keys()
        for key, tensor in original["network_weights"].items():
            assert torch.equal(copy["network_weights"][key], tensor), (fold, key)
        assert copy["metadata"] == json.loads(json.dumps(original["metadata"]))
    return imported


def check_predict_evaluate(command: list[str], imported: Path, original: Path, tmp_path: Path) -> None:
    """find-best's command, pointed at the imported model, segments unseen cases in their geometry."""
    images, labels = held_out_folders(tmp_path)
    output = tmp_path / "held_out_predictions"
    replace = {"INPUT_FOLDER": str(images), "OUTPUT_FOLDER": str(output), str(original): str(imported)}
    # --no-tta: 8x fewer forward passes keeps the test fast on 2 CPU cores (TTA: test_inference_predict).
    autoseg(*(replace.get(token, token) for token in command), "--no-tta")
    info = json.loads((output / "predict_info.json").read_text())
    assert (info["model_folder"], info["folds"], info["checkpoint"], info["tta"]) == (str(imported), FOLDS, "final", False)
    for case in HELD_OUT:
        seg, geometry = read_image(output / f"{case}.nii.gz")
        image, image_geometry = read_image(images / f"{case}_0000.nii.gz")
        assert seg.shape == image.shape and geometry == image_geometry
        assert np.issubdtype(seg.dtype, np.integer) and set(np.unique(seg).tolist()) <= declared_labels()
    printed = autoseg("evaluate", "-p", output, "-r", labels, "-d", DATASET)
    assert "Anterior" in printed and "Posterior" in printed
    assert_dice_values(json.loads((output / "summary.json").read_text()), len(HELD_OUT))


def check_report(results: Path) -> None:
    """A self-contained HTML: the candidate's table row and the box plot, training curves and the best
    and worst cases' overlays as embedded PNGs."""
    printed = autoseg("report", DATASET)
    report = results / DATASET / "report.html"
    assert printed.strip() == f"written: {report}"
    document = report.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", document)
    assert len(images) == 4  # Dice box plot, training curves of the model, best case, worst case
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for data in images)
    assert "unet/3d_fullres" in document and "hippocampus_" in document
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", document)  # nothing fetched from a network


def test_pipeline_end_to_end(roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_hippocampus_subset(roots["raw"], TRAIN_CASES, DATASET)
    write_tiny_plans(roots["preprocessed"])
    autoseg("preprocess", DATASET, "-np", 1)
    store = roots["preprocessed"] / DATASET / "autosegPlans_3d_fullres"
    assert sorted(p.stem for p in store.glob("*.json")) == sorted(TRAIN_CASES)

    model_folder = train_five_folds(roots["results"])
    command = check_find_best(roots["results"], model_folder)
    check_postprocessing(roots["preprocessed"], model_folder, tmp_path)
    imported = check_export_import(model_folder, tmp_path, monkeypatch)
    check_predict_evaluate(command, imported, model_folder, tmp_path)

    monkeypatch.setenv("AUTOSEG_RESULTS", str(roots["results"]))
    check_report(roots["results"])
