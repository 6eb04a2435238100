"""Model setup of a fold: the network (plan topology or one derived for another family or patch),
memory format, ``torch.compile``, the DDP wrap, the optimiser, and the precision it can train in."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from autoseg.errors import TrainingError
from autoseg.networks import create_network, get_network_spec
from autoseg.networks.bf16_guard import bf16_step_survives, step_spec
from autoseg.training.distributed import DistributedContext, wrap_model
from autoseg.training.steps import WithAux
from autoseg.utils.device import autocast_dtype, training_memory_format


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the training config's ``mixed_precision`` (auto, fp16, bf16, off)."""
    return autocast_dtype(setting, device, TrainingError)


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels


@contextlib.contextmanager
def determinism_restored() -> Iterator[None]:
    """Give back torch's determinism switches, which ``seed_everything`` sets for a run: ``train_fold(...,
    deterministic=True)`` called from Python left deterministic algorithms on and cuDNN benchmarking off for
    the rest of the session, so a later ``deterministic=False`` run (or prediction) was deterministic too."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def network_topology(plan: dict[str, Any], network: str, patch_size: list[int], log: Any) -> dict[str, Any]:
    """The plan's topology; for another family (``--network``) or patch (``--set patch_size``), the
    planner's topology rules applied to that family's constraints at the plan's spacing and width."""
    topology = dict(plan["network"]["topology"])
    if network == plan["network"]["name"] and list(patch_size) == list(plan["patch_size"]):
        return topology
    from autoseg.planning.topology import plan_topology

    spacing = list(plan["spacing"])[-len(patch_size):]
    width = int(plan.get("width") or topology["features_per_stage"][0])
    derived = plan_topology(patch_size, spacing, get_network_spec(network).constraints, width)
    stride = derived.size_multiple
    if any(p % s for p, s in zip(patch_size, stride)):
        fitting = _divisible_patch_for(network, patch_size, spacing, width)
        example = f"e.g. --set patch_size=[{','.join(map(str, fitting))}]" if fitting else "--set patch_size=[...]"
        raise TrainingError(
            f"patch size {patch_size} is not divisible by the total stride {stride} that network {network!r} "
            f"needs at this patch; choose a patch it divides ({example}) or re-plan"
        )
    log(
        f"note: the plan was made for {plan['network']['name']} at patch {plan['patch_size']}; the topology of "
        f"{network} at patch {patch_size} follows the planner's rules, but its memory and time were not planned "
        f"(run `autoseg plan ... --network {network}` for that)"
    )
    return derived.to_dict()


def _divisible_patch_for(network: str, patch_size: Sequence[int], spacing: Sequence[float], width: int) -> list[int] | None:
    """The smallest patch from ``patch_size`` up that ``network``'s topology at that patch divides, or None.

    The topology (depth, attention windows) is chosen per patch, so the stride of ``patch_size`` rounded up
    can differ again: the advice 'a multiple of [4, 12, 16]' for nnformer led to [12, 24, 16], refused for
    [4, 16, 16]. Rounding is repeated until the patch holds (a few steps), keeping the family's ``min_slices``
    (ConResNet was advised a 1-slice patch its builder refuses)."""
    from autoseg.planning.topology import divisible_patch, plan_topology

    constraints, candidate = get_network_spec(network).constraints, list(patch_size)
    for _ in range(8):
        rounded = divisible_patch(candidate, plan_topology(candidate, spacing, constraints, width), constraints.min_slices)
        if rounded == candidate:
            return candidate
        candidate = rounded
    return None


# optimizer.name: the optimizers build_optimizer makes (config_rules refuses any other name).
OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(parameters: Any, settings: dict[str, Any]) -> torch.optim.Optimizer:
    name = settings["name"]
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=settings["lr"], momentum=settings["momentum"], nesterov=settings["nesterov"],
            weight_decay=settings["weight_decay"],
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(parameters, lr=settings["lr"], betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"])
    raise TrainingError(f"--set optimizer.name={name!r}: unknown optimizer; choose sgd, adam or adamw")


@dataclass
class NetworkRequest:
    """What the network is built from: family, plan, channels, patch and batch (batch: for the bf16 probe)."""

    name: str
    plan: dict[str, Any]
    in_channels: int
    n_outputs: int
    patch_size: list[int]
    batch_size: int


@dataclass
class ModelSetup:
    """The network, what the training step calls (``model``: aux-output wrapper, compiled, DDP-wrapped),
    its optimiser, memory format and autocast dtype, and what a checkpoint records to rebuild it."""

    network: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    memory_format: torch.memory_format
    amp_dtype: torch.dtype | None
    topology: dict[str, Any]
    network_options: dict[str, Any]


def _topology_and_options(request: NetworkRequest, config: dict[str, Any],
                          log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The topology at the run's patch and the builder's options (the plan's, then ``--set network_options``).
    The plan's options are its family's builder's: ``--network`` with another family (a ``vae`` of a segresnet
    plan given to unet) was refused as the user's unknown option, so they apply to the plan's family only."""
    topology = network_topology(request.plan, request.name, request.patch_size, log)
    topology["extra"] = {**topology.get("extra", {}), "patch_size": request.patch_size}
    planned = request.plan["network"].get("options", {}) if request.name == request.plan["network"]["name"] else {}
    options = {**planned, **config["network_options"]}
    options.setdefault("deep_supervision", config["loss"]["deep_supervision"])
    return topology, options


def meta_state_dict(request: NetworkRequest, config: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The network's state dict built on the meta device (shapes only: no memory, no weights, milliseconds): a
    network option the family refuses or a patch its topology cannot take raises here, before ``train`` writes
    anything, and pretrained weights are matched to it. None where a builder step needs real values (``.item()`` on
    a meta tensor): the real build raises the same errors."""
    topology, options = _topology_and_options(request, config, lambda _message: None)
    try:
        with torch.device("meta"):
            return create_network(request.name, topology, request.in_channels, request.n_outputs, **options).state_dict()
    except (NotImplementedError, RuntimeError):
        return None


def check_network_builds(request: NetworkRequest, config: dict[str, Any]) -> None:
    """Refuse, before anything is written, a network the family will not build (``meta_state_dict``)."""
    meta_state_dict(request, config)


def build_model(request: NetworkRequest, config: dict[str, Any], device: torch.device,
                context: DistributedContext, log: Callable[[str], None]) -> ModelSetup:
    """Build the network on ``device`` with the config's memory format, compile and optimiser settings."""
    patch = request.patch_size
    topology, options = _topology_and_options(request, config, log)
    dtype = amp_dtype(str(config["mixed_precision"]), device)
    if dtype == torch.bfloat16 and device.type == "cpu":
        dtype = checked_cpu_bf16(request, topology, options, log)
    network = create_network(request.name, topology, request.in_channels, request.n_outputs, **options).to(device)
    memory_format = training_memory_format(config["channels_last"], device, len(patch), dtype)
    network = network.to(memory_format=memory_format)
    model: torch.nn.Module = WithAux(network)
    if config["compile"]:
        model = torch.compile(model)
    model = wrap_model(model, context, device)
    optimizer = build_optimizer(network.parameters(), config["optimizer"])
    return ModelSetup(network, model, optimizer, memory_format, dtype, topology, options)


def checked_cpu_bf16(request: NetworkRequest, topology: dict[str, Any], options: dict[str, Any],
                     log: Callable[[str], None]) -> torch.dtype | None:
    """bf16 unless a child process's bf16 steps of this network crash or hang (networks/bf16_guard.py)."""
    spec = step_spec(request.name, topology, request.in_channels, request.n_outputs, options, request.patch_size,
                     request.batch_size)
    survived, why = bf16_step_survives(spec)
    if survived:
        return torch.bfloat16
    log(f"warning: {why} for {request.name} at patch {request.patch_size}, batch {request.batch_size} "
        "(a fault of oneDNN's bf16 kernels on this CPU, docs/troubleshooting.md); training in float32")
    return None
