"""Time per training iteration, measured on this machine, and what a compute budget affords.

The cost of a step is counted in FLOPs by torch's own counter (``FlopCounterMode``: convolutions,
transposed convolutions, matrix products and attention, at the real patch and batch on the ``meta``
device; backward = 2x forward) and converted to seconds with a timing model
``seconds = GFLOP / rate``, the rate measured from a few real forward+backward+SGD steps of one probe
network of the same family on the actual device. Timings are cached (keyed by device, threads,
family, channels), so re-planning on one machine is deterministic.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoseg.networks import Topology
from autoseg.networks.registry import TopologyConstraints
from autoseg.planning import constants as C
from autoseg.planning.memory import build_training_network, read_cache, write_cache
from autoseg.planning.topology import divisible_patch, plan_topology
from autoseg.utils.device import autocast_dtype, training_memory_format

# forward + backward (gradients w.r.t. inputs and weights, each about one forward)
_TRAINING_FLOPS_PER_FORWARD = 3.0


@dataclass(frozen=True)
class TimingModel:
    """Seconds of one training iteration as a function of its GFLOP, and of an inference forward pass
    (``forward_seconds_per_gflop``; 0: taken as the training rate).

    The ``undisturbed_*`` rates are the same measurements in CPU time per thread (CPU devices): what
    the steps cost while they held the cores, which load from other processes barely changes. The
    recipe is chosen from them; the iterations from the wall-clock rates (0: no such measurement).
    """

    device: str
    seconds_intercept: float
    seconds_per_gflop: float
    forward_seconds_per_gflop: float = 0.0
    undisturbed_seconds_per_gflop: float = 0.0
    undisturbed_forward_seconds_per_gflop: float = 0.0

    def predict(self, gflop: float) -> float:
        return self.seconds_intercept + self.seconds_per_gflop * gflop

    def predict_forward(self, forward_gflop: float) -> float:
        return (self.forward_seconds_per_gflop or self.seconds_per_gflop) * forward_gflop


def reference_seconds_per_gflop(device: torch.device) -> float:
    """The device kind's reference rate, the centre of the recipe speed's tolerance band (on a CPU, per math thread)."""
    if device.type == "cuda":
        return C.REFERENCE_SECONDS_PER_GFLOP["cuda"]
    return C.REFERENCE_SECONDS_PER_GFLOP["cpu"] / torch.get_num_threads()


def recipe_timing(measured: TimingModel, device: torch.device, thread_share: float = 1.0) -> TimingModel:
    """The measured rates mapped to the *recipe speed*: any rate up to ``RECIPE_SPEED_TOLERANCE_SLOWER``
    (2.83x) slower or ``RECIPE_SPEED_TOLERANCE_FASTER`` (8x) faster than the device's reference speed is
    the reference itself, so such a measurement chooses the same recipe; a rate beyond that moves the
    recipe speed by what exceeds the tolerance (5.66x slower plans at 2x, 16x faster at 2x). The
    mapping is continuous: a host measuring near an edge of the band, where noise puts it now inside
    and now outside, plans at about the reference either way, where a grid of discrete speeds jumped
    a whole grid step (docs/planning.md). The undisturbed (CPU-time) rates are used where measured,
    so time spent waiting for cores other processes hold does not change the recipe (threads spinning
    while they wait, and memory contention, still can under heavy load). Only the iterations follow the
    wall-clock measurement. ``thread_share``: the math threads timed over the machine's (fewer when
    cores were busy, ``utils/cpu_load.py``): the recipe is chosen for all of them, as on a quiet machine."""
    reference = reference_seconds_per_gflop(device)

    def recipe_rate(rate: float) -> float:
        if rate <= 0:
            return rate
        return min(max(reference, rate / C.RECIPE_SPEED_TOLERANCE_SLOWER), rate * C.RECIPE_SPEED_TOLERANCE_FASTER)

    training = measured.undisturbed_seconds_per_gflop or measured.seconds_per_gflop
    forward = measured.undisturbed_forward_seconds_per_gflop or measured.forward_seconds_per_gflop
    return replace(measured, seconds_per_gflop=recipe_rate(training) * thread_share,
                   forward_seconds_per_gflop=recipe_rate(forward) * thread_share if forward else 0.0)


def _forward_flops(
    network_name: str, topology: Topology, in_channels: int, n_classes: int, options: dict[str, Any],
    device: str, shape: Sequence[int],
) -> int:
    network = build_training_network(network_name, topology, in_channels, n_classes, options, device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(tuple(shape), device=device))
    return counter.get_total_flops()


def training_gflop(
    network_name: str,
    topology: Topology,
    in_channels: int,
    n_classes: int,
    patch_size: Sequence[int],
    batch_size: int,
    options: dict[str, Any] | None = None,
) -> float:
    """GFLOP of one forward+backward step, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Counted at the real batch and patch on the ``meta`` device (shapes only, no compute), so work
    that grows faster than the voxels (attention over all tokens) is exact too. A family with an
    operator that has no meta kernel is counted on a CPU input of twice the total stride per axis,
    scaled to the patch and batch (exact for convolutions and windowed attention).
    """
    options = dict(options or {})
    try:
        flops = _forward_flops(network_name, topology, in_channels, n_classes, options, "meta",
                               (batch_size, in_channels, *patch_size))
    except (NotImplementedError, RuntimeError):
        probe = [2 * s for s in topology.size_multiple]
        scale = batch_size * math.prod(patch_size) / math.prod(probe)
        flops = scale * _forward_flops(network_name, topology, in_channels, n_classes, options, "cpu",
                                       (1, in_channels, *probe))
    return flops * _TRAINING_FLOPS_PER_FORWARD / 1e9


def _loss(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return sum(o.float().square().mean() for o in outputs)


def _sgd_step(parameters: Sequence[torch.Tensor], buffers: list[torch.Tensor], lr: float = 1e-6,
              momentum: float = 0.99) -> None:
    """Nesterov SGD by hand, as training's optimizer computes it: constructing ``torch.optim.SGD``
    imports TorchDynamo on first use (~1.8 s, longer than the whole measurement).

    Parameters without a gradient (outputs the probe's loss does not reach, such as ConResNet's
    residual heads) are skipped, as ``torch.optim`` skips them.
    """
    stepped = [(p, b) for p, b in zip(parameters, buffers) if p.grad is not None]
    if not stepped:
        return
    params, moments = [p for p, _ in stepped], [b for _, b in stepped]
    grads = [p.grad for p in params]
    torch._foreach_mul_(moments, momentum)
    torch._foreach_add_(moments, grads)
    torch._foreach_add_(grads, moments, alpha=momentum)
    torch._foreach_add_(params, grads, alpha=-lr)


@dataclass(frozen=True)
class StepTime:
    """Fastest wall-clock seconds of a timed call, and (CPU devices) its CPU seconds per math thread:
    the cost while it held the cores, nearly blind to other processes' load (0 on CUDA)."""

    wall: float
    undisturbed: float


def _fastest(call: Callable[[], Any], device: torch.device) -> StepTime:
    """``call`` timed after ``TIMING_WARMUP_STEPS`` warm-ups; the fastest of ``TIMING_MEASURED_STEPS``
    (the fastest is the least disturbed by load), in wall and in CPU time per thread."""
    walls, cpus = [], []
    threads = max(1, torch.get_num_threads())
    for step in range(C.TIMING_WARMUP_STEPS + C.TIMING_MEASURED_STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= C.TIMING_WARMUP_STEPS:
            wall = time.perf_counter() - start
            walls.append(wall)
            cpus.append(min(wall, (time.process_time() - cpu_start) / threads))
    return StepTime(min(walls), min(cpus) if device.type == "cpu" else 0.0)


def _time_steps(network: nn.Module, inputs: torch.Tensor, device: torch.device, mixed_precision: str) -> StepTime:
    """A forward+backward+SGD step under the autocast training will use."""
    parameters = [p for p in network.parameters() if p.requires_grad]
    buffers = [torch.zeros_like(p) for p in parameters]
    dtype = autocast_dtype(mixed_precision, device)

    def step() -> None:
        network.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = _loss(network(inputs))
        loss.backward()
        with torch.no_grad():
            _sgd_step(parameters, buffers)

    return _fastest(step, device)


def _time_forward(network: nn.Module, inputs: torch.Tensor, device: torch.device, mixed_precision: str) -> StepTime:
    """An inference forward pass, as the sliding window runs it."""
    dtype = autocast_dtype(mixed_precision, device)
    network.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        timed = _fastest(lambda: network(inputs), device)
    network.train()
    return timed


def parameter_count(network_name: str, topology: Topology, in_channels: int, n_classes: int,
                    options: dict[str, Any] | None = None) -> int:
    """Trainable parameters (for the checkpoint sizes), counted on the ``meta`` device."""
    network = build_training_network(network_name, topology, in_channels, n_classes, dict(options or {}), "meta")
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{torch.get_num_threads()} threads"


def measure_timing(
    network_name: str,
    constraints: TopologyConstraints,
    spatial_dims: int,
    in_channels: int,
    n_classes: int,
    width: int,
    device: torch.device,
    options: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    mixed_precision: str = "auto",
) -> TimingModel:
    """The device's training and inference throughput for this family, from real steps of one probe.

    One probe (``TIMING_PROBE_WIDTH`` features, ``TIMING_PROBE_SIZE`` per axis, batch 2) is timed with
    the mixed precision training will use; the fastest of ``TIMING_MEASURED_STEPS`` training steps (and
    inference forward passes) after a warm-up gives GFLOP/s, and a step of any configuration is
    predicted as its GFLOP over that rate. Larger configurations run at least
    as efficiently as the probe, so predictions for them err on the slow side; fitting an intercept
    from two small probes (tried first) let load on shared machines swing predictions tenfold.
    ``width`` is accepted for the cache key's sake only: the same probe serves every width.
    ``mixed_precision`` is the training config's setting (``off``: float32, for a network whose bf16
    steps crash on this CPU, networks/bf16_guard.py). Training steps are timed in the memory format
    training picks by default (``channels_last: auto``), forward passes in the contiguous one prediction uses.
    """
    del width
    name = device_name(device)
    size = C.TIMING_PROBE_SIZE[spatial_dims]
    key = {
        "kind": "timing", "device": name, "network": network_name, "spatial_dims": spatial_dims,
        "in_channels": in_channels, "n_classes": n_classes, "probe_width": C.TIMING_PROBE_WIDTH,
        "options": dict(options or {}), "probe": size, "torch": torch.__version__, "measures": "train+forward, wall+cpu",
    }
    if mixed_precision != "auto":
        key["mixed_precision"] = mixed_precision  # "auto" keys stay as before, so existing caches still hit
    layout = training_memory_format("auto", device, spatial_dims, autocast_dtype(mixed_precision, device))
    if layout is not torch.contiguous_format:
        key["layout"] = "channels_last"
    cached = read_cache(cache_dir, key)
    if cached is not None:
        return TimingModel(**cached)
    topology = plan_topology([size] * spatial_dims, [1.0] * spatial_dims, constraints, C.TIMING_PROBE_WIDTH)
    network = build_training_network(network_name, topology, in_channels, n_classes, dict(options or {}), device)
    patch = divisible_patch([size] * spatial_dims, topology)
    inputs = torch.randn((C.MIN_BATCH_SIZE, in_channels, *patch), device=device)
    gflop = training_gflop(network_name, topology, in_channels, n_classes, patch, C.MIN_BATCH_SIZE, options)
    step = _time_steps(network.to(memory_format=layout), inputs.contiguous(memory_format=layout), device, mixed_precision)
    forward = _time_forward(network.to(memory_format=torch.contiguous_format), inputs, device, mixed_precision)
    forward_gflop = gflop / _TRAINING_FLOPS_PER_FORWARD
    model = TimingModel(name, 0.0, step.wall / gflop, forward.wall / forward_gflop,
                        step.undisturbed / gflop, forward.undisturbed / forward_gflop)
    write_cache(cache_dir, key, asdict(model))
    return model


def seconds_per_iteration(compute_seconds: float, device: torch.device) -> float:
    """A training-loop iteration: the measured compute plus data loading on the same CPU cores."""
    if device.type == "cpu":
        return compute_seconds * C.CPU_LOOP_OVERHEAD + C.CPU_LOOP_SECONDS
    return compute_seconds


def schedule(num_iterations: int) -> tuple[int, int]:
    """(num_iterations, iterations_per_epoch): whole epochs of about 250 iterations (at least one),
    sized so that at most one iteration per epoch of the budget is lost to rounding."""
    epochs = max(1, num_iterations // C.ITERATIONS_PER_EPOCH)
    per_epoch = max(1, num_iterations // epochs)
    return per_epoch * epochs, per_epoch
