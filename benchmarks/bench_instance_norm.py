"""Training step with torch's ``instance_norm`` against autoseg's ``InstanceNorm`` (``group_norm`` with
one channel per group on CPU), every family that uses it, on this CPU.

Why ``networks/blocks.py``'s ``InstanceNorm`` computes through ``group_norm`` on CPU (docs/benchmarks.md,
"InstanceNorm as one-channel GroupNorm on CPU"). Each family built from ``instance_norm_op`` is planned
with ``autoseg plan --budget`` for 3d_fullres and 2d (``--budgets``, Dataset004 by default); its training
step (the trainer's network build, loss, backward and SGD update, as ``bench_memory_format.py`` times it)
runs once with the network as built and once with every ``InstanceNorm`` swapped for torch's
``nn.InstanceNorm{2,3}d`` holding the same parameters (the implementation before the change), in the
dtype and layout the training config resolves to here (``--set`` overrides it, e.g.
``--set mixed_precision=off`` for float32), alternating the two and keeping the fastest block of each.
The ratio is torch / autoseg seconds (above 1: autoseg's faster). Both compute the same function
(tests/test_networks_blocks.py).

    OMP_NUM_THREADS=2 python benchmarks/bench_instance_norm.py [--budgets 10m 30m] [--dataset Dataset004_Hippocampus]
        [--steps 6] [--repeats 3] [--families unet fcn] [--set KEY=VALUE ...] [--no-doc]

About 10 minutes on 2 cores for the default families and budgets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory_format import fastest_blocks, plan_family, training_step  # noqa: E402
from common import HIPPOCAMPUS, autoseg_env, markdown_table, temporary_raw_root, write_section  # noqa: E402

from autoseg.networks.blocks import InstanceNorm  # noqa: E402
from autoseg.training.config import resolve_training_config  # noqa: E402
from autoseg.utils.device import autocast_dtype  # noqa: E402

# The registered families whose networks are built from blocks.instance_norm_op.
FAMILIES = ("unet", "resenc", "fcn", "segnet", "fcdensenet", "vnet", "vox2vox")
TORCH_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}  # by spatial dimensions


def with_torch_instance_norms(spatial_dims: int) -> Callable[[nn.Module], None]:
    """A network edit that swaps every autoseg ``InstanceNorm`` for torch's, keeping its parameters."""
    def edit(network: nn.Module) -> None:
        swapped = 0
        for parent in list(network.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, InstanceNorm):
                    torch_norm = TORCH_NORM[spatial_dims](child.num_features, eps=child.eps, affine=child.weight is not None)
                    torch_norm.weight, torch_norm.bias = child.weight, child.bias
                    setattr(parent, name, torch_norm)
                    swapped += 1
        if not swapped:
            raise SystemExit(f"{type(network).__name__} has no InstanceNorm to compare; leave it out of --families")
    return edit


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="+", default=["10m", "30m"], help="compute budgets the plans are made for")
    parser.add_argument("--dataset", default=HIPPOCAMPUS, help="a raw dataset folder of the shared data")
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per variant (alternating)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), help="network families built from instance_norm_op")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a training config override for both variants (repeatable)")
    parser.add_argument("--no-doc", action="store_true", help="print the table, do not write docs/benchmarks.md")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    threads = torch.get_num_threads()
    rows = []
    with temporary_raw_root(args.dataset) as raw, TemporaryDirectory(prefix="autoseg-bench-norm-") as tmp:
        for budget in args.budgets:  # a root per budget: the plans of one family share a name
            preprocessed = Path(tmp) / budget / "preprocessed"
            env = autoseg_env(raw, preprocessed, Path(tmp) / budget / "results", threads)
            for family in args.families:
                for configuration, plans in plan_family(env, args.dataset, family, budget, preprocessed).items():
                    plan = plans["configurations"][configuration]
                    torch_norms = with_torch_instance_norms(len(plan["patch_size"]))
                    variants = {"torch": training_step(plans, configuration, args.overrides, torch_norms),
                                "autoseg": training_step(plans, configuration, args.overrides)}
                    best = fastest_blocks(variants, args.steps, args.repeats)
                    config = resolve_training_config(family, args.overrides, plan)
                    dtype = autocast_dtype(config["mixed_precision"], torch.device("cpu"))
                    row = [budget, family, configuration, "x".join(map(str, plan["patch_size"])), str(plan["batch_size"]),
                           str(dtype or "float32").removeprefix("torch."), f"{best['torch']:.4f}",
                           f"{best['autoseg']:.4f}", f"{best['torch'] / best['autoseg']:.2f}"]
                    print(" | ".join(row), flush=True)
                    rows.append(row)
    table = markdown_table(["budget", "family", "configuration", "patch", "batch", "dtype", "torch instance_norm (s/step)",
                            "autoseg InstanceNorm (s/step)", "torch / autoseg"], rows)
    sets = "".join(f" --set {o}" for o in args.overrides)
    body = (f"```\nOMP_NUM_THREADS={threads} python benchmarks/bench_instance_norm.py --budgets {' '.join(args.budgets)} "
            f"--dataset {args.dataset} --steps {args.steps} --repeats {args.repeats} --families {' '.join(args.families)}{sets}\n```\n\n"
            f"torch {torch.__version__}, {threads} math threads, layout as `channels_last: auto` resolves (unless set); "
            f"fastest block of {args.steps} steps per variant, {args.repeats} blocks each, alternating.\n\n{table}\n")
    if args.no_doc:
        print(body)
    else:
        title = "InstanceNorm as one-channel GroupNorm on CPU" + (f" ({', '.join(args.overrides)})" if args.overrides else "")
        write_section("instance_norm" + "".join("_" + o.split("=")[-1] for o in args.overrides), title, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
