"""The cascade end to end on real Hippocampus cases (issue 6 item 8, issue 7 "cascade run end to end").

A hand-made plan with ``3d_lowres`` (2 mm) -> ``3d_cascade_fullres`` (1 mm, the 3d_fullres store) and
the tiny training network; the command line preprocesses both stores, trains the 5 lowres folds (each
hands its validation predictions to the cascade) and cascade fold 0 (1 epoch of 2 iterations each).
The tests then check what each stage left behind: the hand-over files in the input geometry, the
previous stage moved onto the fullres grid, 3-channel batches whose extra channels are the masks'
one-hot encoding (aligned with the labels through spatial augmentation), and a prediction that runs
the lowres stage first by itself.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import read_image, write_image
from autoseg.errors import InferenceError, TrainingError
from autoseg.inference.batch import PREDICT_INFO, predict_folder
from autoseg.inference.model import load_model
from autoseg.planning.plans import load_plans, plans_path, validate_plans
from autoseg.preprocessing.store import case_paths, list_cases, load_case
from autoseg.training.cascade import CACHE_FOLDER, NEXT_STAGE_FOLDER, prepare_previous_stage, record_handed_on
from autoseg.training.checkpoints import load_checkpoint
from autoseg.training.config import resolve_config
from autoseg.training.data_loading import TRAIN_STREAM, VAL_STREAM, BatchSource
from autoseg.training.run import train_fold
from autoseg.training.splits import fold_cases
from autoseg.training.trainer import FoldRun, Trainer
from cli_helpers import TRAIN_SETTINGS, autoseg, autoseg_fails, set_options
from conftest import HIPPOCAMPUS, make_hippocampus_subset
from preprocessing_helpers import make_configuration, make_plans
from training_helpers import CASES, PATCH, TINY_TOPOLOGY

DATASET = "Dataset996_Cascade"
LOWRES, FULLRES, CASCADE = "3d_lowres", "3d_fullres", "3d_cascade_fullres"
LOWRES_STORE, FULLRES_STORE = "autosegPlans_3d_lowres", "autosegPlans_3d_fullres"
LOWRES_MODEL, CASCADE_MODEL = "unet__autosegPlans__3d_lowres", "unet__autosegPlans__3d_cascade_fullres"
FOLDS = ["0", "1", "2", "3", "4"]
FOREGROUND = [1, 2]  # Anterior, Posterior: one one-hot input channel each
HELD_OUT = ["hippocampus_017", "hippocampus_019"]  # never seen by training
CHECKPOINT = "checkpoint_final.safetensors"


def cascade_plans() -> dict[str, Any]:
    """What the planner writes for a cascade (tests/test_planning.py, large CT), shrunk to the tiny
    network: 3d_cascade_fullres is 3d_fullres (its store included) plus the link to 3d_lowres."""

    def stage(spacing: float, data_identifier: str) -> dict[str, Any]:
        configuration = make_configuration([spacing] * 3, patch_size=PATCH, data_identifier=data_identifier)
        configuration["network"]["topology"] = copy.deepcopy(TINY_TOPOLOGY)
        configuration["width"] = TINY_TOPOLOGY["features_per_stage"][0]
        return configuration

    fullres = stage(1.0, FULLRES_STORE)
    lowres = stage(2.0, LOWRES_STORE)
    lowres["median_shape"] = [18, 25, 18]
    lowres["next_stage"] = CASCADE
    cascade = {**copy.deepcopy(fullres), "previous_stage": LOWRES}
    plans = make_plans({FULLRES: fullres, LOWRES: lowres, CASCADE: cascade})
    plans["dataset_name"] = DATASET
    return validate_plans(plans, "the cascade test's plan")


def train_args(configuration: str, fold: str) -> list[object]:
    settings = set_options(TRAIN_SETTINGS)
    return ["train", DATASET, configuration, fold, "--epochs", 1, *settings, "--workers", 0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Raw subset, plan, both stores, the 5 lowres folds and cascade fold 0, trained via the CLI."""
    base = tmp_path_factory.mktemp("cascade")
    roots = {k: base / k for k in ("raw", "preprocessed", "results")}
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for key, var in (("raw", "AUTOSEG_RAW"), ("preprocessed", "AUTOSEG_PREPROCESSED"), ("results", "AUTOSEG_RESULTS")):
            roots[key].mkdir()
            patch.setenv(var, str(roots[key]))
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            patch.delenv(var, raising=False)
        torch.set_num_threads(1)
        raw = make_hippocampus_subset(roots["raw"], CASES, DATASET)
        (roots["preprocessed"] / DATASET).mkdir()
        (roots["preprocessed"] / DATASET / "autosegPlans.json").write_text(json.dumps(cascade_plans()))
        autoseg("preprocess", DATASET, "-c", LOWRES, "-c", CASCADE, "-np", 1)
        for fold in FOLDS:
            assert "trained 2 iterations in 1 epochs" in autoseg(*train_args(LOWRES, fold))
        assert "trained 2 iterations in 1 epochs" in autoseg(*train_args(CASCADE, "0"))
        yield {
            "raw": raw,
            "preprocessed": roots["preprocessed"] / DATASET,
            "lowres": roots["results"] / DATASET / LOWRES_MODEL,
            "cascade": roots["results"] / DATASET / CASCADE_MODEL,
        }
        torch.set_num_threads(threads)


def test_both_stages_are_preprocessed_into_their_own_stores(trained: dict[str, Path]) -> None:
    """The cascade shares the 3d_fullres store; the lowres store holds every case at half the size."""
    assert sorted(p.name for p in trained["preprocessed"].iterdir() if p.is_dir() and p.name.startswith("autoseg")) == [
        FULLRES_STORE, LOWRES_STORE,
    ]
    for case in CASES:
        _, _, full = load_case(trained["preprocessed"] / FULLRES_STORE, case)
        _, _, low = load_case(trained["preprocessed"] / LOWRES_STORE, case)
        assert low["target_spacing"] == [2.0, 2.0, 2.0] and full["target_spacing"] == [1.0, 1.0, 1.0]
        # 1 mm -> 2 mm halves every axis of the same nonzero crop (up to rounding)
        assert low["shape_after_crop"] == full["shape_after_crop"]
        assert all(abs(n - c / 2) <= 0.5 for n, c in zip(low["shape_after_resampling"], low["shape_after_crop"]))


def test_lowres_folds_hand_every_case_to_the_next_stage(trained: dict[str, Path]) -> None:
    """Each lowres fold copies its validation predictions to predicted_next_stage/: together every
    case once, as label maps in the raw image's geometry."""
    lowres = trained["lowres"]
    validated = {
        p.name: p for fold in FOLDS for p in (lowres / f"fold_{fold}" / "validation").glob("*.nii.gz")
    }
    expected = sorted(f"{case}.nii.gz" for case in CASES)
    assert sorted(validated) == expected  # the folds partition the cases
    assert sorted(p.name for p in (lowres / NEXT_STAGE_FOLDER).glob("*.nii.gz")) == expected
    for fold in FOLDS:  # beside each copy, the fold and split that handed it on
        for case in fold_cases(trained["preprocessed"], CASES, fold)[1]:
            record = json.loads((lowres / NEXT_STAGE_FOLDER / f"{case}.handed_by.json").read_text())
            assert record["fold"] == fold and len(record["split_sha256"]) == 64
    for case in CASES:
        labels, geometry = read_image(lowres / NEXT_STAGE_FOLDER / f"{case}.nii.gz")
        image, image_geometry = read_image(trained["raw"] / "imagesTr" / f"{case}_0000.nii.gz")
        assert labels.shape == image.shape and geometry == image_geometry
        assert np.issubdtype(labels.dtype, np.integer) and set(np.unique(labels).tolist()) <= {0, *FOREGROUND}
        np.testing.assert_array_equal(labels, read_image(validated[f"{case}.nii.gz"])[0])
    meta = load_checkpoint(lowres / "fold_0" / CHECKPOINT)["metadata"]
    assert (meta["configuration"], meta["in_channels"]) == (LOWRES, 1)


def test_cascade_fold_trains_on_the_previous_stage_on_its_grid(trained: dict[str, Path]) -> None:
    """Cascade fold 0: 1 image + 2 one-hot input channels; the lowres labels cached per case on the
    fullres grid, which for 1 mm input at a 1 mm target is the nonzero crop of the prediction."""
    cascade, store = trained["cascade"], trained["preprocessed"] / FULLRES_STORE
    meta = load_checkpoint(cascade / "fold_0" / CHECKPOINT)["metadata"]
    assert (meta["configuration"], meta["in_channels"], meta["num_outputs"]) == (CASCADE, 1 + len(FOREGROUND), 3)
    cache = cascade / CACHE_FOLDER
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{case}.npy" for case in CASES)
    for case in CASES:
        data, _, properties = load_case(store, case)
        cached = np.load(cache / f"{case}.npy", allow_pickle=False)
        assert cached.dtype == np.int16 and cached.shape == (1, *data.shape[1:])
        assert properties["shape_after_resampling"] == properties["shape_after_crop"]
        predicted, _ = read_image(trained["lowres"] / NEXT_STAGE_FOLDER / f"{case}.nii.gz")
        crop = tuple(slice(start, stop) for start, stop in properties["bbox"])
        np.testing.assert_array_equal(cached[0], predicted.transpose(properties["transpose_forward"])[crop])
    summary = json.loads((cascade / "fold_0" / "validation" / "summary.json").read_text())
    _, val_cases = fold_cases(trained["preprocessed"], CASES, 0)
    assert sorted(row["case_id"] for row in summary["metric_per_case"]) == sorted(val_cases)
    assert all(0.0 <= m["dice"] <= 1.0 for row in summary["metric_per_case"] for m in row["metrics"].values())


def test_the_previous_stage_cache_follows_a_case_preprocessed_again(trained: dict[str, Path], tmp_path: Path) -> None:
    """A cached case older than its stored case (preprocessed again for a new plan) is made again: only
    the prediction's time was compared, so the old grid's labels were fed to the cascade."""
    store, cache = trained["preprocessed"] / FULLRES_STORE, tmp_path / CACHE_FOLDER
    shutil.copytree(trained["cascade"] / CACHE_FOLDER, cache)
    case = CASES[0]
    expected = np.load(cache / f"{case}.npy")
    np.save(cache / f"{case}.npy", np.zeros((1, 2, 2, 2), np.int16))  # the old grid's, newer than the prediction
    stored = case_paths(store, case)[2]
    original, stamp = stored.stat(), (cache / f"{case}.npy").stat().st_mtime
    os.utime(stored, (stamp + 10, stamp + 10))  # preprocessed again after the cache was made
    try:
        prepare_previous_stage(trained["lowres"] / NEXT_STAGE_FOLDER, cache, store, [case],
                               load_plans(plans_path(trained["preprocessed"])), CASCADE, ".nii.gz")
    finally:
        os.utime(stored, ns=(original.st_atime_ns, original.st_mtime_ns))
    np.testing.assert_array_equal(np.load(cache / f"{case}.npy"), expected)


def test_a_previous_stage_trained_on_other_labels_is_refused(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cascade takes one input channel per label of its own dataset.json: a lowres model of other labels (its
    dataset.json edited between the stages) trained the cascade and predicted through it without a word (or failed
    with the network's internal channel-count error); both refuse it, naming both files."""
    results = tmp_path / "results"
    for folder in (trained["lowres"], trained["cascade"]):
        shutil.copytree(folder, results / DATASET / folder.name)
    lowres_json = results / DATASET / LOWRES_MODEL / "dataset.json"
    description = json.loads(lowres_json.read_text())
    description["labels"] = {"background": 0, "Posterior": 1, "Anterior": 2}  # the classes renumbered
    lowres_json.write_text(json.dumps(description))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(results))
    problem = (f"{lowres_json}: the previous stage's labels {description['labels']} differ from "
               f"{load_description(trained['raw']).labels} of ")
    assert problem in " ".join(autoseg_fails(*train_args(CASCADE, "1")).split())
    with pytest.raises(InferenceError) as info:
        load_model(results / DATASET / CASCADE_MODEL, folds=[0], device="cpu")
    assert str(info.value).startswith(problem + str(results / DATASET / CASCADE_MODEL / "dataset.json"))


def cascade_trainer(trained: dict[str, Path], scratch: Path) -> Trainer:
    """The trainer ``autoseg train DATASET 3d_cascade_fullres 0`` builds (model folder in scratch)."""
    store = trained["preprocessed"] / FULLRES_STORE
    train_cases, val_cases = fold_cases(trained["preprocessed"], list_cases(store), 0)
    run = FoldRun(
        dataset_name=DATASET, preprocessed_dir=trained["preprocessed"], store=store,
        plans=load_plans(plans_path(trained["preprocessed"])), plans_name="autosegPlans",
        configuration_name=CASCADE, description=load_description(trained["raw"]), network_name="unet",
        fold="0", model_folder=scratch / CASCADE_MODEL, train_cases=train_cases, val_cases=val_cases,
        config=resolve_config("unet", TRAIN_SETTINGS), device=torch.device("cpu"), epochs=1,
        previous_stage_cache=trained["cascade"] / CACHE_FOLDER,
    )
    return Trainer(run)


def test_cascade_batches_carry_the_previous_stage_as_one_hot_channels(trained: dict[str, Path], tmp_path: Path) -> None:
    trainer = cascade_trainer(trained, tmp_path)
    assert trainer.in_channels == 3
    batch = BatchSource(trainer.train_spec, seed=0, stream=TRAIN_STREAM)(0)
    assert batch["data"].shape == (2, 3, *PATCH) and batch["target"].shape == (2, 1, *PATCH)
    assert set(np.unique(batch["data"][:, 1:]).tolist()) <= {0.0, 1.0}  # corrupted masks stay binary
    assert len(np.unique(batch["data"][:, 0])) > 2  # the image channel is the image
    # With the reference labels as "previous stage", the one-hot channels must equal the target's
    # labels voxel for voxel: crop, spatial augmentation and mirroring move masks and labels together.
    # Nearest-neighbour label resampling makes that exact (with linear per-label resampling the
    # target's -1 outside the mask is a label of its own, the masks' 0 is not: a voxel may differ there).
    reference = tmp_path / "reference_as_previous_stage"
    reference.mkdir()
    for case in CASES:
        _, seg, _ = load_case(trained["preprocessed"] / FULLRES_STORE, case, mmap=False)
        np.save(reference / f"{case}.npy", np.maximum(seg, 0).astype(np.int16), allow_pickle=False)
    augmentation = copy.deepcopy(trainer.train_spec.augmentation)
    augmentation["cascade_binary_operation"]["p"] = augmentation["cascade_remove_component"]["p"] = 0.0
    augmentation["spatial_order_seg"] = 0
    specs = {
        "train": (dataclasses.replace(trainer.train_spec, previous_stage_folder=reference, augmentation=augmentation,
                                      oversample_foreground=0.5), TRAIN_STREAM),
        "val": (dataclasses.replace(trainer.val_spec, previous_stage_folder=reference, oversample_foreground=0.5), VAL_STREAM),
    }
    for name, (spec, stream) in specs.items():
        for index in range(2):
            batch = BatchSource(spec, seed=0, stream=stream)(index)
            assert batch["data"][:, 1:].any(), name  # half of each batch is forced onto foreground
            for channel, label in enumerate(FOREGROUND, start=1):
                np.testing.assert_array_equal(batch["data"][:, channel], batch["target"][:, 0] == label, err_msg=name)


def test_cascade_prediction_runs_the_lowres_stage_first(trained: dict[str, Path], tmp_path: Path) -> None:
    """Predicting with the cascade folder loads and runs fold 0 of the lowres folder first; its
    labels become the cascade network's 2 extra input channels; outputs keep the input geometry."""
    images, output = tmp_path / "images", tmp_path / "predictions"
    images.mkdir()
    for case in HELD_OUT:
        shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz", images)
    model = load_model(trained["cascade"], folds=[0], checkpoint="final", device="cpu")
    previous = model.previous_stage
    assert previous is not None
    assert (previous.folder, previous.configuration_name, previous.folds) == (trained["lowres"], LOWRES, ["0"])
    calls: list[tuple[str, int]] = []
    for name, network in (("lowres", previous.networks[0]), ("cascade", model.networks[0])):
        network.register_forward_hook(lambda module, args, out, name=name: calls.append((name, args[0].shape[1])))
    report = predict_folder(images, output, model, tta=False)
    assert sorted(report.predicted) == HELD_OUT and not report.failed
    stages = [name for name, _ in itertools.groupby(name for name, _ in calls)]
    assert stages == ["lowres", "cascade"] * len(HELD_OUT)  # per case: all lowres tiles, then the cascade's
    assert {channels for name, channels in calls if name == "lowres"} == {1}
    assert {channels for name, channels in calls if name == "cascade"} == {3}
    info = json.loads((output / PREDICT_INFO).read_text())
    assert (info["configuration"], info["folds"], info["tta"]) == (CASCADE, ["0"], False)
    lowres_info = info["previous_stage"]
    assert (lowres_info["model_folder"], lowres_info["configuration"], lowres_info["folds"]) == (
        str(trained["lowres"]), LOWRES, ["0"],
    )
    for case in HELD_OUT:
        labels, geometry = read_image(output / f"{case}.nii.gz")
        image, image_geometry = read_image(images / f"{case}_0000.nii.gz")
        assert labels.shape == image.shape and geometry == image_geometry
        assert np.issubdtype(labels.dtype, np.integer) and set(np.unique(labels).tolist()) <= {0, *FOREGROUND}


def test_cascade_without_lowres_predictions_names_the_fix(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cascade fold before its lowres stage: refused before training, with what to do."""
    monkeypatch.setenv("AUTOSEG_RAW", str(trained["raw"].parent))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(trained["preprocessed"].parent))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    predictions = tmp_path / "results" / DATASET / LOWRES_MODEL / NEXT_STAGE_FOLDER
    message = (
        f"{predictions}: previous-stage predictions missing for {len(CASES)} case(s) "
        f"({', '.join(sorted(CASES)[:5])}...); train fold(s) 0, 1, 2, 3, 4 of the previous stage first (of 5 in "
        f"{trained['preprocessed'] / 'splits_final.json'}; each writes its validation cases there)"
    )
    with pytest.raises(TrainingError, match=f"^{re.escape(message)}"):
        train_fold(DATASET, CASCADE, 0, epochs=1, overrides=TRAIN_SETTINGS, workers=0, device="cpu")
    assert not (tmp_path / "results" / DATASET / CASCADE_MODEL / "fold_0").exists()



def test_missing_predictions_name_the_folds_of_the_splits_file(tmp_path: Path) -> None:
    """The fix said "train all 5 folds" whatever splits_final.json held: a 3-fold file with fold 1
    trained, and a case in no fold's validation set (no fold ever predicts it)."""
    predictions, preprocessed = tmp_path / NEXT_STAGE_FOLDER, tmp_path / "preprocessed"
    predictions.mkdir()
    preprocessed.mkdir()
    (predictions / "b.nii.gz").write_bytes(b"")  # fold 1's validation case: trained
    splits = [{"train": ["b", "c", "d"], "val": ["a"]}, {"train": ["a", "c", "d"], "val": ["b"]},
              {"train": ["a", "b", "d"], "val": ["c"]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits))
    message = (f"{predictions}: previous-stage predictions missing for 3 case(s) (a, c, d); train fold(s) 0, 2 of the "
               f"previous stage first (of 3 in {preprocessed / 'splits_final.json'}; each writes its validation cases "
               f"there); d in no fold's 'val' of {preprocessed / 'splits_final.json'}, so no fold predicts them: add "
               "each to one fold's 'val' and train that fold")
    with pytest.raises(TrainingError, match=f"^{re.escape(message)}$"):
        prepare_previous_stage(predictions, tmp_path / CACHE_FOLDER, preprocessed / FULLRES_STORE, ["a", "b", "c", "d"],
                               cascade_plans(), CASCADE, ".nii.gz")


def test_a_previous_stage_prediction_with_labels_the_dataset_lacks_is_refused(trained: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """Another dataset's (or a hand-made) 3d_lowres prediction holding label 7 trained the cascade in silence,
    its one-hot input dropping the 7s; it is named with its values, before any cache of it is written."""
    predictions = tmp_path / NEXT_STAGE_FOLDER
    shutil.copytree(trained["lowres"] / NEXT_STAGE_FOLDER, predictions, ignore=shutil.ignore_patterns("*.handed_by.json"))
    case = CASES[0]
    labels, geometry = read_image(predictions / f"{case}.nii.gz")
    labels[0, 0, 0] = 7
    write_image(labels, geometry, predictions / f"{case}.nii.gz")
    with pytest.raises(TrainingError, match=rf"^{re.escape(str(predictions / case))}\.nii\.gz: label values 7 are not "
                                            r"declared in dataset.json labels \(declared: 0, 1, 2\); "
                                            r"it is not a prediction of this dataset's previous stage"):
        prepare_previous_stage(predictions, tmp_path / CACHE_FOLDER, trained["preprocessed"] / FULLRES_STORE, [case],
                               load_plans(plans_path(trained["preprocessed"])), CASCADE, ".nii.gz")
    assert not (tmp_path / CACHE_FOLDER / f"{case}.npy").exists()


@pytest.mark.parametrize("change", ["size", "origin"])
def test_a_previous_stage_prediction_on_another_grid_is_refused(trained: dict[str, Path], tmp_path: Path,
                                                                change: str) -> None:
    """A prediction of another size (another dataset's case of the same name) was resampled onto the case's
    grid, stretched, and one shifted by 5 cm was used as it was: both trained the cascade on a wrong input."""
    predictions = tmp_path / NEXT_STAGE_FOLDER
    shutil.copytree(trained["lowres"] / NEXT_STAGE_FOLDER, predictions, ignore=shutil.ignore_patterns("*.handed_by.json"))
    case = CASES[0]
    labels, geometry = read_image(predictions / f"{case}.nii.gz")
    if change == "size":
        labels = np.pad(labels, 2)
    else:
        geometry = dataclasses.replace(geometry, origin=tuple(o + 50.0 for o in geometry.origin))
    write_image(labels, geometry, predictions / f"{case}.nii.gz")
    expected = "size" if change == "size" else "origin"
    with pytest.raises(TrainingError, match=rf"^{re.escape(str(predictions / case))}\.nii\.gz: previous-stage prediction "
                                            rf"lies on another grid than the case's image \(.*{expected}.*\); it is not"):
        prepare_previous_stage(predictions, tmp_path / CACHE_FOLDER, trained["preprocessed"] / FULLRES_STORE, [case],
                               load_plans(plans_path(trained["preprocessed"])), CASCADE, ".nii.gz")
    assert not (tmp_path / CACHE_FOLDER / f"{case}.npy").exists()


def test_a_lowres_fold_trained_afresh_takes_back_what_its_earlier_run_handed_on(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: a 3d_lowres fold retrained (another split) left the predictions its earlier run had handed to
    predicted_next_stage/ for cases it no longer validates, and the cascade trained on them. Only copies of the
    fold's own earlier validation go: a case another fold has predicted since stays."""
    results = tmp_path / "results"
    lowres = results / DATASET / LOWRES_MODEL
    shutil.copytree(trained["lowres"], lowres)
    fold, handed = lowres / "fold_0", lowres / NEXT_STAGE_FOLDER
    _, val_cases = fold_cases(trained["preprocessed"], CASES, 0)
    moved, predicted_since = [c for c in CASES if c not in val_cases][:2]
    # the earlier run (an earlier split) validated both and handed them on; another fold has predicted the second since
    shutil.copyfile(fold / "validation" / f"{val_cases[0]}.nii.gz", fold / "validation" / f"{moved}.nii.gz")
    shutil.copyfile(fold / "validation" / f"{moved}.nii.gz", handed / f"{moved}.nii.gz")
    record_handed_on(handed, moved, "0", "the earlier split's digest")
    shutil.copyfile(fold / "validation" / f"{val_cases[0]}.nii.gz", fold / "validation" / f"{predicted_since}.nii.gz")
    since = (handed / f"{predicted_since}.nii.gz").read_bytes()
    for checkpoint in fold.glob("checkpoint_*.safetensors"):
        checkpoint.unlink()
    monkeypatch.setenv("AUTOSEG_RESULTS", str(results))
    train_fold(DATASET, LOWRES, 0, epochs=1, workers=0, overrides=TRAIN_SETTINGS, device="cpu")
    assert not (handed / f"{moved}.nii.gz").exists()
    assert (handed / f"{predicted_since}.nii.gz").read_bytes() == since
    assert all((handed / f"{case}.nii.gz").is_file() for case in val_cases)


def test_the_cascade_refuses_a_handed_on_case_whose_fold_no_longer_validates_it(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: predicted_next_stage/ copies were taken back only while fold_k/validation/<case> existed: with the fold
    folder deleted (as the refusal to retrain says) they stayed and the cascade trained on them; and a byte-identical
    prediction another fold handed on (an all-background map) was removed with the fold's own. Each copy now records
    the fold and split that handed it on."""
    results = tmp_path / "results"
    lowres = results / DATASET / LOWRES_MODEL
    shutil.copytree(trained["lowres"], lowres)
    handed, preprocessed = lowres / NEXT_STAGE_FOLDER, tmp_path / "preprocessed" / DATASET
    shutil.copytree(trained["preprocessed"], preprocessed)
    _, val_0 = fold_cases(preprocessed, CASES, 0)
    _, val_1 = fold_cases(preprocessed, CASES, 1)
    assert json.loads((handed / f"{val_1[0]}.handed_by.json").read_text())["fold"] == "1"

    def prepare() -> Path:
        return prepare_previous_stage(handed, tmp_path / CACHE_FOLDER, preprocessed / FULLRES_STORE, CASES,
                                      load_plans(plans_path(preprocessed)), CASCADE, ".nii.gz")

    shutil.rmtree(lowres / "fold_0")
    with pytest.raises(TrainingError, match=rf"{val_0[0]}.nii.gz: previous-stage prediction of a fold that no longer "
                                            rf"validates this case \(fold 0 handed it on, but .*fold_0/validation/"
                                            rf"{val_0[0]}.nii.gz is gone"):
        prepare()
    # fold 0 trained afresh: its own copies go and come back, fold 1's byte-identical copy of its validation stays
    (lowres / "fold_0" / "validation").mkdir(parents=True)
    shutil.copyfile(handed / f"{val_1[0]}.nii.gz", lowres / "fold_0" / "validation" / f"{val_1[0]}.nii.gz")
    monkeypatch.setenv("AUTOSEG_RESULTS", str(results))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed.parent))
    train_fold(DATASET, LOWRES, 0, epochs=1, workers=0, overrides=TRAIN_SETTINGS, device="cpu")
    assert (handed / f"{val_1[0]}.nii.gz").is_file()
    assert json.loads((handed / f"{val_0[0]}.handed_by.json").read_text())["fold"] == "0"
    assert prepare() == tmp_path / CACHE_FOLDER
    # splits_final.json edited: fold 1 now validates other cases than those it handed on
    splits_file = preprocessed / "splits_final.json"
    splits = json.loads(splits_file.read_text())
    splits[1]["val"], splits[1]["train"] = splits[1]["val"][1:], [*splits[1]["train"], splits[1]["val"][0]]
    splits_file.write_text(json.dumps(splits))
    with pytest.raises(TrainingError, match=rf"{val_1[0]}.nii.gz: previous-stage prediction of a fold that no longer "
                                            r"validates this case \(fold 1 handed it on when trained on another split"):
        prepare()


def test_the_stale_copy_check_never_writes_a_split_file(trained: dict[str, Path], tmp_path: Path) -> None:
    """Was: the cascade's check of which fold handed each case on read the split through fold_cases, which creates a
    split file where there is none: a splits_final.json the user had deleted came back, written by a check."""
    lowres = tmp_path / "results" / DATASET / LOWRES_MODEL
    shutil.copytree(trained["lowres"], lowres)
    preprocessed = tmp_path / "preprocessed" / DATASET
    shutil.copytree(trained["preprocessed"], preprocessed)
    (preprocessed / "splits_final.json").unlink()
    (preprocessed / "splits_final.json.lock").unlink(missing_ok=True)
    cache = prepare_previous_stage(lowres / NEXT_STAGE_FOLDER, tmp_path / CACHE_FOLDER, preprocessed / FULLRES_STORE,
                                   CASES, load_plans(plans_path(preprocessed)), CASCADE, ".nii.gz")
    assert sorted(p.name for p in cache.iterdir()) == [f"{case}.npy" for case in CASES]
    assert not (preprocessed / "splits_final.json").exists()
    assert not (preprocessed / "splits_final.json.lock").exists()
