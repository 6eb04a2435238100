"""Fine-tuning against training from scratch at equal time: does a Hippocampus model help 10 cases?

A source model is trained on Hippocampus cases (or given with ``--pretrained MODEL_FOLDER``); a target
of 10 other cases is planned with ``--transfer-plans-from`` the source and trained for ``--budget``
twice: from the source's weights (``--pretrained-weights``) and from scratch, on the same plan. Both
predict the same held-out cases; the mean foreground Dice of each is reported. Every step is the
``autoseg`` command line, so the section's commands are what a user runs.

    python benchmarks/bench_finetune.py [--budget 5m] [--pretrain-budget 10m] [--pretrained MODEL_FOLDER]
        [--source-cases 150] [--target-cases 10] [--test-cases 40] [--threads 2] [--repeats 1] [--no-doc]

Each target run is repeated ``--repeats`` times with seeds 0, 1, ... (a training outcome measured once is
a sample); the table gives every run's Dice and the mean and spread per kind of run. The full run costs
about pretrain-budget + repeats x 2 x (budget + prediction) of CPU time (25-30 min with one repeat).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import common

SOURCE, TARGET = "Dataset951_HippocampusSource", "Dataset952_HippocampusTarget"
MODEL = "unet__autosegPlans__3d_fullres"


def make_dataset(raw: Path, name: str, cases: list[str]) -> None:
    """``raw/name`` with links to the shared files of ``cases``."""
    source = common.DATA_ROOT / common.HIPPOCAMPUS
    for sub in ("imagesTr", "labelsTr"):
        (raw / name / sub).mkdir(parents=True)
    for case in cases:
        (raw / name / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
        (raw / name / "labelsTr" / f"{case}.nii.gz").symlink_to(source / "labelsTr" / f"{case}.nii.gz")
    description = json.loads((source / "dataset.json").read_text())
    description["numTraining"] = len(cases)
    (raw / name / "dataset.json").write_text(json.dumps(description, indent=2))


def test_folders(work: Path, cases: list[str]) -> tuple[Path, Path]:
    source = common.DATA_ROOT / common.HIPPOCAMPUS
    images, labels = work / "test_images", work / "test_labels"
    images.mkdir(), labels.mkdir()
    for case in cases:
        shutil.copy(source / "imagesTr" / f"{case}_0000.nii.gz", images)
        shutil.copy(source / "labelsTr" / f"{case}.nii.gz", labels)
    return images, labels


def autoseg(args: list[str], env: dict[str, str], log: list[str]) -> str:
    log.append("autoseg " + " ".join(args))
    print("$ " + log[-1], file=sys.stderr, flush=True)
    result = subprocess.run(common.autoseg_command() + args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"autoseg {' '.join(args)} failed (exit {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def foreground_dice(summary_json: Path) -> float:
    return float(json.loads(summary_json.read_text())["foreground_mean"]["dice"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="5m", help="training time of each target run")
    parser.add_argument("--pretrain-budget", default="10m", help="training time of the source model")
    parser.add_argument("--pretrained", type=Path, help="an existing source model folder (skips pretraining)")
    parser.add_argument("--source-cases", type=int, default=150)
    parser.add_argument("--target-cases", type=int, default=10)
    parser.add_argument("--test-cases", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="target runs of each kind, seeds 0..repeats-1")
    parser.add_argument("--no-doc", action="store_true", help="print only, do not write docs/benchmarks.md")
    args = parser.parse_args()
    all_cases = sorted(p.name.removesuffix(".nii.gz") for p in (common.DATA_ROOT / common.HIPPOCAMPUS / "labelsTr").glob("*.nii.gz"))
    test, target = all_cases[-args.test_cases:], all_cases[-args.test_cases - args.target_cases : -args.test_cases]
    source_cases = all_cases[: min(args.source_cases, len(all_cases) - args.test_cases - args.target_cases)]
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="autoseg-bench-finetune-") as tmp:
        work = Path(tmp)
        raw, preprocessed = work / "raw", work / "preprocessed"
        env = common.autoseg_env(raw, preprocessed, work / "results_source", args.threads)
        make_dataset(raw, TARGET, target)
        images, labels = test_folders(work, test)
        source_model = args.pretrained
        if source_model is None:
            make_dataset(raw, SOURCE, source_cases)
            autoseg(["plan", SOURCE, "-c", "3d_fullres", "--budget", args.pretrain_budget, "--device", "cpu"], env, log)
            autoseg(["preprocess", SOURCE, "-c", "3d_fullres"], env, log)
            autoseg(["train", SOURCE, "3d_fullres", "all", "--budget", args.pretrain_budget, "--device", "cpu"], env, log)
            source_model = work / "results_source" / SOURCE / MODEL
        autoseg(["plan", TARGET, "-c", "3d_fullres", "--budget", args.budget, "--device", "cpu",
                 "--transfer-plans-from", str(source_model)], env, log)
        autoseg(["preprocess", TARGET, "-c", "3d_fullres"], env, log)
        dice: dict[str, list[float]] = {"fine-tuned": [], "from scratch": []}
        for seed in range(args.repeats):
            for run, extra in (("fine-tuned", ["--pretrained-weights", str(source_model)]), ("from scratch", [])):
                tag = f"{run.replace(' ', '_')}_seed{seed}"
                results = work / f"results_{tag}"
                run_env = common.autoseg_env(raw, preprocessed, results, args.threads)
                autoseg(["train", TARGET, "3d_fullres", "all", "--budget", args.budget, "--device", "cpu",
                         "--seed", str(seed), *extra], run_env, log)
                prediction = work / f"pred_{tag}"
                autoseg(["predict", "-i", str(images), "-o", str(prediction), "-m", str(results / TARGET / MODEL), "-f", "all"], run_env, log)
                autoseg(["evaluate", "-p", str(prediction), "-r", str(labels), "-d", TARGET], run_env, log)
                dice[run].append(foreground_dice(prediction / "summary.json"))
                print(f"{run}, seed {seed}: {dice[run][-1]:.4f}", file=sys.stderr, flush=True)
    rows = [[run, args.budget, str(len(values)), ", ".join(f"{v:.4f}" for v in values),
             f"{sum(values) / len(values):.4f}", f"{max(values) - min(values):.4f}"] for run, values in dice.items()]
    commands = "\n".join(line.replace(str(work), "$WORK") for line in log)
    body = (
        "```bash\npython benchmarks/bench_finetune.py --budget {b} --pretrain-budget {p} --source-cases {s} "
        "--target-cases {t} --test-cases {n} --threads {th} --repeats {r}\n```\n\n".format(
            b=args.budget, p=args.pretrain_budget, s=args.source_cases, t=args.target_cases, n=args.test_cases,
            th=args.threads, r=args.repeats)
        + f"Source: {len(source_cases)} Hippocampus cases, trained {args.pretrain_budget} (fold all)"
        + (f" (given: {args.pretrained})" if args.pretrained else "")
        + f"; target: {len(target)} other cases, planned with --transfer-plans-from the source; both target runs "
        f"train fold all for {args.budget} and predict the same {len(test)} held-out cases.\n\n"
        + common.markdown_table(["target run", "training time", "runs (seeds 0..)", "held-out mean foreground Dice per run",
                               "mean", "spread (max - min)"], rows)
        + f"\n\nThe commands it ran:\n\n```bash\n{commands}\n```\n"
    )
    print(body)
    if not args.no_doc:
        common.write_section("finetune", "Fine-tuning a Hippocampus model on 10 cases against training from scratch (issue 16)", body)


if __name__ == "__main__":
    main()
