"""The budgeted recipe search across spacings: the spacing ladder, the finest viable spacing, iterations
before resolution, thin structures and small classes kept drawn, and the notes that say why
(docs/planning.md, "Choosing resolution, context, network and iterations").
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from autoseg.errors import PlanError
from autoseg.planning import constants as C
from autoseg.planning.context import PlanningContext
from autoseg.planning.recipes import (
    Candidate, candidates_at, choose_candidate, context_ok, costs_at, evaluate_spacing, is_viable,
    transposed_median,
)


def spacing_ladder(spacing: Sequence[float], median_at: Callable[[list[float]], list[float]], dims: int
                   ) -> list[list[float]]:
    """Candidate spacings (transposed): the target, then coarser by ``SPACING_LADDER_STEP`` per step,
    only the finer axes (up to the coarsest) while anisotropic, so the coarse axis waits for the others; a 2D
    configuration coarsens only in-plane. Ends before a grown axis drops below
    ``SPACING_LADDER_MIN_EDGE`` voxels of the median image or beyond ``SPACING_LADDER_MAX_FACTOR``x."""
    target = np.asarray(spacing, dtype=float)
    axes = np.arange(3) >= 3 - dims
    ladder, current = [list(spacing)], target.copy()
    while True:
        coarsest = current[axes].max()
        if coarsest / current[axes].min() > C.LOWRES_ANISOTROPIC_RATIO:
            grown = np.where(axes & (current < coarsest), np.minimum(current * C.SPACING_LADDER_STEP, coarsest), current)
        else:
            grown = np.where(axes, current * C.SPACING_LADDER_STEP, current)
        if np.any(grown / target > C.SPACING_LADDER_MAX_FACTOR + 1e-9):
            return ladder
        median = median_at([float(v) for v in grown])
        if any(median[a] < C.SPACING_LADDER_MIN_EDGE for a in range(3) if grown[a] != current[a]):
            return ladder
        # sqrt(2) twice is 2.0000000000000004: a 35-voxel axis at 1 mm then resampled to 17, not 2 mm's 18 voxels
        ladder.append([float(v) for v in np.round(grown, C.SPACING_DECIMALS)])
        current = grown


def draws_structures(spacing: Sequence[float], target: Sequence[float], structure_mm: float | None,
                     voxels: float = C.MIN_STRUCTURE_VOXELS) -> bool:
    """Whether the typical structure keeps ``voxels`` across every axis the spacing grew from the
    target (the target itself always counts as drawn: it cannot be finer)."""
    grown = [s for s, t in zip(spacing, target) if s > t * (1 + 1e-9)]
    return structure_mm is None or not grown or structure_mm / max(grown) >= voxels


def typical_structure_mm(fingerprint: dict[str, Any]) -> float | None:
    """The median over the segmentation targets of each one's median thickness (mm); None when the
    fingerprint has no thickness statistics (written before autoseg measured them) or no target occurs."""
    values = [v for v in (fingerprint.get("median_structure_thickness_mm") or {}).values() if v is not None]
    return float(np.median(values)) if values else None


def search_budget(ctx: PlanningContext, name: str, spacing: Sequence[float], dims: int, fingerprint: dict[str, Any],
                  forward: list[int]) -> Candidate:
    """The finest spacing of the ladder at which a recipe is viable (enough context, the iteration
    floor, validation within its share). When no recipe anywhere reaches the floor, the candidate that
    affords the most iterations (every candidate keeps enough context): below the floor iterations cost
    more Dice than resolution or a larger patch (docs/planning.md, "Below the floor"). A viable 3D
    recipe short of ``MIN_BUDGET_ITERATIONS`` trades resolution for iterations while the typical
    structure stays drawn (``_coarsest_drawn``). Either way a 2D
    recipe too coarse to draw the typical structure gives way to one that draws it
    (``_keep_thin_structures``)."""
    median_at = functools.partial(transposed_median, fingerprint, forward=forward)
    ladder = spacing_ladder(spacing, median_at, dims)
    evaluated: list[Candidate] = []
    for candidate_spacing in ladder:
        costs = costs_at(ctx, fingerprint, forward, candidate_spacing, dims)
        fitted, candidates = evaluate_spacing(ctx, costs, candidate_spacing, median_at(candidate_spacing), dims)
        chosen = choose_candidate(fitted, candidates)
        if chosen is not None:
            if dims == 3 and chosen.recipe_iterations < C.MIN_BUDGET_ITERATIONS:
                chosen = _coarsest_drawn(ctx, name, fingerprint, forward, ladder, chosen)
            chosen = _keep_thin_structures(ctx, name, fingerprint, forward, ladder, chosen, dims)
            _note_spacing(ctx, name, chosen.spacing, spacing, dims)
            return chosen
        evaluated += candidates
    if not evaluated:
        raise PlanError(f"{name}: no patch with enough context fits the memory at any spacing; give more memory (--gpu-memory)")
    best = max(evaluated, key=lambda c: (c.validation_fits, c.recipe_iterations))
    _refuse_budget_without_training(ctx, name, evaluated)
    kept = _keep_thin_structures(ctx, name, fingerprint, forward, ladder, best, dims)
    if kept is not best:
        _note_spacing(ctx, name, kept.spacing, spacing, dims)
        return kept
    _note_spacing(ctx, name, best.spacing, spacing, dims)
    ctx.notes.append(_below_floor_note(ctx, name, best))
    return best


def _refuse_budget_without_training(ctx: PlanningContext, name: str, evaluated: list[Candidate]) -> None:
    """A budget that the fixed parts of a fold (startup, preprocessing, checkpoint, final validation) use up
    before any recipe's first iteration: ``--budget 5s`` planned the largest network at 0 iterations, which
    trained one step and ran 13 s, with only a note to expect a weak model."""
    if any(c.iterations > 0 for c in evaluated):
        return
    fixed = min(c.parts.total - c.parts.training for c in evaluated)
    raise PlanError(
        f"{name}: --budget {ctx.budget_seconds:g} s leaves no time to train on this machine: a fold's fixed parts "
        f"(startup, preprocessing, checkpoints, final validation) take about {fixed:.0f} s before the first iteration, "
        f"and {C.BUDGET_SAFETY_FRACTION:.0%} of the budget is kept free; give a larger --budget (minutes, e.g. --budget 10m)"
    )


def _below_floor_note(ctx: PlanningContext, name: str, best: Candidate) -> str:
    """Why the plan has few iterations. The floor is checked at the recipe speed (docs/planning.md,
    "Reproducible recipes"), so a machine faster than the reference trains more than the floor with the
    recipe a reference machine would get: say both counts, and warn of a weak model only where it is."""
    said = (f"{name}: at the reference speed recipes are chosen at, the budget of {ctx.budget_seconds:.0f} s affords "
            f"no recipe with {C.ITERATION_FLOOR} iterations and enough context at any spacing; planned the one with "
            f"the most (patch {best.patch}: {best.recipe_iterations} iterations at the reference speed, "
            f"{best.planned_iterations} at this machine's measured speed)")
    if best.iterations >= C.ITERATION_FLOOR:
        return said + "; a slower machine would train fewer, so give a larger --budget where the plan is reused"
    return said + "; expect a weak model or give a larger --budget"


def _coarsest_drawn(ctx: PlanningContext, name: str, fingerprint: dict[str, Any], forward: list[int],
                    ladder: list[list[float]], chosen: Candidate) -> Candidate:
    """For a 3D recipe short of ``MIN_BUDGET_ITERATIONS``, the recipe that affords the most iterations
    (within the context rule) at the coarsest spacing of the ladder, coarser than the chosen one, that
    still keeps the typical structure ``COARSE_STRUCTURE_VOXELS`` across: on such data iterations were
    worth more than resolution (docs/planning.md, "Iterations before resolution"). Context is not
    traded: without such a spacing, without thickness statistics, or when nothing there is viable,
    ``chosen`` stays."""
    structure_mm = typical_structure_mm(fingerprint)
    if structure_mm is None:
        return chosen
    drawn = [s for s in ladder[ladder.index(chosen.spacing) + 1:]
             if draws_structures(s, ladder[0], structure_mm, C.COARSE_STRUCTURE_VOXELS)]
    for spacing in reversed(drawn):
        viable = [c for c in candidates_at(ctx, fingerprint, forward, spacing, 3, stop_at_preferred=False) if is_viable(c)]
        if not viable:
            continue
        recipe = max(viable, key=lambda c: c.recipe_iterations)  # the larger patch on a tie
        if (recipe.spacing, recipe.patch, recipe.width) != (chosen.spacing, chosen.patch, chosen.width):
            ctx.notes.append(
                f"{name}: planned at {_mm(spacing)} mm with the patch {recipe.patch} that trains the most iterations "
                f"({recipe.planned_iterations}, against {chosen.planned_iterations} for {chosen.patch} at {_mm(chosen.spacing)} mm): "
                f"the typical structure ({structure_mm:.3g} mm thick) keeps {C.COARSE_STRUCTURE_VOXELS:g} voxels across")
        return recipe
    return chosen


def _keep_thin_structures(ctx: PlanningContext, name: str, fingerprint: dict[str, Any], forward: list[int],
                          ladder: list[list[float]], chosen: Candidate, dims: int) -> Candidate:
    """The chosen recipe, unless its spacing is too coarse to draw the typical structure: then, in 2D,
    the largest patch that reaches the iteration floor at the coarsest spacing that still draws it (the
    context rule yields to resolution: a structure under two voxels across cannot be drawn at all). In
    3D the coarse recipe stays, with a note: there the evidence is the other way (on Dataset004 a patch
    below the context share reached Dice 0.2, docs/planning.md)."""
    structure_mm = typical_structure_mm(fingerprint)
    target = ladder[0]
    if draws_structures(chosen.spacing, target, structure_mm):
        return chosen
    assert structure_mm is not None
    drawn = [s for s in ladder if draws_structures(s, target, structure_mm)][-1]
    relaxed = None
    if dims == 2:
        candidates = candidates_at(ctx, fingerprint, forward, drawn, dims, require_context=False)
        relaxed = next((c for c in candidates if is_viable(c)), None)
        if relaxed is None:
            relaxed = _most_iterations_drawn(ctx, name, fingerprint, forward, drawn, structure_mm, candidates)
            if relaxed is not None:
                return relaxed
    if relaxed is None:
        ctx.notes.append(
            f"{name}: at {_mm(chosen.spacing[3 - dims:])} mm the typical structure ({structure_mm:.3g} mm thick) is "
            f"under {C.MIN_STRUCTURE_VOXELS:g} voxels across; expect thin parts to be lost or give a larger --budget")
        return chosen
    ctx.notes.append(
        f"{name}: not coarser than {_mm(drawn[3 - dims:])} mm, where the typical structure ({structure_mm:.3g} mm "
        f"thick) keeps {C.MIN_STRUCTURE_VOXELS:g} voxels across; no patch with enough context reaches "
        f"{C.ITERATION_FLOOR} iterations there, so the patch {relaxed.patch} covers less of the image than the "
        "context rule asks")
    return relaxed


def _most_iterations_drawn(ctx: PlanningContext, name: str, fingerprint: dict[str, Any], forward: list[int],
                           drawn: list[float], structure_mm: float, candidates: list[Candidate]) -> Candidate | None:
    """In 2D, when no patch reaches the iteration floor at the coarsest spacing ``drawn`` that draws the
    typical structure, the candidate there (of ``candidates``) that affords the most iterations within the
    context rule, as below the floor anywhere: resolution beats iterations for a structure the coarser
    recipe cannot draw. On 128x128 DRIVE crops (vessels 2.2 px) at 1 minute, the 4x coarser recipe that
    affords the most iterations (1,999 and 3,680 trained) reached vessel Dice 0.22 and 0.37 on two folds,
    the native spacing's 64x64 patch (664 and 723) 0.58 and 0.63. None when nothing there trains."""
    median = transposed_median(fingerprint, drawn, forward)[1:]
    within = [c for c in candidates if context_ok(c.patch, median) and c.iterations > 0]
    if not within:
        return None
    best = max(within, key=lambda c: (c.validation_fits, c.recipe_iterations))
    ctx.notes.append(
        f"{name}: not coarser than {_mm(drawn[1:])} mm, where the typical structure ({structure_mm:.3g} mm thick) "
        f"keeps {C.MIN_STRUCTURE_VOXELS:g} voxels across; no patch there reaches {C.ITERATION_FLOOR} iterations at "
        f"the reference speed, so the one with the most within the context rule (patch {best.patch}: "
        f"{best.recipe_iterations} iterations at the reference speed, {best.planned_iterations} at this machine's measured "
        "speed); expect a weak model or give a larger --budget")
    return best


def _note_spacing(ctx: PlanningContext, name: str, chosen: Sequence[float], target: Sequence[float], dims: int) -> None:
    if list(chosen) != list(target):
        ctx.notes.append(
            f"{name}: planned at {_mm(chosen[3 - dims:])} mm instead of {_mm(target[3 - dims:])} mm: "
            "the target spacing gives no recipe with enough context and iterations within the budget"
        )


def _class_voxels(fingerprint: dict[str, Any], values: list[int]) -> list[float]:
    """Per case, the voxels of the label values (a region's, summed) at the fingerprint's spacing."""
    counts = fingerprint.get("class_voxel_counts") or {}
    per_value = [counts[str(v)] for v in values if str(v) in counts]
    return [float(sum(case)) for case in zip(*per_value)]


def small_class_notes(name: str, fingerprint: dict[str, Any], chosen: Sequence[float], target: Sequence[float],
                      dims: int) -> list[str]:
    """Which classes may vanish at the coarser spacing a budget chose, by name: each class (or region) whose
    smallest case holds fewer than ``MIN_STRUCTURE_VOXELS ** dims`` voxels there (with its median and smallest
    voxel counts there and in the fingerprint), and each whose median thickness is under MIN_STRUCTURE_VOXELS
    voxels across at the finest axis there (a thin but large class, ACDC's myocardium ~6.5 mm thick at 4.42 mm,
    has many voxels). The typical-structure rule judges the median target only, so a small or thin class
    beside large ones was lost without its name being said. A class's voxels are counted over the whole case:
    in 2d, a structure of a few pixels per slice over many slices is named by its thickness only, as the
    fingerprint has no per-slice counts."""
    if list(chosen) == list(target):
        return []
    small = [detail for label, values in _foreground_targets(fingerprint)
             if (detail := _small_class_detail(label, values, fingerprint, float(np.prod(chosen)), dims))]
    thickness = fingerprint.get("median_structure_thickness_mm") or {}
    finest = min(chosen[3 - dims:])
    thin = [f"'{label}' ({thickness[label]:.3g} mm, {thickness[label] / finest:.2g} voxels)"
            for label, _ in _foreground_targets(fingerprint)
            if thickness.get(label) is not None and thickness[label] / finest < C.MIN_STRUCTURE_VOXELS]
    parts = []
    if small:
        slices = " over all their slices" if dims == 2 else ""
        parts.append(f"some cases hold fewer than {C.MIN_STRUCTURE_VOXELS ** dims:g} voxels of {', '.join(small)}{slices}")
    if thin:
        parts.append(f"{', '.join(thin)} {'is' if len(thin) == 1 else 'are'} under {C.MIN_STRUCTURE_VOXELS:g} voxels thick")
    if not parts:
        return []
    return [f"{name}: at {_mm(chosen[3 - dims:])} mm {'; '.join(parts)}, which may be lost; give a larger --budget to "
            f"keep the target spacing {_mm(target[3 - dims:])} mm"]


def _foreground_targets(fingerprint: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """Each segmentation target's name and label values (a region's several), background and ignore left out."""
    targets = []
    for label, value in fingerprint["labels"].items():
        values = value if isinstance(value, list) else [value]
        if label not in ("background", "ignore") and values and values != [0]:
            targets.append((label, values))
    return targets


def _small_class_detail(label: str, values: list[int], fingerprint: dict[str, Any], voxel_mm3: float,
                        dims: int) -> str | None:
    """The class's median and smallest voxel counts at a voxel of ``voxel_mm3`` (and at the fingerprint's
    spacing) when its smallest case holds fewer than ``MIN_STRUCTURE_VOXELS ** dims`` there; else None."""
    native = [v for v in _class_voxels(fingerprint, values) if v > 0]
    volumes = fingerprint.get("class_volumes_mm3") or {}
    coarse = [sum(case) / voxel_mm3 for case in zip(*(volumes.get(str(v), []) for v in values)) if sum(case) > 0]
    if not coarse or min(coarse) >= C.MIN_STRUCTURE_VOXELS ** dims:
        return None
    there = f"'{label}' (median {np.median(coarse):.3g}, smallest {min(coarse):.3g} voxels there"
    return f"{there}; {np.median(native):.3g} and {min(native):.3g} at the fingerprint's spacing)" if native else f"{there})"


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values)
