"""Outputs of ``autoseg ensemble``, ``evaluate`` and ``postprocess apply`` read back by the next stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import read_image, write_image
from autoseg.errors import EvaluationError
from autoseg.evaluation.ensemble import ensemble_folders

from cli_helpers import autoseg
from test_ensemble import DATASET, _ensemble_inputs, _models_with_dataset_json, _save, _softmax


def _references_of(out: Path, refs: Path, cases: list[str]) -> None:
    """``refs`` holding ``cases`` of the ensemble ``out`` (its .nrrd label maps) as .nii.gz reference label maps."""
    refs.mkdir(parents=True)
    seg, geometry = read_image(out / "x.nrrd")
    for case in cases:
        write_image(seg, geometry, refs / f"{case}.nii.gz")


@pytest.mark.parametrize("with_dataset", [True, False], ids=["dataset-json-above-references", "references-alone"])
def test_an_ensemble_written_with_another_ending_describes_it_and_is_evaluated(tmp_path, with_dataset):
    """``--file-ending .nrrd`` wrote .nrrd label maps beside a copied dataset.json saying .nii.gz. It now says .nrrd,
    and evaluating the output against .nii.gz references finds each reference by its own ending, whether the
    references' dataset.json (.nii.gz) or the ensemble's (.nrrd) gives the labels; the reference without a
    prediction is noted."""
    dirs = _models_with_dataset_json(tmp_path, [DATASET, DATASET])
    out = tmp_path / "out"
    autoseg("ensemble", "-i", dirs[0], "-i", dirs[1], "-o", out, "--file-ending", ".nrrd", "-np", 1)
    assert json.loads((out / "dataset.json").read_text()) == {**DATASET, "file_ending": ".nrrd"}
    refs = tmp_path / "raw" / "labelsTr"
    _references_of(out, refs, ["x", "y"])
    if with_dataset:
        (refs.parent / "dataset.json").write_text(json.dumps(DATASET))
    printed = autoseg("evaluate", "-p", out, "-r", refs, "-o", tmp_path / "eval", "-np", 1)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [(Path(r["prediction_file"]).name, Path(r["reference_file"]).name) for r in summary["metric_per_case"]] == [
        ("x.nrrd", "x.nii.gz")]
    assert summary["mean"]["a"]["dice"] == 1.0
    assert "note: 1 reference case(s) have no prediction and are not scored: y" in printed


def test_an_ensemble_of_mixed_endings_keeps_the_inputs_file_ending(tmp_path):
    """Each case keeps its own ending without --file-ending: with two endings among them the dataset.json's stays."""
    dirs = _models_with_dataset_json(tmp_path, [DATASET, DATASET])
    for folder in dirs:
        write_image(*read_image(folder / "x.nii.gz"), folder / "y.nrrd")
        for name in ("y.npz", "y.json"):
            (folder / name).write_bytes((folder / name.replace("y", "x")).read_bytes())
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out").glob("[xy].*")) == ["x.nii.gz", "y.nrrd"]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == DATASET


def test_a_folder_named_as_a_cases_probabilities_is_refused_before_any_output(tmp_path):
    """A folder ``y.npz/`` among the inputs failed case y with a bare IsADirectoryError, after case x's label map was
    written: it is refused by name, with the fix, before the output folder is made."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=3)
    (dirs[1] / "y.npz").unlink()
    (dirs[1] / "y.npz").mkdir()
    with pytest.raises(EvaluationError) as info:
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert str(info.value) == (f"{dirs[1] / 'y.npz'}: is a folder, not the saved probabilities of case y; move it out of "
                               f"{dirs[1]} (predict --save-probabilities writes <case>.npz files)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("channels", "regions_class_order", "problem"), [
    (4, None, "4 probability channels for 3 labels (background included)"),
    (3, [1, 2], "3 probability channels for 2 regions and 2 entries in regions_class_order"),
])
def test_probabilities_whose_channels_are_not_their_labels_are_refused_before_any_output(
        tmp_path, channels, regions_class_order, problem):
    """Case y's probabilities (and sidecar shape) of another channel count than its labels give failed that case after
    case x's label map was written, a partial ensemble; the sidecar is now refused by name before any output."""
    rng = np.random.default_rng(4)
    labels = {"background": 0, "whole": [1, 2], "core": [2]} if regions_class_order else {"background": 0, "a": 1, "b": 2}
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "x", _softmax(rng, channels=2 if regions_class_order else 3), labels, regions_class_order)
        _save(folder, "y", _softmax(rng, channels=channels), labels, regions_class_order)
    with pytest.raises(EvaluationError) as info:
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert str(info.value) == (f"{dirs[0] / 'y.json'}: {problem} (case y); re-run predict with --save-probabilities "
                               "for case y")
    assert not (tmp_path / "out").exists()


def test_a_hand_edited_sidecar_shape_is_refused_before_any_output(tmp_path):
    """A sidecar shape that is no list of sizes (edited by hand) is named, not met as a case's failure."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=5)
    for folder in dirs:
        sidecar = json.loads((folder / "y.json").read_text())
        (folder / "y.json").write_text(json.dumps({**sidecar, "shape": "3x2x4x5"}))
    with pytest.raises(EvaluationError) as info:
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert str(info.value) == (f"{dirs[0] / 'y.json'}: shape '3x2x4x5' of case y is not the channels and image axes; "
                               "re-run predict with --save-probabilities for case y")
    assert not (tmp_path / "out").exists()


def test_an_ensemble_rerun_with_another_ending_is_refused_before_writing(tmp_path):
    """The same ensemble rerun with ``--file-ending .nrrd`` into its folder passed as a resume and left x.nii.gz beside
    x.nrrd for every case, which evaluate then refused as two label maps of one case; it is refused, the folder kept."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=6)
    out = tmp_path / "out"
    ensemble_folders(dirs, out, num_workers=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(EvaluationError) as info:
        ensemble_folders(dirs, out, num_workers=1, file_ending=".nrrd")
    assert str(info.value) == (
        f"{out / 'x.nii.gz'}: a label map of case x of another ending than this run's .nrrd; both would stand in {out} "
        "(evaluate refuses two label maps of one case). Give the ending it has (--file-ending .nii.gz), or choose "
        "another output folder")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    ensemble_folders(dirs, out, num_workers=1, file_ending=".nii.gz")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["x.nii.gz", "y.nii.gz"]
