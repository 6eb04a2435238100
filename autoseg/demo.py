"""``autoseg demo``: the whole pipeline on the example dataset, in minutes on a laptop CPU.

verify -> fingerprint -> plan (compute budget) -> preprocess -> train fold 0 -> predict the held-out
cases -> evaluate -> report. Everything is written under one working folder; the example data is
only read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autoseg.errors import DatasetError, UsageError
from autoseg.utils.duration import format_duration
from autoseg.utils.output_folders import check_output_folder

EXAMPLE_DATASET = Path(__file__).resolve().parents[1] / "examples" / "Dataset904_HippocampusMini"
CONFIGURATION = "3d_fullres"
# Share of the demo's time budget given to training; planning, preprocessing, validation, prediction
# and the report take the rest (under a minute on 2 cores for the example; training includes its
# final validation).
TRAINING_SHARE = 0.85


@dataclass
class DemoResult:
    predictions: Path
    report: Path
    evaluation: Path
    mean_dice: float
    seconds: float
    class_names: tuple[str, ...]  # the evaluated classes (or regions): the Dice line names them (not the example's, for --dataset)


def _use_roots(workdir: Path) -> None:
    """Point preprocessed and results roots into ``workdir`` for this process."""
    os.environ["AUTOSEG_PREPROCESSED"] = str(workdir / "preprocessed")
    os.environ["AUTOSEG_RESULTS"] = str(workdir / "results")


def check_held_out(dataset: Path) -> None:
    """Refuse, before anything runs, held-out images without their label: the demo's evaluation refused a
    case of imagesTs/ without labelsTs/<case><ending>, after the whole training budget was spent."""
    from autoseg.dataset.description import load_description
    from autoseg.inference.batch import discover_cases

    labels = dataset / "labelsTs"
    ending = load_description(dataset).file_ending
    missing = [c.case_id for c in discover_cases(dataset / "imagesTs") if not (labels / f"{c.case_id}{ending}").is_file()]
    if missing:
        raise DatasetError(
            f"{labels}: no label for held-out case(s) {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
            f"(expected {missing[0]}{ending}); the demo evaluates every imagesTs case: add their labels, or move "
            "the cases out of imagesTs"
        )


def new_run_folder(parent: Path) -> Path:
    """A new folder ``run-<date>-<time>`` under ``parent`` (``-2``, ``-3``, ... after it when taken), made
    exclusively: two demos started in the same second shared a folder of one-second resolution and
    wrote over each other's roots, predictions and report."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    number = 1
    while True:
        folder = parent / (stamp if number == 1 else f"{stamp}-{number}")
        try:
            folder.mkdir()
            return folder.resolve()
        except FileExistsError:
            number += 1


def run_demo(
    workdir: Path,
    budget_seconds: float = 10 * 60,
    dataset: Path = EXAMPLE_DATASET,
    device: str | None = None,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage on ``dataset`` (which needs imagesTs/ and labelsTs/ for the held-out check)."""
    from autoseg.dataset.verify import require_valid
    from autoseg.evaluation.evaluate import evaluate_folders
    from autoseg.evaluation.report import build_report
    from autoseg.evaluation.selection import find_best
    from autoseg.fingerprint.extract import extract_fingerprint
    from autoseg.inference.batch import predict_folder
    from autoseg.planning.planner import plan_dataset
    from autoseg.preprocessing.runner import preprocess_dataset
    from autoseg.paths import resolve_dataset
    from autoseg.training.run import train_fold

    start = time.perf_counter()
    if not (dataset / "imagesTs").is_dir() or not (dataset / "labelsTs").is_dir():
        raise DatasetError(
            f"{dataset}: the demo needs held-out cases in imagesTs/ with their labels in labelsTs/; "
            "give --dataset the examples/Dataset904_HippocampusMini folder of an autoseg checkout"
        )
    check_held_out(dataset)
    # -o below or at a file failed only in fingerprint's mkdir, as an internal error, after verify had run;
    # -o inside the dataset (the default, run from within it) wrote the run folders into the user's dataset.
    check_output_folder(workdir, UsageError, [dataset], reads_subfolders=True)
    # --device cuda on a machine without CUDA was refused by plan, after verify and fingerprint had written a
    # run folder, advising plan's --gpu-memory, which the demo has not.
    from autoseg.utils.device import choose_device

    choose_device(device, UsageError)
    # Every run gets its own folder, so the demo can be run again and again into the same --output.
    workdir = new_run_folder(workdir)
    _use_roots(workdir)
    location = resolve_dataset(str(dataset))
    say(f"[1/7] verify {location.name}")
    require_valid(location)
    say("[2/7] fingerprint")
    extract_fingerprint(location)
    train_budget = budget_seconds * TRAINING_SHARE
    say(f"[3/7] plan for a training budget of {format_duration(train_budget)} on this machine")
    _, table = plan_dataset(str(dataset), budget_seconds=train_budget, configs=[CONFIGURATION], device=device, overwrite=True)
    say(table)
    say("[4/7] preprocess")
    preprocess_dataset(str(dataset), [CONFIGURATION])
    say("[5/7] train fold 0 (validation on the fold's held-out training cases at the end)")
    train_fold(str(dataset), CONFIGURATION, 0, budget_seconds=train_budget, device=device, save_probabilities=True)
    say("[6/7] predict the held-out imagesTs cases and evaluate them against labelsTs")
    predictions = workdir / "predictions"
    from autoseg.inference.model import find_model_folder

    model = find_model_folder(str(location.raw_dir), CONFIGURATION)  # the folder: its name need not be DatasetNNN_...
    predict_folder(dataset / "imagesTs", predictions, model, folds=[0], device=device)
    summary = evaluate_folders(predictions, dataset / "labelsTs", output_dir=workdir / "evaluation")
    say("[7/7] report")
    find_best(str(dataset), folds=["0"], configurations=[CONFIGURATION])
    report = build_report(str(dataset), workdir / "report.html")
    return DemoResult(
        predictions=predictions,
        report=report,
        evaluation=workdir / "evaluation" / "summary.json",
        mean_dice=float(summary["foreground_mean"]["dice"]),
        seconds=time.perf_counter() - start,
        class_names=tuple(summary["classes"]),
    )
