"""What every configuration of a plan is planned against: the configuration names, the planning context
(network, memory and compute budget, cached memory/timing models) and the device and memory to plan for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from autoseg.errors import PlanError
from autoseg.networks import Topology, get_network_spec
from autoseg.planning import constants as C
from autoseg.planning import compute_budget as T
from autoseg.planning import mirroring
from autoseg.planning.memory import MemoryModel, calibrate_memory, machine_ram_bytes
from autoseg.networks.bf16_guard import bf16_step_survives
from autoseg.utils.device import autocast_dtype, choose_device, device_memory_bytes
from autoseg.utils.duration import check_budget_seconds
from autoseg.utils.finite import is_finite_number


CONFIG_2D, CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE = "2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"


ALL_CONFIGURATIONS = (CONFIG_2D, CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE)


TimingFactory = Callable[[int, int, str], T.TimingModel]  # (spatial_dims, width, mixed_precision) -> timing model


Bf16Check = Callable[[dict[str, Any]], bool]  # a bf16 guard spec -> whether its bf16 steps survive


@dataclass
class PlanningContext:
    """What every configuration is planned against."""

    network: str
    in_channels: int
    n_classes: int
    n_foreground: int
    memory_budget_bytes: float
    budget_seconds: float | None
    device: torch.device
    cache_dir: Path | None
    timing_factory: TimingFactory | None  # None: the target device is not on this machine, nothing is timed
    planned_for: dict[str, Any] = field(default_factory=dict)
    bf16_check: Bf16Check | None = None  # None: training will not use bf16 on a CPU, nothing to check
    mixed_precision: str = "auto"  # "off" once the chosen network's bf16 steps crashed on this CPU
    timed_thread_share: float = 1.0  # math threads timed / the machine's: the recipe is chosen for all of them
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fixed_orders: list[mirroring.FixedOrder] = field(default_factory=list)  # axes training does not mirror
    forward: list[int] = field(default_factory=lambda: [0, 1, 2])  # the plan's transpose
    _memory: dict[str, MemoryModel] = field(default_factory=dict)
    _timing: dict[tuple[int, int, str], T.TimingModel] = field(default_factory=dict)
    _gflop: dict[str, float] = field(default_factory=dict)
    _parameters: dict[str, int] = field(default_factory=dict)

    @property
    def constraints(self):
        return get_network_spec(self.network).constraints

    def mirror_axes(self, dims: int) -> list[int]:
        """The axes a ``dims``-D configuration mirrors (planning/mirroring.py)."""
        return mirroring.mirror_axes(self.fixed_orders, self.forward, dims)

    def memory(self, topology: Topology, in_channels: int | None = None) -> MemoryModel:
        channels = in_channels or self.in_channels
        key = json.dumps([topology.to_dict(), channels], sort_keys=True)
        if key not in self._memory:
            self._memory[key] = calibrate_memory(
                self.network, topology, channels, self.n_classes, self.options, self.cache_dir
            )
        return self._memory[key]

    def timing(self, dims: int, width: int, recipe: bool) -> T.TimingModel:
        """The measured timing model, or (``recipe``) its rates mapped to the recipe speed."""
        assert self.timing_factory is not None, "a compute budget needs the target device on this machine"
        key = (dims, width, self.mixed_precision)
        if key not in self._timing:
            self._timing[key] = self.timing_factory(*key)
        measured = self._timing[key]
        return T.recipe_timing(measured, self.device, self.timed_thread_share) if recipe else measured

    def gflop(self, topology: Topology, patch: Sequence[int], batch: int, in_channels: int | None = None) -> float:
        """GFLOP of a training step (cached: the budget search asks for the same ones repeatedly)."""
        channels = in_channels or self.in_channels
        key = json.dumps([topology.to_dict(), list(patch), batch, channels], sort_keys=True)
        if key not in self._gflop:
            self._gflop[key] = T.training_gflop(self.network, topology, channels, self.n_classes, patch, batch, self.options)
        return self._gflop[key]

    def parameters(self, topology: Topology) -> int:
        key = json.dumps(topology.to_dict(), sort_keys=True)
        if key not in self._parameters:
            self._parameters[key] = T.parameter_count(self.network, topology, self.in_channels, self.n_classes, self.options)
        return self._parameters[key]

    def iteration_seconds(self, topology: Topology, patch: Sequence[int], batch: int, width: int,
                          in_channels: int | None = None, recipe: bool = False) -> float | None:
        """Seconds of a training iteration; None when the target device is not on this machine."""
        if self.timing_factory is None:
            return None
        model = self.timing(topology.spatial_dims, width, recipe)
        return T.seconds_per_iteration(model.predict(self.gflop(topology, patch, batch, in_channels)), self.device)

    def tile_seconds(self, topology: Topology, patch: Sequence[int], width: int, recipe: bool = False) -> float:
        """One sliding-window tile's forward pass (a third of a training step's FLOPs at batch 1)."""
        forward_gflop = self.gflop(topology, patch, 1) / 3.0
        return self.timing(topology.spatial_dims, width, recipe).predict_forward(forward_gflop)


def output_channels(labels: dict[str, Any]) -> tuple[int, int]:
    """(network outputs, foreground label values): regions (sigmoid) or classes incl. background."""
    entries = {k: v for k, v in labels.items() if k not in ("background", "ignore")}
    values = {x for v in entries.values() for x in (v if isinstance(v, list) else [v])} - {0}
    if any(isinstance(v, list) for v in entries.values()):
        return len(entries), len(values)
    return len(entries) + 1, len(values)


def check_gpu_memory(gpu_memory_gb: Any) -> None:
    """Refuse a GPU memory that is not a positive, finite number of GB: NaN passed `<= 0`, infinity (or 1e300
    GB, infinite in bytes) planned on, ending in int() of the usable bytes, and from Python "8" raised a bare
    TypeError (True planned as 1 GB)."""
    if gpu_memory_gb is not None and not (
            is_finite_number(gpu_memory_gb) and gpu_memory_gb > 0 and math.isfinite(gpu_memory_gb * 2.0**30)):
        raise PlanError(f"--gpu-memory must be a positive, finite number of GB, got {gpu_memory_gb!r}; e.g. --gpu-memory 8")


def memory_budget(device: torch.device, gpu_memory_gb: float | None) -> tuple[float, float | None]:
    """(usable bytes, nominal GB): the given or detected GPU memory, else a share of the RAM."""
    if gpu_memory_gb is not None:
        check_gpu_memory(gpu_memory_gb)
        return gpu_memory_gb * 2**30 * C.GPU_MEMORY_USABLE_FRACTION, float(gpu_memory_gb)
    total = device_memory_bytes(device)
    if total is not None:
        return total * C.GPU_MEMORY_USABLE_FRACTION, round(total / 2**30, 2)
    return machine_ram_bytes() * C.CPU_MEMORY_USABLE_FRACTION, None


def _bf16_survives(spec: dict[str, Any]) -> bool:
    return bf16_step_survives(spec)[0]


def planning_context(fingerprint: dict[str, Any], network: str, memory_budget_bytes: float,
                     budget_seconds: float | None, device: torch.device, cache_dir: Path | None,
                     timing_factory: TimingFactory | None, bf16_check: Bf16Check | None, timed_thread_share: float,
                     record: dict[str, Any], device_present: bool) -> PlanningContext:
    """What every configuration is planned with: the options checked, the timing (measured on this
    machine unless replaced; none for a device it lacks) and the bf16 check where training would use bf16."""
    if budget_seconds is not None:
        check_budget_seconds(budget_seconds, PlanError)
    if budget_seconds is not None and not device_present and timing_factory is None:
        raise PlanError("--budget times training on this machine, which lacks the device planned for; "
                        "plan for the GPU with --gpu-memory alone, or drop --gpu-memory to plan for this machine")
    spec = get_network_spec(network)
    n_classes, n_foreground = output_channels(fingerprint["labels"])
    in_channels = len(fingerprint["channel_names"])

    def measured(dims: int, width: int, mixed_precision: str) -> T.TimingModel:
        return T.measure_timing(network, spec.constraints, dims, in_channels, n_classes, width, device,
                                cache_dir=cache_dir, mixed_precision=mixed_precision)

    if (bf16_check is None and device_present and timing_factory is None and device.type == "cpu"
            and autocast_dtype("auto", device) == torch.bfloat16):
        bf16_check = _bf16_survives
    planned_for = {k: record.get(k) for k in ("device", "device_name", "gpu_memory_gb", "memory_bytes_usable")}
    planned_for["timed_on_device"] = device_present
    ctx = PlanningContext(network, in_channels, n_classes, n_foreground, memory_budget_bytes, budget_seconds, device, cache_dir,
                          timing_factory or (measured if device_present else None), planned_for, bf16_check,
                          timed_thread_share=timed_thread_share)
    if not device_present:
        gb = f" with {record['gpu_memory_gb']:g} GB" if record.get("gpu_memory_gb") else ""
        ctx.notes.append(
            f"planned for a {device.type} device{gb} (usable {memory_budget_bytes / 2**30:.1f} GiB) that this "
            "machine lacks: memory is modelled (saved-tensor count on the meta device), not measured there; "
            "speed is not predicted and nnU-Net's schedule (1000 epochs) applies"
        )
    return ctx


def target_device(device: str | torch.device | None, gpu_memory_gb: float | None,
                  budget_seconds: float | None) -> tuple[torch.device, bool]:
    """(the device to plan for, whether it is on this machine).

    ``--gpu-memory`` without a GPU here (and without ``--budget``, which times this machine) plans
    for a CUDA GPU elsewhere: users plan on a laptop or login node and train on GPU nodes.
    """
    name = None if device is None or str(device) == "auto" else str(device)
    gpu_elsewhere = not torch.cuda.is_available() and (name is None or name.startswith("cuda"))
    if gpu_elsewhere and gpu_memory_gb is not None and budget_seconds is None:
        return torch.device(name or "cuda"), False
    if gpu_elsewhere and name is not None:
        fix = "drop --budget to plan for a GPU elsewhere" if gpu_memory_gb is not None else \
            "give --gpu-memory GB to plan for a GPU elsewhere (its memory is modelled)"
        raise PlanError(f"--device {name}: CUDA is not available on this machine; {fix}, or use --device cpu")
    return choose_device(device, PlanError), True
