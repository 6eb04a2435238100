"""``predict -o`` in the ``-m`` model folder was refused only after every fold's weights were loaded (minutes for a
large model); it is now refused from the paths alone, before any checkpoint is read."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import autoseg.inference.model as model_module
from autoseg.cli import app

from cli_helpers import runner
from conftest import HIPPOCAMPUS
from test_inference_predict import make_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"), "3d_fullres", folds=("0",))


def _no_weights_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("a checkpoint was read")


@pytest.mark.parametrize("inside", ["", "fold_0/predictions"])
def test_an_output_in_the_model_folder_is_refused_before_its_weights_are_read(
    inside: str, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "case_0000.nii.gz")
    monkeypatch.setattr(model_module, "read_checkpoint", _no_weights_read)
    output = model / inside if inside else model
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta"])
    where = "is the model folder" if not inside else f"lies in the model folder {model}"
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (f"{output}: {where}; predictions there would sit among the model's plans and checkpoints: choose an "
            "output folder outside it") in " ".join(result.output.split())
    assert not (model / "fold_0" / "predictions").exists() and not (model / "predict_info.json").exists()
