"""Training step in contiguous against channels-last memory format, every network family, on this CPU.

Why ``channels_last: auto`` trains 3D networks in channels-last on a CPU without autocast, and nothing
else (docs/benchmarks.md, "Channels-last training on CPU"). Each registered family is planned with
``autoseg plan --budget`` (default 10 min, Dataset004) for 3d_fullres and 2d where it supports them;
its training step (the trainer's own network build, loss, backward and SGD update:
``model_setup.build_model`` + ``steps.build_step``) is then timed at the plan's patch and batch in both
layouts, in the dtype ``mixed_precision: auto`` picks here, alternating the layouts and keeping the
fastest block of each. The ratio is contiguous / channels-last seconds (above 1: channels-last faster).

    OMP_NUM_THREADS=2 python benchmarks/bench_memory_format.py [--budget 10m] [--dataset Dataset004_Hippocampus]
        [--steps 6] [--repeats 3] [--families unet segnet] [--no-doc]

About 12 minutes on 2 cores for every family. Run on a quiet machine: the two layouts alternate so that
slow drifts hit both, but a busy core still adds noise of a few percent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine_throughput import seconds_per_step  # noqa: E402
from common import HIPPOCAMPUS, autoseg_command, autoseg_env, markdown_table, temporary_raw_root, write_section  # noqa: E402

from autoseg.networks import list_networks  # noqa: E402
from autoseg.training.config import resolve_training_config  # noqa: E402
from autoseg.training.distributed import DistributedContext  # noqa: E402
from autoseg.training.model_setup import NetworkRequest, build_model  # noqa: E402
from autoseg.training.steps import LabelSpec, build_step  # noqa: E402
from autoseg.utils.device import autocast_dtype  # noqa: E402

CONFIGURATIONS = ("3d_fullres", "2d")
CPU = torch.device("cpu")


def plan_family(env: dict[str, str], dataset: str, family: str, budget: str, preprocessed: Path) -> dict[str, dict]:
    """The family's budget plans of the configurations it supports, by configuration name."""
    plans = {}
    for configuration in CONFIGURATIONS:
        name = f"bench_{family}_{configuration}"
        command = [*autoseg_command(), "plan", dataset.split("_")[0], "--budget", budget, "-c", configuration,
                   "--device", "cpu", "--network", family, "--plans-name", name]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            plans[configuration] = json.loads((preprocessed / dataset / f"{name}.json").read_text())
        elif "cannot be planned" not in done.stderr + done.stdout:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return plans


def training_step(plans: dict, configuration: str, overrides: list[str],
                  edit_network: Callable[[nn.Module], None] | None = None) -> Callable[[], None]:
    """One training step of the plan's network with training-config ``overrides``, on synthetic
    in-memory tensors; ``edit_network`` may swap modules of the built network (same parameters)."""
    plan = plans["configurations"][configuration]
    family = plan["network"]["name"]
    channels = len(plans["channel_names"])
    n_outputs = len(plans["regions_class_order"] or plans["labels"])  # timing only: regions trained as classes
    config = resolve_training_config(family, overrides, plan)
    torch.manual_seed(0)
    request = NetworkRequest(family, plan, channels, n_outputs, plan["patch_size"], plan["batch_size"])
    setup = build_model(request, config, CPU, DistributedContext(), lambda message: None)
    if edit_network is not None:
        edit_network(setup.network)
    step = build_step(setup.model, setup.network, family, setup.optimizer, LabelSpec(n_outputs, None, None), config,
                      CPU, setup.amp_dtype, wrap=lambda module: module, in_channels=channels)
    data = torch.randn(plan["batch_size"], channels, *plan["patch_size"]).contiguous(memory_format=setup.memory_format)
    labels = torch.randint(0, n_outputs, (plan["batch_size"], 1, *plan["patch_size"]), dtype=torch.int16)
    return lambda: step.train(data, labels)


def fastest_blocks(steps_by_layout: dict[Any, Callable[[], None]], steps: int, repeats: int) -> dict[Any, float]:
    """Fastest mean seconds per step of each layout over ``repeats`` blocks of ``steps`` steps, the
    layouts alternating block by block (3 warm-up steps each before its first block)."""
    best = {last: float("inf") for last in steps_by_layout}
    for block in range(repeats):
        for last, step in steps_by_layout.items():
            [(wall, _)] = seconds_per_step(step, steps, 1, warmup=3 if block == 0 else 0)
            best[last] = min(best[last], wall)
    return best


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="10m", help="compute budget the plans are made for (default 10m)")
    parser.add_argument("--dataset", default=HIPPOCAMPUS, help="a raw dataset folder of the shared data")
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per layout (alternating)")
    parser.add_argument("--families", nargs="*", default=None, help="network families (default: all registered)")
    parser.add_argument("--no-doc", action="store_true", help="print the table, do not write docs/benchmarks.md")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    families = args.families or list_networks()
    threads = torch.get_num_threads()
    rows = []
    with temporary_raw_root(args.dataset) as raw, TemporaryDirectory(prefix="autoseg-bench-layout-") as tmp:
        preprocessed = Path(tmp) / "preprocessed"
        env = autoseg_env(raw, preprocessed, Path(tmp) / "results", threads)
        for family in families:
            for configuration, plans in plan_family(env, args.dataset, family, args.budget, preprocessed).items():
                layouts = {last: training_step(plans, configuration, [f"channels_last={str(last).lower()}"]) for last in (False, True)}
                best = fastest_blocks(layouts, args.steps, args.repeats)
                plan = plans["configurations"][configuration]
                row = [family, configuration, "x".join(map(str, plan["patch_size"])), str(plan["batch_size"]),
                       f"{best[False]:.4f}", f"{best[True]:.4f}", f"{best[False] / best[True]:.2f}"]
                print(" | ".join(row), flush=True)
                rows.append(row)
    dtype = autocast_dtype("auto", CPU)
    table = markdown_table(["family", "configuration", "patch", "batch", "contiguous (s/step)", "channels-last (s/step)",
                            "contiguous / channels-last"], rows)
    body = (f"```\nOMP_NUM_THREADS={threads} python benchmarks/bench_memory_format.py --budget {args.budget} "
            f"--dataset {args.dataset} --steps {args.steps} --repeats {args.repeats}\n```\n\n"
            f"torch {torch.__version__}, {threads} math threads, training dtype {dtype or 'float32'} "
            f"(`mixed_precision: auto`); fastest block of {args.steps} steps per layout, {args.repeats} blocks each, "
            f"alternating.\n\n{table}\n")
    if args.no_doc:
        print(body)
    else:
        write_section("memory_format", "Channels-last training on CPU, every network family (issue 18 §3)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
