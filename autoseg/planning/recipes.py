"""What one recipe (spacing, patch, topology, width) costs under a compute budget: the fixed costs at a
spacing, the iterations the budget affords it at the recipe and measured speeds, and which candidates of
one spacing are viable and chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from autoseg.networks import Topology
from autoseg.planning import accounting as A
from autoseg.planning import constants as C
from autoseg.planning import compute_budget as T
from autoseg.planning import rules, short_schedule
from autoseg.preprocessing.resampling import resampling_work, scheme_for
from autoseg.training.splits import NUM_FOLDS, fold_sizes
from autoseg.networks.bf16_guard import step_spec
from autoseg.utils.progress import default_workers
from autoseg.planning.context import PlanningContext
from autoseg.planning.memory_fit import budget_candidates, fit_memory


@dataclass
class Candidate:
    """One recipe under a compute budget and what it costs, at the recipe speed and as measured."""

    spacing: list[float]
    median_shape: list[float]
    patch: list[int]
    topology: Topology
    width: int
    validation_tta: bool
    recipe_iterations: int
    recipe_seconds: float
    seconds: float
    parts: A.BudgetParts
    iterations: int
    validation_fits: bool = True

    @property
    def planned_iterations(self) -> int:
        """The measured ``iterations`` rounded to whole epochs (``schedule``), as the plan's ``num_iterations``
        and its table hold them: the notes named the unrounded count (1219 beside the table's 1216)."""
        return T.schedule(self.iterations)[0]


@dataclass
class Costs:
    """The parts of a run that do not depend on the network: data preparation and, per case of one
    validation fold, the image shape at the spacing and the export back to the input geometry."""

    preprocess: float
    shapes: list[list[int]]
    export: list[float]

    def tiles(self, patch: Sequence[int]) -> float:
        """Sliding-window tiles of the largest fold's validation cases (``largest_fold_share`` of all cases)."""
        return sum(A.tiles_per_case(s, patch) for s in self.shapes) * largest_fold_share(len(self.shapes))


def largest_fold_share(cases: int) -> float:
    """The share of the cases the largest fold validates (``splits.fold_sizes``: the first ``cases % 5``
    folds take one more), and fold 0, the one a budget is tried on, is one of them. A fifth, the mean
    fold, priced 6 CT crops' fold 0 (2 cases) at 1.2 cases: 5 s of final validation where it took 22.
    With fewer cases than folds, ``train`` refuses folds 0-4 and fold ``all`` trains, which has no final
    validation (training reserves none: training/replanning.py), so none is priced: a 4-case plan kept
    a quarter of its cases' validation free, time the run never used."""
    if cases < NUM_FOLDS:
        return 0.0
    return max(fold_sizes(cases)) / cases


def costs_at(ctx: PlanningContext, fingerprint: dict[str, Any], forward: list[int], spacing: Sequence[float],
             dims: int) -> Costs:
    """Fixed costs at a (transposed) spacing; 2D configurations keep each case's own slice spacing."""
    shapes, export, case_seconds = [], [], []
    before = fingerprint.get("shapes_before_crop") or fingerprint["shapes_after_crop"]
    resampling = rules.resampling_parameters()
    for shape, case_spacing, full in zip(fingerprint["shapes_after_crop"], fingerprint["spacings"], before):
        target = [spacing[forward.index(a)] for a in range(3)]
        if dims == 2:
            target[forward[0]] = case_spacing[forward[0]]
        changed = any(abs(t - c) > 1e-3 * c for t, c in zip(target, case_spacing))
        resampled = [rules.shape_at_spacing(shape, case_spacing, target)[a] for a in forward]
        shapes.append(resampled)
        voxels = float(np.prod(full))
        export.append(A.export_seconds(voxels, ctx.n_classes, changed))
        work = None
        if changed:  # in the transposed order preprocessing resamples in, with its scheme
            scheme = scheme_for(resampling, [case_spacing[a] for a in forward], [target[a] for a in forward],
                                "image", dims)
            work = resampling_work([int(shape[a]) for a in forward], resampled, scheme)
        case_seconds.append(A.preprocess_case_seconds(voxels, ctx.in_channels, work, float(np.prod(resampled)),
                                                      ctx.n_foreground + 1))
    preprocess = A.preprocess_seconds(case_seconds, default_workers())
    return Costs(preprocess, shapes, [e * largest_fold_share(len(export)) for e in export])


def _evaluate(ctx: PlanningContext, costs: Costs, spacing: list[float], median: list[float], patch: list[int],
              topology: Topology, width: int) -> Candidate:
    """The iterations the budget affords a candidate at the recipe speed (which ranks candidates) and
    at the measured speed (what the plan predicts and its ``validation_tta``: the mirroring rule
    training applies to its own timing, so the plan predicts the validation the run does)."""
    assert ctx.budget_seconds is not None
    recipe_count, recipe_step, checkpoint = _recipe_affordable(ctx, costs, topology, patch, width)
    count, parts, step, tta = affordable_iterations(ctx, costs, topology, patch, C.MIN_BATCH_SIZE, width, checkpoint)
    recipe_tile = ctx.tile_seconds(topology, patch, width, recipe=True)
    return Candidate(spacing, median, patch, topology, width, tta, recipe_count, recipe_step, step, parts, count,
                     validation_fits=A.within_validation_share(costs.tiles(patch) * recipe_tile, ctx.budget_seconds))


def _recipe_affordable(ctx: PlanningContext, costs: Costs, topology: Topology, patch: list[int],
                       width: int) -> tuple[int, float, float]:
    """(iterations, seconds per iteration) of a candidate at the recipe speed, and the seconds of one of its
    checkpoints, which hold the state of the optimizer the plan will train it with: a schedule short enough
    for AdamW (planning/short_schedule.py) writes two moments per parameter where SGD writes one, so it
    affords a few iterations less (never so many more that the schedule would turn long)."""
    parameters = ctx.parameters(topology)
    checkpoint = A.checkpoint_seconds(parameters)
    count, _, step, _ = affordable_iterations(ctx, costs, topology, patch, C.MIN_BATCH_SIZE, width, checkpoint, recipe=True)
    settings = short_schedule.training_for(ctx.network, topology.spatial_dims, count, ctx.budget_seconds)
    optimizer = short_schedule.optimizer_of(settings)
    if optimizer != "sgd":
        checkpoint = A.checkpoint_seconds(parameters, optimizer)
        count, _, step, _ = affordable_iterations(ctx, costs, topology, patch, C.MIN_BATCH_SIZE, width, checkpoint, recipe=True)
    return count, step, checkpoint


def context_ok(patch: Sequence[int], median_shape: Sequence[float]) -> bool:
    """The context rule: every axis of the patch covers at least 0.25^(1/dims) of the median image."""
    share = C.CONTEXT_MIN_VOLUME_SHARE ** (1 / len(patch))
    return all(p >= math.floor(share * m) for p, m in zip(patch, median_shape))


def is_viable(candidate: Candidate, floor: int = C.ITERATION_FLOOR) -> bool:
    return candidate.validation_fits and candidate.recipe_iterations >= floor


def evaluate_spacing(ctx: PlanningContext, costs: Costs, spacing: list[float], median: list[float], dims: int,
                     require_context: bool = True, stop_at_preferred: bool = True) -> tuple[list[int], list[Candidate]]:
    """(memory-fitted patch, candidates in order) at one spacing: narrower networks at the fitted
    patch, then smaller patches, as long as the patch keeps enough context (``require_context``), up
    to the first that affords ``MIN_BUDGET_ITERATIONS`` (``stop_at_preferred``)."""
    axes_spacing, axes_median = spacing[3 - dims:], median[3 - dims:]
    fitted, fitted_topology, _ = fit_memory(ctx, axes_spacing, axes_median)
    evaluated: list[Candidate] = []
    for patch, topology, width in budget_candidates(ctx, fitted, fitted_topology, axes_spacing, axes_median):
        if require_context and not context_ok(patch, axes_median):
            break  # smaller patches only lose more context
        evaluated.append(_full_extent_if_cheaper(ctx, costs, _evaluate(ctx, costs, spacing, median, patch, topology, width),
                                                 axes_median))
        if stop_at_preferred and is_viable(evaluated[-1], C.MIN_BUDGET_ITERATIONS):
            break  # chosen whatever the floor
    return fitted, evaluated


def _full_extent_if_cheaper(ctx: PlanningContext, costs: Costs, candidate: Candidate, median: Sequence[float]) -> Candidate:
    """The candidate, or the same network with an axis that falls just short of the median image (one size
    step more covers it: a 2-slice patch of 3-slice volumes) grown to cover it, when that is cheaper overall:
    it needs fewer validation tiles (half along that axis), and the whole run, training and the priced final
    validation (``affordable_iterations``), affords at least as many iterations (ranked as below the floor)."""
    grown = []
    for axis, (size, step, extent) in enumerate(zip(candidate.patch, candidate.topology.size_multiple, median)):
        patch = [p + step if a == axis else p for a, p in enumerate(candidate.patch)]
        if (size < extent <= size + step and costs.tiles(patch) < costs.tiles(candidate.patch)
                and ctx.memory(candidate.topology).predict(patch, C.MIN_BATCH_SIZE) <= ctx.memory_budget_bytes):
            grown.append(_evaluate(ctx, costs, candidate.spacing, candidate.median_shape, patch, candidate.topology,
                                   candidate.width))
    full = max(grown, key=_rank, default=None)  # the first axis on a tie
    return full if full is not None and _rank(full) >= _rank(candidate) else candidate


def _rank(candidate: Candidate) -> tuple[bool, int]:
    """How candidates compare where the floor is not the question: validation within its share first, then
    the iterations at the recipe speed."""
    return candidate.validation_fits, candidate.recipe_iterations


def choose_candidate(fitted: list[int], evaluated: list[Candidate]) -> Candidate | None:
    """The recipe at one spacing: the widest network at the memory-fitted patch that affords
    ``MIN_BUDGET_ITERATIONS``, else the narrowest there if it reaches the floor (context is worth more
    than iterations), else the largest smaller patch that affords the preferred count, else the floor;
    None when nothing here is viable."""
    floor_choice = None
    for candidate in evaluated:
        if candidate.patch != fitted and floor_choice is not None and floor_choice.patch == fitted:
            return floor_choice
        if is_viable(candidate, C.MIN_BUDGET_ITERATIONS):
            return candidate
        if is_viable(candidate) and (floor_choice is None or floor_choice.patch == candidate.patch):
            floor_choice = candidate  # at one patch: the narrowest network that reaches the floor
    return floor_choice


def candidates_at(ctx: PlanningContext, fingerprint: dict[str, Any], forward: list[int], spacing: list[float], dims: int,
                  **rules_: bool) -> list[Candidate]:
    """The candidates ``evaluate_spacing`` evaluates at one (transposed) spacing, its fixed costs and
    median shape computed there; ``rules_`` are its ``require_context`` / ``stop_at_preferred``."""
    costs = costs_at(ctx, fingerprint, forward, spacing, dims)
    median = transposed_median(fingerprint, spacing, forward)
    return evaluate_spacing(ctx, costs, spacing, median, dims, **rules_)[1]


def bf16_crashes(ctx: PlanningContext, chosen: Candidate) -> bool:
    """Whether the chosen recipe's bf16 steps crash in a child process (networks/bf16_guard.py), as the
    trainer would find out before training in float32, about 2.6x slower on such CPUs: its iterations
    were then planned at a speed it never reaches (Dataset027 at 10 minutes trained 627 of 712)."""
    if ctx.bf16_check is None or ctx.mixed_precision != "auto":
        return False
    spec = step_spec(ctx.network, chosen.topology.to_dict(), ctx.in_channels, ctx.n_classes,
                     {"deep_supervision": True, **ctx.options}, chosen.patch, C.MIN_BATCH_SIZE)
    return not ctx.bf16_check(spec)


def affordable_iterations(ctx: PlanningContext, costs: Costs, topology: Topology, patch: list[int], batch: int, width: int,
                          checkpoint: float, recipe: bool = False) -> tuple[int, A.BudgetParts, float, bool]:
    """Iterations, parts, seconds per iteration and validation mirroring of a fixed recipe at the
    measured speed (or the recipe speed): mirrored while the mirrored passes fit the validation's share
    of the budget with ``VALIDATION_PLAN_MARGIN``."""
    assert ctx.budget_seconds is not None
    step = ctx.iteration_seconds(topology, patch, batch, width, recipe=recipe)
    tiles, tile = costs.tiles(patch), ctx.tile_seconds(topology, patch, width, recipe)
    passes = A.validation_passes(tiles, 2 ** len(ctx.mirror_axes(topology.spatial_dims)), tile, ctx.budget_seconds,
                                 C.VALIDATION_PLAN_MARGIN)
    validation = A.final_validation_seconds([tiles], passes, tile, [sum(costs.export)])
    count, parts = A.split_budget(ctx.budget_seconds, costs.preprocess, validation, step * C.VALIDATION_COST_FACTOR,
                                  checkpoint)
    return count, parts, step, passes > 1


def transposed_median(fingerprint: dict[str, Any], spacing: Sequence[float], forward: list[int]) -> list[float]:
    """The median image shape at a transposed spacing, transposed."""
    raw = [spacing[forward.index(a)] for a in range(3)]
    median = _median_shape_at(fingerprint, raw)
    return [median[a] for a in forward]

def _median_shape_at(fingerprint: dict[str, Any], spacing: Sequence[float]) -> list[float]:
    shapes = [rules.shape_at_spacing(s, sp, spacing) for s, sp in
              zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])]
    return [float(v) for v in np.median(np.asarray(shapes, dtype=float), axis=0)]
