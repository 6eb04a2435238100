"""Training settings a plan carries for a short budgeted schedule.

nnU-Net's SGD (learning rate 0.01, momentum 0.99) is tuned for 250,000 iterations. A compute budget on
a CPU affords a few thousand; there AdamW at 1e-3 trained the default U-Net to a higher Dice in the
same time (docs/benchmarks.md, "AdamW for short schedules"). A family states what it trains with on a
short schedule (``short_schedule_training`` in its registration, set only where measured); the planner
writes it into each 3D configuration whose budget affords at most ``SHORT_SCHEDULE_MAX_ITERATIONS``
at the recipe speed (``recipe_iterations``, the count the recipe was chosen by: like the recipe, the
optimizer must not follow timing noise or a faster host) as the configuration's ``training``
settings, which ``autoseg train`` applies over the defaults and under ``--set``. Long schedules, 2D
configurations (not measured) and families without such settings keep nnU-Net's defaults
(``training: {}``). Another optimizer keeps other state (Adam's two moments against SGD's momentum):
the configuration's memory model and prediction count it, and settings whose step would no longer fit
the plan's memory are left out.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from autoseg.networks import get_network_spec
from autoseg.planning import constants as C
from autoseg.planning.memory import MemoryModel
from autoseg.utils.mappings import deep_merge, flatten


def short_schedule_training(config: Mapping[str, Any], budget_seconds: float | None) -> dict[str, Any]:
    """The family's short-schedule settings where they apply to this planned configuration (else empty)."""
    return training_for(config["network"]["name"], config["spatial_dims"], config.get("recipe_iterations"),
                        budget_seconds)  # older and hand-written plans lack it


def training_for(network: str, spatial_dims: int, recipe_iterations: int | None,
                 budget_seconds: float | None) -> dict[str, Any]:
    """The family's short-schedule settings where they apply to a configuration of ``spatial_dims`` whose
    budget affords ``recipe_iterations`` at the recipe speed (else empty); the planner asks it while it
    sizes a candidate, whose checkpoints hold the state of the optimizer it will train with."""
    if budget_seconds is None or spatial_dims != 3 or recipe_iterations is None:
        return {}
    if recipe_iterations > C.SHORT_SCHEDULE_MAX_ITERATIONS:
        return {}
    return deep_merge({}, get_network_spec(network).short_schedule_training)  # a JSON-ready copy


def optimizer_of(settings: Mapping[str, Any]) -> str:
    """The optimizer a configuration's ``training`` settings train with (nnU-Net's SGD unless they name one)."""
    return settings.get("optimizer", {}).get("name", "sgd")


def apply(configurations: dict[str, dict[str, Any]], budget_seconds: float | None) -> list[str]:
    """Write each configuration's ``training`` settings (and the memory of its optimizer); the notes
    for those that have any."""
    notes = []
    for name, config in configurations.items():
        settings = short_schedule_training(config, budget_seconds)
        if config.get("memory_model"):
            settings = _fitting(name, config, settings, notes)
        config["training"] = settings
        note = describe(name, config)
        if note is not None:
            notes.append(note)
    return notes


def _fitting(name: str, config: dict[str, Any], settings: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """``settings`` if the step with their optimizer fits the plan's usable memory, else none (with a
    note); the configuration's memory model and prediction set for the optimizer that trains."""
    optimizer = optimizer_of(settings)
    model = MemoryModel(**config["memory_model"]).for_optimizer(optimizer)
    needed = model.predict(config["patch_size"], config["batch_size"])
    usable = (config.get("planned_for") or {}).get("memory_bytes_usable")
    if settings and usable is not None and needed > usable:
        notes.append(f"{name}: keeps nnU-Net's SGD although its schedule is short: {optimizer}'s state would take "
                     f"the step to {needed / 2**30:.2f} GiB, over the {usable / 2**30:.2f} GiB usable")
        settings, model = {}, model.for_optimizer("sgd")
        needed = model.predict(config["patch_size"], config["batch_size"])
    config["memory_model"], config["predicted_memory_bytes"] = asdict(model), needed
    return settings


def describe(name: str, config: Mapping[str, Any]) -> str | None:
    """The plan's note for a configuration that carries training settings."""
    training = config.get("training") or {}
    if not training:
        return None
    settings = ", ".join(f"{key}={value}" for key, value in flatten(training).items())
    return (f"{name}: trains with {settings}: {config['recipe_iterations']} iterations at the recipe speed "
            f"({config['num_iterations']} planned at this machine's) is a short schedule (at most "
            f"{C.SHORT_SCHEDULE_MAX_ITERATIONS} at the recipe speed, docs/planning.md), where this beat nnU-Net's "
            "SGD at equal time (docs/benchmarks.md); --set optimizer.name=sgd --set optimizer.lr=0.01 trains with "
            "nnU-Net's")
