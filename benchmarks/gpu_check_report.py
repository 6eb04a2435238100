"""Turn ``gpu_check.json`` (benchmarks/gpu_check.py) into the GPU section of docs/benchmarks.md.

Prints the section's markdown; ``--write-doc`` also writes it into docs/benchmarks.md (section
``gpu-check``), naming the GPU it was measured on. Steps that failed or were skipped are listed with
their reason: a missing figure is never filled in.

Run: ``python benchmarks/gpu_check_report.py OUT/gpu_check.json [--write-doc]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_bytes, markdown_table, ratio, write_section  # noqa: E402

MEMORY_TOLERANCE = 0.10  # issue 19: predicted training memory within +-10% of the measured peak
DATASETS = (("hippocampus", "Dataset004"), ("acdc", "Dataset027 ACDC"), ("brats2015mini", "Dataset905 BraTS-mini"))
PLANS = (("gpuPlans", "the GPU's memory"), ("gpu8Plans", "8 GB"))


def result(steps: dict[str, Any], name: str) -> dict[str, Any] | None:
    entry = steps.get(name) or {}
    return entry.get("result") if entry.get("ok") else None


def cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if value is not None else "n/a"


def training_table(steps: dict[str, Any]) -> str:
    rows = []
    nnunet = result(steps, "nnunet_train_hippocampus")
    if nnunet:
        rows.append(["nnU-Net v2 (its trainer)", "nnU-Net default", f"{nnunet['patch_size']} x {nnunet['batch_size']}",
                     cell(nnunet["iterations_per_second"]), fmt_bytes(nnunet["peak_memory_bytes"]) if nnunet.get("peak_memory_bytes") else "n/a"])
    candidates = [("autoseg_train_nnunet_plan_hippocampus", "autoseg_plan_nnunet_hippocampus", "nnU-Net default (same network)"),
                  ("autoseg_train_hippocampus_gpu8Plans", "autoseg_plan_hippocampus_gpu8Plans", "autoseg, 8 GB"),
                  ("autoseg_train_hippocampus_gpuPlans", "autoseg_plan_hippocampus_gpuPlans", "autoseg, the GPU's memory")]
    for train, plan, label in candidates:
        t, p = result(steps, train), result(steps, plan)
        if t and p:
            rows.append(["autoseg", label, f"{p['patch_size']} x {p['batch_size']}", cell(t["iterations_per_second"]),
                         fmt_bytes(t["peak_memory_bytes"]) if t.get("peak_memory_bytes") else "n/a"])
    if not rows:
        return "No training step was measured."
    return markdown_table(["tool", "plan", "patch x batch", "iterations/s", "peak GPU memory"], rows)


def memory_table(steps: dict[str, Any]) -> str:
    rows = []
    for short, name in DATASETS:
        for plans, label in PLANS:
            p, t = result(steps, f"autoseg_plan_{short}_{plans}"), result(steps, f"autoseg_train_{short}_{plans}")
            if not (p and t and t.get("peak_memory_bytes") and p.get("predicted_memory_bytes")):
                continue
            predicted, measured = p["predicted_memory_bytes"], t["peak_memory_bytes"]
            error = predicted / measured - 1
            rows.append([name, label, f"{p['patch_size']} x {p['batch_size']}", fmt_bytes(predicted), fmt_bytes(measured),
                         f"{error:+.1%}", "yes" if abs(error) <= MEMORY_TOLERANCE else "**no**"])
    if not rows:
        return "No training memory was measured."
    return markdown_table(["dataset", "planned for", "patch x batch", "predicted", "measured peak", "error", "within 10%"], rows)


def prediction_table(steps: dict[str, Any]) -> str:
    rows = []
    for what, nnunet_step, autoseg_prefix in (("Dataset004, 42 fold-0 validation cases", "nnunet_predict_hippocampus",
                                               "autoseg_predict_hippocampus_nnunet_plan"),
                                              ("BraTS-mini, one 240x240x155 case", "nnunet_predict_brats", "autoseg_predict_brats")):
        n = result(steps, nnunet_step)
        for tag in ("eager", "compile"):
            a = result(steps, f"{autoseg_prefix}_{tag}")
            if n or a:
                rows.append([what, f"torch.compile {'on' if tag == 'compile' else 'off'}",
                             cell(n["seconds"], "{:.1f} s") if n else "n/a", cell(a["seconds"], "{:.1f} s") if a else "n/a",
                             ratio(n["seconds"], a["seconds"]) if n and a else "n/a"])
    if not rows:
        return "No prediction was measured."
    return markdown_table(["cases (TTA on)", "autoseg setting", "nnU-Net v2", "autoseg", "nnU-Net / autoseg"], rows)


def problems(steps: dict[str, Any]) -> str:
    lines = [f"- `{name}`: {entry.get('error', '')[:400]}" for name, entry in steps.items() if not entry.get("ok")]
    return "\n".join(lines) if lines else "- none"


def section(data: dict[str, Any]) -> tuple[str, str]:
    steps = data["steps"]
    env = result(steps, "environment") or {}
    machine = (f"{data.get('started', '?')}; {env.get('gpu', 'no GPU')} ({fmt_bytes(env['gpu_memory_bytes'])}), "
               f"{env.get('cuda_devices', 0)} GPU(s), {env.get('cpus', '?')} CPU cores, torch {env.get('torch', '?')}"
               if env.get("gpu_memory_bytes") else f"{data.get('started', '?')}; device {data.get('device')}, torch {env.get('torch', '?')}")
    smoke = "**Smoke run (tiny counts, CPU): tests the script, measures nothing.**\n\n" if data.get("smoke") else ""
    ddp = steps.get("autoseg_train_ddp_hippocampus", {})
    ddp_line = (f"2-process DDP: {cell(ddp['result']['iterations_per_second'])} iterations/s" if ddp.get("ok")
                else f"2-process DDP: {ddp.get('error', 'not run')}")
    body = f"""{smoke}Command: `python benchmarks/gpu_check_prepare.py` here, then `bash benchmarks/gpu_check.sh` on the GPU
machine (`.gpu_bundle` carried), then `python benchmarks/gpu_check_report.py OUT/gpu_check.json --write-doc`.
Both tools on the same GPU in the same run; nnU-Net v2 2.8.1 with its defaults (fp16 autocast with
GradScaler, torch.compile), autoseg with its defaults (mixed precision auto = fp16 on CUDA).
Iterations per second after warm-up (nnU-Net: 30 warm-up then 100 timed `train_step`s of its own loop on
its background data loader; autoseg: the trainer's own timing of the warm iterations of its last epoch).

### Training speed, Dataset004 3d_fullres

{training_table(steps)}

### Planned against measured training memory (one autoseg training step, peak allocated)

{memory_table(steps)}

### Prediction time with TTA (whole command: start-up, reading, sliding window, export)

{prediction_table(steps)}

{ddp_line}

Steps that failed or did not run:
{problems(steps)}
"""
    return machine, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--write-doc", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    machine, body = section(data)
    print(f"_{machine}_\n\n{body}")
    if args.write_doc:
        if data.get("smoke"):
            print("a smoke run measures nothing: docs/benchmarks.md left unchanged", file=sys.stderr)
            return 1
        write_section("gpu-check", "GPU: training speed, memory and prediction against nnU-Net v2 (gpu_check.sh)", body, machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
