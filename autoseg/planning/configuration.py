"""One configuration's plan (2d, 3d_fullres) from the memory fit or the budget search, and the 3d_lowres /
cascade decision beside 3d_fullres.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np

from autoseg.errors import PlanError
from autoseg.networks import Topology
from autoseg.planning import accounting as A
from autoseg.planning import constants as C
from autoseg.planning import compute_budget as T
from autoseg.planning import rules
from autoseg.planning.budget_search import search_budget, small_class_notes
from autoseg.planning.context import CONFIG_CASCADE, CONFIG_FULLRES, CONFIG_LOWRES, PlanningContext
from autoseg.planning.memory import MemoryModel
from autoseg.planning.memory_fit import fit_memory
from autoseg.planning.recipes import Candidate, affordable_iterations, bf16_crashes, costs_at, transposed_median


_MAX_LOWRES_STEPS = 500


@dataclass(frozen=True)
class _Recipe:
    """What one configuration trains and what it is predicted to cost: the memory fit's, or the budget's."""

    spacing: list[float]
    median: list[float]
    patch: list[int]
    topology: Topology
    model: MemoryModel
    batch: int
    width: int
    tta: bool
    seconds: float | None
    recipe_seconds: float | None = None
    iterations: int = C.MAX_ITERATIONS
    parts: A.BudgetParts | None = None
    recipe_iterations: int | None = None


def plan_configuration(ctx: PlanningContext, name: str, spacing: Sequence[float], dims: int, fingerprint: dict[str, Any],
                       forward: list[int], data_identifier: str) -> dict[str, Any]:
    """One configuration; ``spacing`` is the 3 transposed target values. Without a budget, or when
    the memory plan affords the full schedule, nnU-Net's memory-fitted plan; else the budget search."""
    recipe = _memory_fitted(ctx, spacing, dims, fingerprint, forward)
    if ctx.budget_seconds is not None:
        recipe = _budgeted(ctx, name, recipe, dims, fingerprint, forward)
    return _configuration_entry(ctx, recipe, dims, fingerprint, data_identifier)


def _memory_fitted(ctx: PlanningContext, spacing: Sequence[float], dims: int, fingerprint: dict[str, Any],
                   forward: list[int]) -> _Recipe:
    """nnU-Net's plan: the largest patch that fits the memory at the target spacing, the batch that fills
    the memory (capped by the dataset's size), base width, the full schedule."""
    median = transposed_median(fingerprint, spacing, forward)
    patch, topology, model = fit_memory(ctx, list(spacing)[3 - dims:], median[3 - dims:])
    raw_spacing = [spacing[forward.index(a)] for a in range(3)]
    batch = min(model.max_batch(patch, ctx.memory_budget_bytes),
                rules.max_batch_size(patch, _dataset_voxels(fingerprint, raw_spacing)))
    batch = max(C.MIN_BATCH_SIZE, batch)
    seconds = ctx.iteration_seconds(topology, patch, batch, C.BASE_FEATURES)
    return _Recipe(list(spacing), median, patch, topology, model, batch, C.BASE_FEATURES, True, seconds)


def _budgeted(ctx: PlanningContext, name: str, fitted: _Recipe, dims: int, fingerprint: dict[str, Any],
              forward: list[int]) -> _Recipe:
    """The memory-fitted recipe when the budget affords its full schedule and its validation within its
    share, with the iterations it affords; else the budget search's recipe at batch 2."""
    assert ctx.budget_seconds is not None
    recipe = ctx.iteration_seconds(fitted.topology, fitted.patch, fitted.batch, fitted.width, recipe=True)
    costs = costs_at(ctx, fingerprint, forward, fitted.spacing, dims)
    checkpoint = A.checkpoint_seconds(ctx.parameters(fitted.topology))
    validation = A.final_validation_seconds([costs.tiles(fitted.patch)], 2 ** len(ctx.mirror_axes(dims)),
                                            ctx.tile_seconds(fitted.topology, fitted.patch, fitted.width, True),
                                            [sum(costs.export)])
    affordable, _ = A.split_budget(ctx.budget_seconds, costs.preprocess, validation, recipe * C.VALIDATION_COST_FACTOR,
                                   checkpoint)
    if affordable >= C.MAX_ITERATIONS and A.within_validation_share(validation, ctx.budget_seconds):
        iterations, parts, _, tta = affordable_iterations(ctx, costs, fitted.topology, fitted.patch, fitted.batch,
                                                          fitted.width, checkpoint)
        return replace(fitted, recipe_seconds=recipe, iterations=iterations, parts=parts, tta=tta,
                       recipe_iterations=affordable)
    chosen = _searched(ctx, name, fitted.spacing, dims, fingerprint, forward)
    return _Recipe(chosen.spacing, chosen.median_shape, chosen.patch, chosen.topology, ctx.memory(chosen.topology),
                   C.MIN_BATCH_SIZE, chosen.width, chosen.validation_tta, chosen.seconds, chosen.recipe_seconds,
                   chosen.iterations, chosen.parts, chosen.recipe_iterations)


def _searched(ctx: PlanningContext, name: str, spacing: list[float], dims: int, fingerprint: dict[str, Any],
              forward: list[int]) -> Candidate:
    """The budget search's recipe, searched again at float32 speed when its bf16 steps crash on this CPU,
    with a note on each class it may lose at a coarser spacing."""
    first_note = len(ctx.notes)
    chosen = search_budget(ctx, name, spacing, dims, fingerprint, forward)
    if bf16_crashes(ctx, chosen):
        del ctx.notes[first_note:]  # the bf16 search's notes no longer hold
        ctx.notes.append(
            f"{name}: bf16 training steps of the chosen network ({chosen.patch}) crash on this CPU "
            "(oneDNN, docs/troubleshooting.md), so training will run in float32: planned at float32 speed")
        chosen = search_budget(replace(ctx, mixed_precision="off"), name, spacing, dims, fingerprint, forward)
    ctx.notes.extend(small_class_notes(name, fingerprint, chosen.spacing, spacing, dims))
    return chosen


def _configuration_entry(ctx: PlanningContext, recipe: _Recipe, dims: int, fingerprint: dict[str, Any],
                         data_identifier: str) -> dict[str, Any]:
    """The plans file's entry for a recipe, its iterations rounded to whole epochs and its predicted
    parts recomputed for them."""
    num_iterations, per_epoch = T.schedule(recipe.iterations)
    parts = recipe.parts
    if parts is not None:
        parts = A.parts_for(num_iterations, parts.preprocess, parts.final_validation,
                            recipe.seconds * C.VALIDATION_COST_FACTOR,
                            parts.checkpoints / A.checkpoint_files(recipe.iterations, C.ITERATIONS_PER_EPOCH), per_epoch)
    return {
        "data_identifier": data_identifier,
        "spatial_dims": dims,
        "spacing": [float(s) for s in recipe.spacing],
        "median_shape": [float(s) for s in recipe.median],
        "patch_size": [int(p) for p in recipe.patch],
        "batch_size": int(recipe.batch),
        "normalization": rules.normalization_schemes(fingerprint),
        "resampling": rules.resampling_parameters(),
        "network": {"name": ctx.network, "topology": recipe.topology.to_dict(), "options": dict(ctx.options)},
        "width": recipe.width,
        "mirror_axes": ctx.mirror_axes(dims),
        "validation_tta": recipe.tta,
        "predicted_memory_bytes": recipe.model.predict(recipe.patch, recipe.batch),
        "memory_model": asdict(recipe.model),
        "planned_for": dict(ctx.planned_for),
        "predicted_seconds_per_iteration": _rounded(recipe.seconds, 4),
        "recipe_seconds_per_iteration": _rounded(recipe.recipe_seconds, 4),
        "num_iterations": num_iterations,
        "recipe_iterations": recipe.recipe_iterations,
        "iterations_per_epoch": per_epoch,
        "predicted_seconds": parts.to_dict() if parts is not None else None,
        "predicted_total_seconds": round(parts.total, 1) if parts is not None else None,
        "previous_stage": None,
        "next_stage": None,
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)




def _dataset_voxels(fingerprint: dict[str, Any], spacing: Sequence[float]) -> float:
    return float(sum(np.prod(rules.shape_at_spacing(s, sp, spacing)) for s, sp in
                     zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])))


def _plan_lowres(ctx: PlanningContext, fullres: dict[str, Any], forward: list[int], fingerprint: dict[str, Any],
                 plans_name: str) -> dict[str, Any] | None:
    """3d_lowres: coarser spacing until the patch covers 25% of the median image (reference §1.3)."""
    spacing = list(fullres["spacing"])
    for _ in range(_MAX_LOWRES_STEPS):
        spacing = rules.grow_lowres_spacing(spacing)
        median = transposed_median(fingerprint, spacing, forward)
        patch, _, _ = fit_memory(ctx, spacing, median)
        if np.prod(patch) / np.prod(median) >= C.LOWRES_TRIGGER_COVERAGE:
            break
    if np.prod(fullres["median_shape"]) / np.prod(median) < C.LOWRES_MIN_VOXEL_RATIO:
        ctx.notes.append(f"{CONFIG_LOWRES}: dropped, it would save less than {C.LOWRES_MIN_VOXEL_RATIO:g}x voxels")
        return None
    return plan_configuration(ctx, CONFIG_LOWRES, spacing, 3, fingerprint, forward, f"{plans_name}_{CONFIG_LOWRES}")


def _cascade(ctx: PlanningContext, fullres: dict[str, Any], n_foreground: int) -> dict[str, Any]:
    """3d_cascade_fullres: the fullres plan with one more input channel per foreground label (its data
    is fullres', so nothing more to preprocess)."""
    cascade = json.loads(json.dumps(fullres))
    topology = Topology.from_dict(fullres["network"]["topology"])
    channels = ctx.in_channels + n_foreground
    model = ctx.memory(topology, channels)
    cascade["predicted_memory_bytes"] = model.predict(fullres["patch_size"], fullres["batch_size"])
    cascade["memory_model"] = asdict(model)
    seconds = ctx.iteration_seconds(topology, fullres["patch_size"], fullres["batch_size"], fullres["width"], channels)
    cascade["predicted_seconds_per_iteration"] = _rounded(seconds, 4)
    parts = fullres["predicted_seconds"]
    if parts is not None and seconds is not None:
        scaled = A.BudgetParts(0.0, parts["startup"], parts["training"] * seconds / fullres["predicted_seconds_per_iteration"],
                               parts["checkpoints"], parts["final_validation"])
        cascade["predicted_seconds"], cascade["predicted_total_seconds"] = scaled.to_dict(), round(scaled.total, 1)
    cascade["previous_stage"] = CONFIG_LOWRES
    return cascade


def plan_3d(ctx: PlanningContext, wanted: set[str], spacing: list[float], forward: list[int], fingerprint: dict[str, Any],
            plans_name: str, explicit: bool) -> dict[str, dict[str, Any]]:
    """3d_fullres, and 3d_lowres with the cascade when the fullres patch covers too little of the
    median image (at the target spacing: a budget that coarsened fullres already chose resolution).
    ``explicit``: the user asked for these configurations, so one that does not apply is an error."""
    fullres = plan_configuration(ctx, CONFIG_FULLRES, spacing, 3, fingerprint, forward, f"{plans_name}_{CONFIG_FULLRES}")
    lowres = None
    coverage = np.prod(fullres["patch_size"]) / np.prod(transposed_median(fingerprint, spacing, forward))
    if wanted & {CONFIG_LOWRES, CONFIG_CASCADE} and fullres["spacing"] != spacing:
        ctx.notes.append(f"{CONFIG_LOWRES}: not planned, the budget already trains {CONFIG_FULLRES} at a coarser "
                         "spacing (a cascade needs a full-resolution stage)")
    elif wanted & {CONFIG_LOWRES, CONFIG_CASCADE} and coverage < C.LOWRES_TRIGGER_COVERAGE:
        lowres = _plan_lowres(ctx, fullres, forward, fingerprint, plans_name)
    elif wanted & {CONFIG_LOWRES, CONFIG_CASCADE}:
        ctx.notes.append(f"{CONFIG_LOWRES}: not needed, the fullres patch covers {coverage:.0%} of the median image")
    if wanted & {CONFIG_LOWRES, CONFIG_CASCADE} and lowres is None and explicit:
        raise PlanError(
            f"{fingerprint['dataset_name']}: {CONFIG_LOWRES}/{CONFIG_CASCADE} do not apply ({ctx.notes[-1]}); "
            f"plan {CONFIG_FULLRES} instead"
        )
    configurations = {}
    if CONFIG_FULLRES in wanted or lowres is not None:
        configurations[CONFIG_FULLRES] = fullres
    if lowres is not None:
        configurations[CONFIG_LOWRES] = lowres
        lowres["next_stage"] = CONFIG_CASCADE
        configurations[CONFIG_CASCADE] = _cascade(ctx, fullres, ctx.n_foreground)
    return configurations
