"""Does the plan suit the device training runs on?

Plans are often made on another machine (``autoseg plan --gpu-memory 8`` on a laptop, then training
on a GPU node), so training compares the configuration's ``planned_for`` record with the device it
found: it refuses, with the fix, when the modelled memory cannot fit the GPU (on the CPU: the machine's
RAM), and warns when a GPU plan runs on the CPU, a CPU plan on a GPU, or a plan leaves most of a larger
GPU unused.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from autoseg.errors import TrainingError
from autoseg.planning import constants as C
from autoseg.planning import memory
from autoseg.planning.memory import MemoryModel

GIB = 2**30
# A GPU counts as larger than the plan's when it has this much more memory: nominal "8 GB" cards
# report 7.6-8 GiB, and plans treat GB as GiB.
LARGER_GPU_FACTOR = 1.25


def planned_for(plans: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The device record of a configuration (plans before this record: the plan-wide ``budget``)."""
    return plan.get("planned_for") or plans.get("budget") or {}


def modelled_memory(plan: dict[str, Any], patch_size: Sequence[int], batch_size: int, optimizer: str = "sgd") -> int | None:
    """Bytes of a training step at this patch and batch with this optimizer, from the plan's memory
    model (None if unknown)."""
    if plan.get("memory_model"):
        return _memory_model(plan, optimizer).predict(patch_size, batch_size)
    if list(patch_size) == list(plan["patch_size"]) and batch_size == plan["batch_size"]:
        return plan.get("predicted_memory_bytes")
    return None


def _memory_model(plan: dict[str, Any], optimizer: str) -> MemoryModel:
    return MemoryModel(**plan["memory_model"]).for_optimizer(optimizer)


def _replan(plans: dict[str, Any], options: str) -> str:
    name = plans.get("plans_name", "autosegPlans")
    return f"`autoseg plan {plans.get('dataset_name', 'DATASET')} {options} --plans-name {name}_new`"


def check_plan_device(
    plans: dict[str, Any],
    configuration: str,
    device_type: str,
    device_memory_bytes: int | None,
    patch_size: Sequence[int],
    batch_size: int,
    processes: int = 1,
    network: str | None = None,
    optimizer: str = "sgd",
) -> list[str]:
    """Warnings for training ``configuration`` on this device; ``TrainingError`` if it cannot fit.

    ``device_memory_bytes`` is the GPU's total memory (None where unknown: CPU, MPS);
    ``batch_size`` is one process's share of the batch, ``processes`` how many share it;
    ``network``: the family trained, when it is not the plan's its memory was not modelled;
    ``optimizer``: the one training runs with (its buffers count).
    """
    plan = plans["configurations"][configuration]
    target = planned_for(plans, plan)
    planned_gb = target.get("gpu_memory_gb")
    warnings = []
    if device_type == "cpu" and target.get("device") == "cuda":
        warnings.append(
            f"{configuration} was planned for a GPU ({planned_gb:g} GB) and will be slow on the CPU (nnU-Net's "
            f"schedule takes days here); for a plan sized to this machine's speed run {_replan(plans, '--budget 12h')}"
        )
    if device_type == "cuda" and target.get("device") == "cpu":
        warnings.append(
            f"{configuration} was planned for the CPU (a compute budget: narrower network or smaller patch than a "
            f"GPU affords); for a GPU plan run {_replan(plans, '')} on this machine"
        )
    other_network = network is not None and network != plan.get("network", {}).get("name", network)
    needed = None if other_network else modelled_memory(plan, patch_size, batch_size, optimizer)
    if needed is None:
        return warnings
    what = f"{configuration} at patch {list(patch_size)}, batch {batch_size} needs about {needed / GIB:.1f} GiB (modelled)"
    if device_type == "cpu":
        _refuse_beyond_ram(plans, plan, what, needed, patch_size, processes, optimizer)
    if device_type != "cuda" or device_memory_bytes is None:
        return warnings
    have = device_memory_bytes / GIB
    if needed > device_memory_bytes:
        raise TrainingError(f"{what}, more than this GPU's {have:.1f} GiB; {_fit_fix(plans, plan, patch_size, device_memory_bytes, processes, optimizer)}")
    if needed > device_memory_bytes * C.GPU_MEMORY_USABLE_FRACTION:
        warnings.append(
            f"{what}, over {C.GPU_MEMORY_USABLE_FRACTION:.0%} of this GPU's {have:.1f} GiB: it may run out of memory; "
            f"{_fit_fix(plans, plan, patch_size, device_memory_bytes, processes, optimizer)}"
        )
    if target.get("device") == "cuda" and planned_gb and device_memory_bytes > LARGER_GPU_FACTOR * planned_gb * GIB:
        warnings.append(
            f"{configuration} was planned for a smaller GPU ({planned_gb:g} GB; this one has {have:.0f} GiB) and uses "
            f"about {needed / device_memory_bytes:.0%} of it; for a larger patch and batch run "
            f"{_replan(plans, f'--gpu-memory {math.floor(have)}')}"
        )
    return warnings


def _refuse_beyond_ram(plans: dict[str, Any], plan: dict[str, Any], what: str, needed: int, patch_size: Sequence[int],
                       processes: int, optimizer: str) -> None:
    """On the CPU, refuse a step (of every process) whose modelled memory exceeds the machine's RAM: a
    ``--set patch_size`` or ``batch_size`` too large for it was ended by the kernel's out-of-memory killer
    without a word, or under a memory limit by torch's allocator as an internal error."""
    ram = memory.machine_ram_bytes()
    if needed * processes <= ram:
        return
    usable = ram * C.CPU_MEMORY_USABLE_FRACTION / processes
    fits = _memory_model(plan, optimizer).max_batch(patch_size, usable) if plan.get("memory_model") else 0
    smaller = f"--set batch_size={fits * processes}" if fits >= 1 else "a smaller --set patch_size=[...] and --set batch_size=2"
    each = f" in each of {processes} processes" if processes > 1 else ""
    raise TrainingError(
        f"{what}{each}, more than this machine's {ram / GIB:.1f} GiB of RAM; train with {smaller}, or plan for this "
        f"machine with {_replan(plans, '--budget 12h')}"
    )


def _fit_fix(plans: dict[str, Any], plan: dict[str, Any], patch_size: Sequence[int], device_memory_bytes: int,
             processes: int, optimizer: str) -> str:
    """Re-plan for this GPU, or the largest batch that fits it (else a smaller patch)."""
    replan = f"re-plan for it with {_replan(plans, f'--gpu-memory {math.floor(device_memory_bytes / GIB)}')}"
    usable = device_memory_bytes * C.GPU_MEMORY_USABLE_FRACTION
    fits = _memory_model(plan, optimizer).max_batch(patch_size, usable) if plan.get("memory_model") else 0
    if fits >= 1:
        return f"{replan}, or train with --set batch_size={fits * processes}"
    return f"{replan}, or train with a smaller --set patch_size=[...] and --set batch_size=2"
