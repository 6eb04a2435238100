"""autoseg's plans beside nnU-Net v2's for the shared datasets at 8 GB (issue 13 §3).

nnU-Net v2 plans each dataset with its default planner (``ExperimentPlanner``, 8 GB target) and its
ResEnc M preset (``nnUNetPlannerResEncM``, about 9 GB); autoseg plans it with ``autoseg plan DATASET
--gpu-memory 8`` (on a machine without a GPU: memory modelled, see docs/planning.md). One table per
dataset is written between the ``compare_plans`` markers of docs/planning.md: target spacing,
transposition, normalization, configurations, then per configuration patch, batch, stages, kernels,
strides and features. Where autoseg's value differs from nnU-Net's default planner, the last column
gives the reason recorded in ``REASONS`` (a difference without one is printed as such, so nothing
differs silently). The memory rows carry a measurement made here: the activation bytes per voxel that
autograd saves for autoseg's network in float32 and under bfloat16 autocast (CPU tensors).

Both tools only read the raw data (``AUTOSEG_BENCH_DATA`` or ../shared/data); their outputs go to
``--work`` (nnU-Net's plans are reused from there when present).

Run: ``python benchmarks/compare_plans.py --work /tmp/compare_plans [--write]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import DATA_ROOT, REPO_ROOT, autoseg_command, autoseg_env, markdown_table, nnunet_command, nnunet_env

DATASETS = {4: "Dataset004_Hippocampus", 27: "Dataset027_ACDC", 905: "Dataset905_BraTS2015Mini",
            906: "Dataset906_DRIVE", 907: "Dataset907_EMMembrane"}
NNUNET_PLANS = {"nnU-Net default": "nnUNetPlans", "nnU-Net ResEnc M": "nnUNetResEncUNetMPlans"}
GPU_GB = 8
DOC = REPO_ROOT / "docs" / "planning.md"
BEGIN, END = "<!-- compare_plans:begin -->", "<!-- compare_plans:end -->"

# Why autoseg differs from nnU-Net's default planner, per (dataset, row); {amp} is filled with the
# measurement of ``amp_note``.
MEMORY = ("memory: autoseg counts the float32 activations autograd saves ({fp32}), nnU-Net compares a proxy "
          "(sum of conv output sizes) with a reference tuned on GPUs under fp16 autocast. Measured here under "
          "autocast (bf16, CPU tensors) the saved activations are {amp} of the float32 count, so autoseg's "
          "count is conservative by about that factor: it plans less than nnU-Net, never more. Not shown "
          "better: counting under autocast needs a GPU measurement first (no GPU in this session)")
CAP = ("same 5%-of-the-dataset cap; autoseg sums the voxels of every case, nnU-Net approximates with the median "
       "shape x cases and rounds")
REASONS: dict[tuple[str, str], str] = {
    ("Dataset004_Hippocampus", "2d batch"): CAP,
    ("Dataset027_ACDC", "2d batch"): MEMORY,
    ("Dataset027_ACDC", "3d_fullres batch"): MEMORY,
    ("Dataset905_BraTS2015Mini", "2d batch"): MEMORY,
    ("Dataset905_BraTS2015Mini", "3d_fullres patch"): MEMORY,
}


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(command), file=sys.stderr)
    return subprocess.run(["nice", "-n", "10", *command], env=env, text=True, capture_output=True)


def nnunet_plans(work: Path, ids: list[int]) -> None:
    """Fingerprint and plan with nnU-Net (default planner and ResEnc M) unless already done."""
    pre = work / "nnunet_preprocessed"
    env = nnunet_env(DATA_ROOT, pre, work / "nnunet_results", threads=1)
    missing = [i for i in ids if not (pre / DATASETS[i] / "nnUNetResEncUNetMPlans.json").is_file()]
    if not missing:
        return
    names = [str(i) for i in missing]
    for command in (
        [nnunet_command("nnUNetv2_extract_fingerprint"), "-d", *names, "-np", "1"],
        [nnunet_command("nnUNetv2_plan_experiment"), "-d", *names],
        [nnunet_command("nnUNetv2_plan_experiment"), "-d", *names, "-pl", "nnUNetPlannerResEncM"],
    ):
        result = run(command, env)
        if result.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def autoseg_plans(work: Path, name: str) -> tuple[dict[str, Any] | None, str]:
    """``autoseg plan NAME --gpu-memory 8``: (plans, printed table) or (None, the error)."""
    pre = work / "autoseg_preprocessed"
    env = autoseg_env(DATA_ROOT, pre, work / "autoseg_results", threads=1)
    result = run([*autoseg_command(), "plan", name, "--gpu-memory", str(GPU_GB), "-np", "1", "--overwrite"], env)
    if result.returncode:
        return None, (result.stderr.strip().splitlines() or ["failed"])[-1].strip()
    return json.loads((pre / name / "autosegPlans.json").read_text()), result.stdout


def amp_note(plans: dict[str, Any], configuration: str) -> dict[str, str]:
    """Saved activation bytes per voxel of autoseg's network for ``configuration``: float32 and autocast."""
    from autoseg.networks import Topology, create_network
    from autoseg.planning.memory import saved_activation_bytes

    config = plans["configurations"][configuration]
    topology = Topology.from_dict(config["network"]["topology"])
    channels = len(plans["channel_names"])
    network = create_network("unet", topology, channels, 2).train()
    sizes = [[m * t for t in topology.total_stride] for m in (2, 3)]
    slopes = []
    for autocast in (False, True):
        counted = []
        for size in sizes:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                counted.append(saved_activation_bytes(network, torch.zeros((1, channels, *size))))
        slopes.append((counted[1] - counted[0]) / (np.prod(sizes[1]) - np.prod(sizes[0])))
    return {"fp32": f"{slopes[0]:.0f} B/voxel for its {configuration} network", "amp": f"{slopes[1] / slopes[0]:.2f}x"}


def _axes(values: Any) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _per_stage(values: list[list[int]]) -> str:
    return ", ".join(_axes(v) for v in values)


def nnunet_rows(plans: dict[str, Any]) -> dict[str, str]:
    configs = {k: c for k, c in plans["configurations"].items() if "inherits_from" not in c}
    first = next(iter(configs.values()))
    rows = {
        "transpose": _axes(plans["transpose_forward"]),
        "normalization": ", ".join(f"{s.replace('Normalization', '')} (mask {'yes' if m else 'no'})"
                                   for s, m in zip(first["normalization_schemes"], first["use_mask_for_norm"])),
        "configurations": ", ".join(plans["configurations"]),
    }
    for name, config in configs.items():
        arch = config["architecture"]["arch_kwargs"]
        rows.update({
            f"{name} spacing": _axes(config["spacing"]),
            f"{name} patch": _axes(config["patch_size"]), f"{name} batch": str(config["batch_size"]),
            f"{name} stages": str(arch["n_stages"]), f"{name} kernels": _per_stage(arch["kernel_sizes"]),
            f"{name} strides": _per_stage(arch["strides"]), f"{name} features": _axes(arch["features_per_stage"]),
        })
    return rows


def autoseg_rows(plans: dict[str, Any]) -> dict[str, str]:
    first = next(iter(plans["configurations"].values()))
    rows = {
        "transpose": _axes(plans["transpose_forward"]),
        "normalization": ", ".join(f"{n['scheme'].replace('zscore', 'ZScore')} (mask {'yes' if n['use_mask'] else 'no'})"
                                   for n in first["normalization"]),
        "configurations": ", ".join(plans["configurations"]),
    }
    for name, config in plans["configurations"].items():
        topology = config["network"]["topology"]
        dims = config["spatial_dims"]
        rows.update({
            f"{name} spacing": _axes([float(s) for s in config["spacing"][-dims:]]),
            f"{name} patch": _axes(config["patch_size"]), f"{name} batch": str(config["batch_size"]),
            f"{name} stages": str(len(topology["features_per_stage"])),
            f"{name} kernels": _per_stage(topology["kernel_sizes"]), f"{name} strides": _per_stage(topology["strides"]),
            f"{name} features": _axes(topology["features_per_stage"]),
        })
    return rows


def dataset_table(work: Path, name: str) -> str:
    columns = {label: nnunet_rows(json.loads((work / "nnunet_preprocessed" / name / f"{file}.json").read_text()))
               for label, file in NNUNET_PLANS.items()}
    plans, output = autoseg_plans(work, name)
    ours = autoseg_rows(plans) if plans is not None else {}
    keys = list(dict.fromkeys([*columns["nnU-Net default"], *ours]))
    rows = []
    for key in keys:
        default, mine = columns["nnU-Net default"].get(key, "-"), ours.get(key, "-")
        why = ""
        if plans is not None and default != mine:
            why = REASONS.get((name, key), "differs (no reason recorded)")
            if "{amp}" in why:
                why = why.format(**amp_note(plans, key.split()[0]))
        rows.append([key, default, columns["nnU-Net ResEnc M"].get(key, "-"), mine, why])
    header = ["", "nnU-Net default (8 GB)", "nnU-Net ResEnc M", f"autoseg `--gpu-memory {GPU_GB}`", "why autoseg differs"]
    text = f"### {name}\n\n" + markdown_table(header, rows) + "\n"
    if plans is None:
        text += f"\nautoseg did not plan it: `{output}`\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for both tools' outputs (reused)")
    parser.add_argument("--datasets", type=int, nargs="+", default=list(DATASETS))
    parser.add_argument("--write", action="store_true", help="replace the tables in docs/planning.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    nnunet_plans(args.work, args.datasets)
    body = "\n".join(dataset_table(args.work, DATASETS[i]) for i in args.datasets)
    print(body)
    if args.write:
        text = DOC.read_text()
        start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
        DOC.write_text(text[:start] + "\n" + body + "\n" + text[stop:])
        print(f"written: {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
