"""How far autoseg's compute is from the machine's limit (issue 9 §4).

1. The core clock, measured: a C loop of dependent register-register integer adds (one add per cycle,
   the latency of an ALU add on x86 cores), timed in thread CPU time so that time the process spent
   descheduled on a shared machine is not counted. Register, not immediate, operands: recent Intel
   cores (Golden Cove and later) fold chains of add-immediate at rename and would report ~20 GHz.
   One core is busy while it runs, so it reads the single-core turbo clock: an upper bound. Falls back to /proc/cpuinfo's MHz when no C
   compiler is found; the report says which was used.
2. Peak fp32 = cores x clock x 32 FLOP/cycle (one 16-lane AVX-512 FMA per cycle = 32 FLOP, the
   figure issue 9 asks for; server cores with two FMA units double it, noted in the report).
3. Achieved GFLOP/s of a Conv3d forward, of a U-Net forward (inference) and of a U-Net training step
   (forward, backward, SGD update), FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``
   (multiply-adds x 2 of convolutions and matrix products), best of ``--repeats`` timings.

Rates are given against wall time and against the process's CPU time / threads: on a machine shared
with other jobs the second is what the code achieves while it holds the cores.

Run: ``python benchmarks/peak_flops.py [--repeats 3] [--batch 2]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoseg.networks.registry import create_network
from autoseg.networks.topology import Topology
from common import markdown_table, write_section

FLOP_PER_CYCLE = 32  # fp32, one AVX-512 FMA unit: 16 lanes x (multiply + add); issue 9 §4
AMX_BF16_FLOP_PER_CYCLE = 1024  # bf16 on an AMX tile unit (Intel: 512 multiply-adds per cycle per core)
ADDS_PER_ITERATION = 100
CLOCK_ITERATIONS = 20_000_000  # 2e9 dependent adds: just under a second at 2-3 GHz
CLOCK_REPEATS = 5
CLOCK_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define A1 "add %1, %0\n\t"
#define A10 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1
#define A100 A10 A10 A10 A10 A10 A10 A10 A10 A10 A10
static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
int main(int argc, char **argv) {
    long iterations = atol(argv[1]);
    unsigned long x = 0, step = (unsigned long)argc;  /* a register operand, not an immediate */
    double start = cpu_seconds();
    for (long i = 0; i < iterations; i++) {
        __asm__ volatile(A100 : "+r"(x) : "r"(step));  /* 100 adds, each waiting for the one before */
    }
    double seconds = cpu_seconds() - start;
    printf("%.9f %lu\n", seconds, x);
    return 0;
}
"""
# The U-Net measured: 4 stages of 32-256 features at nnU-Net's Dataset004_Hippocampus patch
# 40x56x40, built by autoseg's own network registry. The Conv3d is reference §4's, so the two compare.
UNET_TOPOLOGY = Topology(
    spatial_dims=3,
    features_per_stage=[32, 64, 128, 256],
    kernel_sizes=[[3, 3, 3]] * 4,
    strides=[[1, 1, 1]] + [[2, 2, 2]] * 3,
)
UNET_PATCH = (40, 56, 40)
UNET_CLASSES = 3
CONV_SHAPE = (2, 32, *UNET_PATCH)


# --------------------------------------------------------------------------------------------- clock
def measure_clock_ghz() -> tuple[float, str]:
    """The core clock in GHz and how it was obtained."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return cpuinfo_ghz(), "/proc/cpuinfo 'cpu MHz' (no C compiler found; nominal, not measured)"
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "clock.c", Path(tmp) / "clock"
        source.write_text(CLOCK_SOURCE)
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
        best = 0.0
        for _ in range(CLOCK_REPEATS):
            seconds = float(subprocess.run([str(binary), str(CLOCK_ITERATIONS)], check=True, capture_output=True, text=True).stdout.split()[0])
            best = max(best, CLOCK_ITERATIONS * ADDS_PER_ITERATION / seconds / 1e9)
    return best, (
        f"measured: {CLOCK_ITERATIONS * ADDS_PER_ITERATION:.0e} dependent adds in a C loop (gcc -O2), "
        f"thread CPU time, best of {CLOCK_REPEATS}; /proc/cpuinfo says {cpuinfo_ghz():.2f} GHz"
    )


def cpuinfo_ghz() -> float:
    with open("/proc/cpuinfo") as handle:
        values = [float(line.split(":")[1]) for line in handle if line.startswith("cpu MHz")]
    return max(values) / 1000 if values else float("nan")


# -------------------------------------------------------------------------------------------- kernels
@dataclass
class Rate:
    name: str
    gflop: float
    wall_s: float
    cpu_s: float

    def gflops_wall(self) -> float:
        return self.gflop / self.wall_s

    def gflops_cpu(self, threads: int) -> float:
        return self.gflop / (self.cpu_s / threads)


def count_gflop(step: Callable[[], None]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 1e9


def time_step(name: str, step: Callable[[], None], repeats: int) -> Rate:
    """FLOPs of one call, then the fastest of ``repeats`` timed calls after one warm-up call."""
    gflop = count_gflop(step)
    step()
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    print(f"  {name}: {gflop:.1f} GFLOP in {best_wall:.3f} s", file=sys.stderr)
    return Rate(name, gflop, best_wall, best_cpu)


def conv3d_forward() -> Callable[[], None]:
    conv = nn.Conv3d(CONV_SHAPE[1], CONV_SHAPE[1], 3, padding=1)
    x = torch.randn(CONV_SHAPE)

    def step() -> None:
        with torch.inference_mode():
            conv(x)

    return step


def unet(batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    network = create_network("unet", UNET_TOPOLOGY, 1, UNET_CLASSES, deep_supervision=False)
    x = torch.randn(batch, 1, *UNET_PATCH)
    target = torch.randint(0, UNET_CLASSES, (batch, *UNET_PATCH))
    return network, x, target


def unet_inference(batch: int, dtype: torch.dtype | None = None) -> Callable[[], None]:
    """A forward pass; under CPU autocast to ``dtype`` when given (what ``autoseg predict`` runs here)."""
    network, x, _ = unet(batch)
    network.eval()

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            network(x)

    return step


def unet_training(batch: int) -> Callable[[], None]:
    network, x, target = unet(batch)
    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = network(x)  # in training mode a list (full resolution first), even without deep supervision
        loss_fn(logits[0] if isinstance(logits, list) else logits, target).backward()
        optimizer.step()

    return step


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="U-Net batch size")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)

    ghz, clock_how = measure_clock_ghz()
    peak = cores * ghz * FLOP_PER_CYCLE
    print(f"clock {ghz:.2f} GHz ({clock_how}); peak {peak:.0f} GFLOP/s", file=sys.stderr)
    rates = [
        (time_step(f"Conv3d 32->32, 3x3x3, input {CONV_SHAPE}, forward", conv3d_forward(), args.repeats), peak),
        (time_step(f"U-Net inference, batch {args.batch}", unet_inference(args.batch), args.repeats), peak),
        (time_step(f"U-Net training step, batch {args.batch}", unet_training(args.batch), args.repeats), peak),
    ]
    amx_peak = cores * ghz * AMX_BF16_FLOP_PER_CYCLE
    has_amx = "amx_bf16" in Path("/proc/cpuinfo").read_text()
    if has_amx:
        name = f"U-Net inference, batch {args.batch}, bf16 autocast (of the AMX bf16 peak)"
        rates.append((time_step(name, unet_inference(args.batch, torch.bfloat16), args.repeats), amx_peak))
    rows = [
        [
            r.name, f"{r.gflop:.1f}", f"{r.wall_s:.3f} s",
            f"{r.gflops_wall():.0f}", f"{r.gflops_wall() / p:.0%}",
            f"{r.gflops_cpu(cores):.0f}", f"{r.gflops_cpu(cores) / p:.0%}",
        ]
        for r, p in rates
    ]
    amx_line = (f"- Peak bf16 on AMX (what `autoseg predict` uses here, `--mixed-precision auto`): {cores} x {ghz:.2f} GHz x "
                f"{AMX_BF16_FLOP_PER_CYCLE} FLOP/cycle = **{amx_peak:.0f} GFLOP/s**; the last row is measured against it.\n"
                if has_amx else "")
    table = markdown_table(
        ["kernel", "GFLOP", "time (best)", "GFLOP/s (wall)", "of peak", "GFLOP/s (CPU time / threads)", "of peak"],
        rows,
    )
    body = f"""
`python benchmarks/peak_flops.py --repeats {args.repeats} --batch {args.batch}` (torch {torch.__version__},
{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}).

- Clock: **{ghz:.2f} GHz**, {clock_how}.
- Peak fp32: {cores} cores x {ghz:.2f} GHz x {FLOP_PER_CYCLE} FLOP/cycle = **{peak:.0f} GFLOP/s**
  (one AVX-512 FMA per cycle, as issue 9 §4 asks; a core with two FMA units peaks at twice that).
{amx_line}- U-Net: autoseg's `unet`, features {UNET_TOPOLOGY.features_per_stage}, strides 2, kernels 3, at
  Dataset004_Hippocampus's nnU-Net patch {"x".join(map(str, UNET_PATCH))}, {UNET_CLASSES} classes,
  no deep supervision; the training step is forward + cross-entropy + backward + SGD update.
- FLOPs from `torch.utils.flop_counter.FlopCounterMode` (2 x multiply-adds of convolutions and matrix
  products; normalization and activations are not counted, so the rates are slight underestimates).
- The machine is shared with other jobs: the CPU-time column divides by the CPU time the process got
  (per thread), i.e. the rate while it held the cores; the wall column is what a user waits for.

{table}
"""
    write_section("peak_flops", "Distance to the machine's peak FLOP/s (issue 9 §4)", body)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
