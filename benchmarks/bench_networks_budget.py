"""Every network family after the same training budget: the equal-budget table of docs/networks.md.

Each family is measured once, as issue 15 asks: on Dataset004 Hippocampus in 3D if it takes 3D, else
on Dataset907 EM membranes in 2D, where the 2D ``unet`` is measured too as the reference row
(``--dims 3,2`` measures every family in every dimensionality it takes). Through the CLI as a user runs it, on CPU, each family
with its own plan for 8 GB and the default 12 h CPU budget (the same plan whatever the training
budget: a plan sized for a very short budget would shrink the patch until validation alone outlasts
it), trained for the budget:

    autoseg plan D --network X --plans-name Budget_X -c C --gpu-memory 8 --device cpu
    autoseg preprocess D -c C --plans-name Budget_X
    autoseg train D C 0 --plans-name Budget_X --budget B --device cpu
    autoseg predict -i <fold-0 validation images> -o OUT -d D -c C --plans-name Budget_X -f 0 --device cpu

and reports the parameters, one training step (forward, Dice + CE with deep supervision, backward,
SGD; the plan's patch and batch; fastest of 3 after a warm-up), the wall time of ``predict`` per
case (process start and model loading included, mirroring TTA on as by default), and the fold-0
validation Dice (foreground mean) that ``train`` writes.

    python benchmarks/bench_networks_budget.py [--budget 10m] [--families unet,fcn] [--dims 3,2] [--cases N]

writes the section between the markers in docs/networks.md (only for a run over every family and
the full datasets, unless --write) and prints each row as it is measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, autoseg_command, autoseg_env, machine_line, temporary_raw_root  # noqa: E402

from autoseg.networks import create_network, get_network_spec, list_networks  # noqa: E402
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402
from autoseg.utils.atomic import atomic_write_text  # noqa: E402
from autoseg.utils.device import autocast_dtype  # noqa: E402

DOC = REPO_ROOT / "docs" / "networks.md"
BEGIN, END = "<!-- bench:networks-budget -->", "<!-- /bench:networks-budget -->"
DATASETS = {3: ("Dataset004_Hippocampus", "3d_fullres"), 2: ("Dataset907_EMMembrane", "2d")}
STEP_REPEATS = 3
GPU_GB = "8"  # every family planned as for the same 8 GB GPU (nnU-Net's reference)


def parse_seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def run(command: list[str], env: dict[str, str]) -> float:
    """Run an autoseg command; its wall time in seconds (its output is shown on failure)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - start
    print(f"{seconds:7.1f} s  autoseg {' '.join(command[3:])}", file=sys.stderr, flush=True)
    return seconds


def step_seconds(network: torch.nn.Module, in_channels: int, n_classes: int, patch: list[int], batch: int) -> float:
    """Fastest training step (forward, Dice+CE with deep supervision, backward, SGD) at the plan's batch."""
    loss_fn = DeepSupervisionLoss(DiceCELoss())
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    dtype = autocast_dtype("auto", torch.device("cpu"))
    x = torch.randn(batch, in_channels, *patch)
    y = torch.randint(0, n_classes, (batch, 1, *patch))
    times = []
    for _ in range(STEP_REPEATS + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = network(x)
        loss_fn([o.float() for o in (out if isinstance(out, list) else [out])], y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def subset(raw: Path, dataset: str, cases: int | None) -> None:
    """Keep the first ``cases`` training cases of the temporary (symlinked) raw dataset."""
    if cases is None:
        return
    folder = raw / dataset
    keep = sorted(p.name.split(".")[0] for p in (folder / "labelsTr").iterdir())[:cases]
    for sub in ("imagesTr", "labelsTr"):
        for path in (folder / sub).iterdir():
            if not any(path.name.startswith(f"{k}_") or path.name.startswith(f"{k}.") for k in keep):
                path.unlink()
    description = json.loads((folder / "dataset.json").read_text())
    description["numTraining"] = len(keep)
    (folder / "dataset.json").write_text(json.dumps(description))


def measure(name: str, dims: int, budget: str, raw: Path, work: Path, threads: int, predict_cases: int) -> list[str]:
    dataset, config = DATASETS[dims]
    env = autoseg_env(raw, work / "preprocessed", work / "results", threads)
    plans_name = f"Budget_{name}"
    cli = autoseg_command()
    run([*cli, "plan", dataset, "--network", name, "--plans-name", plans_name, "-c", config, "--gpu-memory", GPU_GB,
         "--device", "cpu"], env)
    run([*cli, "preprocess", dataset, "-c", config, "--plans-name", plans_name], env)
    train_seconds = run([*cli, "train", dataset, config, "0", "--plans-name", plans_name, "--budget", budget, "--device", "cpu"], env)
    preprocessed = work / "preprocessed" / dataset
    plans = json.loads((preprocessed / f"{plans_name}.json").read_text())
    plan = plans["configurations"][config]
    fold = work / "results" / dataset / f"{name}__{plans_name}__{config}" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    dice = summary["foreground_mean"]["dice"]
    metrics = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    iterations = metrics[-1]["iteration"]
    # predict: the first fold-0 validation cases, images linked into an input folder
    val = json.loads((preprocessed / "splits_final.json").read_text())[0]["val"][:predict_cases]
    inputs, outputs = work / f"predict_in_{name}_{dims}", work / f"predict_out_{name}_{dims}"
    inputs.mkdir()
    for path in (raw / dataset / "imagesTr").iterdir():
        if any(path.name.startswith(f"{case}_") for case in val):
            (inputs / path.name).symlink_to(path.resolve())
    predict_seconds = run([*cli, "predict", "-i", str(inputs), "-o", str(outputs), "-d", dataset, "-c", config,
                           "--plans-name", plans_name, "-f", "0", "--device", "cpu"], env)
    in_channels, n_classes = len(plans["channel_names"]), len([k for k in plans["labels"] if k != "ignore"])
    torch.set_num_threads(threads)
    network = create_network(name, plan["network"]["topology"], in_channels, n_classes).train()
    params = sum(p.numel() for p in network.parameters())
    step = step_seconds(network, in_channels, n_classes, plan["patch_size"], plan["batch_size"])
    features = plan["network"]["topology"]["features_per_stage"]
    return [f"`{name}`", dataset.split("_")[1], "x".join(map(str, plan["patch_size"])), str(plan["batch_size"]),
            f"{min(features)}-{max(features)}", f"{params / 1e6:.2f}M", f"{step:.2f}", str(iterations),
            f"{train_seconds / 60:.1f}", f"{predict_seconds / len(val):.1f}", f"{dice:.3f}"]


def selection(families: list[str], dims: str | None) -> dict[int, list[str]]:
    """Which families run in which dimensionality (see the module docstring)."""
    takes = {name: get_network_spec(name).constraints.spatial_dims for name in families}
    if dims is not None:
        return {d: [n for n in families if d in takes[n]] for d in (int(x) for x in dims.split(","))}
    three = [n for n in families if 3 in takes[n]]
    two_only = [n for n in families if 3 not in takes[n]]
    reference = ["unet"] if two_only and "unet" in families and "unet" not in two_only else []
    return {d: names for d, names in ((3, three), (2, reference + two_only)) if names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m", help="training budget per family, e.g. 10m, 90s (default 10m)")
    parser.add_argument("--families", default=None, help="comma-separated families (default: every registered one)")
    parser.add_argument("--dims", default=None,
                        help="datasets by dimensionality, e.g. 3,2: every family in each (default: each family once, "
                             "3D where it can, plus the 2D unet as reference for the 2D-only families)")
    parser.add_argument("--cases", type=int, default=None, help="use only the first N training cases (a quick check)")
    parser.add_argument("--predict-cases", type=int, default=5, help="validation cases timed with predict")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write docs/networks.md even for a partial run")
    args = parser.parse_args()
    if args.cases is not None and args.cases < 5:
        parser.error("--cases: fold 0 of the 5-fold split needs at least 5 cases")
    families = args.families.split(",") if args.families else list_networks()
    rows = []
    for dims, names in selection(families, args.dims).items():
        dataset, _ = DATASETS[dims]
        with temporary_raw_root(dataset) as raw, tempfile.TemporaryDirectory(prefix="autoseg-bench-") as tmp:
            subset(raw, dataset, args.cases)
            for name in names:
                rows.append(measure(name, dims, args.budget, raw, Path(tmp), args.threads, args.predict_cases))
                print("| " + " | ".join(rows[-1]) + " |", flush=True)
    command = f"python benchmarks/bench_networks_budget.py --budget {args.budget}" + (
        f" --families {args.families}" if args.families else "") + (f" --dims {args.dims}" if args.dims else "") + (
        f" --cases {args.cases}" if args.cases else "")
    table = "\n".join([
        BEGIN,
        f"_Measured by `{command}` on {machine_line()}._",
        "",
        "| network | dataset | patch | batch | features | parameters | s per training step | iterations in the budget "
        "| train wall min (incl. final validation) | predict s per case | fold-0 validation Dice |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        END,
    ])
    if args.write or (args.families is None and args.cases is None):
        text = DOC.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        atomic_write_text(DOC, text[:start] + table + text[end:])
        print(f"written: {DOC}")
    else:
        print(table)


if __name__ == "__main__":
    main()
