"""The network table of docs/networks.md: parameters for the Dataset004 plan and seconds per training step.

Each registered family is planned for Dataset004's fingerprint as on an 8 GB GPU (no compute budget: the
family's own topology, nnU-Net's planning rules), then timed on this machine: forward + loss + backward +
SGD step at that plan's patch and batch 2, with the autocast training uses, fastest of a few steps.

    python benchmarks/bench_networks.py [--steps 3]

writes the table between the markers in docs/networks.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_ROOT, HIPPOCAMPUS, REPO_ROOT, machine_line  # noqa: E402

from autoseg.fingerprint.extract import extract_fingerprint  # noqa: E402
from autoseg.networks import create_network, get_network_spec, list_networks  # noqa: E402
from autoseg.paths import DatasetLocation  # noqa: E402
from autoseg.planning.planner import build_plans  # noqa: E402
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss  # noqa: E402
from autoseg.utils.atomic import atomic_write_text  # noqa: E402
from autoseg.utils.device import autocast_dtype  # noqa: E402

DOC = REPO_ROOT / "docs" / "networks.md"
BEGIN, END = "<!-- bench:networks -->", "<!-- /bench:networks -->"
GPU_GB = 8.0


def plan_for(network: str, fingerprint: dict) -> dict:
    plans = build_plans(fingerprint, network=network, memory_budget_bytes=GPU_GB * 2**30 * 0.8,
                        budget_seconds=None, device="cpu", configs=["3d_fullres"],
                        timing_factory=lambda dims, width: _no_timing())
    return plans["configurations"]["3d_fullres"]


def _no_timing():
    from autoseg.planning.compute_budget import TimingModel

    return TimingModel("not timed", 0.0, 0.0)


def step_seconds(network: torch.nn.Module, patch: list[int], steps: int) -> float:
    """Fastest training step (forward, Dice+CE with deep supervision, backward, SGD) at batch 2."""
    loss_fn = DeepSupervisionLoss(DiceCELoss())
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    dtype = autocast_dtype("auto", torch.device("cpu"))
    x = torch.randn(2, 1, *patch)
    y = torch.randint(0, 3, (2, 1, *patch))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
            out = network(x)
        outputs = [o.float() for o in (out if isinstance(out, list) else [out])]
        loss_fn(outputs, y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        location = DatasetLocation(HIPPOCAMPUS, DATA_ROOT / HIPPOCAMPUS)
        fingerprint = extract_fingerprint(location, output=Path(tmp) / "fingerprint.json")
    rows = []
    for name in list_networks():
        spec = get_network_spec(name)
        if 3 not in spec.constraints.spatial_dims:  # a 3D dataset's plan (swinunet: see bench_networks_budget.py)
            continue
        config = plan_for(name, fingerprint)
        topology = dict(config["network"]["topology"])
        topology["extra"] = {"patch_size": config["patch_size"]}
        network = create_network(name, topology, 1, 3).train()
        params = sum(p.numel() for p in network.parameters())
        seconds = step_seconds(network, config["patch_size"], args.steps)
        features = topology["features_per_stage"]
        rows.append(
            f"| `{name}` | {spec.paper} | {'x'.join(map(str, config['patch_size']))} | "
            f"{features[0]}-{features[-1]} ({len(features)} stages) | {params / 1e6:.2f}M | {seconds:.2f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join([
        BEGIN,
        f"_Measured by `python benchmarks/bench_networks.py --steps {args.steps}` on {machine_line()}._",
        "",
        "| network | paper | patch (Dataset004 plan, 8 GB) | features | parameters | s per training step (batch 2, this machine) |",
        "|---|---|---|---|---|---|",
        *rows,
        END,
    ])
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    atomic_write_text(DOC, text[:start] + table + text[end:])
    print(json.dumps({"written": str(DOC)}))


if __name__ == "__main__":
    main()
