"""``predict --continue`` skipped a case whenever its files existed, so after its image's spacing or origin was
corrected it kept the earlier label map, off the image's grid (and the superseded probabilities beside it); such a
case is now predicted again, with a note naming both files and how their grids differ."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk

from autoseg.inference.batch import predict_folder

from conftest import HIPPOCAMPUS
from test_inference_predict import make_model

CASE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"), "3d_fullres", folds=("0",))


def _respaced(path: Path, spacing: tuple[float, float, float]) -> None:
    image = sitk.ReadImage(str(path))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_continue_predicts_again_a_case_whose_image_moved_off_its_label_map(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("kept", "moved"):
        shutil.copy(CASE, inputs / f"{case}_0000.nii.gz")
    predict_folder(inputs, out, model, folds=[0], tta=False, save_probabilities=True)
    _respaced(inputs / "moved_0000.nii.gz", (2.0, 1.0, 1.0))
    capsys.readouterr()
    again = predict_folder(inputs, out, model, folds=[0], tta=False, continue_=True)
    assert again.skipped == ["kept"] and again.predicted == ["moved"]
    note = (f"note: case moved: its label map {out / 'moved.nii.gz'} is not on the grid of its image "
            f"{inputs / 'moved_0000.nii.gz'} (label map vs image: spacing (1, 1, 1) vs (1, 1, 2)); predicting it again")
    assert note in capsys.readouterr().err.splitlines()
    assert sitk.ReadImage(str(out / "moved.nii.gz")).GetSpacing() == (2.0, 1.0, 1.0)
    # the superseded probabilities of the moved case went with its label map; the kept case's stay
    assert sorted(p.name for p in out.iterdir()) == ["kept.json", "kept.nii.gz", "kept.npz", "moved.nii.gz",
                                                      "predict_info.json"]
    third = predict_folder(inputs, out, model, folds=[0], tta=False, continue_=True)
    assert third.skipped == ["kept", "moved"] and "note:" not in capsys.readouterr().err
