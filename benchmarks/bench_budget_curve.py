"""Fold-0 validation Dice against the compute budget: autoseg against nnU-Net v2 stopped at the same time (issue 14).

For each budget (ascending) and each dataset, autoseg plans for the budget (``autoseg plan D --budget 5m
-c 3d_fullres``), preprocesses into a fresh folder and trains fold 0, whose validation ends the train
command; the record keeps the wall time of plan, preprocess, train and their budgeted total (preprocess
+ train), the fold's mean and per-class Dice (``validation/summary.json``), its ``time_accounting.json``
(predicted against actual per part), the recipe of the plan (spacing, patch, batch, iterations) and the
cases its final validation mirrored (``mirrored_cases``: training drops the plan's mirroring when its
own timing says it would not fit its share of the budget).
Then, for each nnU-Net dataset, nnU-Net v2's default plan (preprocessed once per dataset, reused across
budgets) trains fold 0 into a fresh results folder for as long as autoseg's train command took on the
same dataset and budget (the budget itself when autoseg has no run), is stopped, and its
``checkpoint_best.pth`` predicts the validation cases, scored by ``autoseg evaluate`` (``bench_training.py``
does each step). After every finished run its record replaces the one of the same (tool, dataset,
budget) in the results JSON (written atomically), so a killed run keeps what finished; a failed run is
recorded as failed and the next runs go on (an autoseg train command still running at 3x its budget is
stopped: one runaway run cannot take the whole session). The table (a section of ``docs/benchmarks.md``)
and the PNG are rebuilt from that JSON.

Each autoseg run lasts about its budget and each nnU-Net run about as long plus its prediction, so the
defaults take (5 + 10 + 30) min x (3 + 2) runs, nearly 4 hours, plus nnU-Net's preprocessing; the script
prints its estimate at the start. Run on a quiet machine:

    python benchmarks/bench_budget_curve.py [--budgets 5m,10m,30m] [--datasets D,...] [--nnunet-datasets D,...]
        [--cases N] [-np 2] [--results docs/benchmark_dice_vs_budget.json] [--doc PATH] [--report-only] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench_networks_budget import subset
from bench_training import (
    CONFIGURATION,
    FOLD,
    TRAIN_TOLERANCE,
    autoseg_commands,
    dice_of,
    find_autoseg_fold,
    nnunet_plan_and_preprocess,
    nnunet_train_and_score,
    run_stopped,
    training_env,
    validation_cases,
)
from common import (
    DATA_ROOT,
    DOC,
    NNUNET_VENV,
    REPO_ROOT,
    autoseg_env,
    check,
    code_version,
    fmt_seconds,
    machine_line,
    markdown_table,
    nnunet_env,
    run_measured,
    save_figure,
    temporary_raw_root,
    warm_file_cache,
    work_folder,
    write_section,
)

from autoseg.errors import UsageError
from autoseg.training.data_loading import auto_workers
from autoseg.training.run import ACCOUNTING_FILE
from autoseg.training.validation import VALIDATION_FOLDER
from autoseg.utils.atomic import atomic_write_json
from autoseg.utils.duration import parse_duration

DEFAULT_BUDGETS = "5m,10m,30m"
DEFAULT_DATASETS = "Dataset004_Hippocampus,Dataset027_ACDC,Dataset905_BraTS2015Mini"
DEFAULT_NNUNET_DATASETS = "Dataset004_Hippocampus,Dataset027_ACDC"
DEFAULT_RESULTS = REPO_ROOT / "docs" / "benchmark_dice_vs_budget.json"
SECTION = ("budget_curve", "Dice against compute budget (issue 14)")
TOOLS = {"autoseg": "autoseg", "nnunet": "nnU-Net v2"}
NO_EPOCH = "no epoch finished"
OVERRUN_FACTOR = 3.0  # an autoseg train command still running at 3x its budget is stopped and recorded as failed


# ------------------------------------------------------------------------------------------ arguments
def parse_budgets(text: str) -> list[float]:
    """Budget seconds, ascending and without repeats, from ``5m,10m,30m``."""
    try:
        return sorted({parse_duration(part) for part in text.split(",") if part.strip()})
    except UsageError as error:
        raise SystemExit(f"--budgets {text!r}: {error}") from None


def budget_label(seconds: float) -> str:
    return f"{seconds / 60:g}m" if seconds % 60 == 0 else f"{seconds:g}s"


def parse_datasets(text: str, option: str) -> list[str]:
    """Dataset folder names; each must be a folder of the shared data holding a ``dataset.json``."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if not (DATA_ROOT / name / "dataset.json").is_file():
            known = sorted(p.name for p in DATA_ROOT.glob("Dataset*") if p.is_dir())
            raise SystemExit(f"{option} {name}: no dataset folder {DATA_ROOT / name} (known: {', '.join(known) or 'none'}; "
                             "give the full folder name or set AUTOSEG_BENCH_DATA)")
    return names


def dataset_id(name: str) -> str:
    """``Dataset027_ACDC`` -> ``27``, the id nnU-Net's commands take."""
    return str(int(name[len("Dataset"):].split("_")[0]))


# ------------------------------------------------------------------------------------------- results
def load_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["records"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"{path}: not a results file of this benchmark ({error}); give another --results") from None


def save_record(path: Path, record: dict[str, Any]) -> None:
    """Replace the record of the same (tool, dataset, budget) or add it; the file is written atomically."""
    key = (record["tool"], record["dataset"], record["budget_s"])
    records = [r for r in load_records(path) if (r["tool"], r["dataset"], r["budget_s"]) != key]
    records.append({**record, "machine": machine_line(), "code": code_version(), "command": shlex.join(["python", *sys.argv]),
                    "saved_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
    records.sort(key=lambda r: (r["budget_s"], r["tool"] != "autoseg", r["dataset"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"records": records})
    print(f"recorded: {record['tool']} {record['dataset']} {record['budget']} in {path}", file=sys.stderr)


def record_key(tool: str, dataset: str, budget_s: float, cases: int | None) -> dict[str, Any]:
    return {"tool": tool, "dataset": dataset, "budget": budget_label(budget_s), "budget_s": budget_s, "cases": cases}


def find(records: list[dict[str, Any]], tool: str, dataset: str, budget_s: float) -> dict[str, Any] | None:
    return next((r for r in records if (r["tool"], r["dataset"], r["budget_s"]) == (tool, dataset, budget_s)), None)


def attempt(base: dict[str, Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The record of ``run``, or of its failure (first line for the table, the whole text kept): one
    failed run must not cost the runs after it."""
    try:
        return {**base, **run()}
    except (SystemExit, Exception) as error:
        text = str(error.code) if isinstance(error, SystemExit) else f"{type(error).__name__}: {error}"
        print(f"{base['tool']} {base['dataset']} {base['budget']} failed: {text}", file=sys.stderr)
        lines = text.strip().splitlines()
        return {**base, "status": "failed", "error": lines[0] if lines else "failed", "error_text": text[-3000:]}


# --------------------------------------------------------------------------------------------- autoseg
def recipe_of(plans: dict[str, Any]) -> dict[str, Any]:
    config = plans["configurations"][CONFIGURATION]
    return {key: config.get(key) for key in ("spacing", "patch_size", "batch_size", "num_iterations", "validation_tta")}


def run_autoseg(raw: Path, work: Path, dataset: str, budget_s: float, args: argparse.Namespace) -> dict[str, Any]:
    """Plan, preprocess and train fold 0 in fresh folders; the record of the run."""
    pre, results = work / "preprocessed", work / "results"
    env = training_env(autoseg_env(raw, pre, results, len(os.sched_getaffinity(0))), auto_workers(args.device))
    walls = {}
    for part, command in zip(("plan", "preprocess", "train"), autoseg_commands(budget_s / 60, args.num_workers, args.device, dataset)):
        print(f"running: autoseg {' '.join(command[3:])}", file=sys.stderr)
        if part != "train":
            walls[part] = check(run_measured(command, env), f"autoseg {part} of {dataset}").wall_s
            continue
        limit = OVERRUN_FACTOR * budget_s
        train = check(run_stopped(command, env, limit, work / "train_output.txt"), f"autoseg train of {dataset}")
        if train.wall_s >= limit:
            raise SystemExit(f"autoseg train of {dataset} stopped after {fmt_seconds(limit)} ({OVERRUN_FACTOR:g}x its budget): no Dice")
        walls[part] = train.wall_s
    walls["total"] = walls["preprocess"] + walls["train"]
    fold = find_autoseg_fold(results, dataset)
    summary = fold / VALIDATION_FOLDER / "summary.json"
    accounting = json.loads((fold / ACCOUNTING_FILE).read_text())
    return {
        "status": "finished", "wall_s": {k: round(v, 1) for k, v in walls.items()}, "dice": dice_of(summary),
        "validation_cases": len(validation_cases(summary)), "time_accounting": accounting,
        "recipe": recipe_of(json.loads((fold.parent / "plans.json").read_text())),
        "iterations_trained": accounting["iterations"]["trained"],
        "mirrored_cases": json.loads(summary.read_text()).get("mirrored_cases"),
    }


# --------------------------------------------------------------------------------------------- nnU-Net
def run_nnunet(raw: Path, work: Path, dataset: str, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """Train nnU-Net's fold 0 on its preprocessed data (``work/preprocessed``, made once) into a fresh
    results folder for ``seconds``, then score its best checkpoint; the record of the run."""
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    env = training_env(nnunet_env(raw, work / "preprocessed", folder / "results", len(os.sched_getaffinity(0))),
                       auto_workers(args.device))
    if not (work / "preprocessed" / dataset / "nnUNetPlans.json").is_file():
        nnunet_plan_and_preprocess(env, args.num_workers, dataset_id(dataset))
    result, _ = nnunet_train_and_score(raw, folder, env, args.device, args.num_workers, seconds, dataset, dataset_id(dataset))
    summary = folder / "val_predictions" / "summary.json"
    return {
        "status": "finished", "train_s": round(result.train.wall_s, 1), "train_target_s": round(seconds, 1),
        "epochs": len(result.curve.dice), "dice": result.dice, "weights": result.weights,
        "validation_cases": len(validation_cases(summary)) if summary.is_file() else None,
    }


# ------------------------------------------------------------------------------------------------ runs
def run_all(args: argparse.Namespace) -> None:
    """Every run in the order of the module docstring; each record saved as soon as its run ends."""
    with ExitStack() as stack:
        work = work_folder(stack, args.work_dir, "bench-budget-curve")
        raws = {}
        for dataset in dict.fromkeys([*args.datasets, *args.nnunet_datasets]):
            raws[dataset] = stack.enter_context(temporary_raw_root(dataset))
            subset(raws[dataset], dataset, args.cases)
            warm_file_cache(raws[dataset] / dataset)
        for budget_s in args.budgets:
            for dataset in args.datasets:
                base = record_key("autoseg", dataset, budget_s, args.cases)
                folder = work / dataset / f"autoseg-{budget_label(budget_s)}"
                save_record(args.results, attempt(base, lambda: run_autoseg(raws[dataset], folder, dataset, budget_s, args)))
            for dataset in args.nnunet_datasets:
                autoseg = find(load_records(args.results), "autoseg", dataset, budget_s)
                same = autoseg is not None and autoseg["status"] == "finished" and autoseg.get("cases") == args.cases
                seconds = autoseg["wall_s"]["train"] if same else budget_s
                base = record_key("nnunet", dataset, budget_s, args.cases)
                save_record(args.results, attempt(base, lambda: run_nnunet(raws[dataset], work / dataset / "nnunet", dataset, seconds, args)))


# ---------------------------------------------------------------------------------------------- report
def _dice(record: dict[str, Any] | None) -> str:
    if record is None:
        return "not run"
    if record["status"] != "finished":
        return f"failed: {record['error']}"
    return f"{record['dice']['mean']:.4f}" if record["dice"] else NO_EPOCH


def _recipe(record: dict[str, Any]) -> str:
    recipe = record["recipe"]
    spacing = "x".join(f"{s:.3g}" for s in recipe["spacing"])
    patch = "x".join(map(str, recipe["patch_size"]))
    return f"{spacing} mm, patch {patch}, batch {recipe['batch_size']}, {_validation_mode(record)}"


def _validation_mode(record: dict[str, Any]) -> str:
    """The mirroring the run's final validation did (records before 2026-12-04: what the plan said)."""
    mirrored, cases = record.get("mirrored_cases"), record.get("validation_cases")
    if mirrored is None or not cases:  # training may have dropped the planned mirroring: not recorded
        return "TTA planned" if record["recipe"]["validation_tta"] else "no TTA"
    return "TTA" if mirrored == cases else "no TTA" if mirrored == 0 else f"TTA on {mirrored} of {cases} cases"


def _row(records: list[dict[str, Any]], dataset: str, budget_s: float) -> list[str]:
    a, n = find(records, "autoseg", dataset, budget_s), find(records, "nnunet", dataset, budget_s)
    cases = next((r["cases"] for r in (a, n) if r and r.get("cases")), None)
    name = dataset + (f" (first {cases} cases)" if cases else "")
    a_done, n_done = a is not None and a["status"] == "finished", n is not None and n["status"] == "finished"
    total = a["wall_s"]["total"] if a_done else None
    on_time = "yes" if total is not None and abs(total - budget_s) <= TRAIN_TOLERANCE * budget_s else "**no**"
    return [
        name, budget_label(budget_s),
        f"{fmt_seconds(total)} ({on_time})" if total is not None else "-", _dice(a),
        fmt_seconds(n["train_s"]) if n_done else "-", str(n["epochs"]) if n_done else "-", _dice(n),
        _recipe(a) if a_done else "-",
        f"{a['iterations_trained']} of {a['recipe']['num_iterations']}" if a_done else "-",
        _measured(a, n),
    ]


def _cpu(record: dict[str, Any]) -> str:
    """The CPU model of the record's ``machine`` line ("" for records without one)."""
    match = re.search(r"CPU: ([^,]+)", record.get("machine", ""))
    return match.group(1) if match else ""


def _measured(autoseg: dict[str, Any] | None, nnunet: dict[str, Any] | None) -> str:
    """When, with which code and on which CPU autoseg's run was measured, and nnU-Net's CPU where it
    differs: rows of one table may come from different sessions, hosts and commits, and a ratio of
    the two tools means something only on one machine."""
    if autoseg is None:
        return "-"
    code = f" (`{autoseg['code']}`)" if autoseg.get("code") else ""
    cpu = _cpu(autoseg)
    text = f"{autoseg['saved_at'][:16].replace('T', ' ')}{code}, {cpu or 'CPU not recorded'}"
    if nnunet is not None and _cpu(nnunet) != cpu:
        text += f"; nnU-Net's run: {nnunet['saved_at'][:10]}, {_cpu(nnunet) or 'CPU not recorded'}"
    return text


def missing(records: list[dict[str, Any]]) -> list[str]:
    """The runs of the issue's full grid (the defaults) with no finished record."""
    grid = [(tool, d, b) for b in parse_budgets(DEFAULT_BUDGETS)
            for tool, names in (("autoseg", DEFAULT_DATASETS), ("nnunet", DEFAULT_NNUNET_DATASETS))
            for d in names.split(",")]
    return [f"{TOOLS[t]} {d} {budget_label(b)}" for t, d, b in grid
            if not (r := find(records, t, d, b)) or r["status"] != "finished" or r.get("cases")]


def report(records: list[dict[str, Any]], png: Path, doc: Path) -> str:
    keys = sorted({(r["budget_s"], r["dataset"]) for r in records}, key=lambda k: (k[1], k[0]))
    table = markdown_table(
        ["dataset", "budget", "autoseg preprocess + train (within +-10%)", "autoseg mean Dice", "nnU-Net training",
         "nnU-Net epochs", "nnU-Net mean Dice", "autoseg recipe (spacing, patch, batch, validation TTA)", "autoseg iterations",
         "autoseg measured (code, CPU)"],
        [_row(records, dataset, budget_s) for budget_s, dataset in keys],
    )
    not_measured = missing(records)
    commands = sorted({r["command"] for r in records})
    return f"""
Fold {FOLD}, `{CONFIGURATION}`, validation Dice averaged over the classes (regions for BraTS). **Each point is one
run.** autoseg plans for the budget, preprocesses and trains in fresh folders; its time is preprocess + train
(what the budget pays for; planning not counted), compared with the budget +-{TRAIN_TOLERANCE:.0%}. nnU-Net v2's
default plan (`nnUNetTrainer`, preprocessed once per dataset) trains for as long as autoseg's train command took
on the same dataset and budget, is stopped, and is scored with its `checkpoint_best.pth` by `autoseg evaluate`;
"{NO_EPOCH}" means it stopped before its first epoch ended, so it has no checkpoint and no Dice. Every run's
record (time accounting, per-class Dice, machine) is in `{os.path.relpath(png.with_suffix('.json'), doc.parent)}`.

{table}

![Dice against compute budget]({os.path.relpath(png, doc.parent)})

Not measured (of {DEFAULT_BUDGETS} x {DEFAULT_DATASETS}, nnU-Net on {DEFAULT_NNUNET_DATASETS}; a subset run with `--cases` counts as not measured):
{', '.join(not_measured) if not_measured else 'none'}.

Reproduce (the command lines of these records):
```
{chr(10).join(commands)}
```
"""


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """One panel per dataset: mean Dice against budget minutes, a line per tool, finished points only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in records})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for tool, label in TOOLS.items():
            points = sorted((r["budget_s"] / 60, r["dice"]["mean"]) for r in records
                            if (r["tool"], r["dataset"]) == (tool, dataset) and r["status"] == "finished" and r["dice"])
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set_xticks(sorted({r["budget_s"] / 60 for r in records if r["dataset"] == dataset}))
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel("compute budget (min)")
        ax.set_ylabel(f"fold-{FOLD} validation mean Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def write_report(args: argparse.Namespace) -> None:
    records = load_records(args.results)
    if not records:
        raise SystemExit(f"{args.results}: no results to report; run without --report-only first")
    png = args.results.with_suffix(".png")
    plot(records, png)
    body = report(records, png, args.doc)
    latest = max(records, key=lambda r: r.get("saved_at", ""))
    write_section(*SECTION, body, machine=f"latest run: {latest['machine']}", doc=args.doc)
    print(body)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS, help="compute budgets, e.g. 5m,10m,30m or 90s,1h (run ascending)")
    parser.add_argument("--datasets", default=DEFAULT_DATASETS, help="autoseg's datasets: full folder names, comma-separated")
    parser.add_argument("--nnunet-datasets", default=DEFAULT_NNUNET_DATASETS, help="nnU-Net's datasets (empty string: none)")
    parser.add_argument("--cases", type=int, help="only the first N training cases of each dataset (a quick check)")
    parser.add_argument("-np", "--num-workers", type=int, default=2, help="processes for planning, preprocessing, evaluation")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device for both tools")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                        help="results JSON, updated after every run; the PNG goes beside it (same name, .png)")
    parser.add_argument("--doc", type=Path, help="markdown file receiving the table's section (default: docs/benchmarks.md "
                        "with the default --results, else the results path with .md)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and PNG from --results without running")
    parser.add_argument("--work-dir", type=Path, help="keep every output here (default: a temporary folder, deleted)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.results = args.results.resolve()
    args.doc = (args.doc or (DOC if args.results == DEFAULT_RESULTS else args.results.with_suffix(".md"))).resolve()
    if not args.report_only:
        text, args.budgets = args.budgets, parse_budgets(args.budgets)
        if not args.budgets:
            raise SystemExit(f"--budgets {text!r}: give at least one budget, e.g. 5m,10m,30m")
        args.datasets = parse_datasets(args.datasets, "--datasets")
        args.nnunet_datasets = parse_datasets(args.nnunet_datasets, "--nnunet-datasets")
        if args.cases is not None and args.cases < 5:
            raise SystemExit(f"--cases {args.cases}: at least 5 (fold 0 of 5 folds needs 5 cases)")
        if args.nnunet_datasets and not (NNUNET_VENV / "bin" / "nnUNetv2_train").is_file():
            raise SystemExit(f"{NNUNET_VENV}: nnU-Net v2 venv not found; run `bash benchmarks/setup_nnunet.sh`, "
                             "set NNUNET_VENV, or pass --nnunet-datasets ''")
        load_records(args.results)  # a wrong file fails now, not after the first run
        minutes = sum(args.budgets) / 60 * (len(args.datasets) + len(args.nnunet_datasets))
        print(f"started {datetime.datetime.now():%Y-%m-%d %H:%M}, about {minutes:.0f} min of runs plus preprocessing; "
              f"results in {args.results}", file=sys.stderr)
        run_all(args)
    write_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
