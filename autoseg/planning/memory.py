"""Training memory model, measured rather than guessed.

Peak training memory of (network, patch, batch) = parameters + their gradients + the optimizer's
buffers (SGD's momentum; Adam's two moments) + the activations autograd saves for backward. The saved
activations are counted with ``torch.autograd.graph.saved_tensors_hooks`` (storages deduplicated,
parameters excluded) at two small calibration inputs on the ``meta`` device (same autograd graph, no
compute, no memory) and fitted as ``a + b * voxels`` per sample: every stage's saved tensors are a fixed
number of feature maps of size ``voxels / stride`` plus per-channel statistics, so the fit is linear.
Calibrations are cached as JSON keyed by network, topology, channels and torch version.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from autoseg.networks import Topology, create_network
from autoseg.planning import constants as C
from autoseg.utils.atomic import atomic_write_json


@dataclass(frozen=True)
class MemoryModel:
    """Bytes of one training step: ``static_bytes + batch * (intercept + per_voxel * voxels)``."""

    parameter_bytes: int
    activation_intercept: float
    activation_per_voxel: float
    optimizer_buffers: int = C.OPTIMIZER_BUFFERS_PER_PARAMETER["sgd"]

    @property
    def static_bytes(self) -> int:
        # weights + gradients + optimizer buffers
        return self.parameter_bytes * (2 + self.optimizer_buffers)

    def for_optimizer(self, name: str) -> MemoryModel:
        """The same network trained with another optimizer (``OPTIMIZER_BUFFERS_PER_PARAMETER``)."""
        return replace(self, optimizer_buffers=C.OPTIMIZER_BUFFERS_PER_PARAMETER[name])

    def activation_bytes(self, patch_size: Sequence[int]) -> float:
        return self.activation_intercept + self.activation_per_voxel * float(np.prod(patch_size))

    def predict(self, patch_size: Sequence[int], batch_size: int) -> int:
        return int(round(self.static_bytes + batch_size * self.activation_bytes(patch_size)))

    def max_batch(self, patch_size: Sequence[int], budget_bytes: float) -> int:
        """The largest batch whose prediction fits ``budget_bytes`` (0 if not even one sample)."""
        return max(0, int((budget_bytes - self.static_bytes) // self.activation_bytes(patch_size)))


def machine_ram_bytes() -> int:
    """The machine's physical RAM, which training on the CPU shares with data workers and the system."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def saved_activation_bytes(network: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward pass.

    Parameters are left out (they are counted once as weights); views and in-place results that
    share a storage are counted once.
    """
    parameters = {p.untyped_storage()._cdata for p in network.parameters()}
    saved: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = (tensor, storage.nbytes())  # keep it alive: ids stay unique
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        network(inputs)
    return sum(nbytes for _, nbytes in saved.values())


def parameter_bytes(network: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in network.parameters())


def build_training_network(
    network_name: str, topology: Topology, in_channels: int, n_classes: int, options: dict[str, Any],
    device: str | torch.device,
) -> nn.Module:
    """The network in training mode, its parameters created on ``device`` (``meta``: no memory)."""
    with torch.device(device):
        network = create_network(network_name, topology, in_channels, n_classes, **options)
    return network.train()


def _measure_on(device: str, network_name: str, topology: Topology, in_channels: int, n_classes: int,
                options: dict[str, Any]) -> MemoryModel:
    network = build_training_network(network_name, topology, in_channels, n_classes, options, device)
    sizes = [[m * t for t in topology.size_multiple] for m in C.MEMORY_CALIBRATION_MULTIPLES]
    voxels = [float(np.prod(s)) for s in sizes]
    measured = [
        saved_activation_bytes(network, torch.zeros((1, in_channels, *s), device=device)) for s in sizes
    ]
    per_voxel = (measured[1] - measured[0]) / (voxels[1] - voxels[0])
    return MemoryModel(parameter_bytes(network), measured[0] - per_voxel * voxels[0], per_voxel)


def calibrate_memory(
    network_name: str,
    topology: Topology,
    in_channels: int,
    n_classes: int,
    options: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
) -> MemoryModel:
    """Fit the memory model of a network from two measured calibration inputs (cached).

    Small calibration inputs run on CPU tensors; large ones on ``meta`` tensors, which run autograd
    exactly as real ones do without computing (a family with an operator that has no meta kernel is
    measured on CPU instead). Both give the same bytes.
    """
    options = dict(options or {})
    key = {
        "kind": "memory", "network": network_name, "topology": topology.to_dict(),
        "in_channels": in_channels, "n_classes": n_classes, "options": options,
        "multiples": list(C.MEMORY_CALIBRATION_MULTIPLES), "torch": torch.__version__,
    }
    cached = read_cache(cache_dir, key)
    if cached is not None:
        return MemoryModel(**cached)
    largest = float(np.prod([max(C.MEMORY_CALIBRATION_MULTIPLES) * t for t in topology.size_multiple]))
    if largest <= C.CPU_CALIBRATION_MAX_VOXELS:
        # Small inputs: real CPU tensors are faster than the meta device's first-use overhead (~1 s).
        model = _measure_on("cpu", network_name, topology, in_channels, n_classes, options)
    else:
        try:
            model = _measure_on("meta", network_name, topology, in_channels, n_classes, options)
        except (NotImplementedError, RuntimeError):
            model = _measure_on("cpu", network_name, topology, in_channels, n_classes, options)
    write_cache(cache_dir, key, asdict(model))
    return model


def _cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"{key['kind']}_{digest}.json"


def read_cache(cache_dir: Path | None, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached value for ``key`` (one JSON file per key, so concurrent planners never clash)."""
    if cache_dir is None:
        return None
    path = _cache_file(cache_dir, key)
    try:
        entry = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return entry.get("value") if entry.get("key") == key else None


def write_cache(cache_dir: Path | None, key: dict[str, Any], value: dict[str, Any]) -> None:
    if cache_dir is not None:
        atomic_write_json(_cache_file(cache_dir, key), {"key": key, "value": value})
