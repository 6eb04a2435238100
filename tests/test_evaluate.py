"""Folder evaluation: case matching, geometry checks, summary.json / summary.csv and the table."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import EvaluationError
from autoseg.cli import app, expand_multi_value_options
from autoseg.evaluation.evaluate import evaluate_folders, format_table
from cli_helpers import autoseg, autoseg_fails, runner

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


def test_table_names_each_region_with_its_labels():
    """Regions (several label values) show what they hold; a one-label region beside them too."""
    metrics = {"dice": 0.5, "n_cases": 1, "n_empty_in_both": 0}
    summary = {"tolerance_mm": 1.0, "classes": {"whole": [1, 2, 3], "enhancing": [3]}, "num_cases": 1,
               "mean": {"whole": metrics, "enhancing": metrics}, "foreground_mean": {"dice": 0.5}}
    table = format_table(summary).splitlines()
    assert table[0].split()[:3] == ["region", "(labels)", "Dice"]
    assert table[2].split()[:4] == ["whole", "(1", "2", "3)"] and table[3].split()[:3] == ["enhancing", "(3)", "0.5000"]


def test_missing_reference_is_named(folders):
    pred_dir, ref_dir = folders
    (ref_dir / "c2.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"ref/c2\.nii\.gz: reference of case c2 not found \(prediction .*pred/c2\.nii\.gz\)"):
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")


def test_a_folder_named_as_a_reference_is_named_as_a_folder(folders):
    """A folder ``c2.nii.gz/`` among the references was reported as 'reference of case c2 not found', of a path
    that is there; it is named as a folder, with the fix, from the command line too (no summary written)."""
    pred_dir, ref_dir = folders
    (ref_dir / "c2.nii.gz").unlink()
    (ref_dir / "c2.nii.gz").mkdir()
    expected = (f"{ref_dir / 'c2.nii.gz'}: is a folder, not a label map file, so case c2 has no reference (prediction "
                f"{pred_dir / 'c2.nii.gz'}); put the case's reference label map there in its place")
    with pytest.raises(EvaluationError) as info:
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")
    assert str(info.value) == expected
    assert autoseg_fails("evaluate", "-p", pred_dir, "-r", ref_dir, "-l", 1, "-np", 1).strip().endswith(expected)
    assert not (pred_dir / "summary.json").exists()


def test_predictions_of_another_ending_are_matched(folders):
    """predict writes a case NIfTI cannot hold (a sheared one) as .nrrd beside the dataset's .nii.gz: evaluate left
    it out without a word. It is scored against a reference of its ending or the dataset's; two files of one case
    are refused."""
    pred_dir, ref_dir = folders
    seg, geometry = read_image(pred_dir / "c1.nii.gz")
    (pred_dir / "c1.nii.gz").unlink()
    write_image(seg, geometry, pred_dir / "c1.nrrd")
    summary = evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")
    assert [(row["case_id"], Path(row["prediction_file"]).name, Path(row["reference_file"]).name)
            for row in summary["metric_per_case"]] == [("c1", "c1.nrrd", "c1.nii.gz"), ("c2", "c2.nii.gz", "c2.nii.gz")]
    assert summary["metric_per_case"][0]["metrics"]["a"]["dice"] == pytest.approx(2 * 20 / 44)
    write_image(*read_image(ref_dir / "c1.nii.gz"), ref_dir / "c1.nrrd")
    summary = evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")
    assert Path(summary["metric_per_case"][0]["reference_file"]).name == "c1.nrrd"
    write_image(seg, geometry, pred_dir / "c1.nii.gz")
    with pytest.raises(EvaluationError, match=r"pred: c1\.nii\.gz and c1\.nrrd are two label maps of case c1; keep one"):
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")


def test_a_stray_image_of_another_ending_without_reference_is_skipped_with_a_note(folders, capsys):
    """A PNG snapshot among .nii.gz predictions was refused as a case without reference (since every image file
    counted as a case), where nnU-Net ignores files not of the dataset's ending; it is skipped, with one note."""
    pred_dir, ref_dir = folders
    for name in ("snapshot_a.png", "snapshot_b.png"):
        write_image(np.zeros((1, 4, 4), np.uint8), Geometry.default((1, 4, 4)), pred_dir / name)
    summary = evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")
    assert [row["case_id"] for row in summary["metric_per_case"]] == ["c1", "c2"]
    assert capsys.readouterr().err == (f"note: {pred_dir}: skipped 2 image file(s) that are not <case>.nii.gz and have no "
                                       "reference of their case, e.g. snapshot_a.png\n")


def test_a_summary_that_would_replace_a_cases_probability_sidecar_is_refused(folders, tmp_path):
    """A case named ``summary`` predicted with --save-probabilities has ``summary.json`` beside ``summary.npz``:
    evaluate wrote its summary over it, and the case could no longer be ensembled. Refused before any metric."""
    pred_dir, ref_dir = folders
    for folder in (pred_dir, ref_dir):
        shutil.copy(folder / "c1.nii.gz", folder / "summary.nii.gz")
    np.savez(pred_dir / "summary.npz", probabilities=np.zeros((3, 4, 6, 8), np.float16))
    (pred_dir / "summary.json").write_text('{"case_id": "summary"}')
    with pytest.raises(EvaluationError, match=r"pred/summary\.json: is the probabilities' sidecar of case summary "
                                              r"\(summary\.npz beside it\), which this output would replace; write"):
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")
    assert (pred_dir / "summary.json").read_text() == '{"case_id": "summary"}' and not (pred_dir / "summary.csv").exists()
    summary = evaluate_folders(pred_dir, ref_dir, LABELS, tmp_path / "out", num_workers=1, file_ending=".nii.gz")
    assert [row["case_id"] for row in summary["metric_per_case"]] == ["c1", "c2", "summary"]


@pytest.mark.parametrize("name", ["summary.json", "summary.csv"])
def test_a_folder_where_a_summary_file_goes_is_refused_before_any_metric(folders, tmp_path, name):
    """A folder named summary.csv (or summary.json) in the output folder was an internal error (IsADirectoryError)
    after every metric was computed, and summary.json had been written beside it: half an output."""
    pred_dir, ref_dir = folders
    (tmp_path / "out" / name).mkdir(parents=True)
    with pytest.raises(EvaluationError, match=rf"out/{name}: is a folder where autoseg evaluate writes a file; move or "
                                              "rename that folder, or give -o another folder"):
        evaluate_folders(pred_dir, ref_dir, LABELS, tmp_path / "out", num_workers=1, file_ending=".nii.gz")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]


def test_a_case_id_that_is_not_utf8_is_shown_as_its_path_is(folders):
    """A file name in Latin-1 (``odd\\xff``) is refused naming the path with ``\\xff``; the case id before it
    was shown as ``odd\\udcff``, which names no file."""
    pred_dir, ref_dir = folders
    for folder in folders:
        shutil.copy(folder / "c1.nii.gz", os.fsdecode(os.fsencode(folder) + b"/odd\xff.nii.gz"))
    with pytest.raises(EvaluationError) as info:
        evaluate_folders(pred_dir, ref_dir, LABELS, num_workers=1, file_ending=".nii.gz")
    assert "1 of 3 cases could not be evaluated: odd\\xff: " in str(info.value) and "udcff" not in str(info.value)


def test_a_missing_reference_folder_is_named_as_a_folder(folders, tmp_path):
    pred_dir, _ = folders
    with pytest.raises(EvaluationError, match=r"nowhere: reference folder \(-r/--ref\) not found$"):
        evaluate_folders(pred_dir, tmp_path / "nowhere", LABELS, num_workers=1, file_ending=".nii.gz")


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


@pytest.mark.parametrize("geometry, expected", [
    (Geometry(GEOMETRY.spacing, (0.0, 0.0, 30.0), GEOMETRY.direction), r"origin \(0, 0, 30\) vs \(0, 0, 0\)"),
    (Geometry(GEOMETRY.spacing, GEOMETRY.origin, (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)), r"direction \(-1, "),
])
def test_a_prediction_placed_elsewhere_than_its_reference_is_named(folders, geometry, expected):
    """Same shape and spacing but shifted or reoriented: the voxels lie over other anatomy, never scored."""
    pred_dir, ref_dir = folders
    seg, _ = read_image(pred_dir / "c1.nii.gz")
    _write(pred_dir, "c1", seg, geometry)
    with pytest.raises(EvaluationError, match=rf"c1: .*pred/c1\.nii\.gz: lies elsewhere than the reference .*{expected}"):
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


# ------------------------------------------------------------------ without a dataset (nnU-Net's simple evaluation)

PNG_GEOMETRY = Geometry((999.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))


@pytest.fixture
def png_folders(tmp_path):
    """Two 8x10 PNG cases: class 1 a 2x5 block (10 px), class 2 a 3x3 block (9 px); p1 misses 1 px of
    class 1 and labels 3 px of class 2 as 1, p2 is exact."""
    ref = np.zeros((1, 8, 10), np.uint8)
    ref[0, 1:3, 1:6] = 1
    ref[0, 4:7, 4:7] = 2
    pred = ref.copy()
    pred[0, 1, 1] = 0
    pred[0, 4, 4:7] = 1
    for folder, seg in (("ref", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_image(seg, PNG_GEOMETRY, tmp_path / folder / "p1.png")
        write_image(ref, PNG_GEOMETRY, tmp_path / folder / "p2.png")
    return tmp_path / "pred", tmp_path / "ref"


def expected_png_dice() -> dict[str, float]:
    # class 1: ref 10, pred 9 + 3 = 12, overlap 9; class 2: ref 9, pred 6, overlap 6.
    return {"1": 2 * 9 / 22, "2": 2 * 6 / 15}


@pytest.mark.parametrize("labels", [["--labels", "1", "2"], []])
def test_png_folders_evaluate_with_labels_option_or_values_found(png_folders, labels):
    pred_dir, ref_dir = png_folders
    output = autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, *labels)
    found = "no dataset.json or --labels: evaluating the labels found in the references: 1, 2"
    assert (found in output) is (not labels)
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["classes"] == {"1": [1], "2": [2]}
    p1 = summary["metric_per_case"][0]["metrics"]
    for name, dice in expected_png_dice().items():
        assert p1[name]["dice"] == pytest.approx(dice)
        assert summary["mean"][name]["dice"] == pytest.approx((dice + 1) / 2)


def test_nifti_folders_without_dataset_evaluate_the_values_found(folders):
    pred_dir, ref_dir = folders
    output = autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, "--tolerance-mm", 2)
    assert "evaluating the labels found in the references: 1\n" in output
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["classes"] == {"1": [1]}
    assert summary["metric_per_case"][0]["metrics"]["1"]["dice"] == pytest.approx(2 * 20 / 44)


@pytest.mark.parametrize("labels", [["--labels", "1"], []])
def test_upper_case_endings_are_found_as_spelled(folders, labels):
    """c1.NII.GZ (a Windows export): the references were looked for as .nii.gz, none was found, and
    the folder was said to hold only background."""
    pred_dir, ref_dir = folders
    for folder in (pred_dir, ref_dir):
        for path in folder.iterdir():
            path.rename(folder / path.name.replace(".nii.gz", ".NII.GZ"))
    autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, *labels)
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["num_cases"] == 2
    assert summary["metric_per_case"][0]["metrics"]["1"]["dice"] == pytest.approx(2 * 20 / 44)


def test_a_label_in_no_reference_and_no_prediction_is_noted(png_folders):
    pred_dir, ref_dir = png_folders
    output = autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, "-l", 1, 3)
    assert "note: label 3 is in no reference and no prediction; its metrics are NaN" in output
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert math.isnan(summary["mean"]["3"]["dice"]) and summary["mean"]["3"]["n_empty_in_both"] == 2
    assert summary["mean"]["1"]["dice"] == pytest.approx((expected_png_dice()["1"] + 1) / 2)


def test_labels_in_no_reference_and_no_prediction_are_noted_on_one_line(png_folders):
    """A dataset of many labels, few of them in the cases (a 41-label CT cropped), printed one note per label."""
    pred_dir, ref_dir = png_folders
    output = autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, "-l", 1, 3, 4, 7)
    notes = [line for line in output.splitlines() if "in no reference and no prediction" in line]
    assert notes == ["note: 3 labels are in no reference and no prediction (3, 4, 7); their metrics are NaN"]


def _empty_references(pred: Path, ref: Path) -> str:
    for path in ref.iterdir():
        path.unlink()
    return f"{ref}: holds no label files"


def _renamed_reference(pred: Path, ref: Path) -> str:
    (ref / "p2.png").rename(ref / "q2.png")
    return f"{ref / 'p2.png'}: reference of case p2 not found (prediction {pred / 'p2.png'}); add it or remove the prediction"


def _no_predictions(pred: Path, ref: Path) -> str:
    for path in pred.iterdir():
        path.unlink()
    return (f"{pred}: no predictions to evaluate: no <case>.png files, and no label maps of another image ending whose "
            f"case has a reference in {ref}")


def _mixed_reference_types(pred: Path, ref: Path) -> str:
    write_image(np.zeros((1, 2, 2), np.uint8), GEOMETRY, ref / "p3.nii.gz")
    return f"{ref}: holds label files of several types (.nii.gz, .png); keep one type per folder"


def _only_background(pred: Path, ref: Path) -> str:
    for path in ref.iterdir():
        write_image(np.zeros((1, 8, 10), np.uint8), PNG_GEOMETRY, path)
    return f"{ref}: the references hold only background (0); give the labels to evaluate with --labels"


def test_a_negative_value_in_the_references_is_not_taken_for_a_class(folders):
    """Without a dataset or --labels, a reference holding -1 was scored as a class named '-1', though --labels -1
    is refused and no dataset.json may declare it; it is refused naming the file, and --labels evaluates the rest."""
    pred_dir, ref_dir = folders
    seg, geometry = read_image(ref_dir / "c1.nii.gz")
    seg = seg.astype(np.int16)
    seg[0, 0, 0] = -1
    write_image(seg, geometry, ref_dir / "c1.nii.gz")
    message = autoseg_fails("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", "1")
    assert f"c1: {ref_dir / 'c1.nii.gz'}: holds the negative value -1; label maps hold 0 (background) and positive " \
           "class numbers: give the labels to evaluate with --labels" in message
    autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-l", 1, "-np", "1")
    assert json.loads((pred_dir / "summary.json").read_text())["classes"] == {"1": [1]}


def test_a_missing_prediction_folder_is_the_only_line(png_folders):
    """Without a dataset or --labels, every reference was read and 'no dataset.json or --labels: evaluating the
    labels found in the references: ...' printed before the error that -p names no folder."""
    pred_dir, ref_dir = png_folders
    shutil.rmtree(pred_dir)
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-np", "1"])
    assert (result.exit_code, result.output) == (2, f"autoseg: error: {pred_dir}: prediction folder (-p/--pred) not found\n")


@pytest.mark.parametrize("breakage", [_empty_references, _renamed_reference, _no_predictions, _mixed_reference_types, _only_background])
def test_bad_folders_without_dataset_give_one_line(png_folders, breakage):
    pred_dir, ref_dir = png_folders
    expected = breakage(pred_dir, ref_dir)
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert f"autoseg: error: {expected}" in result.output
    assert not (pred_dir / "summary.json").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--labels", "0", "1"], "--labels 0 1: give distinct positive label values (0 is background)"),
    (["--labels", "1", "1"], "--labels 1 1: give distinct positive label values (0 is background)"),
    (["--labels", "1", "-d", "Dataset004_Hippocampus"], "give either a dataset (-d) or --labels, not both"),
])
def test_bad_labels_option_gives_one_line(png_folders, args, expected, monkeypatch):
    monkeypatch.setenv("AUTOSEG_RAW", str(HIPPOCAMPUS.parent))
    pred_dir, ref_dir = png_folders
    argv = expand_multi_value_options(["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), *args])
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert f"autoseg: error: {expected}" in result.output


@pytest.mark.parametrize("folder", ["pred", "ref"])
def test_a_non_integer_label_map_is_refused_with_labels_option(folders, folder):
    """A probability map saved as the prediction (or reference) matched no --labels value: every class
    was scored empty (Dice 0) without a word."""
    pred_dir, ref_dir = folders
    target = pred_dir if folder == "pred" else ref_dir
    seg, geometry = read_image(target / "c1.nii.gz")
    write_image(seg.astype(np.float32) * 0.8, geometry, target / "c1.nii.gz")
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-l", "1", "-np", "1"])
    assert result.exit_code == 2, result.output
    assert f"c1: {target / 'c1.nii.gz'}: holds non-integer values; a label map holds one class number per voxel" in result.output
    assert not (pred_dir / "summary.json").exists()


def _with_dataset_json(folders) -> tuple[Path, Path]:
    """The ``folders`` cases with a dataset.json declaring labels 0, 1, 2 beside the references."""
    pred_dir, ref_dir = folders
    (ref_dir.parent / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz",
    }))
    return pred_dir, ref_dir


@pytest.mark.parametrize(("folder", "values", "expected"), [
    ("pred", [3], "holds label value(s) 3 that the dataset does not declare (it declares 0, 1, 2); fix the file (to score other values, `autoseg evaluate --labels` takes them instead of the dataset)"),
    ("ref", [7, 9], "holds label value(s) 7, 9 that the dataset does not declare (it declares 0, 1, 2)"),
    # 255 beside 1 and 2 is not a 0/255 mask: no hint (test_a_0_255_mask_gets_the_hint)
    ("pred", [255], "holds label value(s) 255 that the dataset does not declare (it declares 0, 1, 2); fix the file"),
])
def test_label_values_the_dataset_does_not_declare_are_refused(folders, folder, values, expected):
    pred_dir, ref_dir = _with_dataset_json(folders)
    path = (pred_dir if folder == "pred" else ref_dir) / "c2.nii.gz"
    seg, geometry = read_image(path)
    seg[0, 0, : len(values)] = values  # an undeclared value would count as background, unnoticed
    write_image(seg.astype(np.uint8), geometry, path)
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert f"c2: {path}: {expected}" in result.output
    assert not (pred_dir / "summary.json").exists()


def test_a_0_255_mask_gets_the_hint(folders):
    """The same hint, worded alike, as ``autoseg verify`` gives (dataset/verify.mask_255_hint)."""
    pred_dir, ref_dir = _with_dataset_json(folders)
    seg, geometry = read_image(pred_dir / "c2.nii.gz")
    write_image(((seg > 0) * 255).astype(np.uint8), geometry, pred_dir / "c2.nii.gz")
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert ("holds label value(s) 255 that the dataset does not declare (it declares 0, 1, 2) (a 0/255 mask: divide the "
            "label by 255 so the object is 1); fix the file") in result.output


def test_labels_option_evaluates_a_chosen_subset_of_other_values(folders):
    pred_dir, ref_dir = _with_dataset_json(folders)
    seg, geometry = read_image(pred_dir / "c2.nii.gz")
    seg[0, 0, 0] = 3
    write_image(seg, geometry, pred_dir / "c2.nii.gz")
    autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, "--labels", 1)
    assert json.loads((pred_dir / "summary.json").read_text())["classes"] == {"1": [1]}


def test_labels_option_keeps_the_ignore_label_of_the_dataset_beside_the_references(folders):
    """--labels chose the classes and dropped the dataset.json: its ignore label's voxels counted as
    background, so a prediction there was a false positive (c2 scored 48/52 instead of 1)."""
    pred_dir, ref_dir = folders
    (ref_dir.parent / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {**LABELS, "ignore": 3}, "numTraining": 2, "file_ending": ".nii.gz",
    }))
    for folder, value in ((ref_dir, 3), (pred_dir, 1)):
        seg, geometry = read_image(folder / "c2.nii.gz")
        seg[0, 0, :4] = value
        write_image(seg, geometry, folder / "c2.nii.gz")
    output = autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, "--labels", 1)
    assert f"ignore label 3 of {ref_dir.parent / 'dataset.json'}: its voxels are not scored" in " ".join(output.split())
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["ignore_label"] == 3 and summary["classes"] == {"1": [1]}
    assert summary["metric_per_case"][1]["metrics"]["1"]["dice"] == 1.0
    output = autoseg_fails("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1, "--labels", 1, 3)
    assert (f"--labels 1 3: 3 is the ignore label of {ref_dir.parent / 'dataset.json'} (its voxels are not scored); "
            "leave it out") in " ".join(output.split())


def test_a_folds_validation_takes_the_dataset_json_of_its_model_folder(tmp_path):
    """fold_0/validation against the preprocessed gt_segmentations (no dataset.json beside either): the values
    found in the references were scored, the ignore label 3 as a class and its voxels as background in class 1."""
    model = tmp_path / "results" / "unet__autosegPlans__3d_fullres"
    pred_dir, ref_dir = model / "fold_0" / "validation", tmp_path / "preprocessed" / "gt_segmentations"
    (model / "fold_0").mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {**LABELS, "ignore": 3}, "numTraining": 1, "file_ending": ".nii.gz",
    }))
    ref = np.zeros((4, 6, 8), np.uint8)
    ref[1:3, 1:4, 1:5] = 1
    pred = ref.copy()
    ref[0] = 3  # an ignored slice, predicted as class a
    pred[0] = 1
    _write(ref_dir, "c1", ref)
    _write(pred_dir, "c1", pred)
    autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1)
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["ignore_label"] == 3 and summary["classes"] == {"a": [1], "b": [2]}
    assert summary["metric_per_case"][0]["metrics"]["a"]["dice"] == 1.0


@pytest.mark.parametrize("tolerance", ["-1", "0", "nan", "inf"])
def test_tolerance_must_be_a_positive_distance(folders, tolerance):
    pred_dir, ref_dir = folders
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), f"--tolerance-mm={tolerance}"])
    assert result.exit_code == 2, result.output
    assert f"autoseg: error: --tolerance-mm {float(tolerance)}: give a positive distance in mm (default 1.0)" in result.output
    assert not (pred_dir / "summary.json").exists()


def test_output_path_that_is_a_file_is_refused(folders, tmp_path):
    pred_dir, ref_dir = folders
    (tmp_path / "afile").write_text("keep")
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-o", str(tmp_path / "afile")])
    assert result.exit_code == 2, result.output
    assert f"autoseg: error: {tmp_path / 'afile'}: exists and is not a folder; give a folder" in result.output
    assert (tmp_path / "afile").read_text() == "keep"


def test_references_without_a_prediction_are_noted(folders):
    pred_dir, ref_dir = folders
    (pred_dir / "c2.nii.gz").unlink()
    output = autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1)
    assert "note: 1 reference case(s) have no prediction and are not scored: c2\n" in output
    assert json.loads((pred_dir / "summary.json").read_text())["num_cases"] == 1


@pytest.mark.parametrize("output", ["out", "out/new"])
def test_a_read_only_output_folder_is_refused_before_any_case(folders, tmp_path, monkeypatch, output):
    """evaluate into an existing folder it could not write computed every metric and only then refused it."""
    from test_atomic import refuse_writes_in

    pred_dir, ref_dir = folders
    (tmp_path / "out").mkdir()
    refuse_writes_in(tmp_path / "out", monkeypatch)
    monkeypatch.setattr("autoseg.evaluation.evaluate.evaluate_case", lambda *args: pytest.fail("a case was evaluated"))
    with pytest.raises(OSError) as raised:
        evaluate_folders(pred_dir, ref_dir, LABELS, tmp_path / output, num_workers=1, file_ending=".nii.gz")
    assert raised.value.errno == errno.EROFS and raised.value.filename == str(tmp_path / "out")
    assert not (tmp_path / "out" / "new").exists()


@pytest.mark.parametrize("output", ["ref", "ref/eval"])
def test_an_output_folder_among_the_references_is_refused(folders, tmp_path, output):
    """``-o labelsTr`` wrote summary.json and summary.csv among a dataset's label maps, and verify then refused the
    dataset for them."""
    pred_dir, ref_dir = folders
    before = sorted(p.name for p in ref_dir.iterdir())
    with pytest.raises(EvaluationError, match=r"ref(/eval)?: lies in the reference folder .*ref; summary.json and summary.csv would "
                                              r"stand among the reference label maps .*; give -o a folder outside it"):
        evaluate_folders(pred_dir, ref_dir, LABELS, tmp_path / output, num_workers=1, file_ending=".nii.gz")
    assert sorted(p.name for p in ref_dir.iterdir()) == before


@pytest.mark.parametrize("output", ["out", None])
def test_the_references_given_as_predictions_are_refused(folders, tmp_path, output):
    """``evaluate -p gt -r gt -o out`` was accepted and scored Dice 1 everywhere (determine refused the same -p/-r)."""
    _, ref_dir = folders
    out = None if output is None else tmp_path / output
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(ref_dir))}: is both the predictions \(-p\) and the "
                                              r"references \(-r\) folder, which would score every case perfect; give "
                                              r"the predictions to score as -p$"):
        evaluate_folders(ref_dir, ref_dir, LABELS, out, num_workers=1, file_ending=".nii.gz")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["results.json", "scores.CSV"])
def test_an_output_named_as_a_summary_file_is_refused(folders, tmp_path, name):
    """``-o results.json`` (nnU-Net's ``-o`` is the summary file) made a folder results.json/ holding summary.json."""
    pred_dir, ref_dir = folders
    with pytest.raises(EvaluationError, match=rf"{name}: -o names the folder for summary.json and summary.csv, not a file; "
                                              rf"give a folder, e.g. .*{Path(name).stem}$"):
        evaluate_folders(pred_dir, ref_dir, LABELS, tmp_path / name, num_workers=1, file_ending=".nii.gz")
    assert not (tmp_path / name).exists()


def test_a_file_given_for_a_folder_is_named_as_a_file(folders, tmp_path):
    """``-p case.nii.gz`` or ``-r case.nii.gz`` (one case's file) was refused as 'folder not found', of a path that is there."""
    pred_dir, ref_dir = folders
    for pred, ref, which in ((pred_dir / "c1.nii.gz", ref_dir, "pred"), (pred_dir, ref_dir / "c1.nii.gz", "ref")):
        with pytest.raises(EvaluationError, match=rf"{which}/c1\.nii\.gz: is a file, not a folder; give the folder that holds the "):
            evaluate_folders(pred, ref, LABELS, tmp_path / "out", num_workers=1, file_ending=".nii.gz")
        output = autoseg_fails("evaluate", "-p", pred, "-r", ref, "-o", tmp_path / "out")
        assert f"{which}/c1.nii.gz: is a file, not a folder" in output


def test_a_symbolic_link_loop_is_named_with_its_option(folders, tmp_path):
    """``-p loop1/x`` (loop1 -> loop2 -> loop1) said 'loop2, which does not exist ... give another folder for the
    outputs': neither the loop nor -p; ``-r loop1`` said 'folder not found'."""
    pred_dir, ref_dir = folders
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    loop = rf"{tmp_path}/loop1 is a symbolic link loop \({tmp_path}/loop1 -> {tmp_path}/loop2 -> \.\.\. -> {tmp_path}/loop1\)"
    for pred, ref, option in ((tmp_path / "loop1" / "x", ref_dir, "prediction folder \\(-p/--pred\\)"),
                              (pred_dir, tmp_path / "loop1" / "x", "reference folder \\(-r/--ref\\)")):
        with pytest.raises(EvaluationError, match=rf"^{tmp_path}/loop1/x: {loop}, which leads to no folder; .*give another {option}$"):
            evaluate_folders(pred, ref, LABELS, num_workers=1, file_ending=".nii.gz")
    output = autoseg_fails("evaluate", "-p", tmp_path / "loop1", "-r", ref_dir)
    assert "loop1: a symbolic link loop" in output and "give another prediction folder (-p/--pred)" in " ".join(output.split())


def test_a_2d_prediction_of_a_one_slice_3d_reference_is_named_as_such(tmp_path):
    """A 2D NIfTI prediction of a one-slice 3D reference was refused for a spacing of 999 mm (the 2D placeholder)
    against the slice's 3 mm, which neither file holds."""
    seg = np.zeros((1, 6, 8), np.uint8)
    seg[0, 1:4, 2:6] = 1
    _write(tmp_path / "pred", "c1", seg, Geometry((999.0, 0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    _write(tmp_path / "ref", "c1", seg, Geometry((3.0, 0.5, 0.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())))
    with pytest.raises(EvaluationError, match=r"pred/c1\.nii\.gz: 2D \(no slice axis\) vs 3D: save both as 2D or both as 3D "
                                              r"\(prediction vs the reference .*ref/c1\.nii\.gz\)"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", LABELS, tmp_path / "out", num_workers=1, file_ending=".nii.gz")


def test_predictions_of_a_test_folder_take_the_dataset_json_of_their_model(tmp_path, monkeypatch):
    """A test folder's references have no dataset.json beside them: the labels were taken from the values found
    in them (the ignore label scored as a class), and predict_info.json held the model folder as typed (relative),
    so it could not be found from another folder. The record now holds the absolute path, and evaluate takes the
    dataset.json of the model it names."""
    from test_inference_predict import make_model

    make_model(tmp_path / "models", "3d_fullres", folds=("0",))
    (tmp_path / "in").mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", tmp_path / "in")
    (tmp_path / "test_labels").mkdir()
    shutil.copy(HIPPOCAMPUS / "labelsTr" / "hippocampus_001.nii.gz", tmp_path / "test_labels")
    monkeypatch.chdir(tmp_path)
    autoseg("predict", "-i", "in", "-o", "pred", "-m", "models/Dataset999_Test/unet__autosegPlans__3d_fullres", "--no-tta")
    record = json.loads((tmp_path / "pred" / "predict_info.json").read_text())
    assert record["model_folder"] == str(tmp_path.resolve() / "models" / "Dataset999_Test" / "unet__autosegPlans__3d_fullres")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    autoseg("evaluate", "-p", tmp_path / "pred", "-r", tmp_path / "test_labels", "-np", 1)
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["classes"] == {"Anterior": [1], "Posterior": [2]}


def _refuse_reading(path: Path) -> None:
    raise AssertionError(f"read {path} before the arguments were checked")


def test_the_output_is_checked_before_the_references_are_read_for_their_labels(folders, tmp_path, monkeypatch):
    """Without -d or --labels every reference was read for its values, and 'evaluating the labels found ...' printed,
    before ``-o out.json`` was refused."""
    pred_dir, ref_dir = folders
    monkeypatch.setattr("autoseg.evaluation.evaluate.read_image", _refuse_reading)
    output = autoseg_fails("evaluate", "-p", pred_dir, "-r", ref_dir, "-o", tmp_path / "out.json", "-np", 1)
    assert output.startswith("autoseg: error: ") and "-o names the folder for summary.json" in output
    assert "evaluating the labels found" not in output


def test_an_images_folder_given_as_references_is_named_before_any_is_read(folders, tmp_path, monkeypatch):
    """``-r imagesTr`` read every image for its label values, then refused each for its non-integer values."""
    pred_dir, _ = folders
    images = tmp_path / "imagesTr"
    images.mkdir()
    for case in ("c1", "c2"):
        shutil.copy(pred_dir / f"{case}.nii.gz", images / f"{case}_0000.nii.gz")
    monkeypatch.setattr("autoseg.evaluation.evaluate.read_image", _refuse_reading)
    output = autoseg_fails("evaluate", "-p", pred_dir, "-r", images, "-np", 1)
    assert re.search(r"imagesTr/c1\.nii\.gz: reference of case c1 not found \(prediction .*; .*imagesTr holds "
                     r"c1_0000\.nii\.gz, the case's image \(channel 0000\): give -r the folder of the reference label maps",
                     " ".join(output.split()))
    assert "evaluating the labels found" not in output


@pytest.mark.parametrize("labels", [[], ["--labels", "1"]])
def test_a_0_255_reference_of_a_0_1_prediction_gets_a_note(tmp_path, labels):
    """Scored Dice 0 (the references' 255 missed, or --labels 1 in no reference) without a word of the likely cause."""
    ref = np.zeros((4, 6, 8), np.uint8)
    ref[1:3, 1:4, 1:5] = 255
    _write(tmp_path / "ref", "c1", ref)
    _write(tmp_path / "pred", "c1", (ref > 0).astype(np.uint8))
    output = autoseg("evaluate", "-p", tmp_path / "pred", "-r", tmp_path / "ref", "-np", 1, *labels)
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["foreground_mean"]["dice"] == 0.0
    assert ("note: case c1: the prediction holds label(s) 1 and the reference 255, no foreground label in common, so it "
            "scores Dice 0; if one of them was saved with other values (a 0/255 mask beside a 0/1 one), make them the "
            "same (divide a 0/255 mask by 255)") in " ".join(output.split())
    _write(tmp_path / "pred", "c1", np.zeros_like(ref))  # nothing predicted: a model's miss, no hint
    assert "no foreground label in common" not in autoseg("evaluate", "-p", tmp_path / "pred", "-r", tmp_path / "ref",
                                                          "-np", 1, *labels)


def test_an_unreadable_dataset_json_beside_the_references_is_noted_with_labels_and_refused_with_the_way_round(folders):
    """The Decathlon's nnU-Net v1 dataset.json above its labelsTr refused even ``--labels 1``, which needs none,
    asking to edit it; without --labels the refusal named no way to evaluate without it."""
    pred_dir, ref_dir = folders
    (ref_dir.parent / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a"}}))
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), "-l", "1", "-np", "1"])
    assert result.exit_code == 0, result.output
    assert ("dataset.json: 'modality' is nnU-Net v1 syntax; rename it to 'channel_names': not read for an ignore label "
            "(--labels gives the classes)") in " ".join(result.stderr.split())
    assert json.loads((pred_dir / "summary.json").read_text())["mean"]["1"]["dice"] == pytest.approx((40 / 44 + 1) / 2)
    output = autoseg_fails("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1)
    assert (f"'modality' is nnU-Net v1 syntax; rename it to 'channel_names' (the dataset.json found for the references "
            f"{ref_dir} and predictions {pred_dir}; to evaluate without it, give the labels with --labels, or the dataset "
            "with -d)") in " ".join(output.split())


@pytest.mark.parametrize("option", [["-l", "1"], []])
def test_a_reference_marking_ignored_voxels_with_another_value_is_refused(folders, option):
    """The dataset.json beside the references declares ignore 2 (as ``-d`` would); a reference marking voxels not to
    score with 255 had them scored as background without a word under --labels, and was refused under the dataset
    without naming its ignore label."""
    pred_dir, ref_dir = folders
    (ref_dir.parent / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "ignore": 2}, "numTraining": 2,
        "file_ending": ".nii.gz",
    }))
    path = ref_dir / "c2.nii.gz"
    seg, geometry = read_image(path)
    seg[0, 0, :3] = 255
    write_image(seg.astype(np.uint8), geometry, path)
    result = runner.invoke(app, ["evaluate", "-p", str(pred_dir), "-r", str(ref_dir), *option, "-np", "1"])
    assert result.exit_code == 2, result.output
    fix = (f"fix the file (the dataset is {ref_dir.parent / 'dataset.json'}, which gives --labels its ignore label)"
           if option else "fix the file (to score other values, `autoseg evaluate --labels` takes them instead of the dataset)")
    assert (f"c2: {path}: holds label value(s) 255 that the dataset does not declare (it declares 0, 1, 2) (2 is its "
            f"ignore label: voxels not to score hold 2); {fix}") in " ".join(result.output.split())
    assert not (pred_dir / "summary.json").exists()


@pytest.mark.parametrize("option", [[], ["-l", "1"]])
def test_a_prediction_holding_the_ignore_label_is_refused(folders, option):
    """A network never predicts the ignore label: a prediction holding it (references given as -p) was scored with
    those voxels as background without a word. It is refused, as an undeclared value is, with the dataset's labels
    and with --labels (which keeps the dataset's ignore label)."""
    pred_dir, ref_dir = folders
    _described(ref_dir.parent, {**LABELS, "ignore": 3})
    path = pred_dir / "c2.nii.gz"
    seg, geometry = read_image(path)
    seg[0, 0, :3] = 3
    write_image(seg, geometry, path)
    output = " ".join(autoseg_fails("evaluate", "-p", pred_dir, "-r", ref_dir, *option, "-np", 1).split())
    assert (f"c2: {path}: holds the ignore label 3 in 3 voxel(s), a value that marks reference voxels not to score and "
            "that no network predicts (it would be scored as background); give -p the folder of predicted label maps, "
            "not references or other label maps") in output
    assert not (pred_dir / "summary.json").exists()


def _described(folder, labels):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}))


def _one_case_with_an_ignored_slice(pred_dir, ref_dir):
    ref = np.zeros((4, 6, 8), np.uint8)
    ref[1:3, 1:4, 1:5] = 1
    pred = ref.copy()
    ref[0], pred[0] = 3, 1  # an ignored slice, predicted as class a
    _write(ref_dir, "c1", ref)
    _write(pred_dir, "c1", pred)


def test_a_predict_runs_model_dataset_json_comes_before_one_above_its_output(tmp_path):
    """Predictions lie anywhere: the dataset.json of the model their predict_info.json names is theirs, not another
    dataset's in the folder above them, which evaluate took first (ensemble already looked in this order)."""
    model, pred_dir, ref_dir = tmp_path / "model", tmp_path / "outputs" / "pred", tmp_path / "test" / "labels"
    _described(model, {**LABELS, "ignore": 3})
    _described(pred_dir.parent, {"background": 0, "other": 1})
    _one_case_with_an_ignored_slice(pred_dir, ref_dir)
    (pred_dir / "predict_info.json").write_text(json.dumps({"model_folder": str(model)}))
    autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1)
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["ignore_label"] == 3 and summary["classes"] == {"a": [1], "b": [2]}


def test_the_references_own_dataset_json_comes_before_the_one_above_them(tmp_path):
    """The most specific place first: a folder of references holding its dataset.json, kept among another dataset's
    files, was described by the dataset.json above it."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "other_dataset" / "labels"
    _described(ref_dir.parent, {"background": 0, "other": 1})
    _described(ref_dir, {**LABELS, "ignore": 3})
    _one_case_with_an_ignored_slice(pred_dir, ref_dir)
    autoseg("evaluate", "-p", pred_dir, "-r", ref_dir, "-np", 1)
    summary = json.loads((pred_dir / "summary.json").read_text())
    assert summary["ignore_label"] == 3 and summary["classes"] == {"a": [1], "b": [2]}


@pytest.mark.parametrize("command", [["evaluate"], ["postprocess", "determine"]])
def test_the_help_says_where_the_dataset_json_is_looked_for(command):
    """-d's help said 'default: dataset.json beside the references', though the references' folder, the predictions',
    their model's and the predictions' parent are searched too (dataset_json_places)."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert ("(default: the first dataset.json in REF, REF's parent, PRED, the model PRED's predict_info.json names, a "
            "fold's model folder or PRED's parent)") in text
    assert "beside the references" not in text


def test_one_listing_of_label_maps_by_case_serves_label_maps_and_the_references(tmp_path):
    """label_maps, evaluate's references and ensemble's output check each repeated the loop (iterdir, spelled
    ending, hidden entries skipped); entries_by_case is the one listing: folders kept (named as such by the callers),
    hidden entries and other files left out, each ending as spelled."""
    from autoseg.evaluation.evaluate import entries_by_case, label_maps

    for name in ("c1.nii.gz", "c1.NRRD", "c2.mha", ".c3.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "c4.nii.gz").mkdir()
    assert entries_by_case(tmp_path) == {"c1": [tmp_path / "c1.NRRD", tmp_path / "c1.nii.gz"], "c2": [tmp_path / "c2.mha"],
                                         "c4": [tmp_path / "c4.nii.gz"]}
    with pytest.raises(EvaluationError, match=r"^\S+: c1\.NRRD and c1\.nii\.gz are two label maps of case c1; keep one "
                                              r"\(move the other out\)$"):
        label_maps(tmp_path)
    (tmp_path / "c1.NRRD").unlink()
    assert label_maps(tmp_path) == {"c1": tmp_path / "c1.nii.gz", "c2": tmp_path / "c2.mha"}


def test_a_failed_summary_csv_leaves_the_earlier_summary_pair(folders, tmp_path, monkeypatch):
    """summary.json was written, then summary.csv: a CSV write failing (a full disk) left the new JSON beside the
    old CSV. Both are new or neither is: the earlier pair stays, and a first run leaves neither."""
    import errno

    import autoseg.evaluation.evaluate as evaluate_module

    pred_dir, ref_dir = folders
    out, first = tmp_path / "out", tmp_path / "first"
    evaluate_folders(pred_dir, ref_dir, LABELS, out, num_workers=1, file_ending=".nii.gz")
    before = {name: (out / name).read_bytes() for name in ("summary.json", "summary.csv")}
    write_text = evaluate_module.atomic_write_text

    def full_disk(path, text, durable=True):
        write_text(path, text[: len(text) // 2], durable)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(evaluate_module, "atomic_write_text", full_disk)
    (pred_dir / "c2.nii.gz").unlink()  # the new summary would score one case
    for folder in (out, first):
        with pytest.raises(OSError, match="No space left on device"):
            evaluate_folders(pred_dir, ref_dir, LABELS, folder, num_workers=1, file_ending=".nii.gz")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in first.iterdir()) == []  # no temporaries either
