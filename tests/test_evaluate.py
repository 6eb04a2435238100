"""Folder evaluation: case matching, geometry checks, summary.json / summary.csv and the table."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import EvaluationError
from autoseg.evaluation.evaluate import evaluate_folders, format_table

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"
LABELS = {"background": 0, "a": 1, "b": 2}
GEOMETRY = Geometry(spacing=(2.0, 1.0, 0.5), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))


def _write(folder: Path, case: str, seg: np.ndarray, geometry: Geometry = GEOMETRY) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_image(seg.astype(np.uint8), geometry, folder / f"{case}.nii.gz")


@pytest.fixture
def folders(tmp_path):
    ref = np.zeros((4, 6, 8), np.uint8)
    ref[1:3, 1:4, 1:5] = 1  # 24 voxels of class a; class b absent
    pred = ref.copy()
    pred[1, 1, 1:5] = 0  # 4 voxels of a missed
    _write(tmp_path / "ref", "c1", ref)
    _write(tmp_path / "pred", "c1", pred)
    _write(tmp_path / "ref", "c2", ref)
    _write(tmp_path / "pred", "c2", ref)
    return tmp_path / "pred", tmp_path / "ref"


def test_summary_files_and_table(folders, tmp_path):
    pred_dir, ref_dir = folders
    out = tmp_path / "out"
    summary = evaluate_folders(pred_dir, ref_dir, LABELS, out, num_workers=1, tolerance_mm=2.0, file_ending=".nii.gz")
    assert summary["num_cases"] == 2 and summary["classes"] == {"a": [1], "b": [2]}
    c1 = summary["metric_per_case"][0]
    assert c1["case_id"] == "c1" and c1["metrics"]["a"]["dice"] == pytest.approx(2 * 20 / 44)
    assert c1["metrics"]["a"]["volume_ref_mm3"] == pytest.approx(24 * 1.0)
    assert c1["metrics"]["b"]["empty_in_both"] is True
    assert summary["mean"]["a"]["dice"] == pytest.approx((40 / 44 + 1) / 2)
    assert summary["mean"]["b"]["n_empty_in_both"] == 2 and math.isnan(summary["mean"]["b"]["dice"])
    assert summary["foreground_mean"]["dice"] == pytest.approx((40 / 44 + 1) / 2)  # b (NaN) left out
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["metric_per_case"][1]["metrics"]["a"]["dice"] == 1.0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["case_id"], r["class"]) for r in rows] == [
        ("c1", "a"), ("c1", "b"), ("c2", "a"), ("c2", "b"), ("mean", "a"), ("mean", "b"), ("mean", "foreground_mean")
    ]
    assert float(rows[0]["dice"]) == pytest.approx(40 / 44) and rows[1]["empty_in_both"] == "True"
    table = format_table(summary).splitlines()
    assert table[0].split()[:3] == ["class", "Dice", "IoU"] and "NSD@2mm" in table[0]
    assert table[2].split()[:2] == ["a", f"{(40 / 44 + 1) / 2:.4f}"]
    assert table[3].split()[:2] == ["b", "nan"] and table[3].split()[-2:] == ["2", "2"]
    assert table[4].startswith("foreground mean")


def test_missing_reference_is_named(folders):
    pred_dir, ref_dir = folders
    (ref_dir / "c2.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"ref/c2\.nii\.gz: reference of case c2 not found \(prediction .*pred/c2\.nii\.gz\)"):
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")


def test_missing_prediction_of_requested_case_is_named(folders):
    pred_dir, ref_dir = folders
    with pytest.raises(EvaluationError, match=r"pred/c3\.nii\.gz: prediction of case c3 not found"):
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz", case_ids=["c1", "c3"])


def test_shape_mismatch_is_named(folders):
    pred_dir, ref_dir = folders
    _write(pred_dir, "c2", np.zeros((4, 6, 7), np.uint8))
    with pytest.raises(EvaluationError, match=r"1 of 2 cases could not be evaluated: c2: .*pred/c2\.nii\.gz: shape \(4, 6, 7\) differs from the reference"):
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")


def test_spacing_mismatch_is_named(folders):
    pred_dir, ref_dir = folders
    seg, _ = read_image(pred_dir / "c1.nii.gz")
    _write(pred_dir, "c1", seg, Geometry((3.0, 1.0, 0.5), GEOMETRY.origin, GEOMETRY.direction))
    with pytest.raises(EvaluationError, match=r"c1: .*pred/c1\.nii\.gz: spacing \(3\.0, 1\.0, 0\.5\) differs from the reference"):
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")


def test_labels_mapping_needs_a_file_ending(folders):
    with pytest.raises(EvaluationError, match="give the label file ending"):
        evaluate_folders(*folders, LABELS, num_workers=1)


def test_real_cases_with_dataset_json_found_beside_references(tmp_path):
    """Hippocampus labels: identical prediction scores 1; ``dataset.json`` is found from labelsTr/.."""
    raw = tmp_path / "Dataset004_Hippocampus"
    (raw / "labelsTr").mkdir(parents=True)
    shutil.copy(HIPPOCAMPUS / "dataset.json", raw / "dataset.json")
    cases = sorted(p.name for p in (HIPPOCAMPUS / "labelsTr").iterdir())[:2]
    for name in cases:
        shutil.copy(HIPPOCAMPUS / "labelsTr" / name, raw / "labelsTr" / name)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    shutil.copy(raw / "labelsTr" / cases[0], pred_dir / cases[0])
    seg, geometry = read_image(raw / "labelsTr" / cases[1])
    write_image(np.where(seg == 2, 1, seg).astype(np.uint8), geometry, pred_dir / cases[1])  # Posterior -> Anterior
    summary = evaluate_folders(pred_dir, raw / "labelsTr", num_workers=1)
    per_case = {row["case_id"]: row["metrics"] for row in summary["metric_per_case"]}
    first, second = (name[: -len(".nii.gz")] for name in cases)
    assert per_case[first]["Anterior"]["dice"] == 1.0 and per_case[first]["Posterior"]["hd95"] == 0.0
    assert per_case[second]["Posterior"]["dice"] == 0.0 and per_case[second]["Posterior"]["empty_prediction"]
    assert summary["classes"] == {name: values for name, values in load_description(raw).regions}
