"""Does the training loop keep the cores busy? Two figures of issue 18 §3, on the 30-minute Hippocampus plan.

1. **In-situ against pure compute.** ``autoseg plan Dataset004 --budget 30m -c 3d_fullres --device cpu``,
   ``autoseg preprocess``, then the real ``autoseg train ... 0`` (its data workers, augmentation,
   pseudo-validation, checkpoints, logging) for ``--epochs`` short epochs of ``--iterations`` iterations;
   the trainer's own ``seconds_per_iteration`` of each epoch (warm iterations, from ``metrics.jsonl``) is
   compared with the pure compute time of the same step: the network, optimiser, dtype, loss (deep
   supervision), backward and update the fold trained with (rebuilt from its checkpoint's metadata and
   its ``training_config.yaml``, taken by ``training/steps.py``'s step), on synthetic tensors already in
   memory, in this process with the same threads. Goal: in-situ / compute <= 1.05.
2. **bf16 step throughput against the CPU's practical limit.** FLOPs of that step, forward and backward,
   counted by ``torch.utils.flop_counter.FlopCounterMode``, divided by its compute time; the practical
   limit is the best measured bf16 rate (CPU autocast, forward + backward, FLOPs counted the same way)
   of large kernels: a square matmul and a wide Conv3d in both memory layouts. Goal: >= 60 %. The step
   is measured in bf16 whatever the trainer chose (it uses bf16 where the CPU computes it natively,
   utils/device.py), also in channels_last and float32, and its convolutions alone at their own shapes
   (the ceiling the kernels set). The augmentation CPU per batch explains the in-situ ratio's floor.

Both figures use the best (minimum time) of the repeats, as the other scripts do on a shared machine.
The train command is stopped once its epochs are written (the final validation is not part of it).

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_engine_throughput.py [--epochs 3] [--iterations 50]
[--repeats 3] [--threads N] [--work DIR] [--set KEY=VALUE ...] [--in-situ-only | --interleaved ROUNDS] [--no-doc]``
(about 6 minutes on 2 cores). ``--in-situ-only``: figure 1 alone, in the dtype the trainer chose, into its own
section: on a CPU without native bf16 (an AMD EPYC here) the trainer runs float32 and figure 2's bf16
kernels are emulated. ``--interleaved ROUNDS``: figure 1 measured in one process, the trainer's loop and
the pure compute of its step in alternating blocks of the same minutes (the two figures measured minutes
apart moved 30% on a shared host), into its own section.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from common import (
    augmentation_cpu_seconds,
    HIPPOCAMPUS,
    autoseg_command,
    autoseg_env,
    check,
    fmt_seconds,
    markdown_table,
    run_measured,
    temporary_raw_root,
    write_section,
)
from peak_flops import Rate, time_step

from autoseg.networks.registry import create_network
from autoseg.preprocessing.store import list_cases
from autoseg.training.augmentation import resolve_augmentation, sampling_size
from autoseg.planning.constants import DEFAULT_PLANS_NAME
from autoseg.training.data_loading import SamplingSpec, batch_to_device, case_cache_bytes
from autoseg.training.checkpoints import LATEST, load_checkpoint
from autoseg.training.monitor import WarmTimer
from autoseg.training.run import resolve_fold_run
from autoseg.training.watchdog import IterationWatchdog
from autoseg.training.trainer import Trainer
from autoseg.training.steps import LabelSpec, WithAux, build_step
from autoseg.training.model_setup import build_optimizer
from autoseg.utils.device import training_memory_format

CONFIGURATION = "3d_fullres"
FOLD = "0"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "training_config.yaml"
RATIO_GOAL = 1.05
SHARE_GOAL = 0.60
STOP_GRACE_S = 10.0
CONVS_ONLY = "the step's convolutions alone"
# Large bf16 kernels whose best rate is the practical limit (sizes where oneDNN's AMX/AVX-512 kernels
# are well past their start-up cost, small enough for a few seconds per call on one core).
MATMUL_N = 2048
LIMIT_CONV_SHAPE = (2, 64, 48, 48, 48)  # batch, channels (in = out), spatial; kernel 3x3x3


# --------------------------------------------------------------------------------------- the fold run
def train_command(epochs: int, iterations: int, val_iterations: int, overrides: list[str]) -> list[str]:
    settings = [f"iterations_per_epoch={iterations}", f"val_iterations_per_epoch={val_iterations}", *overrides]
    return [
        *autoseg_command(), "train", "Dataset004", CONFIGURATION, FOLD, "--device", "cpu", "--epochs", str(epochs),
        *(part for setting in settings for part in ("--set", setting)),
    ]


def fold_folder(results: Path) -> Path:
    found = sorted((results / HIPPOCAMPUS).glob(f"*__*__{CONFIGURATION}/fold_{FOLD}"))
    if len(found) != 1:
        raise SystemExit(f"{results}: expected one {CONFIGURATION} fold {FOLD} folder, found {len(found)}")
    return found[0]


def epochs_written(results: Path) -> int:
    metrics = list((results / HIPPOCAMPUS).glob(f"*__*__{CONFIGURATION}/fold_{FOLD}/{METRICS_FILE}"))
    return len(metrics[0].read_text().splitlines()) if metrics else 0


def train_until(command: list[str], env: dict[str, str], results: Path, epochs: int, log_path: Path) -> float:
    """Run the train command until ``epochs`` rows are in its metrics file, then stop its process group
    (SIGTERM, SIGKILL after ``STOP_GRACE_S``); returns the wall time. Stops the benchmark if it fails."""
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while process.poll() is None and epochs_written(results) < epochs:
                time.sleep(1.0)
            wall = time.perf_counter() - start
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if process.poll() is None:
                    os.killpg(process.pid, sig)
                    try:
                        process.wait(STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        pass
    if epochs_written(results) < epochs:
        tail = log_path.read_bytes().decode(errors="replace")[-3000:]
        raise SystemExit(f"autoseg train ended (exit {process.returncode}) before {epochs} epochs:\n{tail}")
    return wall


@dataclass
class FoldStep:
    """The step the fold trained, as the trainer built it, plus what the log says of its run."""

    metadata: dict[str, Any]
    config: dict[str, Any]
    batch: int
    dtype: torch.dtype | None
    workers: int
    seconds_per_iteration: list[float]


def read_fold(folder: Path) -> FoldStep:
    checkpoint = load_checkpoint(folder / LATEST)
    config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    plans = json.loads((folder.parent / "plans.json").read_text())
    batch = int(config["batch_size"] or plans["configurations"][CONFIGURATION]["batch_size"])
    log = (folder / "training_log.txt").read_text()
    found = re.search(r"(\d+) data workers.*mixed precision ([\w.]+)\)", log)
    if found is None:
        raise SystemExit(f"{folder}/training_log.txt: no 'training ...' line naming workers and mixed precision")
    dtype = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16, "None": None}[found.group(2)]
    rows = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]
    seconds = [float(r["seconds_per_iteration"]) for r in rows if r.get("seconds_per_iteration")]
    return FoldStep(checkpoint["metadata"], config, batch, dtype, int(found.group(1)), seconds)


# ----------------------------------------------------------------------------------- the pure compute
def fold_layout(fold: FoldStep) -> torch.memory_format:
    """The memory format the fold trained in (its ``channels_last`` setting resolved as the trainer does)."""
    return training_memory_format(fold.config["channels_last"], torch.device("cpu"),
                                  len(fold.metadata["patch_size"]), fold.dtype)


def compute_step(fold: FoldStep, dtype: torch.dtype | None) -> Callable[[], None]:
    """The fold's training step on synthetic in-memory tensors (same network, batch, patch, loss,
    optimiser, memory format), under autocast to ``dtype``."""
    meta, config = fold.metadata, fold.config
    torch.manual_seed(0)
    network = create_network(meta["network"], meta["topology"], meta["in_channels"], meta["num_outputs"],
                             **meta["network_options"]).train()
    patch = list(meta["patch_size"])
    memory_format = fold_layout(fold)
    network = network.to(memory_format=memory_format)
    model: nn.Module = WithAux(network)
    if config["compile"]:
        model = torch.compile(model)
    optimizer = build_optimizer(network.parameters(), config["optimizer"])
    labels = LabelSpec(meta["num_outputs"], None, None)  # Dataset004: classes, no regions, no ignore label
    step = build_step(model, network, meta["network"], optimizer, labels, config, torch.device("cpu"), dtype,
                      wrap=lambda m: m, in_channels=meta["in_channels"])
    data = torch.randn(fold.batch, meta["in_channels"], *patch).contiguous(memory_format=memory_format)
    target = torch.randint(0, meta["num_outputs"], (fold.batch, 1, *patch), dtype=torch.int16)
    return lambda: step.train(data, target)


def convolutions_only(fold: FoldStep, dtype: torch.dtype | None) -> Callable[[], None]:
    """Forward and backward of every convolution of the fold's network alone, each at the input shape
    and memory format it gets in the step: the ceiling the kernels set on the step's rate."""
    network = create_network(fold.metadata["network"], fold.metadata["topology"], fold.metadata["in_channels"],
                             fold.metadata["num_outputs"], **fold.metadata["network_options"])
    layout = fold_layout(fold)
    network = network.to(memory_format=layout)
    convs = [m for m in network.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d, nn.ConvTranspose2d))]
    inputs: dict[nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0].detach().float())) for m in convs]
    with torch.no_grad():
        network(torch.randn(fold.batch, fold.metadata["in_channels"], *fold.metadata["patch_size"]).contiguous(memory_format=layout))
    for hook in hooks:
        hook.remove()
    pairs = [(m, x.contiguous(memory_format=layout).requires_grad_(i > 0)) for i, (m, x) in enumerate(inputs.items())]

    def step() -> None:
        for module, x in pairs:
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = module(x)
            out.backward(torch.ones_like(out))
            module.zero_grad(set_to_none=True)
            x.grad = None

    return step


def seconds_per_step(step: Callable[[], None], steps: int, repeats: int, warmup: int = 3) -> list[tuple[float, float]]:
    """Mean (wall, process CPU) seconds per step of ``repeats`` blocks of ``steps`` steps, after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    blocks = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        blocks.append(((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps))
    return blocks


def fold_sampling_spec(fold: FoldStep, preprocessed: Path, plans: dict[str, Any]) -> SamplingSpec:
    """The training batches of the fold: its cases, patch, batch, resolved augmentation and the case cache
    of one data worker (``trainer.py: sampling_specs`` for the trainer's own spec)."""
    plan = plans["configurations"][CONFIGURATION]
    patch = list(fold.metadata["patch_size"])
    augmentation = resolve_augmentation(fold.config["augmentation"], patch, plan["normalization"])
    store = preprocessed / HIPPOCAMPUS / plan["data_identifier"]
    splits = json.loads((preprocessed / HIPPOCAMPUS / "splits_final.json").read_text())
    cases = splits[int(FOLD)]["train"] if splits else list_cases(store)
    return SamplingSpec(
        folder=store, case_ids=cases, patch_size=patch, sample_size=sampling_size(patch, augmentation),
        batch_size=fold.batch, oversample_foreground=fold.config["oversample_foreground"],
        foreground_labels=list(range(1, fold.metadata["num_outputs"])), augmentation=augmentation,
        case_cache_bytes=case_cache_bytes(fold.config["case_cache_mb"], 1),
    )


# ---------------------------------------------------------------------------------- interleaved blocks
INTERLEAVED_BLOCKS = ("compute", "stream + step", "trainer loop")
PAUSE_S = 1.0  # between blocks: the worker refills its queue, as it does during an epoch's end


def rotated(names: tuple[str, ...], round_index: int) -> list[str]:
    """The blocks' order in round ``round_index``: each starts every third round, so no block always runs
    first after the pause (its worker queue full) or last (the core warmest)."""
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


@dataclass
class Interleaved:
    """The rounds ({block: (wall, this process's CPU) seconds per iteration}), the trainer's setup, and
    the data worker's CPU per batch."""

    rounds: list[dict[str, tuple[float, float]]]
    setup: dict[str, Any]
    augmentation_cpu: float


def interleaved_rounds(env: dict[str, str], rounds: int, iterations: int) -> Interleaved:
    """Figure 1 with compute and loop timed in the same minutes: the fold's trainer, built in this
    process from the plan, runs alternating blocks of ``iterations`` steps: the pure compute of its step
    on one batch already in memory, its step fed by its data worker (``Trainer.training_stream``, as ``fit()``
    uses it), and its own epoch loop (``Trainer.train_epoch``: learning rate, watchdog, progress,
    timing). One model for all three, so the blocks differ only in what feeds the step."""
    os.environ.update({k: env[k] for k in ("AUTOSEG_RAW", "AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS")})
    run = resolve_fold_run("Dataset004", CONFIGURATION, FOLD, None, DEFAULT_PLANS_NAME, [], "cpu", seed=0,
                           deterministic=False, workers=None, epochs=1000, budget_seconds=None, resume=False,
                           start_time=time.monotonic())
    trainer = Trainer(run)
    device, layout, workers = trainer.device, trainer.setup.memory_format, trainer.workers()
    stream, watchdog = trainer.training_stream(workers), IterationWatchdog.for_plan(run.configuration, trainer.monitor.log)
    data, target = batch_to_device(next(stream), device, layout)
    setup = {"patch": "x".join(map(str, trainer.patch_size)), "batch": trainer.batch_size, "workers": workers,
             "dtype": str(trainer.setup.amp_dtype or "float32").removeprefix("torch."),
             "layout": str(layout).removeprefix("torch.")}
    trainer.setup.model.train()
    trainer.iterations_per_epoch = iterations
    trainer.state.total_iterations = 10**9
    trainer.monitor.start(trainer.state.total_iterations, 0)

    def compute() -> None:
        for _ in range(iterations):
            trainer.step.train(data, target)

    def stream_and_step() -> None:
        for _ in range(iterations):
            trainer.step.train(*batch_to_device(next(stream), device, layout))

    def trainer_loop() -> None:
        trainer.train_epoch(stream, watchdog, WarmTimer(trainer.state.iteration))
        trainer.state.epoch += 1

    blocks = dict(zip(INTERLEAVED_BLOCKS, (compute, stream_and_step, trainer_loop)))
    results = []
    try:
        compute()  # warm-up: allocation and kernel selection
        for index in range(rounds):
            row = {}
            for name in rotated(INTERLEAVED_BLOCKS, index):
                block = blocks[name]
                time.sleep(PAUSE_S)
                wall, cpu = time.perf_counter(), time.process_time()
                block()
                row[name] = ((time.perf_counter() - wall) / iterations, (time.process_time() - cpu) / iterations)
            results.append(row)
            print("  ".join(f"{k} {v[0]:.4f}" for k, v in row.items()), file=sys.stderr)
    finally:
        watchdog.stop()
        stream.close()
        trainer.monitor.stop()
    return Interleaved(results, setup, augmentation_cpu_seconds(trainer.train_spec, iterations))


def interleaved_section(args: argparse.Namespace, measured: Interleaved) -> str:
    """The rounds as a table, with the per-round ratios of the loop to the compute of the same minutes."""
    rows, setup = measured.rounds, measured.setup
    table = markdown_table(
        ["round", *(f"{n} (s/it)" for n in INTERLEAVED_BLOCKS), "stream + step / compute", "trainer loop / compute",
         "main process CPU per iteration: compute, trainer loop (s)"],
        [[str(i + 1), *(f"{r[n][0]:.4f}" for n in INTERLEAVED_BLOCKS), f"{r['stream + step'][0] / r['compute'][0]:.3f}",
          f"{r['trainer loop'][0] / r['compute'][0]:.3f}", f"{r['compute'][1]:.3f}, {r['trainer loop'][1]:.3f}"]
         for i, r in enumerate(rows)])
    ratios = sorted(r["trainer loop"][0] / r["compute"][0] for r in rows)
    best = min(r["trainer loop"][0] for r in rows) / min(r["compute"][0] for r in rows)
    compute = min(r["compute"][0] for r in rows)
    return f"""
`python benchmarks/bench_engine_throughput.py --interleaved {args.interleaved} --iterations {args.iterations} --threads {args.threads}`
(torch {torch.__version__}, {args.threads} math threads, CPU capability {torch.backends.cpu.get_cpu_capability()}; the
plan and store of `autoseg plan Dataset004 --budget 30m -c {CONFIGURATION} --device cpu` + `autoseg preprocess`).

The fold's trainer (patch {setup['patch']}, batch {setup['batch']}, mixed precision {setup['dtype']}, memory format
{setup['layout']}, {setup['workers']} data worker(s)) built in one process,
then {args.interleaved} rounds of three blocks of {args.iterations} iterations each, one after the other (the order rotated
each round, so each block runs first, second and third equally often): the pure compute of its
step on one batch in memory, the step fed by its data worker, and the trainer's own epoch loop (learning
rate, watchdog, progress bar, timing) fed by the same worker.

{table}

**Trainer loop / compute, round by round: {ratios[0]:.3f}-{ratios[-1]:.3f}** (median {statistics.median(ratios):.3f}; best
against best {best:.3f}; goal <= {RATIO_GOAL}). The data worker spends {measured.augmentation_cpu:.4f} s of CPU per batch (one
thread, measured as in figure 1), {measured.augmentation_cpu / compute:.0%} of the best compute step's wall time.
"""


# ------------------------------------------------------------------------------------ practical limit
def bf16_matmul(n: int) -> Callable[[], None]:
    a = torch.randn(n, n, requires_grad=True)
    b = torch.randn(n, n, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = a @ b
        out.backward(torch.ones_like(out))
        a.grad = b.grad = None

    return step


def bf16_conv3d(shape: tuple[int, ...], channels_last: bool) -> Callable[[], None]:
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    conv = nn.Conv3d(shape[1], shape[1], 3, padding=1).to(memory_format=layout)
    x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_(True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        out.backward(torch.ones_like(out))
        conv.zero_grad(set_to_none=True)
        x.grad = None

    return step


def practical_limit(repeats: int) -> list[Rate]:
    conv = "x".join(map(str, LIMIT_CONV_SHAPE))
    return [
        time_step(f"matmul {MATMUL_N}x{MATMUL_N} @ {MATMUL_N}x{MATMUL_N}, bf16, forward + backward",
                  bf16_matmul(MATMUL_N), repeats),
        *(time_step(f"Conv3d {LIMIT_CONV_SHAPE[1]}->{LIMIT_CONV_SHAPE[1]}, 3x3x3, input {conv}{', channels_last' * last}, "
                    "bf16, forward + backward", bf16_conv3d(LIMIT_CONV_SHAPE, last), repeats) for last in (False, True)),
    ]


# ----------------------------------------------------------------------------------------------- main
def prepare(env: dict[str, str], threads: int) -> None:
    cli = autoseg_command()
    for command, what in (
        ([*cli, "plan", "Dataset004", "--budget", "30m", "-c", CONFIGURATION, "--device", "cpu", "-np", str(threads)], "autoseg plan"),
        ([*cli, "preprocess", "Dataset004", "-c", CONFIGURATION, "-np", str(threads)], "autoseg preprocess"),
    ):
        print(f"running: {' '.join(command[2:])}", file=sys.stderr)
        check(run_measured(command, env), what)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the in-situ run")
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=10, help="pseudo-validation iterations per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks of the compute step / kernel calls")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="math threads (default: all usable cores)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the plan, store and results here; a folder already holding the plan and store is reused")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a training config override for the train command and the compute step (repeatable)")
    parser.add_argument("--in-situ-only", action="store_true",
                        help="figure 1 only, in the dtype the trainer chose (for a CPU without native bf16, where the "
                             "bf16 kernels of figure 2 are emulated and take minutes); its own section of the doc")
    parser.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                        help="figure 1 only, measured in one process: ROUNDS rounds of compute, stream + step and "
                             "trainer-loop blocks of --iterations each (compute and loop in the same minutes); "
                             "its own section of the doc")
    parser.add_argument("--no-doc", action="store_true", help="print the section, do not write docs/benchmarks.md")
    return parser.parse_args()


def run(args: argparse.Namespace, work: Path) -> str:
    torch.set_num_threads(args.threads)
    pre, results = work / "preprocessed", work / "results"
    with temporary_raw_root() as raw:
        env = autoseg_env(raw, pre, results, args.threads)
        if not (pre / HIPPOCAMPUS / "autosegPlans.json").is_file():
            prepare(env, args.threads)
        plans = json.loads((pre / HIPPOCAMPUS / "autosegPlans.json").read_text())
        if (results / HIPPOCAMPUS).is_dir():
            subprocess.run(["rm", "-rf", str(results / HIPPOCAMPUS)], check=True)
        if args.interleaved:
            return interleaved_section(args, interleaved_rounds(env, args.interleaved, args.iterations))
        command = train_command(args.epochs, args.iterations, args.val_iterations, args.overrides)
        print(f"running: {' '.join(command[2:])} (stopped after {args.epochs} epochs)", file=sys.stderr)
        wall = train_until(command, env, results, args.epochs, work / "train_output.txt")
    fold = read_fold(fold_folder(results))
    in_situ = min(fold.seconds_per_iteration)
    print(f"in situ: {[round(s, 4) for s in fold.seconds_per_iteration]} s/iteration ({fold.dtype})", file=sys.stderr)
    compute = min(seconds_per_step(compute_step(fold, fold.dtype), args.iterations // 2 or 1, args.repeats))
    print(f"compute: {compute[0]:.4f} s/step ({compute[1]:.4f} s CPU)", file=sys.stderr)
    augmentation = augmentation_cpu_seconds(fold_sampling_spec(fold, pre, plans), args.iterations)
    print(f"augmentation: {augmentation:.4f} s CPU per batch", file=sys.stderr)
    loop = Loop(in_situ, *compute, augmentation)
    if args.in_situ_only:
        return run_and_setup(args, plans, fold, wall) + in_situ_section(args, fold, loop)
    bf16_step = time_step("training step, bf16 autocast (as the fold trained)", compute_step(fold, torch.bfloat16), max(args.repeats, 5))
    steps = [time_step("training step, float32", compute_step(fold, None), max(args.repeats, 5)),
             time_step(f"{CONVS_ONLY}, bf16 (layout as the fold trained)",
                       convolutions_only(fold, torch.bfloat16), max(args.repeats, 5))]
    if fold_layout(fold) is torch.contiguous_format:  # the layout oneDNN prefers, for comparison
        last = replace(fold, config={**fold.config, "channels_last": True})
        steps.insert(0, time_step("training step, bf16 autocast, channels_last", compute_step(last, torch.bfloat16), max(args.repeats, 5)))
    limits = practical_limit(args.repeats)
    return report(args, plans, fold, wall, loop, bf16_step, steps, limits)


@dataclass
class Loop:
    """Seconds per iteration in situ and of the pure compute (wall and CPU), augmentation CPU per batch."""

    in_situ: float
    compute: float
    compute_cpu: float
    augmentation_cpu: float


def run_and_setup(args: argparse.Namespace, plans: dict[str, Any], fold: FoldStep, wall: float) -> str:
    """The commands, the plan and how the trainer ran."""
    plan = plans["configurations"][CONFIGURATION]
    meta = fold.metadata
    settings = "".join(f" --set {o}" for o in args.overrides) + (" --in-situ-only" if args.in_situ_only else "")
    return f"""
```
export OMP_NUM_THREADS={args.threads} AUTOSEG_RAW=$RAW AUTOSEG_PREPROCESSED=$W/preprocessed AUTOSEG_RESULTS=$W/results
autoseg plan Dataset004 --budget 30m -c {CONFIGURATION} --device cpu -np {args.threads}
autoseg preprocess Dataset004 -c {CONFIGURATION} -np {args.threads}
{' '.join(train_command(args.epochs, args.iterations, args.val_iterations, args.overrides)[2:])}   # stopped after {args.epochs} epochs
```

Reproduce: `python benchmarks/bench_engine_throughput.py --epochs {args.epochs} --iterations {args.iterations} --val-iterations {args.val_iterations} --repeats {args.repeats} --threads {args.threads}{settings}`
(torch {torch.__version__}, {args.threads} math threads, CPU capability {torch.backends.cpu.get_cpu_capability()}).

The plan: `{meta['network']}`, patch {'x'.join(map(str, meta['patch_size']))}, batch {fold.batch}, features
{meta['topology']['features_per_stage']}, deep supervision {meta['network_options'].get('deep_supervision')}; the plan
predicted {plan.get('predicted_seconds_per_iteration', float('nan')):.3f} s per iteration. The trainer ran with
{fold.workers} data worker(s) and mixed precision {_dtype_name(fold)}; the train command ran {fmt_seconds(wall)} until epoch
{args.epochs} was written.
"""


def _dtype_name(fold: FoldStep) -> str:
    return str(fold.dtype).replace("torch.", "") if fold.dtype else "float32"


def in_situ_section(args: argparse.Namespace, fold: FoldStep, loop: Loop) -> str:
    """Figure 1: the trainer's own seconds per iteration against the pure compute of the same step."""
    ratio = loop.in_situ / loop.compute
    bound = (loop.compute_cpu + loop.augmentation_cpu) / loop.compute_cpu
    dtype = _dtype_name(fold)
    epochs = ", ".join(f"{s:.4f}" for s in fold.seconds_per_iteration)
    return f"""
**1. In-situ iteration time against pure compute** (goal <= {RATIO_GOAL}):

| | seconds per iteration |
|---|---|
| in situ: `autoseg train`, trainer's `seconds_per_iteration` per epoch | {epochs} (best {loop.in_situ:.4f}) |
| pure compute: the same step ({dtype}) on in-memory tensors, best of {args.repeats} blocks | {loop.compute:.4f} |
| **in situ / compute** | **{ratio:.3f}** ({'meets' if ratio <= RATIO_GOAL else 'misses'} the goal) |

Where the difference goes: a data worker spends {loop.augmentation_cpu:.4f} s of CPU per training batch (sampling
and augmentation, measured in this process on one thread, every case opened first), the compute step
{loop.compute_cpu:.4f} s of CPU ({args.threads} thread(s)). When the step keeps every core busy the worker can only
run on the same cores, so the loop cannot beat (compute + augmentation) / compute = **{bound:.3f}** in CPU
time; what remains above that is waiting (a worker behind, the main process's own work).
"""


def report(args: argparse.Namespace, plans: dict[str, Any], fold: FoldStep, wall: float, loop: Loop,
           bf16_step: Rate, other_steps: list[Rate], limits: list[Rate]) -> str:
    limit = max(limits, key=Rate.gflops_wall)
    share = bf16_step.gflops_wall() / limit.gflops_wall()
    threads = args.threads
    limit_cpu = max(r.gflops_cpu(threads) for r in limits)
    share_cpu = bf16_step.gflops_cpu(threads) / limit_cpu
    rows = [[r.name, f"{r.gflop:.2f}", fmt_seconds(r.wall_s), f"{r.gflops_wall():.0f}",
             f"{r.gflops_wall() / limit.gflops_wall():.0%}", f"{r.gflops_cpu(threads):.0f}", f"{r.gflops_cpu(threads) / limit_cpu:.0%}"]
            for r in (*limits, bf16_step, *other_steps)]
    table = markdown_table(["kernel (FLOPs: forward + backward)", "GFLOP", "time (best)", "GFLOP/s (wall)", "of the limit",
                            "GFLOP/s (CPU time / threads)", "of the limit"], rows)
    convs = next(r for r in other_steps if r.name.startswith(CONVS_ONLY))
    return run_and_setup(args, plans, fold, wall) + in_situ_section(args, fold, loop) + f"""
**2. bf16 training-step throughput against the practical limit** (goal >= {SHARE_GOAL:.0%}): the limit is
the best of the bf16 kernels below, {limit.gflops_wall():.0f} GFLOP/s ({limit.name}).
The bf16 step reaches **{share:.0%}** of it ({'meets' if share >= SHARE_GOAL else 'misses'} the goal); against CPU time
(the rate while the process held the cores, what counts on a shared machine) {share_cpu:.0%} of {limit_cpu:.0f} GFLOP/s.
The step's convolutions alone, each at its own shape, reach {convs.gflops_wall() / limit.gflops_wall():.0%}
({convs.gflops_cpu(threads) / limit_cpu:.0%} in CPU time): what the kernels achieve at the plan's channel counts and
volumes bounds the step; the whole step (with norms, activations, loss, optimiser) takes
{bf16_step.wall_s / convs.wall_s - 1:+.0%} of their time on top.

{table}
"""


def main() -> int:
    args = parse_args()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        body = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="autoseg-bench-engine-") as tmp:
            body = run(args, Path(tmp))
    if args.no_doc:
        print(body)
    elif args.interleaved:
        write_section("engine_interleaved", "Training engine: loop against compute in the same minutes (issue 18 §3, figure 1)", body)
    elif args.in_situ_only:
        write_section("engine_in_situ", "Training engine: in-situ speed in the trainer's dtype (issue 18 §3, figure 1 only)", body)
    else:
        write_section("engine_throughput", "Training engine: in-situ speed and bf16 throughput (issue 18 §3)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
