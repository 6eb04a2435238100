"""Model folders, predict_array (folds, 2D, cascade) and predict_folder (formats, failures, resume, shards)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import pytest
import SimpleITK as sitk
import torch

from autoseg.dataset.imageio import Geometry, read_case_images, read_image, write_image
from autoseg.errors import InferenceError, PlanError
from autoseg.evaluation.ensemble import ensemble_folders
from autoseg.inference.batch import PREDICT_INFO, blank_image_warning, channel_files, discover_cases, output_ending, predict_folder, shard
from autoseg.inference.model import find_model_folder, load_model
from autoseg.inference.predictor import append_previous_stage, predict_array, predict_preprocessed
from autoseg.inference.sliding_window import sliding_window_predict
from autoseg.inference.tiling import tile_starts
from autoseg.networks import create_network
from autoseg.preprocessing.inverse import label_to_preprocessed_grid, restore_probabilities_to_labels
from autoseg.preprocessing.pipeline import preprocess_case
from autoseg.utils.weights_file import load_weights, save_weights

from conftest import HIPPOCAMPUS, SHARED_DATA

DICOM_SERIES = SHARED_DATA / "dicom_examples" / "Study1" / "13_HCropVolume"
DATASET = "Dataset999_Test"
LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}


def topology(dims: int) -> dict[str, Any]:
    return {
        "spatial_dims": dims,
        "features_per_stage": [4, 8],
        "kernel_sizes": [[3] * dims, [3] * dims],
        "strides": [[1] * dims, [2] * dims],
    }


def configuration(dims: int, spacing: list[float], patch: list[int], previous: str | None = None) -> dict[str, Any]:
    return {
        "data_identifier": "autosegPlans_x", "spatial_dims": dims, "spacing": spacing, "median_shape": [32, 48, 36],
        "patch_size": patch, "batch_size": 2,
        "normalization": [{"scheme": "zscore", "use_mask": False, "clip": None, "mean": None, "std": None}],
        "resampling": {"image_order": 3, "label_order": 1, "order_z": 0, "separate_z_anisotropy_threshold": 3.0},
        "network": {"name": "unet", "topology": topology(dims), "options": {}},
        "predicted_memory_bytes": 1, "predicted_seconds_per_iteration": 0.1, "num_iterations": 1,
        "iterations_per_epoch": 1, "previous_stage": previous, "next_stage": None,
    }


PLANS = {
    "version": 1, "plans_name": "autosegPlans", "dataset_name": DATASET, "created_by": "test",
    "fingerprint_sha256": "", "channel_names": {"0": "MRI"}, "labels": LABELS, "regions_class_order": None,
    "ignore_label": None, "file_ending": ".nii.gz", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "foreground_intensity_properties_per_channel": {}, "budget": {"device": "cpu"},
    "configurations": {
        "3d_fullres": configuration(3, [1.5, 1.2, 1.2], [8, 16, 16]),
        "2d": configuration(2, [1.0, 1.0, 1.0], [16, 16]),
        "3d_lowres": configuration(3, [2.5, 2.5, 2.5], [8, 8, 8]),
        "3d_cascade_fullres": configuration(3, [1.5, 1.2, 1.2], [8, 16, 16], previous="3d_lowres"),
    },
}
PLANS["configurations"]["3d_lowres"]["next_stage"] = "3d_cascade_fullres"


def make_model(results: Path, config: str, folds: tuple[str, ...] = ("0", "1"), in_channels: int = 1) -> Path:
    """A model folder with randomly initialised tiny U-Nets saved in the checkpoint contract format."""
    folder = results / DATASET / f"unet__autosegPlans__{config}"
    dims = PLANS["configurations"][config]["spatial_dims"]
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(PLANS))
    description = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps(description))
    for fold in folds:
        torch.manual_seed(zlib.crc32(f"{config}/{fold}".encode()))
        network = create_network("unet", topology(dims), in_channels, 3, deep_supervision=True)
        metadata = {
            "format_version": 1, "network": "unet", "network_options": {"deep_supervision": True},
            "topology": topology(dims), "in_channels": in_channels, "num_outputs": 3, "configuration": config,
            "plans_name": "autosegPlans", "dataset_name": DATASET, "mirror_axes": list(range(dims)),
            "patch_size": PLANS["configurations"][config]["patch_size"], "epoch": 1, "iteration": 1,
        }
        (folder / f"fold_{fold}").mkdir()
        save_weights(folder / f"fold_{fold}" / "checkpoint_final.safetensors",
                     {"network_weights": network.state_dict(), "metadata": metadata})
    return folder


@pytest.fixture
def model_3d(tmp_path: Path) -> Path:
    return make_model(tmp_path / "models", "3d_fullres")


def hippocampus_case(case: str = "hippocampus_001") -> tuple[np.ndarray, Geometry]:
    return read_case_images([HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz"])


# --- model folders ---------------------------------------------------------------------------------


def test_load_model_reads_folds_metadata_and_eval_networks(model_3d: Path) -> None:
    model = load_model(model_3d, checkpoint="final", device="cpu")
    assert model.folds == ["0", "1"] and model.configuration_name == "3d_fullres"
    assert model.mirror_axes == (0, 1, 2) and model.patch_size == (8, 16, 16)
    assert all(not n.training for n in model.networks)
    assert load_model(model_3d, folds=[1]).folds == ["1"]


def test_folds_given_twice_or_out_of_order_load_once_in_order(model_3d: Path, tmp_path: Path) -> None:
    """``-f 0 -f 0`` loaded and ran fold 0 twice, and was recorded as another run than ``-f 0``."""
    twice = load_model(model_3d, folds=[0, "0"])
    assert twice.folds == ["0"] and len(twice.networks) == 1
    assert load_model(model_3d, folds=[1, 0]).folds == ["0", "1"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "c1_0000.nii.gz")
    out = tmp_path / "out"
    predict_folder(inputs, out, model_3d, folds=["1", "0", "1"], tta=False)
    assert json.loads((out / PREDICT_INFO).read_text())["folds"] == ["0", "1"]
    assert predict_folder(inputs, out, model_3d, folds=[0, 1], tta=False, continue_=True).skipped == ["c1"]


def test_a_fold_copied_from_another_configuration_is_refused_by_name(model_3d: Path, tmp_path: Path) -> None:
    """A 2d fold copied into a 3d_fullres model folder loaded, and every case then failed with torch's shape
    error (conv2d given 5D input); loading now names the checkpoint and both configurations."""
    fold_2d = make_model(tmp_path / "other", "2d", folds=("1",)) / "fold_1"
    shutil.rmtree(model_3d / "fold_1")
    shutil.copytree(fold_2d, model_3d / "fold_1")
    with pytest.raises(InferenceError, match=r"fold_1/checkpoint_final.safetensors: is a checkpoint of unet__autosegPlans__2d, "
                                             r"but its model folder is unet__autosegPlans__3d_fullres"):
        load_model(model_3d, device="cpu")
    assert load_model(model_3d, folds=[0], device="cpu").folds == ["0"]
    checkpoint = load_weights(model_3d / "fold_0" / "checkpoint_final.safetensors", InferenceError)
    checkpoint["metadata"]["plans_name"] = "otherPlans"  # same configuration, another plan (its spacing)
    save_weights(model_3d / "fold_0" / "checkpoint_final.safetensors", checkpoint)
    with pytest.raises(InferenceError, match=r"is a checkpoint of unet__otherPlans__3d_fullres, but its model folder "
                                             r"is unet__autosegPlans__3d_fullres"):
        load_model(model_3d, folds=[0], device="cpu")


def test_a_fold_holding_another_folds_checkpoint_is_refused_naming_both(model_3d: Path, tmp_path: Path) -> None:
    """fold_0's checkpoint copied into a fold_2 folder loaded as fold 2: ``-f 0 -f 2`` averaged fold 0 twice, as a
    2-fold ensemble (export-model and import-model refuse such a fold)."""
    path = model_3d / "fold_0" / "checkpoint_final.safetensors"
    checkpoint = load_weights(path, InferenceError)
    save_weights(path, {**checkpoint, "metadata": {**checkpoint["metadata"], "fold": "0"}})
    (model_3d / "fold_2").mkdir()
    shutil.copy(path, model_3d / "fold_2")
    copied = model_3d / "fold_2" / "checkpoint_final.safetensors"
    with pytest.raises(InferenceError) as caught:
        load_model(model_3d, folds=[0, 2], device="cpu")
    assert str(caught.value) == (f"{copied}: is the checkpoint of fold 0, not of fold_2 (copied from fold_0?); predict "
                                 "would count fold 0 twice: put fold_2's own checkpoint back, or leave fold_2 out (-f)")
    assert load_model(model_3d, folds=[0, 1], device="cpu").folds == ["0", "1"]


def test_a_fold_holding_the_same_weights_as_another_is_refused(model_3d: Path) -> None:
    """A checkpoint recording no fold, copied into another fold folder, was averaged twice as a 2-fold ensemble."""
    shutil.copy(model_3d / "fold_0" / "checkpoint_final.safetensors", model_3d / "fold_1")
    with pytest.raises(InferenceError) as caught:
        load_model(model_3d, device="cpu")
    assert str(caught.value) == (f"{model_3d / 'fold_1' / 'checkpoint_final.safetensors'}: holds the same weights as "
                                 f"{model_3d / 'fold_0' / 'checkpoint_final.safetensors'} (copied?); predict would count "
                                 "that fold twice: put fold_1's own checkpoint back, or leave fold_1 out (-f)")
    assert load_model(model_3d, folds=[1], device="cpu").folds == ["1"]


def test_folds_recording_their_own_folds_may_hold_the_same_weights(model_3d: Path) -> None:
    """Two folds of a run of a few iterations can draw the same batches and end with the same weights (the end-to-end
    test's folds 2 and 3 did): each checkpoint records its own fold, so they are two folds, not a copy."""
    weights = load_weights(model_3d / "fold_0" / "checkpoint_final.safetensors", InferenceError)
    for fold in ("0", "1"):
        (model_3d / f"fold_{fold}").mkdir(exist_ok=True)
        save_weights(model_3d / f"fold_{fold}" / "checkpoint_final.safetensors",
                     {**weights, "metadata": {**weights["metadata"], "fold": fold}})
    assert load_model(model_3d, folds=[0, 1], device="cpu").folds == ["0", "1"]


def test_a_model_folder_given_as_dot_or_dotdot_loads(model_3d: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-m .`` inside the model folder (``..`` inside a fold) was refused as not named <network>__<plans>__<configuration>."""
    monkeypatch.chdir(model_3d)
    assert load_model(".", folds=[0], device="cpu").configuration_name == "3d_fullres"
    monkeypatch.chdir(model_3d / "fold_0")
    assert load_model("..", folds=[0], device="cpu").folder.name == model_3d.name


def test_a_file_given_as_model_folder_is_named_as_a_file(tmp_path: Path) -> None:
    """A model zip renamed without .zip (``-m model.bin``) was reported as 'model folder not found'."""
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(b"PK")
    with pytest.raises(InferenceError, match=r"model.bin: is a file, not a model folder; .* name ending in .zip"):
        load_model(renamed, device="cpu")


def test_a_model_zip_given_to_load_model_says_how_to_unpack_it(tmp_path: Path) -> None:
    """A zip from Python was told to be given 'under a name ending in .zip', which it was; only the CLI unpacks."""
    zipped = tmp_path / "m.zip"
    zipped.write_bytes(b"PK")
    with pytest.raises(InferenceError, match=r"m.zip: is a file, not a model folder; .*unpacked_model\(zip_path\)") as caught:
        predict_folder(HIPPOCAMPUS / "imagesTr", tmp_path / "out", zipped)
    assert "name ending in .zip" not in str(caught.value)


def test_missing_fold_checkpoint_and_folder_errors(model_3d: Path) -> None:
    with pytest.raises(InferenceError, match=r"fold\(s\) 3 not found \(present: 0, 1\); train them or choose"):
        load_model(model_3d, folds=[0, 3])
    with pytest.raises(InferenceError, match=r"checkpoint_best.safetensors: not found \(present: final\)"):
        load_model(model_3d, checkpoint="best")
    with pytest.raises(InferenceError, match="checkpoint 'middle' unknown; choose one of final, best, latest"):
        load_model(model_3d, checkpoint="middle")
    (model_3d / "dataset.json").unlink()
    with pytest.raises(InferenceError, match="dataset.json: not found"):
        load_model(model_3d)


def test_a_fold_without_the_checkpoint_is_refused_naming_the_folds_that_have_it(model_3d: Path) -> None:
    """A fold folder of an interrupted training (no checkpoint, or only best), which the default folds include, was
    refused with 'finish training this fold or choose another --checkpoint' only: never the -f that predicts."""
    (model_3d / "fold_1" / "checkpoint_final.safetensors").rename(model_3d / "fold_1" / "checkpoint_best.safetensors")
    (model_3d / "fold_2").mkdir()
    with pytest.raises(InferenceError) as caught:
        load_model(model_3d, device="cpu")
    assert str(caught.value) == (f"{model_3d / 'fold_1' / 'checkpoint_final.safetensors'}: not found (present: best); "
                                 "finish training this fold or choose another --checkpoint, or predict with the folds "
                                 "that hold it (-f 0)")
    with pytest.raises(InferenceError, match=r"fold_2/checkpoint_best.safetensors: not found \(present: none\); finish "
                                             r"training this fold or choose another --checkpoint, or predict with the "
                                             r"folds that hold it \(-f 1\)$"):
        load_model(model_3d, checkpoint="best", folds=[1, 2], device="cpu")


def test_a_plans_json_without_the_models_configuration_is_refused_naming_it(model_3d: Path) -> None:
    """The refusal ('configuration ... is not in plans ...') named neither the model's plans.json nor the fix."""
    plans = json.loads((model_3d / "plans.json").read_text())
    del plans["configurations"]["3d_fullres"]
    (model_3d / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(InferenceError) as caught:
        load_model(model_3d, device="cpu")
    assert str(caught.value) == (f"{model_3d / 'plans.json'}: configuration '3d_fullres' is not in plans 'autosegPlans' of "
                                 f"{DATASET}; planned: 2d, 3d_lowres, 3d_cascade_fullres; restore the plans.json the model "
                                 "was trained with (its folder is named after 3d_fullres)")


def test_a_dataset_json_whose_channels_are_not_the_networks_is_refused(model_3d: Path) -> None:
    """A model folder whose dataset.json (and plans) name two channels for a one-channel network loaded, and
    every case then failed with torch's 'expected input ... to have 1 channels, but got 2'."""
    for name in ("dataset.json", "plans.json"):
        data = json.loads((model_3d / name).read_text())
        data["channel_names"] = {"0": "MRI", "1": "T2"}
        if name == "plans.json":
            for config in data["configurations"].values():
                config["normalization"] = config["normalization"] * 2
        (model_3d / name).write_text(json.dumps(data))
    with pytest.raises(InferenceError, match=r"fold_0/checkpoint_final\.safetensors: the network takes 1 input "
                                              r"channel\(s\) but .*dataset\.json gives 2 \(0000: MRI, 0001: T2\)"):
        load_model(model_3d)


def test_a_fold_whose_metadata_does_not_fit_its_weights_names_the_first_mismatching_tensor(model_3d: Path) -> None:
    """The refusal said only 'Error(s) in loading state_dict for UNet:', the header line of torch's message."""
    path = model_3d / "fold_1" / "checkpoint_final.safetensors"
    checkpoint = load_weights(path, InferenceError)
    checkpoint["metadata"]["topology"] = {**topology(3), "features_per_stage": [8, 16]}  # the tensors hold 4, 8
    save_weights(path, checkpoint)
    with pytest.raises(InferenceError) as caught:
        load_model(model_3d)
    assert str(caught.value).startswith(f"{path}: weights do not fit the network its metadata describes (size "
                                        "mismatch for encoder.stages.0.0.0.weight: copying a param with shape "
                                        "torch.Size([4, 1, 3, 3, 3]) from checkpoint, the shape in current model is "
                                        "torch.Size([8, 1, 3, 3, 3]))"), caught.value


@pytest.mark.parametrize("key, value", [("patch_size", [16, 16, 16]), ("mirror_axes", [0])])
def test_folds_trained_with_another_patch_or_mirroring_are_not_ensembled_in_one_window(key: str, value: list,
                                                                                      model_3d: Path) -> None:
    """Fold 1 trained with --set patch_size=... ran silently at fold 0's patch and test-time mirroring."""
    path = model_3d / "fold_1" / "checkpoint_final.safetensors"
    checkpoint = load_weights(path, InferenceError)
    trained = checkpoint["metadata"][key]
    checkpoint["metadata"][key] = value
    save_weights(path, checkpoint)
    with pytest.raises(InferenceError) as caught:
        load_model(model_3d)
    assert str(caught.value).startswith(
        f"{path}: was trained with {key} {value}, {model_3d / 'fold_0' / 'checkpoint_final.safetensors'} with "
        f"{trained}; the folds of one prediction share one sliding window: predict them separately (-f)"), caught.value
    assert list(getattr(load_model(model_3d, folds=[1]), key)) == value


def test_folds_trained_with_other_mirror_axes_predict_together_without_tta(model_3d: Path, tmp_path: Path) -> None:
    """predict --no-tta refused folds with other mirror_axes, though nothing is mirrored then; with TTA on they
    are still refused."""
    path = model_3d / "fold_1" / "checkpoint_final.safetensors"
    checkpoint = load_weights(path, InferenceError)
    checkpoint["metadata"]["mirror_axes"] = [0]
    save_weights(path, checkpoint)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "c1_0000.nii.gz")
    report = predict_folder(inputs, tmp_path / "out", model_3d, tta=False)
    assert report.predicted == ["c1"]
    info = json.loads((tmp_path / "out" / PREDICT_INFO).read_text())
    assert info["folds"] == ["0", "1"] and info["tta"] is False and info["mirror_axes"] == []
    assert load_model(model_3d, tta=False).mirror_axes == ()
    with pytest.raises(InferenceError) as caught:
        predict_folder(inputs, tmp_path / "out_tta", model_3d, tta=True)
    assert str(caught.value).startswith(f"{path}: was trained with mirror_axes [0], "), caught.value
    assert not (tmp_path / "out_tta").exists()


def test_pickled_legacy_checkpoint_is_refused(model_3d: Path) -> None:
    """A checkpoint_final.pt of autoseg before safetensors is read with weights_only=True: no pickled code."""
    path = model_3d / "fold_0" / "checkpoint_final.safetensors"
    checkpoint = load_weights(path, InferenceError)
    checkpoint["metadata"]["evil"] = Geometry.default((1, 1, 1))  # an arbitrary object needs pickle
    torch.save(checkpoint, path.with_suffix(".pt"))
    path.unlink()
    with pytest.raises(InferenceError, match="cannot be loaded safely"):
        load_model(model_3d, folds=[0])


def test_find_model_folder_by_dataset_id(model_3d: Path, roots: dict[str, Path]) -> None:
    shutil.move(str(model_3d.parents[1] / DATASET), roots["results"] / DATASET)
    assert find_model_folder("999", "3d_fullres").name == "unet__autosegPlans__3d_fullres"
    with pytest.raises(InferenceError, match=r"0 model folders match \*__\*__2d"):
        find_model_folder(DATASET, "2d")
    # A loose prefix match took any text for the only dataset there (or 99x for Dataset099_...).
    for wrong in ("Prostate", "999abc"):
        with pytest.raises(InferenceError, match=rf"-d {wrong}: not a dataset name; use Dataset004, 4"):
            find_model_folder(wrong, "3d_fullres")
    # A raw dataset folder of any name (train keeps its results under that name): was never found.
    raw = roots["raw"] / "my_scans"
    raw.mkdir()
    (raw / "dataset.json").write_text((HIPPOCAMPUS / "dataset.json").read_text())
    shutil.copytree(roots["results"] / DATASET, roots["results"] / "my_scans")
    assert find_model_folder(raw, "3d_fullres") == roots["results"] / "my_scans" / "unet__autosegPlans__3d_fullres"


# --- predict_array ---------------------------------------------------------------------------------


def test_fold_ensemble_equals_mean_of_single_fold_probabilities(model_3d: Path) -> None:
    data, geometry = hippocampus_case()
    single = [
        predict_array(load_model(model_3d, folds=[f]), data, geometry, return_probabilities=True).probabilities
        for f in (0, 1)
    ]
    both = predict_array(load_model(model_3d), data, geometry, return_probabilities=True)
    assert both.probabilities.shape == (3, *data.shape[1:]) and both.probabilities.dtype == np.float16
    mean = (single[0].astype(np.float32) + single[1].astype(np.float32)) / 2
    np.testing.assert_allclose(both.probabilities.astype(np.float32), mean, atol=2e-3)
    assert both.labels.dtype == np.uint8 and both.labels.shape == data.shape[1:]
    # Labels are the argmax of the probabilities wherever float16 rounding cannot swap the top two.
    top2 = np.sort(both.probabilities.astype(np.float32), axis=0)[-2:]
    clear = top2[1] - top2[0] > 2e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(both.labels[clear], both.probabilities.argmax(0)[clear])


def test_tta_off_differs_and_uses_one_pass(model_3d: Path) -> None:
    data, geometry = hippocampus_case()
    model = load_model(model_3d, folds=[0])
    data_pp, _, _ = preprocess_case(data, geometry, model.plans, "3d_fullres")
    with_tta = predict_preprocessed(model, data_pp, tta=True)
    without = predict_preprocessed(model, data_pp, tta=False)
    assert with_tta.shape == without.shape == (3, *data_pp.shape[1:])
    assert not torch.allclose(with_tta, without)  # random weights are not mirror-equivariant


def test_two_dimensional_model_predicts_a_volume_slice_by_slice(tmp_path: Path) -> None:
    model = load_model(make_model(tmp_path, "2d"))
    data, geometry = hippocampus_case()
    prediction = predict_array(model, data, geometry)
    assert prediction.labels.shape == data.shape[1:]
    # On the preprocessed grid, slice z is the 2D sliding window over slice z alone (both folds, TTA).
    data_pp, _, _ = preprocess_case(data, geometry, model.plans, "2d")
    volume = predict_preprocessed(model, data_pp, mixed_precision="off")
    for z in (0, 7):
        alone = sliding_window_predict(model.networks, torch.from_numpy(data_pp[:, z]), (16, 16), mirror_axes=(0, 1))
        torch.testing.assert_close(volume[:, z], alone, rtol=0, atol=1e-5)


def test_image_smaller_than_the_patch(model_3d: Path) -> None:
    model = load_model(model_3d, folds=[0])
    data = np.random.default_rng(0).normal(size=(1, 3, 5, 7)).astype(np.float32)
    prediction = predict_array(model, data, Geometry.default((3, 5, 7)), return_probabilities=True)
    assert prediction.labels.shape == (3, 5, 7)
    np.testing.assert_allclose(prediction.probabilities.astype(np.float32).sum(0), 1.0, atol=3e-3)


def test_cascade_runs_the_lowres_stage_first(tmp_path: Path) -> None:
    results = tmp_path / "results"
    make_model(results, "3d_lowres", folds=("0",))
    cascade = load_model(make_model(results, "3d_cascade_fullres", folds=("0",), in_channels=3))
    assert cascade.previous_stage is not None and cascade.previous_stage.configuration_name == "3d_lowres"
    data, geometry = hippocampus_case()
    result = predict_array(cascade, data, geometry, return_probabilities=True)
    # The same by hand: lowres labels, moved onto the fullres grid, one-hot appended.
    lowres = predict_array(cascade.previous_stage, data, geometry).labels
    data_pp, _, properties = preprocess_case(data, geometry, PLANS, "3d_cascade_fullres")
    labels_pp = label_to_preprocessed_grid(lowres, properties, PLANS, "3d_cascade_fullres")
    probabilities = predict_preprocessed(cascade, append_previous_stage(data_pp, labels_pp, [1, 2]))
    labels = restore_probabilities_to_labels(probabilities.numpy(), properties, PLANS, "3d_cascade_fullres")
    np.testing.assert_array_equal(result.labels, labels)


def test_append_previous_stage_one_hot_by_hand() -> None:
    data = np.zeros((1, 1, 2, 2), dtype=np.float32)
    labels = np.array([[[0, 1], [2, 1]]])
    out = append_previous_stage(data, labels, [1, 2])
    assert out.shape == (3, 1, 2, 2)
    np.testing.assert_array_equal(out[1, 0], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(out[2, 0], [[0, 0], [1, 0]])


def test_wrong_channel_count_and_dimensionality(model_3d: Path) -> None:
    model = load_model(model_3d, folds=[0])
    data, geometry = hippocampus_case()
    with pytest.raises(InferenceError, match=r"input has 2 channel\(s\), the model expects 1 \(0000: MRI\)"):
        predict_array(model, np.concatenate([data, data]), geometry)
    flat = Geometry(spacing=(999.0, 1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))
    with pytest.raises(InferenceError, match="input is a 2D image but configuration 3d_fullres is 3D"):
        predict_array(model, data[:, :1], flat)




@pytest.mark.parametrize("options, message", [
    ({"step": 0}, r"step 0: must be in \(0, 1\]"),
    ({"step": 2}, r"step 2: must be in \(0, 1\]"),
    ({"batch_tiles": 0}, "batch_tiles 0: give a whole number"),
    ({"batch_tiles": 1.5}, "batch_tiles 1.5: give a whole number"),
])
def test_predict_array_refuses_window_settings_as_predict_folder_does(model_3d: Path, tmp_path: Path,
                                                                       options: dict, message: str) -> None:
    """From Python, predict_array gave step 0 or 2 and batch_tiles 0 a bare ValueError from inside the sliding
    window, where predict_folder gave the same step an InferenceError (and took batch_tiles 0 into every case)."""
    model = load_model(model_3d, folds=[0])
    data, geometry = hippocampus_case()
    with pytest.raises(InferenceError, match=message):
        predict_array(model, data, geometry, **options)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs)
    with pytest.raises(InferenceError, match=message):
        predict_folder(inputs, tmp_path / "out", model, **options)
    assert not (tmp_path / "out").exists()

@pytest.mark.parametrize("spacing, origin, direction", [
    ((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)),  # a 2D image's spacing without the slice axis
    ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 1.0)),  # a 3D origin with a 2D direction
])
def test_a_geometry_that_does_not_fit_the_array_is_named(model_3d: Path, spacing: tuple, origin: tuple,
                                                          direction: tuple) -> None:
    """A hand-made ``Geometry`` for ``predict_array`` raised IndexError from deep in preprocessing."""
    model = load_model(model_3d, folds=[0])
    data, _ = hippocampus_case()
    with pytest.raises(InferenceError, match=r"geometry: spacing .* for an array of 3 spatial axes; give 3 spacings in array "
                                              r"order \(z, y, x; 999 on the slice axis of a 2D image\)"):
        predict_array(model, data, Geometry(spacing, origin, direction))


# --- predict_folder --------------------------------------------------------------------------------

ROTATED = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def dicom_as(path: Path) -> None:
    """The DICOM example re-saved with an anisotropic spacing, an offset origin and a rotation."""
    array, _ = read_image(DICOM_SERIES)
    write_image(array, Geometry((1.5, 0.8, 0.9), (10.0, -20.0, 5.0), ROTATED), path)


def test_output_geometry_equals_input_geometry_for_every_format(model_3d: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case, ending in (("nifti", ".nii.gz"), ("nrrd", ".nrrd"), ("meta", ".mha")):
        dicom_as(inputs / f"{case}_0000{ending}")
    shutil.copytree(DICOM_SERIES, inputs / "dicom")
    # nnU-Net v2's Tiff3DIO layout: pages along z, the spacing in <case>.json; predicted as a 3D TIFF
    tifffile.imwrite(inputs / "tiff_0000.tif", read_image(DICOM_SERIES)[0], photometric="minisblack")
    (inputs / "tiff.json").write_text(json.dumps({"spacing": [1.5, 0.8, 0.9]}))
    out = tmp_path / "out"
    report = predict_folder(inputs, out, model_3d, folds=[0], tta=False, save_probabilities=True)
    assert report.predicted == ["dicom", "meta", "nifti", "nrrd", "tiff"] and not report.failed
    for case, source, output in (
        ("tiff", "tiff_0000.tif", "tiff.tif"),
        ("nifti", "nifti_0000.nii.gz", "nifti.nii.gz"),
        ("nrrd", "nrrd_0000.nrrd", "nrrd.nii.gz"),  # not the dataset's ending: written as .nii.gz
        ("meta", "meta_0000.mha", "meta.nii.gz"),
        ("dicom", "dicom", "dicom.nii.gz"),
    ):
        image, geometry = read_image(inputs / source)
        labels, out_geometry = read_image(out / output)
        assert labels.shape == image.shape and labels.dtype == np.uint8, case
        assert out_geometry.spacing == pytest.approx(geometry.spacing, abs=1e-6), case
        assert out_geometry.origin == pytest.approx(geometry.origin, abs=1e-6), case
        assert out_geometry.direction == pytest.approx(geometry.direction, abs=1e-6), case
        with np.load(out / f"{case}.npz", allow_pickle=False) as npz:
            probabilities = npz["probabilities"]
        sidecar = json.loads((out / f"{case}.json").read_text())
        assert probabilities.dtype == np.float16 and probabilities.shape == (3, *image.shape)
        assert sidecar["shape"] == [3, *image.shape] and sidecar["labels"] == LABELS
        assert Geometry.from_dict(sidecar["geometry"]) == geometry
    info = json.loads((out / PREDICT_INFO).read_text())
    assert info["folds"] == ["0"] and info["configuration"] == "3d_fullres" and info["tta"] is False
    assert info["checkpoint"] == "final" and info["plans_name"] == "autosegPlans"


def test_a_sheared_direction_that_nifti_cannot_hold_keeps_the_inputs_format(model_3d: Path, tmp_path: Path) -> None:
    """MetaImage and NRRD store any direction matrix, NIfTI only a rotation: a sheared input's label map
    written as .nii.gz came back with ITK's nearest rotation (cosines 0.1 off), lying elsewhere than its image."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    array, _ = read_image(DICOM_SERIES)
    axes = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]])
    sheared = tuple((axes / np.linalg.norm(axes, axis=0)).ravel())
    for case, ending in (("meta", ".mha"), ("nrrd", ".nrrd")):
        write_image(array, Geometry((1.5, 0.8, 0.9), (10.0, -20.0, 5.0), sheared), inputs / f"{case}_0000{ending}")
    dicom_as(inputs / "rotated_0000.mha")  # orthonormal: the default .nii.gz holds it
    out = tmp_path / "out"
    report = predict_folder(inputs, out, model_3d, folds=[0], tta=False)
    assert report.predicted == ["meta", "nrrd", "rotated"]
    assert sorted(p.name for p in out.iterdir()) == ["meta.mha", "nrrd.nrrd", PREDICT_INFO, "rotated.nii.gz"]
    for case, source, output in (("meta", "meta_0000.mha", "meta.mha"), ("nrrd", "nrrd_0000.nrrd", "nrrd.nrrd")):
        _, geometry = read_image(inputs / source)
        _, out_geometry = read_image(out / output)
        assert out_geometry.direction == pytest.approx(geometry.direction, abs=1e-6), case
        assert out_geometry.origin == pytest.approx(geometry.origin, abs=1e-6), case
    again = predict_folder(inputs, out, model_3d, folds=[0], tta=False, continue_=True)
    assert again.skipped == ["meta", "nrrd", "rotated"]


def test_saved_probabilities_of_single_folds_ensemble_into_the_two_fold_prediction(model_3d: Path, tmp_path: Path) -> None:
    """predict --save-probabilities per fold, then `autoseg ensemble`: what predicting both folds at once gives
    (the sidecar written by predict is the one the ensemble reads; a mismatch broke this round trip once)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs)
    for folds, out in (([0], "f0"), ([1], "f1"), ([0, 1], "both")):
        predict_folder(inputs, tmp_path / out, model_3d, folds=folds, tta=False, save_probabilities=True)
    assert ensemble_folders([tmp_path / "f0", tmp_path / "f1"], tmp_path / "ens", save_probabilities=True, num_workers=1) == ["hippocampus_001"]
    with np.load(tmp_path / "ens" / "hippocampus_001.npz") as ens, np.load(tmp_path / "both" / "hippocampus_001.npz") as both:
        mean, expected = ens["probabilities"].astype(np.float32), both["probabilities"].astype(np.float32)
    np.testing.assert_allclose(mean, expected, atol=2e-3)
    labels, geometry = read_image(tmp_path / "ens" / "hippocampus_001.nii.gz")
    both_labels, both_geometry = read_image(tmp_path / "both" / "hippocampus_001.nii.gz")
    assert geometry == both_geometry and labels.shape == both_labels.shape
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 4e-3  # where float16 rounding cannot swap the top two
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels[clear], both_labels[clear])
    assert json.loads((tmp_path / "ens" / "hippocampus_001.json").read_text())["shape"] == [3, *labels.shape]


def test_a_bad_case_among_good_ones(model_3d: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a_good", "z_good"):
        shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    (inputs / "broken_0000.nii.gz").write_bytes(b"not an image")
    shutil.copy(inputs / "a_good_0000.nii.gz", inputs / "twochan_0000.nii.gz")
    shutil.copy(inputs / "a_good_0000.nii.gz", inputs / "twochan_0001.nii.gz")
    sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(inputs / "fourd_0000.nii.gz"))
    out = tmp_path / "out"
    with pytest.raises(InferenceError) as caught:
        predict_folder(inputs, out, model_3d, folds=[0], tta=False)
    message = str(caught.value)
    assert message.startswith("3 of 5 case(s) failed (")
    assert "broken: " in message and "cannot be read" in message
    assert "twochan: case twochan: has channel(s) 0000, 0001, the model expects 1 (0000: MRI); give one file per channel: twochan_0000.nii.gz" in message
    assert "fourd: " in message and "is 4D" in message
    report = caught.value.report
    assert report.predicted == ["a_good", "z_good"]
    assert sorted(f.key for f in report.failed) == ["broken", "fourd", "twochan"]
    assert sorted(p.name for p in out.iterdir()) == ["a_good.nii.gz", PREDICT_INFO, "z_good.nii.gz"]


@pytest.mark.parametrize("settings", [{"folds": [1]}, {"checkpoint": "best"}, {"device": "meta"}])
def test_settings_other_than_a_loaded_models_are_refused(settings: dict[str, Any], model_3d: Path, tmp_path: Path) -> None:
    """predict_folder(..., load_model(M, folds=[0]), folds=[1]) predicted with fold 0 without a word."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs)
    model = load_model(model_3d, folds=[0], device="cpu")
    name = next(iter(settings))
    with pytest.raises(InferenceError, match=rf"loaded with other settings than {name} .*load_model again"):
        predict_folder(inputs, tmp_path / "out", model, tta=False, **settings)
    assert not (tmp_path / "out").exists()
    predict_folder(inputs, tmp_path / "same", model, folds=["0"], checkpoint="final", device="cpu", tta=False)


def test_the_default_checkpoint_named_beside_a_model_loaded_with_another_is_refused(model_3d: Path, tmp_path: Path) -> None:
    """checkpoint='final' beside a model loaded with 'best' was taken for the default and predicted with 'best'."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs)
    shutil.copy(model_3d / "fold_0" / "checkpoint_final.safetensors", model_3d / "fold_0" / "checkpoint_best.safetensors")
    model = load_model(model_3d, folds=[0], checkpoint="best", device="cpu")
    with pytest.raises(InferenceError, match=r"other settings than checkpoint 'final' \(the model holds 'best'\)"):
        predict_folder(inputs, tmp_path / "out", model, checkpoint="final", tta=False)
    assert not (tmp_path / "out").exists()
    assert predict_folder(inputs, tmp_path / "own", model, tta=False).predicted == ["hippocampus_001"]
    by_file_name = load_model(model_3d, folds=[0], checkpoint="checkpoint_best.safetensors", device="cpu")
    assert predict_folder(inputs, tmp_path / "named", by_file_name, checkpoint="best", tta=False).predicted == ["hippocampus_001"]


def test_a_full_disk_stops_predict_at_the_first_case_with_one_line(model_3d: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC was recorded per case (each predicted in full first), the same bare OSError once per case."""
    import errno

    import autoseg.inference.batch as batch

    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b", "c"):
        shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    written: list[Path] = []

    def full_disk(labels: np.ndarray, geometry: Geometry, path: Path) -> None:
        written.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{path}.tmp")

    monkeypatch.setattr(batch, "write_image", full_disk)
    out = tmp_path / "out"
    with pytest.raises(InferenceError) as caught:
        predict_folder(inputs, out, model_3d, folds=[0], tta=False)
    message = str(caught.value)
    assert message.startswith(f"{out}: the disk of the output folder is full")
    assert "writing case a;" in message and "free space or choose another -o" in message
    assert "\n" not in message and [p.name for p in written] == ["a.nii.gz"]


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_a_blank_image_is_predicted_with_a_warning_naming_its_file(value: float, model_3d: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An all-zero (or constant) image, a failed export, was predicted without a word; its label map says nothing."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
    shutil.copy(source, inputs / "good_0000.nii.gz")
    image = sitk.ReadImage(str(source), sitk.sitkFloat32)
    blank = sitk.Image(image.GetSize(), sitk.sitkFloat32) + value
    blank.CopyInformation(image)
    sitk.WriteImage(blank, str(inputs / "blank_0000.nii.gz"))
    report = predict_folder(inputs, tmp_path / "out", model_3d, folds=[0], tta=False)
    expected = (f"case blank: {inputs / 'blank_0000.nii.gz'} holds {value:g} in every voxel (a blank image: a failed "
                "export or conversion?); its label map is predicted from no image content and means nothing: check "
                "the file")
    assert report.warnings == [expected] and report.predicted == ["blank", "good"]
    printed = capsys.readouterr().err
    assert printed.count("WARNING") == 1 and f"WARNING {expected}\n" in printed
    assert (tmp_path / "out" / "blank.nii.gz").is_file()


def test_a_blank_integer_image_names_its_value_exactly(model_3d: Path, tmp_path: Path) -> None:
    """A uint64 file of 2**64-1 was reported as holding 18446744073709552000: the value went through float."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = sitk.ReadImage(str(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"))
    blank = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, 2**64 - 1, np.uint64))
    blank.CopyInformation(image)
    sitk.WriteImage(blank, str(inputs / "big_0000.nii.gz"))
    report = predict_folder(inputs, tmp_path / "out", model_3d, folds=[0], tta=False)
    assert report.warnings == [f"case big: {inputs / 'big_0000.nii.gz'} holds 18446744073709551615 in every voxel (a "
                               "blank image: a failed export or conversion?); its label map is predicted from no image "
                               "content and means nothing: check the file"]
    assert blank_image_warning("c", [Path("c_0000.nrrd")], np.full((1, 1, 2, 2), 2**63 - 1, np.int64)).startswith(
        "case c: c_0000.nrrd holds 9223372036854775807 in every voxel")


def test_blank_colour_files_say_holds_for_one_file_and_hold_for_several(tmp_path: Path) -> None:
    """The warning said 'hold(s)' whatever the number of files."""
    one = tmp_path / "c_0000.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 3), 9, np.uint8), isVector=True), str(one))
    data, _ = read_case_images([one])
    assert blank_image_warning("c", [one], data).startswith(f"case c: {one} holds (9, 9, 9) in every voxel")
    two = [tmp_path / "d_0000.png", tmp_path / "d_0001.png"]
    both = np.concatenate([data, data[:1]])
    assert blank_image_warning("d", two, both).startswith(f"case d: {two[0]}, {two[1]} hold (9, 9, 9, 9) in every voxel")


def test_every_case_failing_says_none_was_predicted_and_a_wrong_model_type_is_named(model_3d: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken_0000.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InferenceError, match=r"^1 of 1 case\(s\) failed \(broken: .*\); no case was predicted$"):
        predict_folder(inputs, tmp_path / "out", model_3d, folds=[0], tta=False)
    with pytest.raises(InferenceError, match=r"model=5: give a model folder, a \(dataset, configuration\) pair or a model from load_model"):
        predict_folder(inputs, tmp_path / "out2", 5, folds=[0])  # type: ignore[arg-type]
    assert not (tmp_path / "out2").exists()


def test_continue_skips_finished_cases(model_3d: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("c1", "c2"):
        shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    out = tmp_path / "out"
    first = predict_folder(inputs, out, model_3d, folds=[0], tta=False)
    assert first.predicted == ["c1", "c2"]
    kept = (out / "c1.nii.gz").read_bytes()
    (out / "c2.nii.gz").unlink()
    again = predict_folder(inputs, out, model_3d, folds=[0], tta=False, continue_=True)
    assert again.skipped == ["c1"] and again.predicted == ["c2"]
    assert (out / "c1.nii.gz").read_bytes() == kept
    # Probabilities requested now but missing for c1: it is predicted again.
    third = predict_folder(inputs, out, model_3d, folds=[0], tta=False, continue_=True, save_probabilities=True)
    assert third.predicted == ["c1", "c2"] and (out / "c1.npz").is_file()


def test_sharding_splits_cases_disjointly(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b", "c", "d", "e"):
        (inputs / f"{case}_0000.nii.gz").write_bytes(b"")
    cases = discover_cases(inputs)
    parts = [[c.case_id for c in shard(cases, 2, k)] for k in (0, 1)]
    assert parts == [["a", "c", "e"], ["b", "d"]]
    with pytest.raises(InferenceError, match="--part-id 2 with --num-parts 2: need num_parts >= 1 and 0 <= part_id"):
        shard(cases, 2, 2)


@pytest.mark.parametrize(("case_id", "ending"), [("scan[1]", ".nii.gz"), ("a*b?", ".nii.gz"), ("x[!y]", ".nii.gz"),
                                                ("CT", ".NII.GZ"), ("ct", ".nii.GZ")])
def test_one_file_whose_name_holds_glob_characters_is_its_case(tmp_path: Path, case_id: str, ending: str) -> None:
    """``-i scan[1]_0000.nii.gz`` found 'no images' (the name was read as a glob pattern); ``a*b?_0000`` also
    took other cases' files (``aXXbY_0000``) as cases of the run; ``-i CT_0000.NII.GZ`` found 'no images'
    (looked for as ``.nii.gz``), though the folder holding it worked. The case's channels are the folder mode's,
    whatever their ending (``_0002.nrrd`` too)."""
    for name in (f"{case_id}_0000{ending}", f"{case_id}_0001.nii.gz", "aXXbY_0000.nii.gz", "scan1_0000.nii.gz",
                 "xz_0000.nii.gz", f"{case_id}_0002.nrrd", f"{case_id}_01.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    cases = discover_cases(tmp_path / f"{case_id}_0000{ending}")
    assert [(c.case_id, sorted(c.channels)) for c in cases] == [(case_id, [0, 1, 2])]


def test_colour_2d_cases_need_no_file_per_channel_and_keep_their_format(tmp_path: Path) -> None:
    """An RGB PNG case is one file (its colours are the channels); 2D images come back in their own format."""
    for name in ("rgb_0000.png", "grey_0000.tif", "grey_0001.tif", "gap_0000.png", "gap_0002.png", "vol_0000.nrrd"):
        (tmp_path / name).write_bytes(b"")
    cases = {case.case_id: case for case in discover_cases(tmp_path)}
    rgb = {"0": "R", "1": "G", "2": "B"}
    assert channel_files(cases["rgb"], rgb) == [tmp_path / "rgb_0000.png"]
    assert channel_files(cases["grey"], rgb) == [tmp_path / "grey_0000.tif", tmp_path / "grey_0001.tif"]
    with pytest.raises(InferenceError, match=r"case gap: has channel\(s\) 0000, 0002, the model expects 3 \(0000: R, 0001: G, "
                                             r"0002: B\); give one file per channel \(an RGB image holds 3 of them\): "
                                             r"gap_0000.png \.\.\. gap_0002.png"):
        channel_files(cases["gap"], rgb)
    with pytest.raises(InferenceError, match=r"case vol: has channel\(s\) 0000, the model expects 2 \(0000: T2, 0001: ADC\); give "
                                             r"one file per channel: vol_0000.nrrd \.\.\. vol_0001.nrrd"):
        channel_files(cases["vol"], {"0": "T2", "1": "ADC"})
    assert [output_ending(cases[c], ".png") for c in ("rgb", "grey", "vol")] == [".png", ".tif", ".nii.gz"]


def test_an_upper_case_dataset_ending_is_kept_for_the_outputs(tmp_path: Path) -> None:
    """A dataset whose file_ending is ``.NII.GZ`` gets ``.NII.GZ`` label maps, which evaluate finds beside its
    labels (was: .nii.gz, and evaluate found no predictions)."""
    for name in ("up_0000.NII.GZ", "low_0000.nii.gz", "pic_0000.PNG"):
        (tmp_path / name).write_bytes(b"")
    cases = {case.case_id: case for case in discover_cases(tmp_path)}
    assert [output_ending(cases[c], ".NII.GZ") for c in ("up", "low", "pic")] == [".NII.GZ", ".NII.GZ", ".png"]
    assert output_ending(cases["pic"], ".PNG") == ".PNG"


def test_an_image_longer_than_nifti_holds_keeps_a_format_that_holds_it(tmp_path: Path) -> None:
    """An NRRD of 1x2x33000 voxels got a .nii.gz label map (NIfTI holds 32767 voxels a side): the case was
    predicted in full, then refused at the write. MetaImage and NRRD keep their format, GIPL becomes NRRD."""
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for case, ending, side in (("nrrd", ".nrrd", 33000), ("meta", ".mha", 33000), ("gipl", ".gipl", 33000),
                               ("short", ".nrrd", 32767)):
        write_image(np.zeros((1, 2, side), np.uint8), geometry, tmp_path / f"{case}_0000{ending}")
    cases = {case.case_id: case for case in discover_cases(tmp_path)}
    endings = [output_ending(cases[c], ".nii.gz") for c in ("nrrd", "meta", "gipl", "short")]
    assert endings == [".nrrd", ".mha", ".nrrd", ".nii.gz"]


def test_images_of_a_format_autoseg_does_not_read_are_named_in_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JPEG or an Analyze .hdr/.img pair beside NIfTI cases was left out without a word: the run reported the other
    cases as all there was. Notes and JSON (a TIFF's spacing) stay unremarked."""
    for name in ("a_0000.nii.gz", "b_0000.jpg", "c_0000.hdr", "c_0000.img", "notes.txt", "d.json"):
        (tmp_path / name).write_bytes(b"")
    assert [case.case_id for case in discover_cases(tmp_path)] == ["a"]
    assert capsys.readouterr().err == (f"note: {tmp_path}: skipped b_0000.jpg, c_0000.hdr, c_0000.img: images in a "
                                       "format autoseg does not read; to predict them, convert them to one of .nii.gz, "
                                       ".nii, .nrrd, .nhdr, .mha, .mhd, .gipl, .gipl.gz, .png, .bmp, .tif, .tiff\n")


def test_a_dicom_series_gets_nifti_without_diagnostics_on_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Choosing a DICOM case's ending probed its folder with ITK's file reader, whose HDF5 reader printed some 50
    lines of diagnostics ('Is a directory') per DICOM case; a series folder is not probed (GDCM's directions are
    rotations: .nii.gz holds them)."""
    shutil.copytree(DICOM_SERIES, tmp_path / "series")
    (case,) = discover_cases(tmp_path)
    assert output_ending(case, ".nii.gz") == ".nii.gz"
    assert capfd.readouterr().err == ""


def test_sharded_run_predicts_only_its_part(model_3d: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b", "c"):
        shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    report = predict_folder(inputs, tmp_path / "out", model_3d, folds=[0], tta=False, num_parts=2, part_id=1)
    assert report.predicted == ["b"]


def test_single_file_input_and_input_errors(model_3d: Path, tmp_path: Path) -> None:
    source = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
    report = predict_folder(source, tmp_path / "out", model_3d, folds=[0], tta=False)
    assert report.predicted == ["hippocampus_001"]
    assert read_image(tmp_path / "out" / "hippocampus_001.nii.gz")[0].shape == read_image(source)[0].shape
    with pytest.raises(InferenceError, match="input not found"):
        predict_folder(tmp_path / "nothing", tmp_path / "out", model_3d)
    with pytest.raises(InferenceError, match="output folder equals the input folder"):
        predict_folder(tmp_path / "out", tmp_path / "out", model_3d)


@pytest.mark.parametrize("step", [0.001, 0.05, 0.0, 1.5])
def test_a_step_that_would_multiply_the_tiles_is_refused_before_any_case(model_3d: Path, tmp_path: Path, step: float) -> None:
    """``step=0.001`` was accepted: 500x the default's tiles per axis (1.25e8x in 3D), a prediction of days."""
    source = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
    with pytest.raises(InferenceError, match=rf"step {step:g}: .*(give a step from 0.1 to 1|must be in \(0, 1\])"):
        predict_folder(source, tmp_path / "out", model_3d, folds=[0], step=step)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="give a step from 0.1 to 1"):
        tile_starts(40, 8, 0.05)



def test_one_dicom_file_as_input_points_at_its_series_folder(model_3d: Path, tmp_path: Path) -> None:
    """``-i series/14.dcm`` was refused as an unsupported file type, with no word that DICOM is read by folder."""
    dicom_file = sorted(DICOM_SERIES.iterdir())[0]
    shutil.copy(dicom_file, tmp_path / "IM0001")  # DICOM files often have no extension
    for given in (dicom_file, tmp_path / "IM0001"):
        with pytest.raises(InferenceError, match=rf"{given.name}: a DICOM file; give the folder of its series "
                                                 rf"\(-i {given.parent}\), which is read as one image"):
            predict_folder(given, tmp_path / "out", model_3d)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InferenceError, match=r"notes\.txt: unsupported file type; use one of \.nii\.gz"):
        predict_folder(tmp_path / "notes.txt", tmp_path / "out", model_3d)


def test_dicom_files_beside_case_files_are_refused_not_left_out(tmp_path: Path) -> None:
    """A series folder with a thumbnail ``preview.png`` was read as a folder of cases: the thumbnail was the only
    case, the series' files silently ignored (so too DICOM files lying beside NIfTI cases)."""
    shutil.copytree(DICOM_SERIES, tmp_path / "series")
    write_image(np.zeros((1, 8, 8), np.uint8), Geometry((999.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)),
                tmp_path / "series" / "preview.png")
    with pytest.raises(InferenceError, match=r"series: holds 32 DICOM file\(s\) \(1\.dcm, 10\.dcm, 11\.dcm, \.\.\.\) "
                                             r"beside preview\.png; a DICOM series is read as a folder of its own"):
        discover_cases(tmp_path / "series")
    (tmp_path / "series" / "preview.png").unlink()
    (tmp_path / "series" / "notes.txt").write_text("not DICOM, ignored")
    assert [case.case_id for case in discover_cases(tmp_path / "series")] == ["series"]


def test_dicom_folder_given_as_dot_is_named_by_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-i .`` inside a series folder made the case id '' (output '.nii.gz', a failed write)."""
    shutil.copytree(DICOM_SERIES, tmp_path / "series")
    monkeypatch.chdir(tmp_path / "series")
    assert [case.case_id for case in discover_cases(".")] == ["series"]
    (tmp_path / "patient42").symlink_to(tmp_path / "series")
    assert [case.case_id for case in discover_cases(tmp_path / "patient42")] == ["patient42"]


def test_a_subfolder_without_dicom_files_is_skipped_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``IN/notes/x.txt`` beside ``IN/a_0000.nii.gz`` was predicted as a DICOM series: ITK printed some 20 lines of
    HDF5 diagnostics and the case failed. A subfolder of DICOM files, even damaged ones, is still a case."""
    (tmp_path / "a_0000.nii.gz").write_bytes(b"")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("not DICOM")
    shutil.copytree(DICOM_SERIES, tmp_path / "series")
    (tmp_path / "damaged").mkdir()
    first = sorted(DICOM_SERIES.iterdir())[0]
    (tmp_path / "damaged" / first.name).write_bytes(first.read_bytes()[:300])  # cut short: GDCM reads no series
    assert [case.case_id for case in discover_cases(tmp_path)] == ["a", "damaged", "series"]
    assert capsys.readouterr().err == (f"note: {tmp_path}: skipped subfolder(s) notes: no DICOM files in them (a DICOM "
                                       "series is read from a folder of its slice files)\n")
    for name in ("a_0000.nii.gz", "series", "damaged"):
        shutil.rmtree(tmp_path / name) if (tmp_path / name).is_dir() else (tmp_path / name).unlink()
    with pytest.raises(InferenceError, match=r"no images found \(not images: notes\); expected <case>_0000<ending>"):
        discover_cases(tmp_path)


def test_one_file_given_brings_in_its_case_s_dicom_series_subfolder(tmp_path: Path) -> None:
    """-i case_0000.nii.gz left out the DICOM series subfolder case_0001 beside it (a case of one channel), where -i
    of the folder gave case both; a subfolder of another case, or without DICOM files, still stays out."""
    (tmp_path / "case_0000.nii.gz").write_bytes(b"")
    shutil.copytree(DICOM_SERIES, tmp_path / "case_0001")
    shutil.copytree(DICOM_SERIES, tmp_path / "other_0001")
    (tmp_path / "case_0002").mkdir()
    (tmp_path / "case_0002" / "notes.txt").write_text("not DICOM")
    from_folder = discover_cases(tmp_path, quiet=True)
    from_file = discover_cases(tmp_path / "case_0000.nii.gz")
    expected = {0: tmp_path / "case_0000.nii.gz", 1: tmp_path / "case_0001"}
    assert [(c.case_id, c.channels) for c in from_file] == [("case", expected)]
    assert [(c.case_id, c.channels) for c in from_folder if c.case_id == "case"] == [("case", expected)]


def test_one_file_given_keeps_a_channel_that_is_a_dangling_link_as_the_folder_does(tmp_path: Path) -> None:
    """-i case_0000.nii.gz dropped case_0001.nii.gz, a link to a moved file, without a word (the case read as one
    channel short), where -i of the folder kept it and reading it named the link and its missing target."""
    (tmp_path / "case_0000.nii.gz").write_bytes(b"")
    (tmp_path / "case_0001.nii.gz").symlink_to(tmp_path / "moved.nii.gz")
    expected = [("case", {0: tmp_path / "case_0000.nii.gz", 1: tmp_path / "case_0001.nii.gz"})]
    assert [(c.case_id, c.channels) for c in discover_cases(tmp_path / "case_0000.nii.gz")] == expected
    assert [(c.case_id, c.channels) for c in discover_cases(tmp_path)] == expected


def test_one_named_pipe_given_is_a_case_as_in_its_folder_not_an_internal_error(tmp_path: Path) -> None:
    """-i x_0000.nii.gz naming a named pipe failed with 'Not a directory; a file stands where a folder is needed',
    where -i of its folder made it a case whose reading names it as no regular file."""
    os.mkfifo(tmp_path / "x_0000.nii.gz")
    expected = [("x", {0: tmp_path / "x_0000.nii.gz"})]
    assert [(c.case_id, c.channels) for c in discover_cases(tmp_path / "x_0000.nii.gz")] == expected
    assert [(c.case_id, c.channels) for c in discover_cases(tmp_path)] == expected
    os.mkfifo(tmp_path / "notes")
    with pytest.raises(InferenceError, match=r"notes: unsupported file type; use one of \.nii\.gz"):
        discover_cases(tmp_path / "notes")


def test_a_named_pipe_among_the_cases_fails_by_name_without_waiting_on_it(model_3d: Path, tmp_path: Path) -> None:
    """A named pipe pipe_0000.nrrd among .nii.gz cases hung predict for ever: choosing its output ending, ITK opened
    the pipe to read its header and waited for a writer. It now fails as a case, named, and the others complete."""
    import threading

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "good_0000.nii.gz")
    os.mkfifo(inputs / "pipe_0000.nrrd")
    raised: list[InferenceError] = []

    def run() -> None:
        with pytest.raises(InferenceError) as caught:
            predict_folder(inputs, tmp_path / "out", model_3d, folds=[0], tta=False)
        raised.append(caught.value)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(90)
    waited = thread.is_alive()
    if waited:  # open the pipe's other end, so that the reader waiting on it goes on
        os.close(os.open(inputs / "pipe_0000.nrrd", os.O_WRONLY | os.O_NONBLOCK))
    assert not waited, "predict waited on the named pipe"
    assert str(raised[0]).startswith(f"1 of 2 case(s) failed (pipe: {inputs / 'pipe_0000.nrrd'}: is not a regular "
                                     "file (a named pipe, socket or device)"), raised[0]
    assert (tmp_path / "out" / "good.nii.gz").is_file()


def test_overwrite_input_gives_the_same_prediction_and_only_then_changes_the_input(model_3d: Path) -> None:
    model = load_model(model_3d, folds=[0])
    data, geometry = hippocampus_case()
    original = data.copy()
    kept = predict_array(model, data, geometry)
    np.testing.assert_array_equal(data, original)
    overwritten = predict_array(model, data, geometry, overwrite_input=True)
    np.testing.assert_array_equal(overwritten.labels, kept.labels)
    assert not np.array_equal(data, original)  # normalized in place: one image-sized copy saved


def test_mixed_precision_setting_is_resolved_recorded_and_checked(model_3d: Path, tmp_path: Path) -> None:
    from autoseg.utils.device import autocast_dtype

    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", images)
    predict_folder(images, tmp_path / "out", model_3d, folds=[0], device="cpu")
    info = json.loads((tmp_path / "out" / PREDICT_INFO).read_text())
    assert info["mixed_precision"] == "auto"
    assert info["autocast_dtype"] == str(autocast_dtype("auto", torch.device("cpu")))
    off = predict_folder(images, tmp_path / "off", model_3d, folds=[0], device="cpu", mixed_precision="off")
    assert off.predicted == ["hippocampus_001"]
    with pytest.raises(InferenceError, match="mixed_precision='half': choose auto, fp16, bf16 or off"):
        predict_folder(images, tmp_path / "bad", model_3d, folds=[0], device="cpu", mixed_precision="half")
    assert not (tmp_path / "bad").exists()


def test_compile_networks_compiles_every_fold_and_gives_the_same_labels(
    model_3d: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compile`` hands each fold's network to torch.compile (recorded), and predicts the same labels."""
    compiled: list[torch.nn.Module] = []

    def fake_compile(network: torch.nn.Module) -> torch.nn.Module:  # real compilation costs a minute on CPU
        compiled.append(network)
        return network

    monkeypatch.setattr(torch, "compile", fake_compile)
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", images)
    predict_folder(images, tmp_path / "eager", model_3d, device="cpu", mixed_precision="off")
    assert compiled == []
    predict_folder(images, tmp_path / "compiled", model_3d, device="cpu", mixed_precision="off", compile_networks=True)
    assert len(compiled) == 2  # folds 0 and 1
    assert json.loads((tmp_path / "compiled" / PREDICT_INFO).read_text())["compiled"] is True
    assert json.loads((tmp_path / "eager" / PREDICT_INFO).read_text())["compiled"] is False
    eager, _ = read_image(tmp_path / "eager" / "hippocampus_001.nii.gz")
    again, _ = read_image(tmp_path / "compiled" / "hippocampus_001.nii.gz")
    np.testing.assert_array_equal(eager, again)


def test_a_dataset_json_whose_regions_are_not_the_plans_is_refused(model_3d: Path) -> None:
    """Export follows the plans' regions_class_order, the outputs dataset.json's regions: a dataset.json
    edited after planning into three regions (still 3 channels) loaded and was exported by softmax argmax."""
    description = json.loads((model_3d / "dataset.json").read_text())
    description["labels"] = {"background": 0, "all": [1, 2], "anterior": [1], "posterior": [2]}
    description["regions_class_order"] = [1, 1, 2]
    (model_3d / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(PlanError, match=r"dataset\.json: regions_class_order is \[1, 1, 2\], but .*plans\.json was planned "
                                        r"with None; the model was trained on a dataset\.json edited after planning"):
        load_model(model_3d, folds=[0])


def test_a_dataset_json_whose_labels_are_not_the_networks_is_refused(model_3d: Path) -> None:
    """The label map and probabilities are named from the model's dataset.json: one with a label less
    (an edited or swapped file) would mislabel every prediction, so the model does not load."""
    description = json.loads((model_3d / "dataset.json").read_text())
    description["labels"].pop("Posterior")
    (model_3d / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(InferenceError, match=r"fold_0/checkpoint_final\.safetensors: the network predicts 3 channel\(s\) but "
                                             r".*dataset\.json gives 2 \(its labels, background included, or its regions\)"):
        load_model(model_3d, folds=[0])


def test_a_case_named_predict_info_cannot_overwrite_the_run_record(model_3d: Path, tmp_path: Path) -> None:
    """Its probabilities' sidecar would be predict_info.json: the run record was replaced, and every later
    run into the folder was refused as one of "another model"."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("predict_info", "plain"):
        shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(InferenceError, match=r"predict_info: its probabilities' sidecar would be .*predict_info\.json.*rename"):
        predict_folder(inputs, out, model_3d, folds=[0], tta=False, save_probabilities=True)
    assert json.loads((out / PREDICT_INFO).read_text())["configuration"] == "3d_fullres"
    assert sorted(p.name for p in out.iterdir()) == ["plain.json", "plain.nii.gz", "plain.npz", PREDICT_INFO]
    again = predict_folder(inputs / "plain_0000.nii.gz", out, model_3d, folds=[0], tta=False, continue_=True,
                           save_probabilities=True)
    assert again.skipped == ["plain"]
    # Without probabilities the case writes predict_info.nii.gz only, which is no clash.
    assert predict_folder(inputs, tmp_path / "labels", model_3d, folds=[0], tta=False).predicted == ["plain", "predict_info"]


@pytest.mark.parametrize("continue_", [False, True])
def test_an_output_name_taken_by_a_folder_is_named(model_3d: Path, tmp_path: Path, continue_: bool) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("c1", "c2"):
        shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    predict_folder(inputs / "c2_0000.nii.gz", out, model_3d, folds=[0], tta=False)  # the folder is a run's
    (out / "c1.nii.gz").mkdir()
    with pytest.raises(InferenceError, match=r"1 of 2 case\(s\) failed \(c1: case c1: its output .*out/c1\.nii\.gz is a "
                                             r"folder; move or rename that folder\)"):
        predict_folder(inputs, out, model_3d, folds=[0], tta=False, continue_=continue_)
    assert (out / "c1.nii.gz").is_dir() and (out / "c2.nii.gz").is_file()


def test_a_folder_of_files_predict_did_not_write_is_not_overwritten(model_3d: Path, tmp_path: Path) -> None:
    """``-o`` pointing at a dataset's labelsTr replaced the reference labels of the same names without a word."""
    inputs, labels = tmp_path / "in", tmp_path / "labelsTr"
    inputs.mkdir()
    labels.mkdir()
    for case in ("c1", "c2"):
        shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    shutil.copy(HIPPOCAMPUS / "labelsTr" / "hippocampus_001.nii.gz", labels / "c2.nii.gz")
    (labels / "notes.txt").write_text("mine")
    reference = (labels / "c2.nii.gz").read_bytes()
    with pytest.raises(InferenceError, match=r"labelsTr: holds 1 file\(s\) not written by autoseg predict \(c2\.nii\.gz; the "
                       r"folder has no predict_info\.json\); autoseg predict would put its own among them, replacing 1"):
        predict_folder(inputs, labels, model_3d, folds=[0], tta=False)
    assert (labels / "c2.nii.gz").read_bytes() == reference
    assert sorted(p.name for p in labels.iterdir()) == ["c2.nii.gz", "notes.txt"]
    # Files of other names are no clash; a folder predict wrote is rerun into as before.
    (labels / "c2.nii.gz").unlink()
    assert predict_folder(inputs, labels, model_3d, folds=[0], tta=False).predicted == ["c1", "c2"]
    assert predict_folder(inputs, labels, model_3d, folds=[0], tta=False).predicted == ["c1", "c2"]


def test_a_folder_of_another_tools_label_maps_is_refused_before_any_case(model_3d: Path, tmp_path: Path) -> None:
    """Label maps of other names than predict's outputs (another tool's predictions of other cases) got predict's
    beside them without a word, and evaluate later scored the mix."""
    inputs, theirs = tmp_path / "in", tmp_path / "theirs"
    inputs.mkdir()
    theirs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "c1_0000.nii.gz")
    shutil.copy(HIPPOCAMPUS / "labelsTr" / "hippocampus_001.nii.gz", theirs / "other_case.nii.gz")
    with pytest.raises(InferenceError, match=r"theirs: holds 1 file\(s\) not written by autoseg predict \(other_case\.nii\.gz; "
                                             r"the folder has no predict_info\.json\); autoseg predict would put its own "
                                             r"among them, and evaluate would score the mix\. Choose an empty or new output folder$"):
        predict_folder(inputs, theirs, model_3d, folds=[0], tta=False)
    assert [p.name for p in theirs.iterdir()] == ["other_case.nii.gz"]


def test_a_model_retrained_under_the_same_name_does_not_continue_the_old_ones_outputs(model_3d: Path, tmp_path: Path) -> None:
    """--continue skipped every case the model of the same folder name had predicted before it was trained
    again: the run record compares the networks' weights too (an exported copy of the same model shares them)."""
    from autoseg.evaluation.model_files import export_model, unpacked_model

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "c1_0000.nii.gz")
    predict_folder(inputs, out, model_3d, folds=[0], tta=False)
    zipped = export_model(model_3d, tmp_path / "model.zip", folds=[0])
    with unpacked_model(zipped) as copy:
        assert predict_folder(inputs, out, copy, folds=[0], tta=False, continue_=True).skipped == ["c1"]
    checkpoint = model_3d / "fold_0" / "checkpoint_final.safetensors"
    saved = load_weights(checkpoint, InferenceError)
    saved["network_weights"] = {k: v + 1 if v.is_floating_point() else v for k, v in saved["network_weights"].items()}
    save_weights(checkpoint, saved)
    with pytest.raises(InferenceError, match=r"another model or settings \(weights \(sha256 of the networks' tensors\) '[0-9a-f]{16}' vs"):
        predict_folder(inputs, out, model_3d, folds=[0], tta=False, continue_=True)
    assert json.loads((out / PREDICT_INFO).read_text())["weights_sha256"] != load_model(model_3d, folds=[0]).weights_sha256


def test_a_cascade_whose_lowres_stage_was_retrained_does_not_continue_the_old_outputs(tmp_path: Path) -> None:
    """The run record compared the cascade stage's weights only: with its 3d_lowres model trained again (whose
    labels are the cascade's input), --continue skipped the cases the old pipeline had predicted."""
    results, inputs, out = tmp_path / "results", tmp_path / "in", tmp_path / "out"
    lowres = make_model(results, "3d_lowres", folds=("0",))
    cascade = make_model(results, "3d_cascade_fullres", folds=("0",), in_channels=3)
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "c1_0000.nii.gz")
    predict_folder(inputs, out, cascade, tta=False)
    assert predict_folder(inputs, out, cascade, tta=False, continue_=True).skipped == ["c1"]
    checkpoint = lowres / "fold_0" / "checkpoint_final.safetensors"
    saved = load_weights(checkpoint, InferenceError)
    saved["network_weights"] = {k: v + 1 if v.is_floating_point() else v for k, v in saved["network_weights"].items()}
    save_weights(checkpoint, saved)
    with pytest.raises(InferenceError, match=r"another model or settings \(low-resolution stage weights '[0-9a-f]{16}' vs"):
        predict_folder(inputs, out, cascade, tta=False, continue_=True)
    with pytest.raises(InferenceError, match=r"another model or settings \(model 'unet__autosegPlans__3d_cascade_fullres' "
                                             r"vs 'unet__autosegPlans__3d_lowres'; .*low-resolution stage weights"):
        predict_folder(inputs, out, lowres, tta=False, continue_=True)  # a record of a cascade, a model without stage


def test_names_that_are_not_utf8_are_named_not_a_process_abort(model_3d: Path, tmp_path: Path) -> None:
    """SimpleITK aborted the whole process (exit 134, 'terminate called ... std::logic_error') on an input
    or output path whose bytes are not UTF-8; the case now fails by name and the others complete. Run in a
    child process: before the fix the abort took the test runner with it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
    shutil.copy(source, os.fsdecode(os.fsencode(inputs) + b"/caf\xe9_0000.nii.gz"))
    shutil.copy(source, inputs / "plain_0000.nii.gz")
    odd_out = os.fsdecode(os.fsencode(tmp_path) + b"/out\xe9")
    code = (
        "import sys; from pathlib import Path; from autoseg.inference.batch import predict_folder\n"
        "from autoseg.errors import InferenceError\n"
        "for out in (Path(sys.argv[2]), Path(sys.argv[3])):\n"
        "    try:\n"
        "        predict_folder(Path(sys.argv[1]), out, Path(sys.argv[4]), folds=[0], tta=False)\n"
        "    except InferenceError as exc:\n"
        "        print(str(exc).encode('utf-8', 'backslashreplace').decode())\n"
    )
    done = subprocess.run([sys.executable, "-c", code, os.fsencode(inputs), os.fsencode(tmp_path / "out"),
                           os.fsencode(odd_out), str(model_3d)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.splitlines()[-2:]
    assert first.startswith("1 of 2 case(s) failed (caf\\udce9: ") and first.endswith(f"the others are in {tmp_path / 'out'}")
    assert "name is not valid UTF-8 (bytes shown as \\x..); rename it" in first
    assert (tmp_path / "out" / "plain.nii.gz").is_file()
    assert "out\\xe9/plain.nii.gz: name is not valid UTF-8" in second


def test_a_model_of_another_dataset_under_the_same_folder_name_is_refused(model_3d: Path, tmp_path: Path) -> None:
    """Models of two datasets share the folder name <network>__<plans>__<configuration>: the second dataset's
    label maps were written among the first's under one predict_info.json."""
    other = make_model(tmp_path / "other", "3d_fullres")
    plans = json.loads((other / "plans.json").read_text())
    (other / "plans.json").write_text(json.dumps({**plans, "dataset_name": "Dataset998_Other"}))
    assert other.name == model_3d.name
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "c1_0000.nii.gz")
    out = tmp_path / "out"
    predict_folder(inputs, out, model_3d, folds=[0], tta=False)
    with pytest.raises(InferenceError, match=r"another model or settings \(dataset 'Dataset999_Test' vs 'Dataset998_Other'\)"):
        predict_folder(inputs, out, other, folds=[0], tta=False)
    # A record from before the dataset was kept is compared without it.
    info = json.loads((out / PREDICT_INFO).read_text())
    del info["dataset_name"]
    (out / PREDICT_INFO).write_text(json.dumps(info))
    assert predict_folder(inputs, out, model_3d, folds=[0], tta=False, continue_=True).skipped == ["c1"]
