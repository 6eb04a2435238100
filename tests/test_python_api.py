"""The Python API of docs/stages.md, driven as a notebook would: every stage called by its documented
name and arguments on real Hippocampus cases, each result checked (returned values, files, geometry).
A documented function renamed, an argument renamed or a return value changed fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import read_case_images, read_image
from autoseg.dataset.verify import VerifyReport, require_valid, verify_dataset
from autoseg.errors import AutosegError, EvaluationError, TrainingError
from autoseg.evaluation.ensemble import ensemble_folders
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.model_files import export_model, import_model, unpacked_model, validate_model_file
from autoseg.evaluation.report import build_report
from autoseg.evaluation.selection import find_best
from autoseg.fingerprint.extract import extract_fingerprint
from autoseg.fingerprint.file import fingerprint_path, load_fingerprint
from autoseg.inference import PredictReport, PredictRequest, check_predict_request, load_model, predict_array, predict_folder
from autoseg.paths import resolve_dataset
from autoseg.planning.planner import plan_dataset
from autoseg.planning.plans import get_configuration, load_plans, plans_path
from autoseg.postprocessing.determine import apply_postprocessing, apply_to_folder, determine_postprocessing
from autoseg.preprocessing import PreprocessReport, preprocess_case, preprocess_dataset
from autoseg.training import train_fold
from conftest import HIPPOCAMPUS, make_hippocampus_subset
from preprocessing_helpers import make_configuration, make_plans
from training_helpers import CASES, PATCH, TINY_TOPOLOGY

DATASET = "Dataset989_PythonApi"
MODEL = "unet__autosegPlans__3d_fullres"
HELD_OUT = "hippocampus_017"
TRAIN = ["iterations_per_epoch=2", "val_iterations_per_epoch=1", "mixed_precision=off"]


def write_tiny_plans(preprocessed: Path) -> None:
    """The training tests' tiny plan (1 mm, 8-16-32 UNet, 16^3 patch): seconds per fold on 2 cores."""
    configuration = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
    configuration["network"]["topology"] = TINY_TOPOLOGY
    plans = make_plans({"3d_fullres": configuration})
    plans["dataset_name"] = DATASET
    (preprocessed / DATASET).mkdir(parents=True, exist_ok=True)
    (preprocessed / DATASET / "autosegPlans.json").write_text(json.dumps(plans))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """verify -> fingerprint -> plan -> preprocess -> train folds 0 and 1 -> predict, all from Python."""
    root = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("raw", "preprocessed", "results"):
            (root / name).mkdir()
            patch.setenv(f"AUTOSEG_{name.upper()}", str(root / name))
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            patch.delenv(var, raising=False)
        raw = make_hippocampus_subset(root / "raw", CASES, DATASET)
        state: dict[str, Any] = {"root": root, "raw": raw, "location": resolve_dataset(DATASET)}
        state["verify"] = verify_dataset(DATASET, num_workers=1)
        state["fingerprint"] = extract_fingerprint(state["location"], num_workers=1)
        # plan_dataset's own plan (memory modelled for an 8 GB GPU: no timing) under another name; the
        # folds train the hand-made tiny plan, as a 40x56x40 patch would take minutes here.
        state["plan"] = plan_dataset(DATASET, gpu_memory_gb=8, configs="3d_fullres", plans_name="gpuPlans")
        write_tiny_plans(root / "preprocessed")
        state["preprocess"] = preprocess_dataset(DATASET, num_workers=1)
        state["folds"] = [
            train_fold(DATASET, "3d_fullres", fold, epochs=1, overrides=TRAIN, workers=0, save_probabilities=True)
            for fold in (0, "1")
        ]
        state["model"] = root / "results" / DATASET / MODEL
        images = root / "images"
        images.mkdir()
        (images / f"{HELD_OUT}_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / f"{HELD_OUT}_0000.nii.gz").read_bytes())
        state["images"] = images
        state["predictions"] = {
            fold: predict_folder(images, root / f"pred_fold{fold}", state["model"], folds=[fold], save_probabilities=True)
            for fold in (0, 1)
        }
        yield state


def test_verify_fingerprint_and_plan_return_what_the_docs_say(pipeline: dict[str, Any]) -> None:
    report = pipeline["verify"]
    assert isinstance(report, VerifyReport) and report.ok and report.num_cases == len(CASES)
    assert report.dataset == DATASET and report.problems == []
    require_valid(pipeline["location"])  # a clean dataset raises nothing
    fingerprint = pipeline["fingerprint"]
    assert fingerprint == load_fingerprint(DATASET) == json.loads(fingerprint_path(DATASET).read_text())
    plans, table = pipeline["plan"]
    assert isinstance(table, str) and "3d_fullres" in table
    stored = load_plans(plans_path(pipeline["location"].preprocessed_dir, "gpuPlans"))
    assert stored == plans and get_configuration(plans, "3d_fullres")["patch_size"]


def test_preprocess_returns_a_report_and_preprocess_case_matches_the_store(pipeline: dict[str, Any]) -> None:
    report = pipeline["preprocess"]
    assert isinstance(report, PreprocessReport) and f"{len(CASES)} preprocessed" in report.summary()
    case = CASES[0]
    data, geometry = read_case_images([pipeline["raw"] / "imagesTr" / f"{case}_0000.nii.gz"])
    seg, _ = read_image(pipeline["raw"] / "labelsTr" / f"{case}.nii.gz")
    plans = load_plans(plans_path(pipeline["location"].preprocessed_dir))
    image, labels, properties = preprocess_case(data, geometry, plans, "3d_fullres", seg=seg)
    assert image.shape[1:] == labels.shape[1:] and properties["shape_original"] == list(data.shape[1:])


def test_train_fold_returns_its_summary(pipeline: dict[str, Any]) -> None:
    for fold, summary in zip(("0", "1"), pipeline["folds"]):
        assert summary["fold"] == fold and summary["iterations"] == 2
        assert Path(summary["model_folder"]) == pipeline["model"]
        assert (pipeline["model"] / f"fold_{fold}" / "checkpoint_final.safetensors").is_file()
        assert 0.0 <= summary["validation"]["foreground_mean"]["dice"] <= 1.0


def test_predict_folder_and_predict_array_agree_in_the_input_geometry(pipeline: dict[str, Any]) -> None:
    report = pipeline["predictions"][0]
    assert isinstance(report, PredictReport) and report.predicted == [HELD_OUT] and not report.failed
    image = pipeline["images"] / f"{HELD_OUT}_0000.nii.gz"
    written, written_geometry = read_image(report.output_folder / f"{HELD_OUT}.nii.gz")
    data, geometry = read_case_images([image])
    prediction = predict_array(load_model(pipeline["model"], folds=[0]), data, geometry, return_probabilities=True)
    assert np.array_equal(prediction.labels, written) and written_geometry == geometry
    assert prediction.probabilities.shape == (3, *data.shape[1:])
    check_predict_request(PredictRequest(model_folder=pipeline["model"]))
    with pytest.raises(AutosegError, match="--step 0.05"):
        check_predict_request(PredictRequest(model_folder=pipeline["model"], step=0.05))


def test_evaluate_postprocess_and_ensemble_chain(pipeline: dict[str, Any]) -> None:
    root, labels = pipeline["root"], pipeline["raw"] / "labelsTr"
    validation = pipeline["model"] / "fold_0" / "validation"
    summary = evaluate_folders(validation, labels, load_description(pipeline["raw"]), output_dir=root / "evaluation")
    assert json.loads((root / "evaluation" / "summary.json").read_text()) == summary
    decision = determine_postprocessing(validation, labels, load_description(pipeline["raw"]), output_json=root / "pp.json")
    assert set(decision) >= {"steps", "dice_before", "dice_after"}
    written = apply_to_folder(validation, root / "postprocessed", root / "pp.json")
    seg, geometry = read_image(validation / written[0].name)
    assert np.array_equal(read_image(written[0])[0], apply_postprocessing(decision, seg, geometry.spacing))
    cases = ensemble_folders([root / "pred_fold0", root / "pred_fold1"], root / "ensemble")
    assert cases == [HELD_OUT] and (root / "ensemble" / f"{HELD_OUT}.nii.gz").is_file()


@pytest.mark.parametrize("folds, configurations", [(("0", "1"), None), ([0, 1], "3d_fullres"), ((0, 1), ["3d_fullres"])])
def test_find_best_takes_one_configuration_name(pipeline: dict[str, Any], folds: Any, configurations: Any) -> None:
    """A lone configuration name is one configuration (it was read letter by letter: '3, d, _, f, ...')."""
    instructions = find_best(DATASET, folds=folds, configurations=configurations, num_workers=1)
    assert instructions["folds"] == ["0", "1"] and instructions["best"]


def test_find_best_takes_one_fold_and_refuses_all_by_name(pipeline: dict[str, Any]) -> None:
    """``folds=0`` is fold 0 (a bare TypeError before); ``folds="all"`` is named, not its letter 'a'."""
    with pytest.raises(EvaluationError, match="fold 'all'"):
        find_best(DATASET, folds="all")
    with pytest.raises(EvaluationError) as refused:
        find_best(DATASET, folds=2)  # a fold not trained: refused by name
    assert "fold(s) 2" in str(refused.value)


def test_report_export_and_import(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    find_best(DATASET, folds=("0", "1"), num_workers=1)
    html = build_report(DATASET, num_workers=1)
    assert html == root / "results" / DATASET / "report.html" and html.read_text().startswith("<!DOCTYPE html>")
    zip_path = export_model(pipeline["model"], root / "model.zip", folds=0, checkpoint="final")
    manifest, _ = validate_model_file(zip_path)
    assert manifest["folds"] == ["0"]
    with unpacked_model(zip_path) as folder:  # what predict -m model.zip does (docs/stages.md)
        assert predict_folder(pipeline["images"], root / "from_zip", folder).predicted == [HELD_OUT]
    (installed,) = import_model(zip_path, results_root=root / "elsewhere")
    assert installed == root / "elsewhere" / DATASET / MODEL
    assert (installed / "fold_0" / "checkpoint_final.safetensors").is_file()


def test_train_fold_takes_one_override(pipeline: dict[str, Any]) -> None:
    """A lone ``key=value`` is one override (it was read letter by letter: "--set 'n': expected key=value")."""
    with pytest.raises(TrainingError, match="--set 'nonsense=1': unknown configuration key 'nonsense'"):
        train_fold(DATASET, "3d_fullres", 2, epochs=1, overrides="nonsense=1", workers=0)


@pytest.mark.parametrize("options, message", [
    ({"epochs": 1.5}, r"--epochs 1.5: must be a whole number of epochs"),  # trained 1.5 epochs, reported as 1
    ({"epochs": "1"}, r"--epochs '1': must be a whole number of epochs"),  # a bare TypeError
    ({"budget_seconds": "30m"}, r"--budget must be a positive, finite number of seconds, got '30m'; .*parse_duration\('30m'\)"),  # a bare TypeError
    ({"epochs": 1, "seed": 0.5}, r"--seed 0.5: must be a whole number"),
])
def test_train_fold_refuses_option_values_of_another_type(pipeline: dict[str, Any], options: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        train_fold(DATASET, "3d_fullres", 2, workers=0, **options)
    assert not (pipeline["model"] / "fold_2").exists()


@pytest.mark.parametrize("labels", [DATASET, [1, 2]])
def test_evaluate_folders_names_what_labels_it_takes(pipeline: dict[str, Any], labels: Any) -> None:
    """A dataset name was told to come with a file ending as if it were a labels mapping; a list of values
    (the CLI's -l) raised an AttributeError. Both are refused naming load_description and the mapping."""
    validation, output = pipeline["model"] / "fold_0" / "validation", pipeline["root"] / "refused"
    with pytest.raises(EvaluationError, match=r"labels .*: give the dataset's description, .*load_description"):
        evaluate_folders(validation, pipeline["raw"] / "labelsTr", labels, output_dir=output, file_ending=".nii.gz")
    with pytest.raises(EvaluationError, match=r"load_description"):
        determine_postprocessing(validation, pipeline["raw"] / "labelsTr", labels, output_json=output / "pp.json")
    assert not output.exists()


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_a_worker_count_no_stage_takes_is_refused_not_run_in_one_process(pipeline: dict[str, Any], workers: Any) -> None:
    """joblib's -1 ('every core') or a fraction ran each stage in this process without a word (the CLI's -np
    refuses them); each stage now raises its own error naming the value."""
    validation, output = pipeline["model"] / "fold_0" / "validation", pipeline["root"] / "refused_workers"
    description = load_description(pipeline["location"].raw_dir)
    expected = rf"num_workers {workers!r}: give a whole number from 0"
    with pytest.raises(AutosegError, match=expected):
        verify_dataset(DATASET, num_workers=workers)
    with pytest.raises(AutosegError, match=expected):
        extract_fingerprint(pipeline["location"], num_workers=workers)
    with pytest.raises(AutosegError, match=expected):
        preprocess_dataset(DATASET, num_workers=workers)
    with pytest.raises(EvaluationError, match=expected):
        evaluate_folders(validation, pipeline["raw"] / "labelsTr", description, output_dir=output, num_workers=workers)
    with pytest.raises(EvaluationError, match=expected):
        determine_postprocessing(validation, pipeline["raw"] / "labelsTr", description, output_json=output / "pp.json",
                                 num_workers=workers)
    assert not output.exists()

def test_run_demo_gives_the_roots_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """run_demo pointed AUTOSEG_PREPROCESSED / AUTOSEG_RESULTS into its run folder and left them there: every
    later stage of a notebook read and wrote the demo's run. It also took only Path objects, not strings."""
    import os

    import autoseg.dataset.verify
    import autoseg.fingerprint.extract
    import autoseg.planning.planner
    from autoseg.demo import run_demo

    class Stop(Exception):
        pass

    during: dict[str, str | None] = {}

    def plan(*args: object, **kwargs: object) -> None:
        during.update({name: os.environ.get(name) for name in ("AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS")})
        raise Stop

    monkeypatch.setattr(autoseg.dataset.verify, "require_valid", lambda location: None)
    monkeypatch.setattr(autoseg.fingerprint.extract, "extract_fingerprint", lambda location, **_: {"is_2d": False})
    monkeypatch.setattr(autoseg.planning.planner, "plan_dataset", plan)
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "my_results"))
    monkeypatch.delenv("AUTOSEG_PREPROCESSED", raising=False)
    with pytest.raises(Stop):
        run_demo(str(tmp_path / "demo"), 60.0, say=lambda line: None)
    (run,) = (tmp_path / "demo").iterdir()
    assert during == {"AUTOSEG_PREPROCESSED": str(run / "preprocessed"), "AUTOSEG_RESULTS": str(run / "results")}
    assert os.environ["AUTOSEG_RESULTS"] == str(tmp_path / "my_results")
    assert "AUTOSEG_PREPROCESSED" not in os.environ


def test_a_deterministic_fold_gives_torch_its_determinism_settings_back(pipeline: dict[str, Any]) -> None:
    """train_fold(deterministic=True) left torch's deterministic algorithms on (cuDNN benchmarking off) for
    the rest of a notebook session: a later deterministic=False run was deterministic too."""
    import torch

    assert not torch.are_deterministic_algorithms_enabled()
    train_fold(DATASET, "3d_fullres", 3, epochs=1, overrides=TRAIN + ["val_iterations_per_epoch=0"], workers=0,
               deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
