"""``autoseg demo``: the whole pipeline on the example dataset, in minutes on a laptop CPU.

verify -> fingerprint -> plan (compute budget) -> preprocess -> train fold 0 -> predict the held-out
cases -> evaluate -> report. Everything is written under one working folder; the example data is
only read.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from autoseg.errors import DatasetError, UsageError
from autoseg.utils.duration import check_budget_seconds, format_duration
from autoseg.utils.output_folders import check_output_folder

EXAMPLE_DATASET = Path(__file__).resolve().parents[1] / "examples" / "Dataset904_HippocampusMini"
CONFIGURATION = "3d_fullres"  # 2d for a 2D --dataset (demo_configuration)
# What the stages other than training take for the example on 2 CPU cores, with a margin (measured
# 2026-12-07: verify, fingerprint, plan with its timing probe and preprocess 16.4 s before training;
# predict, evaluate, find-best and report 6.3 s after it). Training (with its final validation) gets the
# rest of the budget, counted when it starts.
BEFORE_TRAINING_SECONDS = 20.0
AFTER_TRAINING_SECONDS = 10.0
# The share of the budget kept for the stages after training where it is more (a --dataset of more or
# larger held-out cases predicts longer).
AFTER_TRAINING_SHARE = 0.05
# The shortest training worth running: its startup (about 4 s), an epoch and the final validation.
MIN_TRAINING_SECONDS = 20.0
MIN_BUDGET_SECONDS = BEFORE_TRAINING_SECONDS + MIN_TRAINING_SECONDS + AFTER_TRAINING_SECONDS


@dataclass
class DemoResult:
    predictions: Path
    report: Path
    evaluation: Path
    mean_dice: float
    seconds: float
    class_names: tuple[str, ...]  # the evaluated classes (or regions): the Dice line names them (not the example's, for --dataset)


def check_budget(budget_seconds: float) -> None:
    """Refuse a budget that is no number of seconds (from Python NaN passed the minimum and the demo ran on;
    "30m" raised a bare TypeError), or one the stages other than training leave no training time in."""
    check_budget_seconds(budget_seconds, UsageError)
    if budget_seconds < MIN_BUDGET_SECONDS:
        raise UsageError(
            f"--budget {format_duration(budget_seconds)}: the demo's stages other than training take about "
            f"{format_duration(BEFORE_TRAINING_SECONDS + AFTER_TRAINING_SECONDS)} and training at least "
            f"{format_duration(MIN_TRAINING_SECONDS)}; give --budget {format_duration(MIN_BUDGET_SECONDS)} or more"
        )


def after_training_seconds(budget_seconds: float) -> float:
    """What the demo keeps of ``budget_seconds`` for predicting the held-out cases, evaluating and reporting."""
    return max(AFTER_TRAINING_SECONDS, AFTER_TRAINING_SHARE * budget_seconds)


def training_seconds(budget_seconds: float, elapsed_seconds: float) -> float:
    """Training's part of the demo's budget once the stages before it took ``elapsed_seconds``: what is left
    less the stages after it, at least ``MIN_TRAINING_SECONDS``. Training got 85% of the whole budget from its
    own start, so the stages before it (the plan's timing probe alone: 14 s) came on top: ``--budget 1m``
    took 1.3 to 1.6 min."""
    return max(MIN_TRAINING_SECONDS, budget_seconds - elapsed_seconds - after_training_seconds(budget_seconds))


def demo_configuration(fingerprint: dict[str, Any]) -> str:
    """``3d_fullres``, or ``2d`` for a 2D dataset (PNG pictures, single-slice volumes), which plans no 3D
    configuration: ``demo --dataset`` of a 2D dataset failed at plan, after verify and fingerprint had run."""
    return "2d" if fingerprint["is_2d"] else CONFIGURATION


@contextlib.contextmanager
def _roots_in(workdir: Path) -> Iterator[None]:
    """Point the preprocessed and results roots into ``workdir`` while the demo runs, then restore them:
    ``run_demo`` called from Python (a notebook) left them set, and every later stage of the session read
    and wrote the demo's run folder instead of the roots the user had set."""
    roots = {"AUTOSEG_PREPROCESSED": workdir / "preprocessed", "AUTOSEG_RESULTS": workdir / "results"}
    saved = {name: os.environ.get(name) for name in roots}
    os.environ.update({name: str(folder) for name, folder in roots.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    workdir: str | os.PathLike[str],
    budget_seconds: float = 10 * 60,
    dataset: str | os.PathLike[str] = EXAMPLE_DATASET,
    device: str | None = None,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage on ``dataset`` (which needs imagesTs/ and labelsTs/ for the held-out check) into a new
    run folder under ``workdir``; the roots of this process are as they were when it returns or raises."""
    start = time.perf_counter()
    workdir, dataset = Path(workdir), Path(dataset)
    check_budget(budget_seconds)
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
    with _roots_in(workdir):
        return _run_stages(workdir, dataset, budget_seconds, device, say, start)


def _run_stages(workdir: Path, dataset: Path, budget_seconds: float, device: str | None,
                say: Callable[[str], None], start: float) -> DemoResult:
    """The demo's seven stages, in ``workdir`` (a new run folder whose roots are in force)."""
    from autoseg.dataset.verify import require_valid
    from autoseg.evaluation.evaluate import evaluate_folders
    from autoseg.evaluation.report import build_report
    from autoseg.evaluation.selection import find_best
    from autoseg.fingerprint.extract import extract_fingerprint
    from autoseg.inference.batch import predict_folder
    from autoseg.inference.model import find_model_folder
    from autoseg.planning.planner import plan_dataset
    from autoseg.preprocessing.runner import preprocess_dataset
    from autoseg.paths import resolve_dataset
    from autoseg.training.run import train_fold

    location = resolve_dataset(str(dataset))
    say(f"[1/7] verify {location.name}")
    require_valid(location)
    say("[2/7] fingerprint")
    # its warnings (cases in another axis order, NRRD space units) are shown, as autoseg plan shows them
    configuration = demo_configuration(extract_fingerprint(location, warn=lambda warning: say(f"WARNING {warning}")))
    # what training will get if the plan (its timing probe) and preprocessing take their usual time
    plan_budget = training_seconds(budget_seconds, max(time.perf_counter() - start, BEFORE_TRAINING_SECONDS))
    say(f"[3/7] plan for a training budget of {format_duration(plan_budget)} on this machine")
    _, table = plan_dataset(str(dataset), budget_seconds=plan_budget, configs=[configuration], device=device, overwrite=True)
    say(table)
    say("[4/7] preprocess")
    preprocess_dataset(str(dataset), [configuration])
    elapsed = time.perf_counter() - start
    train_budget = training_seconds(budget_seconds, elapsed)
    over = elapsed + train_budget + after_training_seconds(budget_seconds) - budget_seconds
    late = (f"; the stages before it took {format_duration(elapsed)}: the demo runs over its budget by about "
            f"{format_duration(over)}") if over > 0 else ""
    say(f"[5/7] train fold 0 for {format_duration(train_budget)} (validation on the fold's held-out training cases "
        f"at the end){late}")
    train_fold(str(dataset), configuration, 0, budget_seconds=train_budget, device=device, save_probabilities=True)
    say("[6/7] predict the held-out imagesTs cases and evaluate them against labelsTs")
    predictions = workdir / "predictions"

    model = find_model_folder(str(location.raw_dir), configuration)  # the folder: its name need not be DatasetNNN_...
    predict_folder(dataset / "imagesTs", predictions, model, folds=[0], device=device)
    summary = evaluate_folders(predictions, dataset / "labelsTs", output_dir=workdir / "evaluation")
    say("[7/7] report")
    find_best(str(dataset), folds=["0"], configurations=[configuration])
    report = build_report(str(dataset), workdir / "report.html")
    return DemoResult(
        predictions=predictions,
        report=report,
        evaluation=workdir / "evaluation" / "summary.json",
        mean_dice=float(summary["foreground_mean"]["dice"]),
        seconds=time.perf_counter() - start,
        class_names=tuple(summary["classes"]),
    )
