"""Folds trained with different mirror axes: loaded without TTA from a folder or a model zip, refused with TTA,
naming the zip's member rather than the temporary folder it was unpacked into."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoseg.errors import InferenceError, ModelFileError
from autoseg.evaluation.model_files import export_model, loaded_model_zip
from autoseg.inference.model import load_model
from autoseg.utils.weights_file import load_weights, save_weights

from test_inference_predict import make_model


def _fold_1_mirrors_axis_0_only(tmp_path: Path) -> Path:
    model = make_model(tmp_path / "models", "3d_fullres")
    path = model / "fold_1" / "checkpoint_final.safetensors"
    checkpoint = load_weights(path, InferenceError)
    checkpoint["metadata"]["mirror_axes"] = [0]
    save_weights(path, checkpoint)
    return model


def test_a_model_zip_of_folds_with_other_mirror_axes_loads_without_tta(tmp_path: Path) -> None:
    """Was: predict -m model.zip --no-tta refused them (loaded_model_zip loaded with TTA), naming the temporary
    unpack folder's checkpoint of fold 0."""
    model = _fold_1_mirrors_axis_0_only(tmp_path)
    zip_path = export_model(model, tmp_path / "model.zip", folds=("0", "1"))
    with loaded_model_zip(zip_path, None, "final", "cpu", tta=False) as loaded:
        assert loaded.folds == ["0", "1"] and loaded.mirror_axes == () and loaded.mirror_axes_differ
    with pytest.raises(ModelFileError) as caught:
        with loaded_model_zip(zip_path, None, "final", "cpu"):
            pass
    assert str(caught.value) == (
        f"{zip_path}: member '{model.name}/fold_1/checkpoint_final.safetensors': was trained with mirror_axes [0], "
        f"member '{model.name}/fold_0/checkpoint_final.safetensors' with [0, 1, 2]; the folds of one prediction share "
        "one sliding window: predict them separately (-f) with --save-probabilities and combine the folders with "
        "autoseg ensemble, or retrain the fold")


def test_a_model_loaded_without_tta_refuses_tta_when_its_folds_mirror_differently(tmp_path: Path) -> None:
    """Was: load_model(folder, tta=False) then predicted with tta=True mirrored nothing, in silence."""
    model = _fold_1_mirrors_axis_0_only(tmp_path)
    loaded = load_model(model, tta=False)
    assert loaded.tta_mirror_axes(False) == ()
    with pytest.raises(InferenceError, match=r"its folds 0, 1 were trained with different mirror_axes and were loaded "
                                             r"with tta=False, so they have no mirror axes to predict with TTA; "):
        loaded.tta_mirror_axes(True)
    agreeing = load_model(model, folds=[0], tta=False)
    assert not agreeing.mirror_axes_differ and agreeing.tta_mirror_axes(True) == (0, 1, 2)


def test_predict_folder_refuses_tta_for_such_a_model_before_any_output(tmp_path: Path) -> None:
    """Was: predict_folder(inputs, out, load_model(folder, tta=False), tta=True) predicted without mirroring and
    recorded tta: true, mirror_axes: [] in predict_info.json."""
    import shutil

    from autoseg.inference.batch import predict_folder

    from test_inference_predict import HIPPOCAMPUS

    model = _fold_1_mirrors_axis_0_only(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "c1_0000.nii.gz")
    loaded = load_model(model, tta=False)
    with pytest.raises(InferenceError, match="were trained with different mirror_axes and were loaded with tta=False"):
        predict_folder(inputs, tmp_path / "out", loaded, tta=True)
    assert not (tmp_path / "out").exists()
    assert predict_folder(inputs, tmp_path / "out", loaded, tta=False).predicted == ["c1"]
