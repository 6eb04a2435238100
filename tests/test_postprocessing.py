"""Connected-component postprocessing: the pure operations, the decision rule, and replaying it."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import EvaluationError
from autoseg.postprocessing.connected_components import (
    component_volumes_mm3,
    keep_largest,
    largest_component,
    remove_small,
)
from autoseg.postprocessing.determine import (
    apply_postprocessing,
    apply_to_folder,
    describe_steps,
    determine_postprocessing,
    load_decision,
)

from cli_helpers import autoseg_fails

LABELS = {"background": 0, "organ": 1, "nodule": 2}
SPACING = (1.0, 1.0, 2.0)  # voxel = 2 mm^3
GEOMETRY = Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))


def test_largest_component_uses_full_connectivity_and_breaks_ties_in_scan_order():
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one component
    mask[0, 3, 3] = mask[0, 4, 4] = True  # a second, equally large one, later in C order
    assert np.array_equal(largest_component(mask), mask & (np.arange(5)[None, :, None] < 2))
    assert not largest_component(np.zeros((2, 2, 2), bool)).any()


def test_keep_largest_and_remove_small_set_background():
    seg = np.zeros((3, 3, 8), np.uint8)
    seg[:, :, 0:3] = 1  # 27 voxels = 54 mm^3
    seg[1, 1, 5] = 1  # 1 voxel = 2 mm^3
    seg[1, 1, 7] = 2
    assert np.allclose(component_volumes_mm3(seg == 1, SPACING), [54.0, 2.0])
    kept = keep_largest(seg, [1])
    assert kept[1, 1, 5] == 0 and kept[1, 1, 7] == 2 and (kept == 1).sum() == 27
    assert np.array_equal(remove_small(seg, [1], 2.5, SPACING), kept)
    assert np.array_equal(remove_small(seg, [1], 2.0, SPACING), seg)  # "below" is strict
    both = keep_largest(seg, [1, 2])  # all foreground together
    assert both[1, 1, 7] == 0 and both[1, 1, 5] == 0


def _cube(seg, corner, size, value):
    z, y, x = corner
    seg[z : z + size[0], y : y + size[1], x : x + size[2]] = value


def _make_cv_folders(tmp_path):
    """Organ: one true blob, predicted with a spurious blob too big for remove_small (keep_largest helps).
    Nodule: two true components (keep_largest hurts); one case has a 1-voxel spurious nodule that only
    remove_small (below half the smallest true nodule, 0.5 x 16 mm^3) removes correctly."""
    refs, preds = tmp_path / "gt", tmp_path / "cv"
    refs.mkdir()
    preds.mkdir()
    for i in range(3):
        ref = np.zeros((14, 14, 14), np.uint8)
        _cube(ref, (0, 0, 0), (4, 4, 4), 1)  # organ, 128 mm^3
        _cube(ref, (9, 9, 9), (3, 3, 3), 2)  # nodule, 54 mm^3
        _cube(ref, (9, 0, 9), (2, 2, 2), 2)  # second nodule, 16 mm^3
        pred = ref.copy()
        _cube(pred, (0, 8, 0), (2, 4, 5), 1)  # spurious organ blob, 80 mm^3 (> 64 mm^3: not "small")
        if i == 0:
            pred[13, 5, 5] = 2  # spurious 2 mm^3 nodule
        write_image(ref, GEOMETRY, refs / f"case{i}.nii.gz")
        write_image(pred, GEOMETRY, preds / f"case{i}.nii.gz")
    return preds, refs


def test_determine_accepts_what_helps_and_rejects_what_hurts(tmp_path):
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    assert decision["steps"] == [
        {"operation": "keep_largest", "target": "organ", "label_values": [1]},
        {"operation": "remove_small", "target": "nodule", "label_values": [2], "min_volume_mm3": 8.0},
    ]
    verdicts = {(c["operation"], c["target"]): c["accepted"] for c in decision["candidates"]}
    assert verdicts == {
        ("keep_largest", "foreground"): False,  # would delete every nodule
        ("keep_largest", "organ"): True,
        ("remove_small", "organ"): False,  # the spurious blob is not small: no gain
        ("keep_largest", "nodule"): False,  # would delete the true second nodule
        ("remove_small", "nodule"): True,
    }
    organ_before = 2 * 64 / (2 * 64 + 40)
    nodule_before = (2 * 35 / (2 * 35 + 1) + 2) / 3
    assert decision["dice_before"]["organ"] == pytest.approx(organ_before)
    assert decision["dice_before"]["nodule"] == pytest.approx(nodule_before)
    assert decision["dice_after"] == {"organ": 1.0, "nodule": 1.0, "foreground_mean": 1.0}
    assert json.loads((preds / "postprocessing.json").read_text())["steps"] == decision["steps"]


@pytest.mark.parametrize(("folder", "value", "expected"), [
    ("gt", 255, "holds label value(s) 255 that the dataset does not declare (it declares 0, 1, 2)"),
    ("cv", 0.5, "holds non-integer values; a label map holds one class number per voxel"),
])
def test_determine_refuses_what_evaluate_refuses(tmp_path, folder, value, expected):
    """A 0/255 reference or a probability map saved as prediction: before, the organ counted as absent
    and a decision was written without a word, while evaluate refused the same files."""
    preds, refs = _make_cv_folders(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 3, "file_ending": ".nii.gz",
    }))
    path = tmp_path / folder / "case1.nii.gz"
    seg, geometry = read_image(path)
    write_image(np.where(seg == 1, value, seg).astype(np.float32 if value % 1 else np.uint8), geometry, path)
    with pytest.raises(EvaluationError, match=rf"case1: {re.escape(str(path))}: {re.escape(expected)}"):
        determine_postprocessing(preds, refs, load_description(tmp_path), num_workers=1)
    assert not (preds / "postprocessing.json").exists()


def test_determine_refuses_a_prediction_holding_the_ignore_label(tmp_path):
    """A prediction holding the dataset's ignore label (which no network predicts) was scored as background when
    deciding the postprocessing, while evaluate refuses it."""
    preds, refs = _make_cv_folders(tmp_path)
    path = preds / "case1.nii.gz"
    seg, geometry = read_image(path)
    seg[13, 13, 13] = 4
    write_image(seg, geometry, path)
    with pytest.raises(EvaluationError, match=rf"case1: {re.escape(str(path))}: holds the ignore label 4 in 1 voxel\(s\)"):
        determine_postprocessing(preds, refs, {**LABELS, "ignore": 4}, num_workers=1, file_ending=".nii.gz")
    assert not (preds / "postprocessing.json").exists()


@pytest.mark.parametrize("epsilon", [math.nan, -0.5, 1.0, math.inf])
def test_an_epsilon_that_is_no_dice_difference_is_refused(tmp_path, epsilon):
    """NaN accepted nothing, -0.5 demanded every class improve by 0.5: decisions written without a word."""
    preds, refs = _make_cv_folders(tmp_path)
    with pytest.raises(EvaluationError, match=r"--epsilon .*: give a Dice difference of at least 0 and below 1"):
        determine_postprocessing(preds, refs, LABELS, num_workers=1, epsilon=epsilon, file_ending=".nii.gz")
    assert not (preds / "postprocessing.json").exists()


def test_gain_below_epsilon_is_rejected(tmp_path):
    preds, refs = _make_cv_folders(tmp_path)
    # The nodule gain is (1 - 70/71) / 3 = 0.0047: below an epsilon of 0.01 it is noise.
    decision = determine_postprocessing(preds, refs, LABELS, tmp_path / "pp.json", num_workers=1, epsilon=0.01, file_ending=".nii.gz")
    assert [s["target"] for s in decision["steps"]] == ["organ"]
    assert load_decision(tmp_path / "pp.json")["steps"] == decision["steps"]


def test_a_decision_path_ending_in_a_separator_is_a_folder_for_postprocessing_json(tmp_path):
    """``-o d3/`` (a folder not made yet) wrote a file named d3; an existing folder is refused by name."""
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, f"{tmp_path / 'd3'}/", num_workers=1, file_ending=".nii.gz")
    assert load_decision(tmp_path / "d3" / "postprocessing.json")["steps"]
    with pytest.raises(EvaluationError, match=r"d3: is a folder; give a file name"):
        determine_postprocessing(preds, refs, LABELS, tmp_path / "d3", num_workers=1, file_ending=".nii.gz")



def test_determine_from_the_command_line_keeps_the_trailing_separator_of_its_output(tmp_path):
    """The CLI's path parser made ``-o d4/`` a Path, dropping the separator, so a file named d4 was written."""
    from typer.testing import CliRunner

    from autoseg.cli import app

    preds, refs = _make_cv_folders(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                        "numTraining": 3, "file_ending": ".nii.gz"}))
    result = CliRunner().invoke(app, ["postprocess", "determine", "-p", str(preds), "-r", str(refs), "-np", "1",
                                      "-o", f"{tmp_path / 'd4'}/"])
    assert result.exit_code == 0, result.output
    assert load_decision(tmp_path / "d4" / "postprocessing.json")["steps"]
    assert f"written: {tmp_path / 'd4' / 'postprocessing.json'}" in result.output
    # the accepted steps as a person reads them (the command printed raw Python dicts)
    assert ("accepted steps:\n  1. organ (label 1): keep the largest component: Dice 0.7619 -> 1.0000\n"
            "  2. nodule (label 2): remove components below 8 mm^3: Dice 0.9953 -> 1.0000\n") in result.output


def test_determine_from_the_command_line_names_one_folder_given_twice_before_a_missing_dataset_json(tmp_path):
    """``postprocess determine -p X -r X`` without -d was refused for want of a dataset.json, hiding the real fault."""
    from typer.testing import CliRunner

    from autoseg.cli import app

    preds, _ = _make_cv_folders(tmp_path)
    result = CliRunner().invoke(app, ["postprocess", "determine", "-p", str(preds), "-r", str(preds), "-np", "1"])
    assert result.exit_code != 0
    assert "is both the predictions (-p) and the references (-r) folder" in result.output, result.output


def test_apply_is_deterministic_and_matches_the_reference(tmp_path):
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    seg, geometry = read_image(preds / "case0.nii.gz")
    once = apply_postprocessing(decision, seg, geometry.spacing)
    assert np.array_equal(once, apply_postprocessing(decision, seg, geometry.spacing))
    assert np.array_equal(once, read_image(refs / "case0.nii.gz")[0])
    written = apply_to_folder(preds, tmp_path / "post", preds / "postprocessing.json", num_workers=1)
    assert [p.name for p in written] == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    for path in written:
        out, out_geometry = read_image(path)
        assert np.array_equal(out, read_image(refs / path.name)[0]) and out_geometry == geometry


def test_bad_decision_files_are_refused(tmp_path):
    (tmp_path / "bad.json").write_text('{"version": 99, "steps": []}')
    with pytest.raises(EvaluationError, match=r"bad\.json: is not a postprocessing decision \(version 1\)"):
        load_decision(tmp_path / "bad.json")
    with pytest.raises(EvaluationError, match=r"missing\.json: not found; run autoseg postprocess determine first"):
        apply_to_folder(tmp_path, tmp_path / "out", tmp_path / "missing.json")


@pytest.mark.parametrize(("step", "expected"), [
    ({"operation": "keep_largest", "target": "organ"}, "step keep_largest has label_values None, not a list of positive label values"),
    ({"operation": "remove_small", "label_values": [2], "min_volume_mm3": "big"}, "step remove_small has min_volume_mm3 'big', not a volume"),
    ({"operation": "remove_small", "label_values": [2]}, "step remove_small has min_volume_mm3 None, not a volume"),
    ("keep_largest", "step 'keep_largest' is not an object whose operation is one of keep_largest, remove_small"),
    # A value the dataset lacks changed no voxel: apply wrote the label maps unchanged without a word.
    ({"operation": "keep_largest", "target": "organ", "label_values": [1, 7]},
     "step keep_largest names label value(s) [7] that the dataset it was determined on does not have (its foreground "
     "values: [1, 2])"),
])
def test_a_hand_edited_step_is_refused_naming_the_decision_file(tmp_path, step, expected):
    """Before: every case failed with a bare KeyError / TypeError naming neither the file nor the fix."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({**decision, "steps": [step]}))
    with pytest.raises(EvaluationError, match=rf"edited\.json: {re.escape(expected)}.*; re-run autoseg postprocess determine"):
        apply_to_folder(preds, tmp_path / "post", path, num_workers=1)
    # The same decision given to the Python API as a mapping: refused alike (was a KeyError in every case).
    with pytest.raises(EvaluationError, match=rf"decision_json \(the decision given\): {re.escape(expected)}"):
        apply_to_folder(preds, tmp_path / "post", {**decision, "steps": [step]}, num_workers=1)
    assert not (tmp_path / "post").exists()


@pytest.mark.parametrize("ending", ["", "nii.gz", ".txt"])
def test_a_hand_edited_file_ending_is_refused_naming_the_decision_file(tmp_path, ending):
    """An empty file_ending took every file of the folder as one case named '' (the label maps collapsed into
    one case, the decision file), and failed on the decision file as 'unsupported file type'."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({**decision, "file_ending": ending}))
    with pytest.raises(EvaluationError, match=rf"edited\.json: file_ending {re.escape(repr(ending))} is not an image file "
                                              r"ending \(one of \.nii\.gz, .*\); re-run autoseg postprocess determine"):
        apply_to_folder(preds, tmp_path / "post", path, num_workers=1)
    assert not (tmp_path / "post").exists()


def test_apply_refuses_the_input_folder_or_a_file_as_output(tmp_path):
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    before = {p.name: p.read_bytes() for p in preds.iterdir()}
    with pytest.raises(EvaluationError, match=r"cv: output folder equals the input folder; choose another output folder"):
        apply_to_folder(preds, preds, preds / "postprocessing.json", num_workers=1)
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(EvaluationError, match=r"afile: exists and is not a folder"):
        apply_to_folder(preds, tmp_path / "afile", preds / "postprocessing.json", num_workers=1)
    assert {p.name: p.read_bytes() for p in preds.iterdir()} == before and (tmp_path / "afile").read_text() == "keep"


def test_apply_does_not_overwrite_label_maps_autoseg_did_not_write(tmp_path):
    """``-o`` on the references replaced them with the postprocessed predictions without a word; a rerun into
    apply's own output folder still replaces its outputs; a folder predict wrote is refused (its label maps
    and apply's would stand side by side under predict's record)."""
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    before = {p.name: p.read_bytes() for p in refs.iterdir()}
    with pytest.raises(EvaluationError, match=r"holds 3 file\(s\) not written by autoseg postprocess apply \(case0\.nii\.gz, "
                                              r"case1\.nii\.gz, case2\.nii\.gz; .*replacing 3 of the same name\(s\)"):
        apply_to_folder(preds, refs, preds / "postprocessing.json", num_workers=1)
    assert {p.name: p.read_bytes() for p in refs.iterdir()} == before
    apply_to_folder(preds, tmp_path / "post", preds / "postprocessing.json", num_workers=1)
    assert apply_to_folder(preds, tmp_path / "post", preds / "postprocessing.json", num_workers=1)
    copy = tmp_path / "predicted"
    shutil.copytree(refs, copy)
    (copy / "predict_info.json").write_text("{}")  # predict's record marks the folder as autoseg's
    with pytest.raises(EvaluationError, match=r"predicted: holds the label maps of an autoseg predict run \(predict_info\.json\); "
                                              r"autoseg postprocess apply would mix its own with them"):
        apply_to_folder(preds, copy, preds / "postprocessing.json", num_workers=1)


def test_apply_refuses_an_image_given_as_a_label_map(tmp_path):
    """``-i imagesTs`` (or probabilities saved as label maps) wrote the images back with the voxels of the steps'
    values edited, as if they were label maps; integer-valued float label maps (Hippocampus has two) still pass."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    images = tmp_path / "images"
    images.mkdir()
    image = np.zeros((6, 6, 6), np.float32)
    image[:2, :2, :2], image[4:, 4:, 4:] = 1.0, 0.7
    write_image(image, GEOMETRY, images / "scan.nii.gz")
    write_image(read_image(preds / "case0.nii.gz")[0].astype(np.float32), GEOMETRY, images / "float_labels.nii.gz")
    with pytest.raises(EvaluationError, match=r"1 of 2 cases could not be postprocessed: scan: .*scan\.nii\.gz: holds "
                                              r"non-integer values; a label map holds one class number per voxel"):
        apply_to_folder(images, tmp_path / "out", decision, num_workers=1)
    assert not (tmp_path / "out" / "scan.nii.gz").exists()
    assert np.array_equal(read_image(tmp_path / "out" / "float_labels.nii.gz")[0], read_image(refs / "case0.nii.gz")[0])


def test_apply_refuses_a_mask_of_values_the_dataset_does_not_have(tmp_path):
    """A folder of 0/255 binary masks was passed through without a word (predict never writes such values); now
    each is refused naming the file, its values and the dataset's, and a label map of the dataset's values passes."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[:2, :2, :2] = 255
    write_image(mask, GEOMETRY, masks / "binary.nii.gz")
    shutil.copy(preds / "case0.nii.gz", masks / "good.nii.gz")
    with pytest.raises(EvaluationError, match=r"1 of 2 cases could not be postprocessed: binary: .*binary\.nii\.gz: "
                                              r"holds label value\(s\) 255 that the dataset does not declare \(it declares 0, 1, 2\) \(a 0/255 mask.*; "
                                              r"postprocess apply takes predictions of the dataset's classes"):
        apply_to_folder(masks, tmp_path / "out", decision, num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["good.nii.gz"]


def test_a_folder_given_as_the_decision_is_named_as_a_folder(tmp_path):
    """``--decision CV_PRED`` (the folder determine wrote postprocessing.json in) was refused as 'not found'."""
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    with pytest.raises(EvaluationError, match=r"cv: is a folder, not a decision file; give .*cv/postprocessing\.json$"):
        apply_to_folder(preds, tmp_path / "out", preds, num_workers=1)
    with pytest.raises(EvaluationError, match=r"gt: is a folder, not a decision file; give the decision file autoseg "
                                              r"postprocess determine wrote$"):
        apply_to_folder(preds, tmp_path / "out", refs, num_workers=1)
    assert not (tmp_path / "out").exists()


DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {**LABELS, "ignore": 3}, "numTraining": 3,
                "file_ending": ".nii.gz"}


@pytest.mark.parametrize("where", ["input", "model"])
def test_apply_copies_the_dataset_json_and_plans_json_of_its_input(tmp_path, where):
    """apply wrote neither (nnU-Net's copies both), so evaluate of its output against references without a
    dataset.json scored the values found in them, named by number, its ignore label as a class. They are copied from
    the input folder, or from the model a predict run's predict_info.json names, and evaluate takes the dataset's."""
    from cli_helpers import autoseg

    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    source = preds if where == "input" else tmp_path / "model"
    source.mkdir(exist_ok=True)
    (source / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (source / "plans.json").write_text('{"plans_name": "autosegPlans"}\n')
    if where == "model":
        (preds / "predict_info.json").write_text(json.dumps({"model_folder": str(source)}))
    out = tmp_path / "out"
    autoseg("postprocess", "apply", "-i", preds, "-o", out, "--decision", preds / "postprocessing.json", "-np", 1)
    for name in ("dataset.json", "plans.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    autoseg("evaluate", "-p", out, "-r", refs, "-o", tmp_path / "eval", "-np", 1)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["classes"] == {"organ": [1], "nodule": [2]} and summary["ignore_label"] == 3
    assert summary["mean"]["organ"]["dice"] == decision["dice_after"]["organ"] == 1.0


def test_apply_whose_every_case_fails_writes_no_dataset_json_or_plans_json(tmp_path):
    """The dataset.json and plans.json were copied before the cases: an apply whose every case failed left them alone
    in the output folder, a partial output; they are copied once a case is written, and the rerun after the fix does."""
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    (preds / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (preds / "plans.json").write_text('{"plans_name": "autosegPlans"}\n')
    good = {p.name: read_image(p)[0] for p in sorted(preds.glob("*.nii.gz"))}
    for name, seg in good.items():
        write_image(np.where(seg > 0, 255, 0).astype(np.uint8), GEOMETRY, preds / name)  # a 0/255 mask each
    out = tmp_path / "out"
    with pytest.raises(EvaluationError, match=r"^3 of 3 cases could not be postprocessed: .*; no label map was written$"):
        apply_to_folder(preds, out, preds / "postprocessing.json", num_workers=1)
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    for name, seg in good.items():
        write_image(seg, GEOMETRY, preds / name)
    apply_to_folder(preds, out, preds / "postprocessing.json", num_workers=1)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "case0.nii.gz", "case1.nii.gz", "case2.nii.gz", "dataset.json", "plans.json"]
    assert (out / "dataset.json").read_bytes() == (preds / "dataset.json").read_bytes()


def test_apply_takes_no_probabilities_sidecar_of_a_case_named_plans_for_the_plans(tmp_path):
    """A predict folder with a case named plans saved with --save-probabilities holds plans.json, that case's sidecar,
    beside plans.npz: apply copied it as the plans and left the model's dataset.json out. Each name is looked up on
    its own and the sidecar skipped, so both come from the model."""
    preds, _ = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, _, LABELS, num_workers=1, file_ending=".nii.gz")
    model = tmp_path / "model"
    model.mkdir()
    (model / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (model / "plans.json").write_text('{"plans_name": "autosegPlans"}\n')
    (preds / "predict_info.json").write_text(json.dumps({"model_folder": str(model)}))
    (preds / "plans.json").write_text('{"case_id": "plans", "shape": [2, 1, 4, 4]}')
    (preds / "plans.npz").write_bytes(b"saved probabilities")
    apply_to_folder(preds, tmp_path / "out", preds / "postprocessing.json", num_workers=1)
    for name in ("dataset.json", "plans.json"):
        assert (tmp_path / "out" / name).read_bytes() == (model / name).read_bytes()


def test_apply_refuses_a_folder_holding_another_dataset_json_before_any_case(tmp_path):
    """The copy never replaces a dataset.json that apply did not write: the output folder is refused, untouched."""
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    (preds / "dataset.json").write_text(json.dumps(DATASET_JSON))
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset.json").write_text("{}")
    with pytest.raises(EvaluationError, match=r"out: holds 1 file\(s\) not written by autoseg postprocess apply "
                                              r"\(dataset\.json; .*replacing 1 of the same name"):
        apply_to_folder(preds, out, preds / "postprocessing.json", num_workers=1)
    assert [p.name for p in out.iterdir()] == ["dataset.json"] and (out / "dataset.json").read_text() == "{}"


def test_apply_postprocesses_label_maps_of_another_ending_too(tmp_path):
    """predict writes a case NIfTI cannot hold (a sheared one) as .nrrd beside the dataset's .nii.gz: apply of a
    .nii.gz decision left it out without a word. Two files of one case are refused."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    seg, geometry = read_image(preds / "case0.nii.gz")
    write_image(seg, geometry, preds / "sheared.nrrd")
    written = apply_to_folder(preds, tmp_path / "out", decision, num_workers=1)
    assert sorted(p.name for p in written) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz", "sheared.nrrd"]
    assert np.array_equal(read_image(tmp_path / "out" / "sheared.nrrd")[0], read_image(tmp_path / "out" / "case0.nii.gz")[0])
    write_image(seg, geometry, preds / "case0.nrrd")
    with pytest.raises(EvaluationError, match=r"cv: case0\.nii\.gz and case0\.nrrd are two label maps of case case0; keep one"):
        apply_to_folder(preds, tmp_path / "out2", decision, num_workers=1)


def test_determine_scores_predictions_of_another_ending_too(tmp_path):
    """A .nrrd prediction (predict's output for a case NIfTI cannot hold) of a .nii.gz dataset was left out of
    determine without a word: its Dice did not count. It is scored against its reference of the dataset's ending."""
    preds, refs = _make_cv_folders(tmp_path)
    expected = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz", output_json=tmp_path / "a.json")
    seg, geometry = read_image(preds / "case0.nii.gz")
    (preds / "case0.nii.gz").unlink()
    write_image(seg, geometry, preds / "case0.nrrd")
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    assert decision["dice_before"] == expected["dice_before"] and decision["steps"] == expected["steps"]


def _folder_bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_apply_of_other_inputs_into_a_filled_folder_is_refused(tmp_path):
    """apply over A (3 cases) into OUT, then over B holding only case0 into OUT left 1 new and 2 stale label
    maps under one mark, and evaluate scored the mix; so did A again after its label maps, or the steps, changed."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    apply_to_folder(preds, tmp_path / "out", decision, num_workers=1)
    before = _folder_bytes(tmp_path / "out")
    only_case0 = tmp_path / "b"
    only_case0.mkdir()
    shutil.copy(refs / "case0.nii.gz", only_case0)
    with pytest.raises(EvaluationError, match=r"out: holds the outputs of autoseg postprocess apply over .*/cv, not over "
                                              r".*/b \(\.autoseg_outputs\.json\); the new outputs would stand beside stale ones"):
        apply_to_folder(only_case0, tmp_path / "out", decision, num_workers=1)
    with pytest.raises(EvaluationError, match=r"over .*/cv with other postprocessing steps"):
        apply_to_folder(preds, tmp_path / "out", {**decision, "steps": decision["steps"][:1]}, num_workers=1)
    shutil.copy(refs / "case1.nii.gz", preds / "case1.nii.gz")  # predicted anew
    with pytest.raises(EvaluationError, match=r"over .*/cv before some of their files changed or were removed"):
        apply_to_folder(preds, tmp_path / "out", decision, num_workers=1)
    assert _folder_bytes(tmp_path / "out") == before


def test_apply_rerun_over_its_input_with_cases_added_extends_its_folder(tmp_path):
    """apply over 3 cases into OUT, then 2 new cases added to the input: the rerun was refused as another run's
    folder; it now writes the new cases beside the earlier ones. A case removed from the input is still refused."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    apply_to_folder(preds, tmp_path / "out", decision, num_workers=1)
    for case in ("case3", "case4"):
        shutil.copy(refs / "case0.nii.gz", preds / f"{case}.nii.gz")
    assert len(apply_to_folder(preds, tmp_path / "out", decision, num_workers=1)) == 5
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == [f"case{i}.nii.gz" for i in range(5)]
    (preds / "case4.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"over .*/cv before some of their files changed or were removed"):
        apply_to_folder(preds, tmp_path / "out", decision, num_workers=1)


def test_apply_into_a_folder_of_other_label_maps_is_refused_before_any_case(tmp_path):
    """A folder of another tool's predictions (other names than the outputs') got apply's label maps beside them
    without a word, and evaluate scored the mix; a README or a plot in the folder is no label map and does not block."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for name in ("p1", "p2", "p3", "p4"):
        shutil.copy(refs / "case0.nii.gz", theirs / f"{name}.nii.gz")
    with pytest.raises(EvaluationError, match=r"theirs: holds 4 file\(s\) not written by autoseg postprocess apply "
                                              r"\(p1\.nii\.gz, p2\.nii\.gz, p3\.nii\.gz and 1 more; the folder has no "
                                              r"\.autoseg_outputs\.json\); autoseg postprocess apply would put its own among "
                                              r"them, and evaluate would score the mix\. Choose an empty or new output folder$"):
        apply_to_folder(preds, theirs, decision, num_workers=1)
    assert sorted(p.name for p in theirs.iterdir()) == ["p1.nii.gz", "p2.nii.gz", "p3.nii.gz", "p4.nii.gz"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("mine")
    (notes / "dice.png").write_bytes(b"plot")
    assert len(apply_to_folder(preds, notes, decision, num_workers=1)) == 3


def test_a_folder_emptied_with_rm_takes_another_run(tmp_path):
    """``rm OUT/*`` leaves the hidden mark: apply of another folder (or predict) into the emptied folder was
    refused as 'holds the outputs of autoseg postprocess apply', though it held none."""
    from autoseg.errors import InferenceError
    from autoseg.inference.batch import check_predict_record

    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    out = tmp_path / "out"
    apply_to_folder(preds, out, decision, num_workers=1)
    with pytest.raises(InferenceError, match=r"out: holds the outputs of autoseg postprocess apply"):
        check_predict_record(out, {"model_folder": "m"}, [out / "other.nii.gz"])
    for path in out.glob("*.nii.gz"):
        path.unlink()
    check_predict_record(out, {"model_folder": "m"}, [out / "other.nii.gz"])
    only_case0 = tmp_path / "b"
    only_case0.mkdir()
    shutil.copy(refs / "case0.nii.gz", only_case0)
    apply_to_folder(only_case0, out, decision, num_workers=1)
    assert sorted(p.name for p in out.iterdir()) == [".autoseg_outputs.json", "case0.nii.gz"]
    with pytest.raises(EvaluationError, match=r"over .*/b, not over .*/cv"):  # the mark now names the new input
        apply_to_folder(preds, out, decision, num_workers=1)


def test_the_same_apply_rerun_after_a_kill_resumes(tmp_path):
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    apply_to_folder(preds, tmp_path / "out", preds / "postprocessing.json", num_workers=1)
    expected = _folder_bytes(tmp_path / "out")
    (tmp_path / "out" / "case2.nii.gz").unlink()  # the case a killed run did not reach
    assert len(apply_to_folder(preds, tmp_path / "out", preds / "postprocessing.json", num_workers=1)) == 3
    assert _folder_bytes(tmp_path / "out") == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("cv/case0.nii.gz", "a decision file is JSON, not an image, and would be read as one there"),
    ("cv/new.nii.gz", "a decision file is JSON, not an image, and would be read as one there"),
    ("cv/NEW.NII.GZ", "a decision file is JSON, not an image, and would be read as one there"),
    ("notes.json", "exists and is not a postprocessing decision, which this run would replace"),
])
def test_a_decision_file_never_replaces_a_label_map_or_another_file(tmp_path, name, expected):
    """-o cv/case0.nii.gz replaced that prediction with the decision's JSON (and -o notes.json the user's notes); a
    new cv/new.nii.gz failed every later evaluate and apply of the folder as an unreadable label map."""
    preds, refs = _make_cv_folders(tmp_path)
    (tmp_path / "notes.json").write_text(json.dumps({"labels": LABELS}))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(EvaluationError, match=rf"{re.escape(name)}: {re.escape(expected)}; give -o a new \.json file name"):
        determine_postprocessing(preds, refs, LABELS, tmp_path / name, num_workers=1, file_ending=".nii.gz")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    determine_postprocessing(preds, refs, LABELS, tmp_path / "pp.json", num_workers=1, file_ending=".nii.gz")
    assert determine_postprocessing(preds, refs, LABELS, tmp_path / "pp.json", num_workers=1, file_ending=".nii.gz")["steps"]


def test_a_damaged_postprocessing_json_is_determined_again(tmp_path):
    """A truncated postprocessing.json (apply: 're-run autoseg postprocess determine') was refused by that determine as
    'exists and is not a postprocessing decision' (find-best's, beside a model, alike); a file of that name is replaced."""
    preds, refs = _make_cv_folders(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    for target in (preds / "postprocessing.json", tmp_path / "elsewhere" / "postprocessing.json"):
        target.write_text('{"version": 1, "steps": [')
        given = None if target.parent == preds else target
        decision = determine_postprocessing(preds, refs, LABELS, given, num_workers=1, file_ending=".nii.gz")
        assert load_decision(target) == json.loads(json.dumps(decision))


def test_references_given_as_predictions_or_holding_the_decision_are_refused(tmp_path):
    """-p gt -r gt scored every case 1, so nothing was accepted, and wrote postprocessing.json among the references;
    -o gt/pp.json did so too (a dataset's labelsTr then failed verify)."""
    _, refs = _make_cv_folders(tmp_path)
    preds = tmp_path / "cv"
    before = sorted(p.name for p in refs.iterdir())
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(refs))}: is both the predictions \(-p\) and the "
                                              r"references \(-r\) folder, which would score every case perfect"):
        determine_postprocessing(refs, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(refs / 'pp.json'))}: lies in the reference folder "
                                              rf"{re.escape(str(refs))}; the decision file would stand among the "
                                              r"reference label maps .*; give -o a file outside it$"):
        determine_postprocessing(preds, refs, LABELS, refs / "pp.json", num_workers=1, file_ending=".nii.gz")
    assert sorted(p.name for p in refs.iterdir()) == before


def test_apply_with_a_failing_case_names_it_and_where_the_others_are(tmp_path):
    """One case that cannot be postprocessed fails the command (exit 2) naming it, leaves no file of it, and, as
    predict says, where the other cases' label maps are; the message named the failure only."""
    preds, refs = _make_cv_folders(tmp_path)
    determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    write_image(np.full((4, 4, 4), 0.5, np.float32), GEOMETRY, preds / "zz_bad.nii.gz")
    output = autoseg_fails("postprocess", "apply", "-i", preds, "-o", tmp_path / "out",
                           "--decision", preds / "postprocessing.json", "-np", 1)
    assert re.search(r"error: 1 of 4 cases could not be postprocessed: zz_bad: .*zz_bad\.nii\.gz: holds non-integer "
                     r"values.*; the other 3 label map\(s\) are in .*out$", output.strip()), output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".autoseg_outputs.json", "case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(preds / "zz_bad.nii.gz", only_bad)
    with pytest.raises(EvaluationError, match=r"1 of 1 cases could not be postprocessed: .*; no label map was written$"):
        apply_to_folder(only_bad, tmp_path / "out2", preds / "postprocessing.json", num_workers=1)


def test_the_accepted_steps_are_described_as_a_person_reads_them(tmp_path):
    """determine printed the accepted steps as raw Python dicts, without the Dice that made them pass; each is now
    one line: its class or region with the label values, the operation, and the Dice before and after it."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    assert describe_steps(decision) == [
        "1. organ (label 1): keep the largest component: Dice 0.7619 -> 1.0000",
        "2. nodule (label 2): remove components below 8 mm^3: Dice 0.9953 -> 1.0000",
    ]
    whole = {"operation": "keep_largest", "target": "foreground", "label_values": [1, 2, 3]}
    region = {"operation": "remove_small", "target": "tumor_core", "label_values": [2, 3], "min_volume_mm3": 12.25}
    records = [{**whole, "accepted": True, "dice_before": {"whole": 0.5, "tumor_core": 0.7}, "dice_after": {"whole": 0.7, "tumor_core": 0.8}},
               {**region, "accepted": False, "dice_before": {"tumor_core": 0.8}, "dice_after": {"tumor_core": 0.1}},
               {**region, "accepted": True, "dice_before": {"tumor_core": 0.8}, "dice_after": {"tumor_core": 0.9}}]
    assert describe_steps({"steps": [whole, region], "candidates": records}) == [
        "1. foreground (labels 1, 2, 3): keep the largest component: Dice 0.6000 -> 0.7500",
        "2. tumor_core (region of labels 2, 3): remove components below 12.25 mm^3: Dice 0.8000 -> 0.9000",
    ]
    assert describe_steps({**decision, "steps": [], "candidates": records[1:2]}) == []


PNG = Geometry(spacing=(999.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))


def _make_2d_cv_folders(tmp_path):
    """PNG predictions and references (with their dataset.json) on which determine removes a spurious 1 mm^2 nodule."""
    refs, preds = tmp_path / "gt", tmp_path / "cv"
    refs.mkdir()
    preds.mkdir()
    for i in range(3):
        ref = np.zeros((1, 12, 12), np.uint8)
        ref[0, :4, :4] = 1  # organ, 16 mm^2
        ref[0, 8:11, 8:11] = 2  # nodule, 9 mm^2
        ref[0, 8:10, :2] = 2  # second nodule, 4 mm^2
        pred = ref.copy()
        if i == 0:
            pred[0, 11, 5] = 2  # spurious 1 mm^2 nodule, below half the smallest true one
        write_image(ref, PNG, refs / f"case{i}.png")
        write_image(pred, PNG, preds / f"case{i}.png")
    (tmp_path / "dataset.json").write_text(json.dumps({**DATASET_JSON, "labels": LABELS, "file_ending": ".png"}))
    return preds, refs


def test_a_2d_datasets_component_sizes_are_areas_in_mm2(tmp_path):
    """determine on 2D PNG predictions printed 'remove components below 2 mm^3' of a size that is an area; the
    decision records its size_unit, mm^2, and the command says it."""
    from cli_helpers import autoseg

    preds, refs = _make_2d_cv_folders(tmp_path)
    out = autoseg("postprocess", "determine", "-p", preds, "-r", refs, "-np", 1)
    assert "  1. nodule (label 2): remove components below 2 mm^2: Dice " in out, out
    assert json.loads((preds / "postprocessing.json").read_text())["size_unit"] == "mm^2"


def test_steps_without_candidate_records_are_described_without_their_dice():
    """describe_steps built its lines from the accepted candidates and never read ``steps``: a decision with steps but
    no candidates (written by hand or another tool, which apply replays) printed 'accepted steps: none'."""
    whole = {"operation": "keep_largest", "target": "foreground", "label_values": [1, 2]}
    small = {"operation": "remove_small", "target": "nodule", "label_values": [2], "min_volume_mm3": 8.0}
    assert describe_steps({"steps": [whole, small]}) == [
        "1. foreground (labels 1, 2): keep the largest component",
        "2. nodule (label 2): remove components below 8 mm^3",
    ]
    recorded = {**small, "accepted": True, "dice_before": {"nodule": 0.5}, "dice_after": {"nodule": 0.75}}
    assert describe_steps({"steps": [whole, small], "candidates": [recorded]}) == [
        "1. foreground (labels 1, 2): keep the largest component",
        "2. nodule (label 2): remove components below 8 mm^3: Dice 0.5000 -> 0.7500",
    ]


def test_an_unreadable_dataset_json_found_for_determine_names_the_way_round(tmp_path):
    """An nnU-Net v1 dataset.json above the references stopped determine with the bare parse error, no way round it
    (evaluate named -d); both now say which folders it was found for and to give -d."""
    preds, refs = _make_cv_folders(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a"}}))
    output = autoseg_fails("postprocess", "determine", "-p", preds, "-r", refs, "-np", 1)
    assert " ".join(output.split()) == (
        f"autoseg: error: {tmp_path}/dataset.json: 'modality' is nnU-Net v1 syntax; rename it to 'channel_names' (the "
        f"dataset.json found for the references {refs} and predictions {preds}; to determine without it, give the "
        "dataset with -d)")
    assert not (preds / "postprocessing.json").exists()
    assert determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")["steps"]


def test_without_a_description_the_arguments_are_checked_before_the_dataset_json_is_looked_for(tmp_path):
    """``-p X -r X`` without ``-d`` was refused for want of a dataset.json; fixing that (``-d``) only led to the real
    fault. The same folder, a missing folder, then a missing dataset.json, in that order; one beside the references is
    found (None took no description at all: 'labels None')."""
    preds, refs = _make_cv_folders(tmp_path)
    with pytest.raises(EvaluationError, match=r"cv: is both the predictions \(-p\) and the references \(-r\) folder"):
        determine_postprocessing(preds, preds, None, num_workers=1)
    with pytest.raises(EvaluationError, match=r"nope: prediction folder \(-p/--pred\) not found$"):
        determine_postprocessing(tmp_path / "nope", refs, None, num_workers=1)
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(refs))}: no dataset\.json found \(looked in "
                                              rf"{re.escape(f'{refs}, {tmp_path}, {preds}')}\); name the dataset \(-d"):
        determine_postprocessing(preds, refs, None, num_workers=1)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                        "numTraining": 3, "file_ending": ".nii.gz"}))
    assert determine_postprocessing(preds, refs, None, num_workers=1)["steps"][0]["target"] == "organ"


@pytest.mark.parametrize("units, unit", [(["mm^2", "mm"], "mm^2"), (["mm^3", "mm^2"], "mm^3"), (["mm", "mm"], "mm"),
                                         (["mm^2", "mm^2"], "mm^2")])
def test_the_decisions_size_unit_is_that_of_the_references_of_most_axes(units, unit):
    """A 2D dataset holding a 1 x N image (whose sizes are lengths, in mm) had its decision's sizes called mm^3."""
    from autoseg.postprocessing.determine import _decision_size_unit

    assert _decision_size_unit([{"size_unit": u} for u in units]) == unit


def test_a_decision_measured_in_other_units_than_the_label_maps_is_refused_before_any_output(tmp_path):
    """A decision determined on 2D label maps (removal sizes in mm^2) was applied to 3D ones, their components
    measured in mm^3 (and the reverse), without a word."""
    (tmp_path / "2d").mkdir()
    (tmp_path / "3d").mkdir()
    preds_2d, refs_2d = _make_2d_cv_folders(tmp_path / "2d")
    decision_2d = determine_postprocessing(preds_2d, refs_2d, LABELS, num_workers=1, file_ending=".png")
    preds_3d, refs_3d = _make_cv_folders(tmp_path / "3d")
    decision_3d = determine_postprocessing(preds_3d, refs_3d, LABELS, num_workers=1, file_ending=".nii.gz")
    assert (decision_2d["size_unit"], decision_3d["size_unit"]) == ("mm^2", "mm^3")
    output = autoseg_fails("postprocess", "apply", "-i", preds_3d, "-o", tmp_path / "out",
                           "--decision", preds_2d / "postprocessing.json", "-np", 1)
    assert (f"error: {preds_3d}: its label maps are 3D (e.g. case0.nii.gz), whose component sizes are in mm^3, but "
            "the decision was determined on 2D label maps and removes components by their size in mm^2; apply a "
            "decision determined on 3D predictions like these (autoseg postprocess determine), or give the 2D label "
            "maps this decision is for") in " ".join(output.split()), output
    with pytest.raises(EvaluationError, match=r"2d/cv: its label maps are 2D \(e\.g\. case0\.png\), whose component "
                                              r"sizes are in mm\^2, but the decision was determined on 3D label maps .* "
                                              r"in mm\^3; apply a decision"):
        apply_to_folder(preds_2d, tmp_path / "out", decision_3d, num_workers=1)
    assert not (tmp_path / "out").exists()
    # steps that measure nothing (keep the largest component) apply to either kind
    keep_only = {**decision_3d, "steps": [step for step in decision_3d["steps"] if step["operation"] == "keep_largest"]}
    assert [p.name for p in apply_to_folder(preds_2d, tmp_path / "kept", keep_only, num_workers=1)] == [
        "case0.png", "case1.png", "case2.png"]


@pytest.mark.parametrize("thin_case", ["a_thin", "zz_thin"])
def test_a_decision_applies_to_the_folder_it_was_determined_on_holding_a_one_slice_case(tmp_path, thin_case):
    """A 3D dataset with one one-slice case gets an mm^3 decision (the unit of its label maps of most axes); applying it
    to that very folder was refused outright when the one-slice case sorted first (its unit, mm^2, taken for the
    folder's), and otherwise failed that case."""
    preds, refs = _make_cv_folders(tmp_path)
    thin = np.zeros((1, 14, 14), np.uint8)
    thin[0, :4, :4] = 1
    thin[0, 9:12, 9:12] = 2
    for folder in (preds, refs):
        write_image(thin, GEOMETRY, folder / f"{thin_case}.nii.gz")
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    assert decision["size_unit"] == "mm^3"
    assert any(step["operation"] == "remove_small" for step in decision["steps"])
    written = apply_to_folder(preds, tmp_path / "out", preds / "postprocessing.json", num_workers=1)
    assert sorted(p.name for p in written) == sorted(p.name for p in preds.glob("*.nii.gz"))
    assert np.array_equal(read_image(tmp_path / "out" / f"{thin_case}.nii.gz")[0],
                          apply_postprocessing(decision, thin, GEOMETRY.spacing))


def test_a_decision_in_mm_is_named_for_label_maps_one_voxel_wide(tmp_path):
    """A decision whose sizes are lengths (mm: determined on 1 x N label maps) was said to be for '2D label maps'."""
    preds, refs = _make_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    with pytest.raises(EvaluationError, match=r"its label maps are 3D \(e\.g\. case0\.nii\.gz\), whose component sizes "
                                              r"are in mm\^3, but the decision was determined on 1D \(one voxel wide\) "
                                              r"label maps and removes components by their size in mm; .* or give the "
                                              r"1D \(one voxel wide\) label maps this decision is for$"):
        apply_to_folder(preds, tmp_path / "out", {**decision, "size_unit": "mm"}, num_workers=1)
    assert not (tmp_path / "out").exists()
