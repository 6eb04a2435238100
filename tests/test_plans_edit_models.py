"""A model's checkpoints record the plans predict reads (spacing, transpose, normalization, resampling): a plans.json
edited after training is refused at predict and export, naming the field, the trained and the current value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.errors import InferenceError, ModelFileError
from autoseg.evaluation.model_files import export_model
from autoseg.inference.model import PREDICTION_PLAN, load_model
from autoseg.training import train_fold
from autoseg.training.checkpoints import load_checkpoint
from autoseg.utils.checkpoint_format import write_checkpoint

from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

FAST = ["val_iterations_per_epoch=2", "mixed_precision=off"]
MODEL = "unet__autosegPlans__3d_fullres"


@pytest.fixture
def trained(results: Path) -> Path:  # noqa: F811 - the fixture imported above
    """A model folder with fold 0 trained for one epoch of 2 iterations."""
    train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=FAST)
    return results / DATASET / MODEL


def _edit_plans(folder: Path, edit) -> Path:
    plans_file = folder / "plans.json"
    plans = json.loads(plans_file.read_text())
    edit(plans)
    plans_file.write_text(json.dumps(plans))
    return plans_file


def test_plans_edited_after_training_are_refused_at_predict_and_export(trained: Path, tmp_path: Path) -> None:
    checkpoint = trained / "fold_0" / "checkpoint_final.safetensors"
    recorded = load_checkpoint(checkpoint)["metadata"][PREDICTION_PLAN]
    assert recorded["spacing"] == [1.0, 1.0, 1.0] and recorded["transpose_forward"] == [0, 1, 2]
    assert set(recorded) == {"transpose_forward", "transpose_backward", "spatial_dims", "spacing", "normalization",
                             "resampling"}
    load_model(trained, [0], "final", "cpu")  # unedited: loads
    plans_file = _edit_plans(trained, lambda p: p["configurations"]["3d_fullres"].update(spacing=[2.0, 1.0, 1.0]))
    with pytest.raises(InferenceError) as info:
        load_model(trained, [0], "final", "cpu")
    assert str(info.value) == (
        f"{plans_file}: {checkpoint} was trained with another plan (configuration 3d_fullres: spacing [1.0, 1.0, 1.0] "
        "(trained) vs [2.0, 1.0, 1.0] (now); the plans were edited after training); restore the plans.json the model "
        "was trained with, or train the model again with these plans"
    )
    with pytest.raises(ModelFileError, match=r"configuration 3d_fullres: spacing \[1.0, 1.0, 1.0\] \(trained\) vs "
                                             r"\[2.0, 1.0, 1.0\] \(now\)"):
        export_model(trained, tmp_path / "model.zip", folds=[0])
    assert not (tmp_path / "model.zip").exists()
    # The transpose (a key of the whole plan) was named 'configuration 3d_fullres: transpose_forward ...', and the
    # user looked for it in the configuration in vain: plan-wide keys are named as such.
    _edit_plans(trained, lambda p: p.update(transpose_forward=[2, 1, 0], transpose_backward=[2, 1, 0]))
    with pytest.raises(InferenceError) as info:
        load_model(trained, [0], "final", "cpu")
    assert str(info.value) == (
        f"{plans_file}: {checkpoint} was trained with another plan (plan-wide: transpose_forward [0, 1, 2] (trained) vs "
        "[2, 1, 0] (now); transpose_backward [0, 1, 2] (trained) vs [2, 1, 0] (now); configuration 3d_fullres: spacing "
        "[1.0, 1.0, 1.0] (trained) vs [2.0, 1.0, 1.0] (now); the plans were edited after training); restore the "
        "plans.json the model was trained with, or train the model again with these plans"
    )


def test_a_checkpoint_written_before_the_record_still_loads(trained: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = trained / "fold_0" / "checkpoint_final.safetensors"
    loaded = load_checkpoint(checkpoint)
    del loaded["metadata"][PREDICTION_PLAN]
    write_checkpoint(checkpoint, loaded)
    _edit_plans(trained, lambda p: p["configurations"]["3d_fullres"].update(spacing=[2.0, 1.0, 1.0]))
    capsys.readouterr()
    assert load_model(trained, [0], "final", "cpu").folds == ["0"]
    assert export_model(trained, tmp_path / "model.zip", folds=[0]).is_file()
    assert capsys.readouterr().err == ""
