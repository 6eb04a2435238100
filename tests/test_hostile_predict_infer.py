"""``autoseg predict`` with hostile input found by the infer hunt: each refusal names the file, what is wrong and the
fix, exits 2 with no traceback, and leaves the user's files as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoseg.cli import app

from cli_helpers import runner
from conftest import HIPPOCAMPUS
from test_inference_predict import make_model

CASE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"), "3d_fullres", folds=("0",))


def _predict(inputs: Path, output: Path, model: Path, *options: str) -> tuple[int, str]:
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta",
                                 "--mixed-precision", "off", *options])
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def test_a_case_named_dataset_leaves_no_dataset_json_among_the_predictions(model: Path, tmp_path: Path) -> None:
    """Its probabilities' sidecar was written as OUT/dataset.json, which evaluate (and postprocess, ensemble) then read
    as the predictions' dataset description and refused ("missing key 'channel_names'")."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("dataset", "plain"):
        shutil.copy(CASE, inputs / f"{case}_0000.nii.gz")
    code, text = _predict(inputs, output, model, "--save-probabilities")
    assert code == 2, text
    assert (f"case dataset: its probabilities' sidecar would be {output / 'dataset.json'}, the name evaluate, "
            "postprocess and ensemble read as the predictions' dataset description; rename the case's input files "
            "(e.g. dataset_1_0000.nii.gz)") in text
    assert sorted(p.name for p in output.iterdir()) == ["plain.json", "plain.nii.gz", "plain.npz", "predict_info.json"]
    # Without probabilities the case writes dataset.nii.gz only, which is no clash.
    code, text = _predict(inputs, tmp_path / "labels", model)
    assert code == 0 and sorted(p.name for p in (tmp_path / "labels").iterdir()) == [
        "dataset.nii.gz", "plain.nii.gz", "predict_info.json"], text


@pytest.mark.parametrize("inside", ["", "fold_0", "fold_0/predictions"])
def test_an_output_folder_in_the_model_folder_is_refused(inside: str, model: Path, tmp_path: Path) -> None:
    """``-o`` naming the ``-m`` folder (or a folder in it) put label maps and predict_info.json among its plans and
    checkpoints."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(CASE, inputs / "case_0000.nii.gz")
    before = sorted(str(p.relative_to(model)) for p in model.rglob("*"))
    output = model / inside if inside else model
    code, text = _predict(inputs, output, model)
    where = "is the model folder" if not inside else f"lies in the model folder {model}"
    assert code == 2 and (f"{output}: {where}; predictions there would sit among the model's plans and checkpoints: "
                          "choose an output folder outside it") in text, text
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*")) == before
    assert _predict(inputs, tmp_path / "out", model)[0] == 0  # beside it is fine


def test_a_case_predicted_again_without_probabilities_loses_its_old_ones(model: Path, tmp_path: Path) -> None:
    """A rerun without --save-probabilities of a case whose image changed left the earlier run's .npz and sidecar
    beside the new label map, and autoseg ensemble averaged the old image's probabilities. Files of those names
    that predict did not write (a user's notes.json) stay."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("changed", "kept"):
        shutil.copy(CASE, inputs / f"{case}_0000.nii.gz")
    assert _predict(inputs, output, model, "--save-probabilities")[0] == 0
    (inputs / "kept_0000.nii.gz").unlink()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_003_0000.nii.gz", inputs / "changed_0000.nii.gz")
    shutil.copy(CASE, inputs / "notes_0000.nii.gz")
    (output / "notes.json").write_text('{"case_id": "someone else"}')
    (output / "notes.npz").write_bytes(b"mine")
    code, text = _predict(inputs, output, model)
    assert code == 0, text
    assert sorted(p.name for p in output.iterdir()) == [
        "changed.nii.gz", "kept.json", "kept.nii.gz", "kept.npz", "notes.json", "notes.nii.gz", "notes.npz",
        "predict_info.json"]
    assert (output / "notes.npz").read_bytes() == b"mine"


def test_a_folder_whose_images_lie_in_a_subfolder_names_it(model: Path, tmp_path: Path) -> None:
    """``-i`` given the folder above the images (a test set's ``imagesTs`` inside) was refused as holding 'not images:
    imagesTs', and beside other images such a subfolder was skipped as one without DICOM files only."""
    (tmp_path / "in" / "imagesTs").mkdir(parents=True)
    shutil.copy(CASE, tmp_path / "in" / "imagesTs" / "case_0000.nii.gz")
    (tmp_path / "in" / "empty").mkdir()
    code, text = _predict(tmp_path / "in", tmp_path / "out", model)
    assert code == 2 and (f"{tmp_path / 'in'}: no images found in it, but its subfolder(s) imagesTs hold images, which "
                          f"predict does not look into; give that folder, e.g. -i {tmp_path / 'in' / 'imagesTs'}") in text
    assert not (tmp_path / "out").exists()
    shutil.copy(CASE, tmp_path / "in" / "top_0000.nii.gz")
    code, text = _predict(tmp_path / "in", tmp_path / "out", model)
    assert code == 0 and (f"skipped subfolder(s) empty, imagesTs: no DICOM files in them (a DICOM series is read from "
                          f"a folder of its slice files); imagesTs hold(s) images: predict them with -i "
                          f"{tmp_path / 'in' / 'imagesTs'}") in text, text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predict_info.json", "top.nii.gz"]
