"""A case that failed on a rerun of predict kept its label map from the earlier run, of other input, and the error
said only 'the others are in OUT': a stale result that looked current. The error now names it as left from an
earlier run; it stays in place (nothing is deleted) and a failed case without an earlier label map is not named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoseg.errors import InferenceError
from autoseg.inference.batch import predict_folder

from conftest import HIPPOCAMPUS
from test_inference_predict import make_model

CASE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"), "3d_fullres", folds=("0",))


def test_a_failed_case_names_its_label_map_left_from_an_earlier_run(model: Path, tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("good", "stale"):
        shutil.copy(CASE, inputs / f"{case}_0000.nii.gz")
    predict_folder(inputs, out, model, folds=[0], tta=False)
    earlier = (out / "stale.nii.gz").read_bytes()
    (inputs / "stale_0000.nii.gz").write_bytes(CASE.read_bytes()[:200])  # a truncated copy of the new image
    shutil.copy(CASE, inputs / "new_0000.nii.gz")
    (inputs / "newbad_0000.nii.gz").write_bytes(CASE.read_bytes()[:200])
    with pytest.raises(InferenceError) as caught:
        predict_folder(inputs, out, model, folds=[0], tta=False)
    message = str(caught.value)
    assert message.startswith("2 of 4 case(s) failed (newbad: ") and "; stale: " in message
    assert message.endswith(f"; the others are in {out}; {out / 'stale.nii.gz'} is left from an earlier run, not "
                            "predicted from the current input: fix the case and predict it again, or delete it")
    assert "newbad.nii.gz" not in message
    assert (out / "stale.nii.gz").read_bytes() == earlier
