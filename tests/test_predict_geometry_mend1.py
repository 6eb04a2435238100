"""predict refuses what would clash with or misplace its outputs, through the checks ensemble shares."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoseg.cli import app
from autoseg.dataset.imageio import Geometry
from autoseg.errors import InferenceError
from autoseg.inference.model import load_model
from autoseg.inference.predictor import predict_array

from cli_helpers import runner
from conftest import HIPPOCAMPUS
from test_inference_predict import hippocampus_case, make_model

EYE3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"), "3d_fullres", folds=("0",))


def test_a_case_named_plans_leaves_no_plans_json_among_the_predictions(model: Path, tmp_path: Path) -> None:
    """Its probabilities' sidecar was written as OUT/plans.json, which postprocess apply copied as the plans beside
    its label maps; predict refuses it as it refuses a case named dataset."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "plans_0000.nii.gz")
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta",
                                 "--mixed-precision", "off", "--save-probabilities"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, text
    assert (f"case plans: its probabilities' sidecar would be {output / 'plans.json'}, the name postprocess apply "
            "copies beside its label maps as the model's plans; rename the case's input files "
            "(e.g. plans_1_0000.nii.gz)") in text
    assert not (output / "plans.json").exists() and not (output / "plans.npz").exists()


@pytest.mark.parametrize("geometry, problem", [
    (Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0,) * 9), r"direction \[0\.0(, 0\.0){8}\] is singular"),
    (Geometry((1.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), r"origin \[0\.0, 0\.0\] and direction of a 2D image "
                                                                  r"for an array of \d+ slices"),
    (Geometry((1.0, 0.0, 1.0), (0.0, 0.0, 0.0), EYE3), r"spacing \[1\.0, 0\.0, 1\.0\] is not positive and finite"),
])
def test_predict_array_refuses_a_geometry_that_cannot_place_its_array(model: Path, geometry: Geometry,
                                                                      problem: str) -> None:
    """A singular direction was predicted, and failed only when written ('sheared', or ITK's bare exception); a 2D
    origin for a volume and a zero spacing were refused by checks of their own: predict_array now runs the one
    check ensemble runs on a sidecar (utils/grid_check.geometry_problem) first."""
    data, _ = hippocampus_case()
    with pytest.raises(InferenceError, match=rf"^geometry: {problem}.*; fix the image header, or give predict_array "
                                             r"the geometry read_case_images returns$"):
        predict_array(load_model(model, folds=[0]), data, geometry)


FIX = "fix the image header, or give predict_array the geometry read_case_images returns"


@pytest.mark.parametrize("spacing, origin, problem", [
    ((1.0, 1.0, 1.0), (1e30, -5.0, 3.0), "its origin (1e+30, -5, 3) lies so far from 0 that positions there are exact "
                                         "to only 1.41e+14 mm, coarser than a thousandth of its 1 mm voxel side (a "
                                         "damaged header?)"),
    ((1e-12, 1.0, 1.0), (-100.0, 20.0, 5.0), "its voxel side 1e-12 mm is so small (a damaged header?) that positions "
                                             "at its origin (-100, 20, 5) are exact to only 1.42e-14 mm, coarser than "
                                             "a thousandth of a voxel"),
])
def test_predict_array_refuses_an_origin_every_file_reader_refuses(model: Path, spacing: tuple[float, ...],
                                                                   origin: tuple[float, ...], problem: str) -> None:
    """An origin of 1e30 (or a voxel side of 1e-12 mm) was predicted by predict_array though every file reader
    refuses it (imageio.far_origin_problem): it is now refused in the readers' words, naming the argument."""
    data, _ = hippocampus_case()
    with pytest.raises(InferenceError) as info:
        predict_array(load_model(model, folds=[0]), data, Geometry(spacing, origin, EYE3))
    assert str(info.value) == f"geometry: {problem}; {FIX}"
