"""Concurrent runs never corrupt shared files: five ``autoseg train`` folds started at once with no split
file, two ``autoseg preprocess`` of one dataset at once, two ``autoseg predict`` into one output folder.
Each run succeeds with consistent results, or is refused with a clear message.

The five complete trainings take minutes on 2 cores, so CI runs five processes that reach the missing
split file at the same moment (what each training does first); ``AUTOSEG_LONG_TESTS=1`` adds the five
``autoseg train`` commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autoseg.cli import app
from autoseg.utils.output_folders import OUTPUT_MARKER

from cli_helpers import TRAIN_SETTINGS, runner, set_options
from conftest import HIPPOCAMPUS, make_hippocampus_subset
from preprocessing_helpers import make_configuration, make_plans, stored_files
from test_inference_predict import make_model
from training_helpers import CASES, PATCH, TINY_TOPOLOGY

DATASET = "Dataset994_Concurrent"
MODEL = "unet__autosegPlans__3d_fullres"


def start(args: list[object], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autoseg", *map(str, args)], env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "Traceback" not in output
    return outputs


def in_process(*args: object) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Roots (also of this process) with 10 Hippocampus cases and the tiny plan; nothing preprocessed yet."""
    env = {k: str(tmp_path / v) for k, v in (("AUTOSEG_RAW", "raw"), ("AUTOSEG_PREPROCESSED", "pre"), ("AUTOSEG_RESULTS", "res"))}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    make_hippocampus_subset(tmp_path / "raw", CASES + ["hippocampus_017", "hippocampus_019"], DATASET)
    configuration = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
    configuration["network"]["topology"] = TINY_TOPOLOGY
    plans = make_plans({"3d_fullres": configuration})
    plans["dataset_name"] = DATASET
    (tmp_path / "pre" / DATASET).mkdir(parents=True)
    (tmp_path / "pre" / DATASET / "autosegPlans.json").write_text(json.dumps(plans))
    return env


def test_two_preprocess_runs_at_once_equal_one(dataset: dict[str, str], tmp_path: Path) -> None:
    finish([start(["preprocess", DATASET, "-np", 1], dataset) for _ in range(2)])
    together = Path(dataset["AUTOSEG_PREPROCESSED"]) / DATASET
    shutil.copytree(together, tmp_path / "alone" / DATASET, ignore=shutil.ignore_patterns("autosegPlans_*", "gt_*"))
    os.environ["AUTOSEG_PREPROCESSED"] = str(tmp_path / "alone")  # restored by the fixture's monkeypatch
    in_process("preprocess", DATASET, "-np", 1)
    assert stored_files(together) == stored_files(tmp_path / "alone" / DATASET)
    assert not list(together.rglob(".*tmp*"))


SPLIT_JOB = """
import json, sys, time
from pathlib import Path
from autoseg.training.splits import fold_cases
folder, fold, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
cases = [f"case_{i:02d}" for i in range(23)]
while not go.exists():  # all five reach the split file at the same moment
    time.sleep(0.001)
train, val = fold_cases(folder, cases, fold)
print(json.dumps({"train": train, "val": val}))
"""


def test_five_fold_jobs_reaching_a_missing_split_file_at_once_share_one(tmp_path: Path) -> None:
    """What five ``autoseg train`` folds do first, started together: the split file is created once."""
    go = tmp_path / "go"
    jobs = [subprocess.Popen([sys.executable, "-c", SPLIT_JOB, str(tmp_path / "pre"), str(fold), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for fold in range(5)]
    go.touch()
    results = [json.loads(job.communicate(timeout=300)[0]) for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    splits = json.loads((tmp_path / "pre" / "splits_final.json").read_text())
    assert results == splits  # every job got its fold of the one split written
    assert sorted(c for fold in splits for c in fold["val"]) == [f"case_{i:02d}" for i in range(23)]
    assert not list((tmp_path / "pre").glob(".*tmp*"))


@pytest.mark.skipif(os.environ.get("AUTOSEG_LONG_TESTS") != "1", reason="five trainings at once: AUTOSEG_LONG_TESTS=1")
def test_five_folds_started_at_once_share_one_split(dataset: dict[str, str]) -> None:
    in_process("preprocess", DATASET, "-np", 1)
    settings = set_options([*TRAIN_SETTINGS, "iterations_per_epoch=1"])
    outputs = finish([start(["train", DATASET, "3d_fullres", fold, "--epochs", 1, "--workers", 0, *settings], dataset)
                      for fold in range(5)])
    splits = json.loads((Path(dataset["AUTOSEG_PREPROCESSED"]) / DATASET / "splits_final.json").read_text())
    cases = sorted(CASES + ["hippocampus_017", "hippocampus_019"])
    assert sorted(c for fold in splits for c in fold["val"]) == cases  # the folds partition the cases
    model = Path(dataset["AUTOSEG_RESULTS"]) / DATASET / MODEL
    for fold, output in enumerate(outputs):
        validated = sorted(p.name.removesuffix(".nii.gz") for p in (model / f"fold_{fold}" / "validation").glob("*.nii.gz"))
        assert validated == sorted(splits[fold]["val"]), output  # each fold trained on the one split
    assert json.loads((model / "plans.json").read_text())["dataset_name"] == DATASET
    assert not list(model.rglob(".*tmp*"))


@pytest.fixture
def predict_inputs(tmp_path: Path) -> tuple[Path, Path]:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in CASES[:4]:
        shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz", inputs)
    return inputs, make_model(tmp_path / "models", "3d_fullres")


def test_two_predict_runs_into_one_folder(predict_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    inputs, model = predict_inputs
    args = ["predict", "-i", inputs, "-m", model, "--no-tta", "--mixed-precision", "off"]
    finish([start([*args, "-o", tmp_path / "shared"], {}) for _ in range(2)])
    in_process(*args, "-o", tmp_path / "alone")
    assert stored_files(tmp_path / "shared") == stored_files(tmp_path / "alone")
    assert sorted(stored_files(tmp_path / "shared")) == sorted([f"{c}.nii.gz" for c in CASES[:4]] + ["predict_info.json"])


def test_a_run_with_another_model_or_settings_is_refused(predict_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    inputs, model = predict_inputs
    output = tmp_path / "out"
    base = ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta", "--mixed-precision", "off"]
    assert runner.invoke(app, [*base, "-f", "0"]).exit_code == 0
    before = stored_files(output)
    for extra, difference in ((["-f", "1"], "folds ['0'] vs ['1']"), (["-f", "0", "--step", "0.8"], "step 0.5 vs 0.8")):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "predict_info.json: this folder holds predictions of another model or settings (" in text
        assert difference in text and "choose another output folder, or delete this one" in text
    assert stored_files(output) == before
    assert runner.invoke(app, [*base, "-f", "0", "--continue"]).exit_code == 0  # the same run: allowed


def test_another_models_run_claiming_the_folder_meanwhile_ends_this_run_once(
    predict_inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of different models started into one folder: both pass the start check, the first to write
    claims the folder, and the other predicted every case in full only to refuse each, one message per case."""
    from autoseg.inference import batch

    inputs, model = predict_inputs
    output = tmp_path / "out"
    predicted = []
    predict_array = batch.predict_array

    def beside_another_run(*args: Any, **kwargs: Any) -> Any:
        if not predicted:  # the other model's run writes its record while this one computes its first case
            (output / batch.PREDICT_INFO).write_text(json.dumps({"model_folder": "other__autosegPlans__2d"}))
        predicted.append(1)
        return predict_array(*args, **kwargs)

    monkeypatch.setattr(batch, "predict_array", beside_another_run)
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta",
                                 "--mixed-precision", "off"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and text.count("this folder holds predictions of another model or settings") == 1, text
    assert len(predicted) == 1 and sorted(p.name for p in output.iterdir()) == [batch.PREDICT_INFO]

def test_two_plans_written_at_once_one_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ``autoseg plan`` runs finishing together with different plans (each measures this machine's
    speed): one writes, the other is refused; neither reports a plan the file does not hold."""
    import threading

    from autoseg.errors import PlanError
    from autoseg.planning import plans as plans_module

    write = plans_module.atomic_write_json

    def slow_write(*args: object, **kwargs: object) -> None:  # widen the window between check and write
        time.sleep(0.3)
        write(*args, **kwargs)

    monkeypatch.setattr(plans_module, "atomic_write_json", slow_write)
    path = tmp_path / "autosegPlans.json"
    candidates = []
    for batch in (2, 3):
        configuration = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
        configuration["batch_size"] = batch
        candidates.append(make_plans({"3d_fullres": configuration}))
    outcomes: list[object] = [None, None]

    def run(i: int) -> None:
        try:
            outcomes[i] = plans_module.write_plans(candidates[i], path)
        except PlanError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    written = [i for i in range(2) if outcomes[i] is True]
    assert len(written) == 1 and isinstance(outcomes[1 - written[0]], PlanError), outcomes
    assert json.loads(path.read_text()) == json.loads(json.dumps(candidates[written[0]]))


def test_two_find_best_runs_at_once_run_one_after_the_other(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ``autoseg find-best`` of one dataset at once: each rebuilds the merged cross-validation folders
    the other reads (was: 'internal error (OSError: Directory not empty)' renaming one onto the other's);
    the second now waits for the first, and both end with the same instructions."""
    import threading

    from autoseg.evaluation import selection
    from test_selection import DATASET, make_results

    results = make_results(roots)
    events: list[tuple[str, str]] = []
    merge, determine = selection.merge_crossval, selection.determine_postprocessing

    def slow_merge(*args: Any, **kwargs: Any) -> Path:
        events.append((threading.current_thread().name, "merge"))
        time.sleep(0.2)  # long enough for the other run to start its own
        return merge(*args, **kwargs)

    def logged_determine(*args: Any, **kwargs: Any) -> dict[str, Any]:
        events.append((threading.current_thread().name, "determine"))
        return determine(*args, **kwargs)

    monkeypatch.setattr(selection, "merge_crossval", slow_merge)
    monkeypatch.setattr(selection, "determine_postprocessing", logged_determine)
    outcomes: dict[str, Any] = {}

    def run() -> None:
        try:
            outcomes[threading.current_thread().name] = selection.find_best(DATASET, num_workers=1)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[threading.current_thread().name] = exc

    threads = [threading.Thread(target=run, name=name) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(o, dict) for o in outcomes.values()), outcomes
    first = events[0][0]
    assert [name for name, _ in events] == sorted((name for name, _ in events), key=lambda n: n != first), events
    names = [[c["name"] for c in o["candidates"]] for o in outcomes.values()]
    # no temporaries left (the ensembles' folders keep their mark, .autoseg_outputs.json)
    assert names[0] == names[1] and not [p for p in results.rglob(".*") if p.name != OUTPUT_MARKER]
