"""Validation Dice at equal wall-clock training time: autoseg against nnU-Net v2 (issue 6, issue 9 §3).

autoseg plans with a compute budget (``autoseg plan Dataset004 --budget 30m``), preprocesses and trains
fold 0 of Dataset004_Hippocampus; the plan's budget sets the number of iterations, so the learning-rate
schedule completes, and the train command ends with the fold's validation (``validation/summary.json``).
nnU-Net v2 then trains the same fold with its default trainer for exactly as long as autoseg's train
command took, and is stopped (SIGINT, then SIGKILL of its whole process tree); its ``checkpoint_best.pth``
(written whenever its EMA pseudo-Dice improves) predicts the fold's validation cases. Both tools'
predictions are scored by the same evaluator (``autoseg evaluate``). Both folds hold the same cases
(checked: the two ``splits_final.json`` files). A PNG plots pseudo-Dice (EMA) against training time.

Run: ``python benchmarks/bench_training.py [--minutes 30] [-np 2] [--autoseg-results DIR] [--work-dir DIR]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    DOC,
    HIPPOCAMPUS,
    NNUNET_VENV,
    RSS_POLL_SECONDS,
    Measurement,
    process_tree,
    autoseg_command,
    autoseg_env,
    check,
    fmt_bytes,
    fmt_seconds,
    markdown_table,
    nnunet_command,
    nnunet_env,
    run_measured,
    save_figure,
    temporary_raw_root,
    thread_env,
    tree_rss_bytes,
    warm_file_cache,
    work_folder,
    write_section,
)

from autoseg.training.data_loading import auto_workers
from autoseg.training.monitor import LOG_FILE, METRICS_FILE
from autoseg.training.splits import SPLITS_FILE, kfold_splits
from autoseg.training.validation import VALIDATION_FOLDER

CONFIGURATION = "3d_fullres"
FOLD = "0"
DATASET_ID = "4"
PLOT = DOC.parent / "benchmark_dice_vs_time.png"
TRAIN_TOLERANCE = 0.1  # issue 6 "Done when": the train command ends within 30 +- 3 minutes
DICE_GOAL = 0.85  # issue 6 "Done when" (0.88 is the aim)
NNUNET_EMA_KEEP = 0.9  # nnU-Net's logger: ema = 0.9 * ema + 0.1 * mean pseudo-Dice
STOP_GRACE_S = 60  # after SIGINT, how long nnU-Net may take to exit before SIGKILL
NNUNET_MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"
NNUNET_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?): ?(.*)$")
AUTOSEG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s+(.*)$")
AUTOSEG_EPOCH = re.compile(r"^epoch (\d+):")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan", re.IGNORECASE)


# ------------------------------------------------------------------------------------ training curves
@dataclass
class Curve:
    """Per completed epoch: seconds since the training command started, pseudo-Dice, its EMA, length."""

    times_s: list[float] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    ema: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    best_epoch: int | None = None  # index of the epoch whose weights are checkpoint_best (nnU-Net)


def _timestamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def parse_autoseg_curve(fold_folder: Path, start: datetime.datetime | None = None) -> Curve:
    """autoseg's curve: values from ``metrics.jsonl``, times from the epoch lines of its text log.

    ``start`` is when the train command was launched (default: the log's first line). A resumed run
    logs an epoch again; its last line counts. Without a matching log line for every epoch the times
    fall back to the running sum of epoch lengths (start-up time then left out).
    """
    rows = [json.loads(line) for line in (fold_folder / METRICS_FILE).read_text().splitlines() if line.strip()]
    ends: dict[int, datetime.datetime] = {}
    log = fold_folder / LOG_FILE
    lines = [m for m in map(AUTOSEG_LINE.match, log.read_text().splitlines()) if m] if log.is_file() else []
    for match in lines:
        epoch = AUTOSEG_EPOCH.match(match.group(2))
        if epoch:
            ends[int(epoch.group(1))] = _timestamp(match.group(1))
    origin = start or (_timestamp(lines[0].group(1)) if lines else None)
    curve = Curve(
        dice=[float(r["pseudo_dice"]) for r in rows],
        ema=[float(r["pseudo_dice_ema"]) for r in rows],
        epoch_s=[float(r["epoch_seconds"]) for r in rows],
    )
    if origin is not None and all(int(r["epoch"]) in ends for r in rows):
        curve.times_s = [(ends[int(r["epoch"])] - origin).total_seconds() for r in rows]
    else:
        print(f"{log}: no time for every epoch; plotting cumulative epoch lengths", file=sys.stderr)
        curve.times_s = [sum(curve.epoch_s[: i + 1]) for i in range(len(rows))]
    return curve


def autoseg_log_span_s(fold_folder: Path) -> float | None:
    """Seconds from the first to the last line of autoseg's training log (a reused run's train time)."""
    log = fold_folder / LOG_FILE
    lines = [m for m in map(AUTOSEG_LINE.match, log.read_text().splitlines()) if m] if log.is_file() else []
    return (_timestamp(lines[-1].group(1)) - _timestamp(lines[0].group(1))).total_seconds() if lines else None


def _numbers(text: str) -> list[float]:
    """The numbers in nnU-Net's printed list, whether plain (``[0.81, 0.8]``) or numpy 2 reprs
    (``[np.float32(0.81), np.float64(nan)]``)."""
    return [float(x) for x in NUMBER.findall(re.sub(r"np\.\w+\(", "(", text))]


def parse_nnunet_log(text: str, start: datetime.datetime | None = None) -> Curve:
    """nnU-Net's curve from a ``training_log_*.txt``: one point per ``Pseudo dice [...]`` line (the
    epoch's end), its EMA as nnU-Net's logger computes it, the epoch's ``Epoch time: x s``, and the
    last epoch logging ``New best EMA`` (whose weights ``checkpoint_best.pth`` holds)."""
    curve = Curve()
    origin = start
    for line in text.splitlines():
        match = NNUNET_LINE.match(line.strip())
        if not match:
            continue
        when, message = _timestamp(match.group(1)), match.group(2).strip()
        origin = origin or when
        if message.startswith("Pseudo dice"):
            values = [v for v in _numbers(message[len("Pseudo dice"):]) if not math.isnan(v)]
            mean = sum(values) / len(values) if values else math.nan
            curve.dice.append(mean)
            curve.ema.append(mean if not curve.ema else NNUNET_EMA_KEEP * curve.ema[-1] + (1 - NNUNET_EMA_KEEP) * mean)
            curve.times_s.append((when - origin).total_seconds())
        elif message.startswith("Epoch time:") and len(curve.epoch_s) < len(curve.dice):
            curve.epoch_s.append(_numbers(message[len("Epoch time:"):])[0])
        elif message.startswith("Yayy! New best EMA pseudo Dice") and curve.dice:
            curve.best_epoch = len(curve.dice) - 1
    return curve


def plot_dice_vs_time(curves: dict[str, Curve], finals: dict[str, tuple[float, float, str]], budget_s: float, path: Path) -> None:
    """Pseudo-Dice (dotted) and its EMA (solid) against training minutes, one colour per tool; each
    tool's validation Dice as a star at the time of the weights it scores; the budget as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"autoseg": "tab:blue", "nnU-Net v2": "tab:orange"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, curve in curves.items():
        minutes = [t / 60 for t in curve.times_s]
        colour = colours.get(name)
        ax.plot(minutes, curve.dice, color=colour, linestyle=":", alpha=0.6, label=f"{name}: pseudo-Dice")
        ax.plot(minutes, curve.ema, color=colour, marker=".", label=f"{name}: pseudo-Dice (EMA)")
        if name in finals:
            at_s, dice, what = finals[name]
            ax.plot([at_s / 60], [dice], color=colour, marker="*", markersize=16, linestyle="none",
                    label=f"{name}: validation Dice {dice:.4f} ({what})")
    ax.axvline(budget_s / 60, color="grey", linestyle="--", label=f"training budget {budget_s / 60:.1f} min")
    ax.set_xlabel("wall-clock time since the training command started (min)")
    ax.set_ylabel("mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"{HIPPOCAMPUS}, {CONFIGURATION}, fold {FOLD}: Dice against training time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


# ----------------------------------------------------------------------------------- nnU-Net, stopped
def _signal_tree(pid: int, group: int, sig: int) -> None:
    """Send ``sig`` to the process group and to every descendant (one that left the group too)."""
    pids = process_tree(pid)
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass
    for target in pids:
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass


def run_stopped(command: Sequence[str], env: dict[str, str], seconds: float, log_path: Path) -> Measurement:
    """Run ``command`` for ``seconds`` of wall time, then stop its whole process tree: SIGINT (Ctrl-C),
    SIGKILL after ``STOP_GRACE_S``. The tree is killed on any way out, including an error here.

    The exit code is 0 when it was stopped (its own code then only says it was interrupted), else its
    own; the wall time is until the stop signal, or until it exited on its own.
    """
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        peak, stopped = 0, False
        try:
            while process.poll() is None and time.perf_counter() - start < seconds:
                peak = max(peak, tree_rss_bytes(process.pid))
                time.sleep(RSS_POLL_SECONDS)
            wall = time.perf_counter() - start
            if process.poll() is None:
                stopped = True
                _signal_tree(process.pid, process.pid, signal.SIGINT)
                try:
                    process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            _signal_tree(process.pid, process.pid, signal.SIGKILL)
            process.wait()
    tail = log_path.read_bytes().decode(errors="replace")[-3000:]
    return Measurement(wall, peak, 0 if stopped else process.returncode, tail)


# -------------------------------------------------------------------------------------------- results
@dataclass
class ToolResult:
    """One tool's side of the comparison."""

    train: Measurement
    curve: Curve
    dice: dict[str, float] | None  # class name -> mean Dice, plus "mean"; None: no checkpoint to score
    weights: str  # which weights were scored
    final_at_s: float | None  # when those weights were written (seconds into training)
    planned_s: float | None = None  # autoseg: the plan's compute budget


def dice_of(summary_path: Path) -> dict[str, float]:
    """Per-class mean Dice and the foreground mean from an ``autoseg evaluate`` ``summary.json``."""
    summary = json.loads(summary_path.read_text())
    values = {name: float(metrics["dice"]) for name, metrics in summary["mean"].items()}
    values["mean"] = float(summary["foreground_mean"]["dice"])
    return values


def plan_budget_s(fold_folder: Path) -> float | None:
    """The compute budget in the plans autoseg trained with (copied beside the folds)."""
    plans = fold_folder.parent / "plans.json"
    return (json.loads(plans.read_text()).get("budget") or {}).get("seconds") if plans.is_file() else None


def validation_cases(summary_path: Path) -> set[str]:
    return {row["case_id"] for row in json.loads(summary_path.read_text())["metric_per_case"]}


def as_sets(splits: Sequence[dict[str, list[str]]]) -> list[tuple[frozenset[str], frozenset[str]]]:
    """Folds as (train, val) sets: the two tools may list a fold's cases in different orders."""
    return [(frozenset(s["train"]), frozenset(s["val"])) for s in splits]


def find_autoseg_fold(results_root: Path, dataset: str = HIPPOCAMPUS) -> Path:
    """``<results>/<dataset>/<network>__<plans>__3d_fullres/fold_0`` holding a validation."""
    found = sorted((results_root / dataset).glob(f"*__*__{CONFIGURATION}/fold_{FOLD}/{VALIDATION_FOLDER}/summary.json"))
    if len(found) != 1:
        raise SystemExit(
            f"{results_root}: expected one finished autoseg fold {FOLD} of {CONFIGURATION} under {dataset}/, "
            f"found {len(found)} ({', '.join(str(p) for p in found) or 'none'}); give the results root of one finished run"
        )
    return found[0].parent.parent


def training_env(base: dict[str, str], workers: int) -> dict[str, str]:
    """Both tools train with every core for math and the same number of data-loading processes."""
    env = dict(base)
    env["nnUNet_n_proc_DA"] = str(workers)
    return env


def autoseg_commands(minutes: float, workers: int, device: str, dataset: str = "Dataset004") -> list[list[str]]:
    """plan (for a ``minutes`` budget), preprocess and train of fold 0, as autoseg CLI commands."""
    cli = autoseg_command()
    return [
        [*cli, "plan", dataset, "--budget", f"{minutes:g}m", "-c", CONFIGURATION, "--device", device, "-np", str(workers)],
        [*cli, "preprocess", dataset, "-c", CONFIGURATION, "-np", str(workers)],
        [*cli, "train", dataset, CONFIGURATION, FOLD, "--device", device],
    ]


def run_autoseg(raw: Path, work: Path, args: argparse.Namespace, cores: int) -> tuple[ToolResult, Path | None]:
    """Plan, preprocess and train autoseg's fold (or read a finished one); returns it and its splits
    file (None for a reused run: its preprocessed folder is not known)."""
    if args.autoseg_results is not None:
        fold_folder = find_autoseg_fold(args.autoseg_results)
        span = autoseg_log_span_s(fold_folder)
        train = Measurement(span if span is not None else math.nan, 0, 0, "")
        curve = parse_autoseg_curve(fold_folder)
        splits = None
    else:
        pre, results = work / "autoseg" / "preprocessed", work / "autoseg" / "results"
        env = training_env(autoseg_env(raw, pre, results, cores), auto_workers(args.device))
        plan, preprocess, train_command = autoseg_commands(args.minutes, args.num_workers, args.device)
        for command, what in ((plan, "autoseg plan"), (preprocess, "autoseg preprocess")):
            print(f"running: {' '.join(command[2:])}", file=sys.stderr)
            check(run_measured(command, env), what)
        launched = datetime.datetime.now()
        print(f"running: {' '.join(train_command[2:])} (about {args.minutes:g} min)", file=sys.stderr)
        train = check(run_measured(train_command, env), "autoseg train")
        fold_folder = find_autoseg_fold(results)
        curve = parse_autoseg_curve(fold_folder, launched)
        splits = pre / HIPPOCAMPUS / SPLITS_FILE
    dice = dice_of(fold_folder / VALIDATION_FOLDER / "summary.json")
    last = curve.times_s[-1] if curve.times_s else None
    return ToolResult(train, curve, dice, "final checkpoint", last, plan_budget_s(fold_folder)), splits


def nnunet_plan_and_preprocess(env: dict[str, str], workers: int, dataset_id: str = DATASET_ID) -> Measurement:
    """nnU-Net's default plan and its preprocessing of ``3d_fullres`` into ``env``'s preprocessed root."""
    plan = [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", CONFIGURATION, "-np", str(workers),
            "-npfp", str(workers)]
    print(f"running: nnUNetv2_plan_and_preprocess {' '.join(plan[1:])}", file=sys.stderr)
    return check(run_measured(plan, env), "nnUNetv2_plan_and_preprocess")


def run_nnunet(raw: Path, work: Path, args: argparse.Namespace, cores: int, seconds: float) -> tuple[ToolResult, Path]:
    """Plan and preprocess, train for ``seconds`` then stop, predict fold 0's validation cases with
    ``checkpoint_best.pth`` and score them; returns the result and nnU-Net's splits file."""
    pre, results = work / "nnunet" / "preprocessed", work / "nnunet" / "results"
    env = training_env(nnunet_env(raw, pre, results, cores), auto_workers(args.device))
    nnunet_plan_and_preprocess(env, args.num_workers)
    return nnunet_train_and_score(raw, work / "nnunet", env, args.device, args.num_workers, seconds)


def nnunet_train_and_score(raw: Path, folder: Path, env: dict[str, str], device: str, workers: int, seconds: float,
                           dataset: str = HIPPOCAMPUS, dataset_id: str = DATASET_ID) -> tuple[ToolResult, Path]:
    """Train fold 0 on ``env``'s preprocessed data for ``seconds`` then stop, predict its validation cases
    with ``checkpoint_best.pth`` into ``folder`` and score them; returns the result and nnU-Net's splits file."""
    pre, results = Path(env["nnUNet_preprocessed"]), Path(env["nnUNet_results"])
    train_command = [nnunet_command("nnUNetv2_train"), dataset_id, CONFIGURATION, FOLD, "-device", device]
    launched = datetime.datetime.now()
    print(f"running: nnUNetv2_train {' '.join(train_command[1:])}, stopped after {fmt_seconds(seconds)}", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    train = check(run_stopped(train_command, env, seconds, folder / "train_output.txt"), "nnUNetv2_train")
    fold_folder = results / dataset / NNUNET_MODEL / f"fold_{FOLD}"
    logs = sorted(fold_folder.glob("training_log_*.txt"))
    curve = parse_nnunet_log(logs[-1].read_text(), launched) if logs else Curve()
    splits = pre / dataset / SPLITS_FILE
    checkpoint = fold_folder / "checkpoint_best.pth"
    if not checkpoint.is_file() or not splits.is_file():
        print(f"{checkpoint}: nnU-Net wrote no checkpoint_best.pth in {fmt_seconds(seconds)}: no Dice", file=sys.stderr)
        return ToolResult(train, curve, None, "none: no epoch finished", None), splits
    val_cases = json.loads(splits.read_text())[int(FOLD)]["val"]
    images, predictions = folder / "val_images", folder / "val_predictions"
    images.mkdir()
    for case in val_cases:
        for image in sorted((raw / dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz")):
            (images / image.name).symlink_to(image)
    predict = [nnunet_command("nnUNetv2_predict"), "-i", str(images), "-o", str(predictions), "-d", dataset_id,
               "-c", CONFIGURATION, "-f", FOLD, "-chk", "checkpoint_best.pth", "-device", device]
    print(f"running: nnUNetv2_predict of {len(val_cases)} validation cases", file=sys.stderr)
    check(run_measured(predict, env), "nnUNetv2_predict")
    evaluate = [*autoseg_command(), "evaluate", "-p", str(predictions), "-r", str(raw / dataset / "labelsTr"), "-np", str(workers)]
    check(run_measured(evaluate, thread_env(1)), "autoseg evaluate")
    best = curve.best_epoch
    weights = f"checkpoint_best.pth, epoch {best + 1} of {len(curve.dice)}" if best is not None else "checkpoint_best.pth"
    at = curve.times_s[best] if best is not None else None
    return ToolResult(train, curve, dice_of(predictions / "summary.json"), weights, at), splits


# ------------------------------------------------------------------------------------------ the report
def check_same_split(autoseg_splits: Path | None, nnunet_splits: Path, autoseg_val: set[str]) -> str:
    """Stop unless both tools' fold 0 hold the same cases; returns the sentence for the doc."""
    nnunet = as_sets(json.loads(nnunet_splits.read_text()))
    if autoseg_splits is not None:
        ours, source = as_sets(json.loads(autoseg_splits.read_text())), f"autoseg's `{SPLITS_FILE}`"
    else:  # a reused run: autoseg's split function on the same case ids
        ids = sorted(nnunet[0][0] | nnunet[0][1])
        ours, source = as_sets(kfold_splits(ids)), "autoseg's `kfold_splits`"
    if ours != nnunet or set(nnunet[int(FOLD)][1]) != autoseg_val:
        raise SystemExit(
            f"{nnunet_splits}: nnU-Net's folds differ from {source} or from the cases autoseg validated; "
            "the two Dice would be on different cases, so nothing is reported"
        )
    return (f"Same cases: nnU-Net's `{SPLITS_FILE}` and {source} hold the same 5 folds (compared as sets), "
            f"and fold {FOLD}'s {len(autoseg_val)} validation cases are the ones autoseg validated.")


def _dice_row(name: str, a: ToolResult, n: ToolResult) -> list[str]:
    av = a.dice.get(name, math.nan) if a.dice else math.nan
    nv = n.dice.get(name, math.nan) if n.dice else math.nan
    shown = [f"{v:.4f}" if not math.isnan(v) else "not available" for v in (nv, av)]
    ratio = f"{av / nv:.3f}" if not math.isnan(av) and not math.isnan(nv) and nv > 0 else "n/a"
    return [f"Dice {name}" if name != "mean" else "**mean Dice**", *shown, ratio]


def _mean_epoch(result: ToolResult) -> str:
    epoch_s = result.curve.epoch_s
    return fmt_seconds(sum(epoch_s) / len(epoch_s)) if epoch_s else "n/a"


def _rss(result: ToolResult) -> str:
    return fmt_bytes(result.train.peak_rss_bytes) if result.train.peak_rss_bytes else "not measured"


def report(a: ToolResult, n: ToolResult, budget_s: float, args: argparse.Namespace, same_split: str, n_val: int) -> str:
    classes = [k for k in (a.dice or {}) if k != "mean"]
    table = markdown_table(
        ["", "nnU-Net v2", "autoseg", "autoseg / nnU-Net"],
        [
            ["training wall time", f"{fmt_seconds(n.train.wall_s)} (stopped)", fmt_seconds(a.train.wall_s), ""],
            ["epochs completed", str(len(n.curve.dice)), str(len(a.curve.dice)), ""],
            ["mean epoch time", _mean_epoch(n), _mean_epoch(a), ""],
            ["peak RSS of training, process tree", _rss(n), _rss(a), ""],
            ["weights scored", n.weights, a.weights, ""],
            *[_dice_row(c, a, n) for c in classes],
            _dice_row("mean", a, n),
        ],
    )
    target = a.planned_s or args.minutes * 60
    on_time = "yes" if abs(a.train.wall_s - target) <= TRAIN_TOLERANCE * target else "**no**"
    goal = "yes" if a.dice and a.dice["mean"] >= DICE_GOAL else "**no**"
    reused = (f"autoseg's run was reused from `{args.autoseg_results}` (`--autoseg-results`); its training "
              "time is the span of its `training_log.txt`.\n\n") if args.autoseg_results else ""
    no_dice = ("" if n.dice else f"nnU-Net finished no epoch within {fmt_seconds(budget_s)}, so it wrote no "
               "`checkpoint_best.pth` and has no Dice to report.\n\n")
    np_, dev, minutes, cores = args.num_workers, args.device, args.minutes, len(os.sched_getaffinity(0))
    plan, preprocess, train = (" ".join(c[2:]) for c in autoseg_commands(minutes, np_, dev))
    return f"""
Fold {FOLD} of `{HIPPOCAMPUS}` (208 cases, {n_val} validated), `{CONFIGURATION}`, on `{dev}`,
both tools with all {cores} cores for math and {auto_workers(dev)} data-loading process(es). autoseg plans for a
{minutes:g}-minute budget and its train command stops on its own, its final validation included;
nnU-Net v2 (default `nnUNetTrainer`, 1000-epoch schedule) trains for the same wall time as autoseg's train
command took ({fmt_seconds(budget_s)}), is then stopped (SIGINT, SIGKILL after {STOP_GRACE_S} s) and scored with
the `checkpoint_best.pth` it keeps for its best EMA pseudo-Dice; its prediction of the validation cases
is not counted in its time. Both tools' predictions are scored by `autoseg evaluate` (Dice per class,
then the mean over classes). `$RAW` is a temporary raw root of symlinks to `../shared/data`.

```
export OMP_NUM_THREADS={cores} AUTOSEG_RAW=$RAW AUTOSEG_PREPROCESSED=$A/preprocessed AUTOSEG_RESULTS=$A/results
{plan}
{preprocess}
{train}
export nnUNet_raw=$RAW nnUNet_preprocessed=$N/preprocessed nnUNet_results=$N/results nnUNet_n_proc_DA={auto_workers(dev)}
nnUNetv2_plan_and_preprocess -d {DATASET_ID} -c {CONFIGURATION} -np {np_} -npfp {np_}
nnUNetv2_train {DATASET_ID} {CONFIGURATION} {FOLD} -device {dev}   # stopped after {fmt_seconds(budget_s)}
nnUNetv2_predict -i $VAL_IMAGES -o $PRED -d {DATASET_ID} -c {CONFIGURATION} -f {FOLD} -chk checkpoint_best.pth -device {dev}
autoseg evaluate -p $PRED -r $RAW/{HIPPOCAMPUS}/labelsTr -np {np_}
```

{reused}{table}

{no_dice}Issue 6: autoseg's train command within {target / 60:g} +- {TRAIN_TOLERANCE * target / 60:g} min (its plan's budget):
{on_time}; its mean Dice at least {DICE_GOAL}: {goal}.
{same_split}

![Dice against training time]({PLOT.name})

Reproduce: `python benchmarks/bench_training.py --minutes {minutes:g} -np {np_}`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="autoseg's plan budget; nnU-Net's time when autoseg's is unknown")
    parser.add_argument("-np", "--num-workers", type=int, default=2, help="processes for planning, preprocessing, evaluation")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device for both tools")
    parser.add_argument("--autoseg-results", type=Path, help="results root of a finished autoseg run to reuse instead of training")
    parser.add_argument("--work-dir", type=Path, help="keep every output here (default: a temporary folder, deleted)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes <= 0:
        raise SystemExit(f"--minutes {args.minutes:g}: must be positive")
    if not (NNUNET_VENV / "bin" / "nnUNetv2_train").is_file():
        raise SystemExit(f"{NNUNET_VENV}: nnU-Net v2 venv not found; run `bash benchmarks/setup_nnunet.sh` first")
    if args.autoseg_results is not None:
        args.autoseg_results = args.autoseg_results.resolve()
        find_autoseg_fold(args.autoseg_results)  # fail now, not after nnU-Net's training
    cores = len(os.sched_getaffinity(0))
    with ExitStack() as stack:
        raw = stack.enter_context(temporary_raw_root())
        work = work_folder(stack, args.work_dir, "bench-training")
        warm_file_cache(raw / HIPPOCAMPUS)
        autoseg, autoseg_splits = run_autoseg(raw, work, args, cores)
        budget_s = autoseg.train.wall_s if not math.isnan(autoseg.train.wall_s) else args.minutes * 60
        nnunet, nnunet_splits = run_nnunet(raw, work, args, cores, budget_s)
        summary = find_autoseg_fold(args.autoseg_results or work / "autoseg" / "results") / VALIDATION_FOLDER / "summary.json"
        autoseg_val = validation_cases(summary)
        same_split = check_same_split(autoseg_splits, nnunet_splits, autoseg_val) if nnunet_splits.is_file() else (
            "nnU-Net wrote no split file (it stopped before training started), so the folds were not compared.")
    finals = {name: (r.final_at_s, r.dice["mean"], r.weights) for name, r in (("autoseg", autoseg), ("nnU-Net v2", nnunet))
              if r.dice is not None and r.final_at_s is not None}
    plot_dice_vs_time({"autoseg": autoseg.curve, "nnU-Net v2": nnunet.curve}, finals, budget_s, PLOT)
    body = report(autoseg, nnunet, budget_s, args, same_split, len(autoseg_val))
    write_section("training", f"Validation Dice at equal training time, {CONFIGURATION} fold {FOLD} (issues 6, 9)", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
