"""``autoseg plan``: fingerprint -> plans file, under a memory budget and optionally a compute budget.

Order of decisions per configuration: spacing and transpose (rules.py), the largest patch whose
measured memory model fits the memory budget at batch 2 (reference §1.3's shrinking order), the
batch that fills the memory (capped at 5% of the dataset), then, under a compute budget, a joint
search over spacing, patch, depth and width: the finest spacing at which a recipe gives enough context
and iterations once data preparation, validation and checkpoints are paid (docs/planning.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from decimal import Decimal
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from autoseg import __version__
from autoseg.dataset.imageio import NATURAL_2D_ENDINGS, SUPPORTED_ENDINGS
from autoseg.dataset.verify import MAX_SPACING_MM
from autoseg.errors import FingerprintError, PlanError
from autoseg.networks import Topology, default_network, get_network_spec
from autoseg.planning import accounting as A
from autoseg.planning import constants as C
from autoseg.planning import compute_budget as T
from autoseg.planning import mirroring, rules, short_schedule
from autoseg.planning.memory import MemoryModel, calibrate_memory, machine_ram_bytes
from autoseg.planning.plans import format_plan_table, plans_path, write_plans
from autoseg.planning.topology import divisible_patch, features_per_stage, plan_topology, shrink_patch
from autoseg.preprocessing.resampling import implausible_resampling, resampling_work, scheme_for
from autoseg.training.splits import NUM_FOLDS, fold_sizes
from autoseg.networks.bf16_guard import bf16_step_survives, step_spec
from autoseg.networks.registry import TopologyConstraints
from autoseg.utils.cpu_load import applied, idle_thread_choice
from autoseg.utils.device import autocast_dtype, choose_device, device_memory_bytes
from autoseg.utils.duration import check_budget_seconds
from autoseg.utils.finite import is_finite_number
from autoseg.utils.names import string_list
from autoseg.utils.shapes import single_slice_axis
from autoseg.utils.progress import default_workers

if TYPE_CHECKING:
    from autoseg.paths import DatasetSpec

CONFIG_2D, CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE = "2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"
ALL_CONFIGURATIONS = (CONFIG_2D, CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE)
_FINGERPRINT_KEYS = (
    "dataset_name", "channel_names", "labels", "file_ending", "spacings", "shapes_after_crop",
    "median_relative_size_after_crop", "foreground_intensity_properties_per_channel", "is_2d",
)
_CT_INTENSITY_KEYS = ("percentile_00_5", "percentile_99_5", "mean", "std")  # what CT normalization reads (rules.py)
_MAX_LOWRES_STEPS = 500
TimingFactory = Callable[[int, int, str], T.TimingModel]  # (spatial_dims, width, mixed_precision) -> timing model
Bf16Check = Callable[[dict[str, Any]], bool]  # a bf16 guard spec -> whether its bf16 steps survive


@dataclass
class _Context:
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


# ----------------------------------------------------------------------------------- fingerprint
def check_fingerprint(fingerprint: Any, source: str) -> dict[str, Any]:
    """The fields planning reads, present and consistent; ``FingerprintError`` otherwise."""
    fix = "delete it and re-run `autoseg fingerprint`"
    if not isinstance(fingerprint, dict):
        raise FingerprintError(f"{source}: a fingerprint must be a JSON object; {fix}")
    missing = [k for k in _FINGERPRINT_KEYS if k not in fingerprint]
    if missing:
        raise FingerprintError(f"{source}: missing {', '.join(missing)}; {fix}")
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    if not spacings or len(spacings) != len(shapes):
        raise FingerprintError(
            f"{source}: {len(spacings)} spacings for {len(shapes)} shapes (need one of each per case); {fix}"
        )
    try:
        spacing_array = np.asarray(spacings, dtype=float)
        shape_array = np.asarray(shapes, dtype=float)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise FingerprintError(f"{source}: spacings and shapes must be lists of 3 numbers per case; {fix}") from None
    if spacing_array.ndim != 2 or spacing_array.shape[1] != 3 or shape_array.shape != spacing_array.shape:
        raise FingerprintError(f"{source}: spacings and shapes must be lists of 3 numbers per case; {fix}")
    if not (np.all(spacing_array > 0) and np.all(shape_array >= 1)):
        raise FingerprintError(f"{source}: spacings must be > 0 and shapes >= 1 in every case; {fix}")
    _check_spacings_verifiable(fingerprint, spacing_array, source)
    if not all(is_finite_number(v) for row in [*spacings, *shapes] for v in row):  # "1" was converted, then failed
        raise FingerprintError(f"{source}: spacings and shapes must be lists of 3 numbers per case; {fix}")
    if not all(is_finite_number(v, integer=True) for row in shapes for v in row):  # 36.5 voxels planned on
        raise FingerprintError(f"{source}: shapes_after_crop must hold whole voxel counts, got {_first_fractional(shapes)!r}; {fix}")
    _check_field_types(fingerprint, source, fix)
    return fingerprint


def _check_field_types(fingerprint: dict[str, Any], source: str, fix: str) -> None:
    """The types of the other fields planning reads: a hand-edited fingerprint with labels as a list, a
    relative size of null or a CT channel without its percentiles stopped planning with an internal
    AttributeError, TypeError or KeyError, and a NaN mean planned a normalization into NaN."""
    for key in ("labels", "channel_names", "foreground_intensity_properties_per_channel"):
        if not isinstance(fingerprint[key], dict):
            raise FingerprintError(f"{source}: {key} must be a JSON object; {fix}")
    case_ids = fingerprint.get("case_ids")
    if case_ids is not None and (not isinstance(case_ids, list) or len(case_ids) != len(fingerprint["spacings"])):
        # the size check walks cases and ids together: 1 id for 4 cases checked only the first case
        raise FingerprintError(f"{source}: case_ids must list one id per case ({len(fingerprint['spacings'])}); {fix}")
    if not fingerprint["channel_names"]:
        raise FingerprintError(f"{source}: channel_names must name at least one channel; {fix}")
    if not isinstance(fingerprint["is_2d"], bool):  # "yes" was taken as true, "" as false
        raise FingerprintError(f"{source}: is_2d must be true or false, got {fingerprint['is_2d']!r}; {fix}")
    if fingerprint["file_ending"] not in SUPPORTED_ENDINGS:  # 5 was planned on and written into the plans
        raise FingerprintError(f"{source}: file_ending must be one of {', '.join(SUPPORTED_ENDINGS)}, "
                               f"got {fingerprint['file_ending']!r}; {fix}")
    relative_size = fingerprint["median_relative_size_after_crop"]
    if not (is_finite_number(relative_size) and 0 < relative_size <= 1):  # -3 chose the nonzero mask without a word
        raise FingerprintError(f"{source}: median_relative_size_after_crop must be a number > 0 and <= 1 (the median "
                               f"share of an image its crop to the nonzero region keeps), got {relative_size!r}; {fix}")
    statistics = fingerprint["foreground_intensity_properties_per_channel"]
    absent = [c for c in fingerprint["channel_names"] if c not in statistics]
    if absent:
        raise FingerprintError(f"{source}: no intensity statistics for channel(s) {', '.join(absent)}; {fix}")
    for channel, name in fingerprint["channel_names"].items():
        props = statistics[channel]
        if not isinstance(props, dict):
            raise FingerprintError(f"{source}: the intensity statistics of channel {channel} must be a JSON object; {fix}")
        is_ct = str(name).strip().lower() == C.CT_CHANNEL_NAME
        if is_ct and not all(is_finite_number(props.get(key)) for key in _CT_INTENSITY_KEYS):
            raise FingerprintError(f"{source}: the intensity statistics of CT channel {channel} need a finite number "
                                   f"for each of {', '.join(_CT_INTENSITY_KEYS)}; {fix}")
    _check_thickness(fingerprint, source, fix)


def _first_fractional(shapes: list[list[Any]]) -> Any:
    """The first size in ``shapes`` that is not a whole number, to name in the refusal."""
    return next(v for row in shapes for v in row if not is_finite_number(v, integer=True))


def _check_thickness(fingerprint: dict[str, Any], source: str, fix: str) -> None:
    """The typical structure's statistics, which fingerprints written before autoseg measured them lack: a
    hand-edited list or "3" stopped planning with an internal AttributeError or TypeError, and a thickness of
    0, below 0 or NaN planned as if no coarser spacing could draw the structure ("-5 mm thick" in its notes)."""
    thickness = fingerprint.get("median_structure_thickness_mm")
    if thickness is None:
        return
    if not isinstance(thickness, dict) or not all(v is None or is_finite_number(v) and v > 0 for v in thickness.values()):
        raise FingerprintError(f"{source}: median_structure_thickness_mm must map each target to its thickness in mm, "
                               f"a number > 0 (null where no case holds it), got {thickness!r}; {fix}")


def _check_spacings_verifiable(fingerprint: dict[str, Any], spacing_array: np.ndarray, source: str) -> None:
    """Refuse a voxel side that ``autoseg verify`` refuses (beyond ``MAX_SPACING_MM``, or infinite): no
    fingerprint computed by autoseg holds one, so the file was edited by hand. 1e200 mm planned into an
    internal OverflowError, and the case's header was blamed where the fingerprint was wrong."""
    beyond = np.argwhere(~(spacing_array <= MAX_SPACING_MM))
    if beyond.size == 0:
        return
    index = int(beyond[0][0])
    case_ids = fingerprint.get("case_ids") or []
    case = case_ids[index] if index < len(case_ids) else f"number {index}"
    shown = " x ".join(f"{v:g}" for v in spacing_array[index])
    raise FingerprintError(
        f"{source}: case {case} has voxel spacing {shown} mm, beyond the {MAX_SPACING_MM:g} mm `autoseg verify` "
        "accepts (a fingerprint edited by hand?); delete it and re-run `autoseg fingerprint`"
    )


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------- labels, budget
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


# ------------------------------------------------------------------------------ patch searching
def _patch_candidates(
    start: Sequence[float], spacing: Sequence[float], median_shape: Sequence[float], ctx: _Context, width: int
) -> Iterator[tuple[list[int], Topology]]:
    """Successively smaller (patch, topology) pairs, strictly decreasing in voxels."""
    raw: Sequence[float] = list(start)
    previous = float("inf")
    while True:
        topology = plan_topology(raw, spacing, ctx.constraints, width)
        if topology.n_stages < 2:
            return
        patch = divisible_patch(raw, topology, ctx.constraints.min_slices)
        if np.prod(patch) < previous:
            previous = float(np.prod(patch))
            yield patch, topology
        smaller = shrink_patch(patch, median_shape, topology, ctx.constraints.min_slices)
        if smaller is None:
            return
        raw = smaller


def _median_extent(median_shape: Sequence[float]) -> str:
    """The median image's size along the planned axes; a 2D configuration's is per slice (the refusal of
    3x3x3 images read "the median image, 3x3 voxels")."""
    per_slice = " per slice" if len(median_shape) == 2 else ""
    return f"the median image, {'x'.join(f'{s:g}' for s in median_shape)} voxels{per_slice}"


def _fit_memory(ctx: _Context, spacing: Sequence[float], median_shape: Sequence[float]
                ) -> tuple[list[int], Topology, MemoryModel]:
    start = rules.initial_patch_size(spacing, median_shape)
    candidates = 0
    for patch, topology in _patch_candidates(start, spacing, median_shape, ctx, C.BASE_FEATURES):
        candidates += 1
        model = ctx.memory(topology)
        if model.predict(patch, C.MIN_BATCH_SIZE) <= ctx.memory_budget_bytes:
            return patch, topology, model
    if not candidates:  # not memory: even the median image's own size is too small to downsample once
        raise PlanError(
            f"{_median_extent(median_shape)} at the planned spacing, is too small "
            f"for network {ctx.network!r} to downsample once ({_downsampling_need(ctx.constraints)}); pad the images or "
            "resample them finer"
        )
    raise PlanError(
        f"network {ctx.network!r} does not fit in {ctx.memory_budget_bytes / 2**30:.2f} GiB usable memory even "
        "with its smallest patch at batch 2; give more memory (--gpu-memory) or choose a smaller network"
    )


def _downsampling_need(constraints: TopologyConstraints) -> str:
    """What the first downsampling of ``plan_topology`` needs of an image: a patch embedding's stride
    (Swin-UNet, nnFormer: 4) needs more than a pooling step, whose 8 voxels Swin-UNet's 12x12 images had."""
    if constraints.stem_stride is None and not constraints.isotropic_only:
        return (f"a pooling step needs {C.POOLING_STRIDE * C.MIN_FEATURE_MAP_SIZE} voxels along two axes, "
                f"{C.SINGLE_AXIS_POOL_MIN_SIZE} along one")
    factor = constraints.stem_stride or C.POOLING_STRIDE
    step = f"its stride-{factor} patch embedding" if constraints.stem_stride else "a pooling step"
    return f"{step} needs {factor * C.MIN_FEATURE_MAP_SIZE} voxels along {'every' if constraints.isotropic_only else 'an'} axis"


def _budget_candidates(ctx: _Context, fitted: list[int], fitted_topology: Topology, spacing: Sequence[float],
                       median_shape: Sequence[float]) -> Iterator[tuple[list[int], Topology, int]]:
    """Narrower networks at the memory-fitted patch first, then smaller patches at the narrowest.

    Context (patch) is kept longest: reference §4's narrow 16-128 plan at nnU-Net's patch beat the
    wide default plan on a CPU by 0.31 Dice in the same 26 minutes.
    """
    widths = (C.BASE_FEATURES,) if ctx.constraints.fixed_width else C.BUDGET_WIDTHS
    for width in widths[:-1]:
        features = features_per_stage(fitted_topology.n_stages, ctx.constraints, fitted_topology.spatial_dims, width)
        yield fitted, replace(fitted_topology, features_per_stage=features), width
    for patch, topology in _patch_candidates(fitted, spacing, median_shape, ctx, widths[-1]):
        yield patch, topology, widths[-1]


@dataclass
class _Candidate:
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
class _Costs:
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


def _costs(ctx: _Context, fingerprint: dict[str, Any], forward: list[int], spacing: Sequence[float],
           dims: int) -> _Costs:
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
    return _Costs(preprocess, shapes, [e * largest_fold_share(len(export)) for e in export])


def _evaluate(ctx: _Context, costs: _Costs, spacing: list[float], median: list[float], patch: list[int],
              topology: Topology, width: int) -> _Candidate:
    """The iterations the budget affords a candidate at the recipe speed (which ranks candidates) and
    at the measured speed (what the plan predicts and its ``validation_tta``: the mirroring rule
    training applies to its own timing, so the plan predicts the validation the run does)."""
    assert ctx.budget_seconds is not None
    recipe_count, recipe_step, checkpoint = _recipe_affordable(ctx, costs, topology, patch, width)
    count, parts, step, tta = _affordable(ctx, costs, topology, patch, C.MIN_BATCH_SIZE, width, checkpoint)
    recipe_tile = ctx.tile_seconds(topology, patch, width, recipe=True)
    return _Candidate(spacing, median, patch, topology, width, tta, recipe_count, recipe_step, step, parts, count,
                      validation_fits=A.within_validation_share(costs.tiles(patch) * recipe_tile, ctx.budget_seconds))


def _recipe_affordable(ctx: _Context, costs: _Costs, topology: Topology, patch: list[int],
                       width: int) -> tuple[int, float, float]:
    """(iterations, seconds per iteration) of a candidate at the recipe speed, and the seconds of one of its
    checkpoints, which hold the state of the optimizer the plan will train it with: a schedule short enough
    for AdamW (planning/short_schedule.py) writes two moments per parameter where SGD writes one, so it
    affords a few iterations less (never so many more that the schedule would turn long)."""
    parameters = ctx.parameters(topology)
    checkpoint = A.checkpoint_seconds(parameters)
    count, _, step, _ = _affordable(ctx, costs, topology, patch, C.MIN_BATCH_SIZE, width, checkpoint, recipe=True)
    settings = short_schedule.training_for(ctx.network, topology.spatial_dims, count, ctx.budget_seconds)
    optimizer = short_schedule.optimizer_of(settings)
    if optimizer != "sgd":
        checkpoint = A.checkpoint_seconds(parameters, optimizer)
        count, _, step, _ = _affordable(ctx, costs, topology, patch, C.MIN_BATCH_SIZE, width, checkpoint, recipe=True)
    return count, step, checkpoint


def context_ok(patch: Sequence[int], median_shape: Sequence[float]) -> bool:
    """The context rule: every axis of the patch covers at least 0.25^(1/dims) of the median image."""
    share = C.CONTEXT_MIN_VOLUME_SHARE ** (1 / len(patch))
    return all(p >= math.floor(share * m) for p, m in zip(patch, median_shape))


def _viable(candidate: _Candidate, floor: int = C.ITERATION_FLOOR) -> bool:
    return candidate.validation_fits and candidate.recipe_iterations >= floor


def _evaluate_spacing(ctx: _Context, costs: _Costs, spacing: list[float], median: list[float], dims: int,
                      require_context: bool = True, stop_at_preferred: bool = True) -> tuple[list[int], list[_Candidate]]:
    """(memory-fitted patch, candidates in order) at one spacing: narrower networks at the fitted
    patch, then smaller patches, as long as the patch keeps enough context (``require_context``), up
    to the first that affords ``MIN_BUDGET_ITERATIONS`` (``stop_at_preferred``)."""
    axes_spacing, axes_median = spacing[3 - dims:], median[3 - dims:]
    fitted, fitted_topology, _ = _fit_memory(ctx, axes_spacing, axes_median)
    evaluated: list[_Candidate] = []
    for patch, topology, width in _budget_candidates(ctx, fitted, fitted_topology, axes_spacing, axes_median):
        if require_context and not context_ok(patch, axes_median):
            break  # smaller patches only lose more context
        evaluated.append(_full_extent_if_cheaper(ctx, costs, _evaluate(ctx, costs, spacing, median, patch, topology, width),
                                                 axes_median))
        if stop_at_preferred and _viable(evaluated[-1], C.MIN_BUDGET_ITERATIONS):
            break  # chosen whatever the floor
    return fitted, evaluated


def _full_extent_if_cheaper(ctx: _Context, costs: _Costs, candidate: _Candidate, median: Sequence[float]) -> _Candidate:
    """The candidate, or the same network with an axis that falls just short of the median image (one size
    step more covers it: a 2-slice patch of 3-slice volumes) grown to cover it, when that is cheaper overall:
    it needs fewer validation tiles (half along that axis), and the whole run, training and the priced final
    validation (``_affordable``), affords at least as many iterations (ranked as below the floor)."""
    grown = []
    for axis, (size, step, extent) in enumerate(zip(candidate.patch, candidate.topology.size_multiple, median)):
        patch = [p + step if a == axis else p for a, p in enumerate(candidate.patch)]
        if (size < extent <= size + step and costs.tiles(patch) < costs.tiles(candidate.patch)
                and ctx.memory(candidate.topology).predict(patch, C.MIN_BATCH_SIZE) <= ctx.memory_budget_bytes):
            grown.append(_evaluate(ctx, costs, candidate.spacing, candidate.median_shape, patch, candidate.topology,
                                   candidate.width))
    rank = lambda c: (c.validation_fits, c.recipe_iterations)  # noqa: E731
    full = max(grown, key=rank, default=None)  # the first axis on a tie
    return full if full is not None and rank(full) >= rank(candidate) else candidate


def _choose(fitted: list[int], evaluated: list[_Candidate]) -> _Candidate | None:
    """The recipe at one spacing: the widest network at the memory-fitted patch that affords
    ``MIN_BUDGET_ITERATIONS``, else the narrowest there if it reaches the floor (context is worth more
    than iterations), else the largest smaller patch that affords the preferred count, else the floor;
    None when nothing here is viable."""
    floor_choice = None
    for candidate in evaluated:
        if candidate.patch != fitted and floor_choice is not None and floor_choice.patch == fitted:
            return floor_choice
        if _viable(candidate, C.MIN_BUDGET_ITERATIONS):
            return candidate
        if _viable(candidate) and (floor_choice is None or floor_choice.patch == candidate.patch):
            floor_choice = candidate  # at one patch: the narrowest network that reaches the floor
    return floor_choice


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


def _search_budget(ctx: _Context, name: str, spacing: Sequence[float], dims: int, fingerprint: dict[str, Any],
                   forward: list[int]) -> _Candidate:
    """The finest spacing of the ladder at which a recipe is viable (enough context, the iteration
    floor, validation within its share). When no recipe anywhere reaches the floor, the candidate that
    affords the most iterations (every candidate keeps enough context): below the floor iterations cost
    more Dice than resolution or a larger patch (docs/planning.md, "Below the floor"). A viable 3D
    recipe short of ``MIN_BUDGET_ITERATIONS`` trades resolution for iterations while the typical
    structure stays drawn (``_coarsest_drawn``). Either way a 2D
    recipe too coarse to draw the typical structure gives way to one that draws it
    (``_keep_thin_structures``)."""
    median_at = lambda sp: _transposed_median(fingerprint, sp, forward)  # noqa: E731
    ladder = spacing_ladder(spacing, median_at, dims)
    evaluated: list[_Candidate] = []
    for candidate_spacing in ladder:
        costs = _costs(ctx, fingerprint, forward, candidate_spacing, dims)
        fitted, candidates = _evaluate_spacing(ctx, costs, candidate_spacing, median_at(candidate_spacing), dims)
        chosen = _choose(fitted, candidates)
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


def _refuse_budget_without_training(ctx: _Context, name: str, evaluated: list[_Candidate]) -> None:
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


def _below_floor_note(ctx: _Context, name: str, best: _Candidate) -> str:
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


def _candidates_at(ctx: _Context, fingerprint: dict[str, Any], forward: list[int], spacing: list[float], dims: int,
                   **rules_: bool) -> list[_Candidate]:
    """The candidates ``_evaluate_spacing`` evaluates at one (transposed) spacing, its fixed costs and
    median shape computed there; ``rules_`` are its ``require_context`` / ``stop_at_preferred``."""
    costs = _costs(ctx, fingerprint, forward, spacing, dims)
    median = _transposed_median(fingerprint, spacing, forward)
    return _evaluate_spacing(ctx, costs, spacing, median, dims, **rules_)[1]


def _coarsest_drawn(ctx: _Context, name: str, fingerprint: dict[str, Any], forward: list[int],
                    ladder: list[list[float]], chosen: _Candidate) -> _Candidate:
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
        viable = [c for c in _candidates_at(ctx, fingerprint, forward, spacing, 3, stop_at_preferred=False) if _viable(c)]
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


def _keep_thin_structures(ctx: _Context, name: str, fingerprint: dict[str, Any], forward: list[int],
                          ladder: list[list[float]], chosen: _Candidate, dims: int) -> _Candidate:
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
        candidates = _candidates_at(ctx, fingerprint, forward, drawn, dims, require_context=False)
        relaxed = next((c for c in candidates if _viable(c)), None)
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


def _most_iterations_drawn(ctx: _Context, name: str, fingerprint: dict[str, Any], forward: list[int],
                           drawn: list[float], structure_mm: float, candidates: list[_Candidate]) -> _Candidate | None:
    """In 2D, when no patch reaches the iteration floor at the coarsest spacing ``drawn`` that draws the
    typical structure, the candidate there (of ``candidates``) that affords the most iterations within the
    context rule, as below the floor anywhere: resolution beats iterations for a structure the coarser
    recipe cannot draw. On 128x128 DRIVE crops (vessels 2.2 px) at 1 minute, the 4x coarser recipe that
    affords the most iterations (1,999 and 3,680 trained) reached vessel Dice 0.22 and 0.37 on two folds,
    the native spacing's 64x64 patch (664 and 723) 0.58 and 0.63. None when nothing there trains."""
    median = _transposed_median(fingerprint, drawn, forward)[1:]
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


def _bf16_crashes(ctx: _Context, chosen: _Candidate) -> bool:
    """Whether the chosen recipe's bf16 steps crash in a child process (networks/bf16_guard.py), as the
    trainer would find out before training in float32, about 2.6x slower on such CPUs: its iterations
    were then planned at a speed it never reaches (Dataset027 at 10 minutes trained 627 of 712)."""
    if ctx.bf16_check is None or ctx.mixed_precision != "auto":
        return False
    spec = step_spec(ctx.network, chosen.topology.to_dict(), ctx.in_channels, ctx.n_classes,
                     {"deep_supervision": True, **ctx.options}, chosen.patch, C.MIN_BATCH_SIZE)
    return not ctx.bf16_check(spec)


def _note_spacing(ctx: _Context, name: str, chosen: Sequence[float], target: Sequence[float], dims: int) -> None:
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


def _small_class_notes(name: str, fingerprint: dict[str, Any], chosen: Sequence[float], target: Sequence[float],
                       dims: int) -> list[str]:
    """Which classes may vanish at the coarser spacing a budget chose: each class (or region) whose smallest
    case holds fewer than ``MIN_STRUCTURE_VOXELS ** dims`` voxels there, by name, with its median and
    smallest voxel counts there and in the fingerprint. The typical-structure rule judges the median
    target only, so a small class beside large ones was lost without its name being said."""
    if list(chosen) == list(target) or not fingerprint.get("class_volumes_mm3"):
        return []
    voxel_mm3 = float(np.prod(chosen))
    at_risk = []
    for label, value in fingerprint["labels"].items():
        values = value if isinstance(value, list) else [value]
        if label in ("background", "ignore") or not values or values == [0]:
            continue
        native = [v for v in _class_voxels(fingerprint, values) if v > 0]
        volumes = [sum(case) for case in zip(*(fingerprint["class_volumes_mm3"].get(str(v), []) for v in values))]
        coarse = [v / voxel_mm3 for v in volumes if v > 0]
        if coarse and min(coarse) < C.MIN_STRUCTURE_VOXELS ** dims:
            at_risk.append(f"'{label}' (median {np.median(coarse):.3g}, smallest {min(coarse):.3g} voxels there; "
                           f"{np.median(native):.3g} and {min(native):.3g} at the fingerprint's spacing)" if native else
                           f"'{label}' (median {np.median(coarse):.3g}, smallest {min(coarse):.3g} voxels there)")
    if not at_risk:
        return []
    return [f"{name}: at {_mm(chosen[3 - dims:])} mm some cases hold fewer than {C.MIN_STRUCTURE_VOXELS ** dims:g} "
            f"voxels of {', '.join(at_risk)}, which may be lost; give a larger --budget to keep the target spacing "
            f"{_mm(target[3 - dims:])} mm"]


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values)


# ------------------------------------------------------------------------------- configurations
def _plan_configuration(ctx: _Context, name: str, spacing: Sequence[float], dims: int, fingerprint: dict[str, Any],
                        forward: list[int], data_identifier: str) -> dict[str, Any]:
    """One configuration; ``spacing`` is the 3 transposed target values. Without a budget, or when
    the memory plan affords the full schedule, nnU-Net's memory-fitted plan; else the budget search."""
    median = _transposed_median(fingerprint, spacing, forward)
    axes_spacing, axes_shape = list(spacing)[3 - dims:], median[3 - dims:]
    patch, topology, model = _fit_memory(ctx, axes_spacing, axes_shape)
    raw_spacing = [spacing[forward.index(a)] for a in range(3)]
    batch = min(model.max_batch(patch, ctx.memory_budget_bytes),
                rules.max_batch_size(patch, _dataset_voxels(fingerprint, raw_spacing)))
    batch = max(C.MIN_BATCH_SIZE, batch)
    width, tta = C.BASE_FEATURES, True
    seconds = ctx.iteration_seconds(topology, patch, batch, width)
    iterations, parts, recipe_iterations, recipe = C.MAX_ITERATIONS, None, None, None
    chosen_spacing = list(spacing)
    if ctx.budget_seconds is not None:
        recipe = ctx.iteration_seconds(topology, patch, batch, width, recipe=True)
        costs = _costs(ctx, fingerprint, forward, spacing, dims)
        checkpoint = A.checkpoint_seconds(ctx.parameters(topology))
        validation = A.final_validation_seconds([costs.tiles(patch)], 2 ** len(ctx.mirror_axes(dims)),
                                                ctx.tile_seconds(topology, patch, width, True),
                                                [sum(costs.export)])
        affordable, _ = A.split_budget(ctx.budget_seconds, costs.preprocess, validation, recipe * C.VALIDATION_COST_FACTOR,
                                       checkpoint)
        if affordable >= C.MAX_ITERATIONS and A.within_validation_share(validation, ctx.budget_seconds):
            iterations, parts, _, tta = _affordable(ctx, costs, topology, patch, batch, width, checkpoint)
            recipe_iterations = affordable
        else:
            first_note = len(ctx.notes)
            chosen = _search_budget(ctx, name, spacing, dims, fingerprint, forward)
            if _bf16_crashes(ctx, chosen):
                del ctx.notes[first_note:]  # the bf16 search's notes no longer hold
                ctx.notes.append(
                    f"{name}: bf16 training steps of the chosen network ({chosen.patch}) crash on this CPU "
                    "(oneDNN, docs/troubleshooting.md), so training will run in float32: planned at float32 speed")
                chosen = _search_budget(replace(ctx, mixed_precision="off"), name, spacing, dims, fingerprint, forward)
            batch, patch, topology, width, tta = C.MIN_BATCH_SIZE, chosen.patch, chosen.topology, chosen.width, chosen.validation_tta
            chosen_spacing, median = chosen.spacing, chosen.median_shape
            seconds, recipe = chosen.seconds, chosen.recipe_seconds
            model = ctx.memory(topology)
            iterations, parts, recipe_iterations = chosen.iterations, chosen.parts, chosen.recipe_iterations
            ctx.notes.extend(_small_class_notes(name, fingerprint, chosen_spacing, spacing, dims))
    num_iterations, per_epoch = T.schedule(iterations)
    if parts is not None:
        parts = A.parts_for(num_iterations, parts.preprocess, parts.final_validation, seconds * C.VALIDATION_COST_FACTOR,
                            parts.checkpoints / A.checkpoint_files(iterations, C.ITERATIONS_PER_EPOCH), per_epoch)
    return {
        "data_identifier": data_identifier,
        "spatial_dims": dims,
        "spacing": [float(s) for s in chosen_spacing],
        "median_shape": [float(s) for s in median],
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch),
        "normalization": rules.normalization_schemes(fingerprint),
        "resampling": rules.resampling_parameters(),
        "network": {"name": ctx.network, "topology": topology.to_dict(), "options": dict(ctx.options)},
        "width": width,
        "mirror_axes": ctx.mirror_axes(dims),
        "validation_tta": tta,
        "predicted_memory_bytes": model.predict(patch, batch),
        "memory_model": asdict(model),
        "planned_for": dict(ctx.planned_for),
        "predicted_seconds_per_iteration": _rounded(seconds, 4),
        "recipe_seconds_per_iteration": _rounded(recipe, 4),
        "num_iterations": num_iterations,
        "recipe_iterations": recipe_iterations,
        "iterations_per_epoch": per_epoch,
        "predicted_seconds": parts.to_dict() if parts is not None else None,
        "predicted_total_seconds": round(parts.total, 1) if parts is not None else None,
        "previous_stage": None,
        "next_stage": None,
    }


def _affordable(ctx: _Context, costs: _Costs, topology: Topology, patch: list[int], batch: int, width: int,
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


def _transposed_median(fingerprint: dict[str, Any], spacing: Sequence[float], forward: list[int]) -> list[float]:
    """The median image shape at a transposed spacing, transposed."""
    raw = [spacing[forward.index(a)] for a in range(3)]
    median = _median_shape_at(fingerprint, raw)
    return [median[a] for a in forward]


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _median_shape_at(fingerprint: dict[str, Any], spacing: Sequence[float]) -> list[float]:
    shapes = [rules.shape_at_spacing(s, sp, spacing) for s, sp in
              zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])]
    return [float(v) for v in np.median(np.asarray(shapes, dtype=float), axis=0)]


def _dataset_voxels(fingerprint: dict[str, Any], spacing: Sequence[float]) -> float:
    return float(sum(np.prod(rules.shape_at_spacing(s, sp, spacing)) for s, sp in
                     zip(fingerprint["shapes_after_crop"], fingerprint["spacings"])))


def _plan_lowres(ctx: _Context, fullres: dict[str, Any], forward: list[int], fingerprint: dict[str, Any],
                 plans_name: str) -> dict[str, Any] | None:
    """3d_lowres: coarser spacing until the patch covers 25% of the median image (reference §1.3)."""
    spacing = list(fullres["spacing"])
    for _ in range(_MAX_LOWRES_STEPS):
        spacing = rules.grow_lowres_spacing(spacing)
        median = _transposed_median(fingerprint, spacing, forward)
        patch, _, _ = _fit_memory(ctx, spacing, median)
        if np.prod(patch) / np.prod(median) >= C.LOWRES_TRIGGER_COVERAGE:
            break
    if np.prod(fullres["median_shape"]) / np.prod(median) < C.LOWRES_MIN_VOXEL_RATIO:
        ctx.notes.append(f"{CONFIG_LOWRES}: dropped, it would save less than {C.LOWRES_MIN_VOXEL_RATIO:g}x voxels")
        return None
    return _plan_configuration(ctx, CONFIG_LOWRES, spacing, 3, fingerprint, forward, f"{plans_name}_{CONFIG_LOWRES}")


def _cascade(ctx: _Context, fullres: dict[str, Any], n_foreground: int) -> dict[str, Any]:
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


def _bf16_survives(spec: dict[str, Any]) -> bool:
    return bf16_step_survives(spec)[0]


def build_plans(
    fingerprint: dict[str, Any],
    *,
    network: str | None = None,
    memory_budget_bytes: float,
    budget_seconds: float | None = None,
    device: torch.device | str = "cpu",
    configs: str | Sequence[str] | None = None,
    plans_name: str = C.DEFAULT_PLANS_NAME,
    regions_class_order: list[int] | None = None,
    cache_dir: Path | None = None,
    timing_factory: TimingFactory | None = None,
    bf16_check: Bf16Check | None = None,
    timed_thread_share: float = 1.0,
    budget_record: dict[str, Any] | None = None,
    source: str = "fingerprint",
    device_present: bool = True,
) -> dict[str, Any]:
    """The plans dict for a fingerprint (pure apart from timing, which ``timing_factory`` replaces).

    ``bf16_check`` replaces the child-process bf16 step of a budget-planned CPU recipe (run only where
    training would use bf16 on this CPU). ``timed_thread_share`` (CPU): the math threads timing runs
    with over the machine's, when other processes held cores; the recipe is chosen for all of them
    and only the iterations follow the threads timed.

    ``device_present=False`` plans for a device this machine lacks (``--gpu-memory`` without a GPU):
    memory is modelled as always, nothing is timed, and no compute budget can apply.
    """
    check_fingerprint(fingerprint, source)
    network = network or default_network()
    record = dict(budget_record or {}, memory_bytes_usable=int(memory_budget_bytes))
    ctx = _planning_context(fingerprint, network, memory_budget_bytes, budget_seconds, torch.device(device), cache_dir,
                            timing_factory, bf16_check, timed_thread_share, record, device_present)
    target = rules.target_spacing(fingerprint["spacings"], fingerprint["shapes_after_crop"])
    _check_resampled_sizes(fingerprint, target)
    slice_axis = single_slice_axis(fingerprint["shapes_after_crop"])
    is_2d = dataset_is_2d(fingerprint)
    forward, backward = rules.transpose_axes(target, first=slice_axis)
    spacing = [target[a] for a in forward]
    ctx.forward, ctx.fixed_orders = forward, mirroring.fixed_orders(fingerprint)
    wanted = _wanted_configurations(configs, is_2d, ctx.constraints.spatial_dims, ctx)
    if is_2d and fingerprint.get("file_ending") not in NATURAL_2D_ENDINGS:
        # Volumes in a 3D format whose cases all hold one slice: why the table has no 3D row.
        ctx.notes.append(f"{CONFIG_FULLRES}: not planned, every case holds a single slice (after cropping): a 2D dataset")

    configurations: dict[str, dict[str, Any]] = {}
    if CONFIG_2D in wanted:
        configurations[CONFIG_2D] = _plan_configuration(ctx, CONFIG_2D, spacing, 2, fingerprint, forward,
                                                        f"{plans_name}_{CONFIG_2D}")
    if wanted & {CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE}:
        configurations.update(_plan_3d(ctx, wanted, spacing, forward, fingerprint, plans_name, explicit=configs is not None))
    ctx.notes.extend(_flat_3d_patch_notes(configurations, budget_seconds))
    ctx.notes.extend(_too_few_cases_notes(len(fingerprint["spacings"])))
    ctx.notes.extend(short_schedule.apply(configurations, budget_seconds))
    ctx.notes.extend(mirroring.mirroring_notes(fingerprint, ctx.fixed_orders))
    return {
        "version": C.PLANS_VERSION,
        "plans_name": plans_name,
        "dataset_name": fingerprint["dataset_name"],
        "created_by": f"autoseg {__version__}",
        "fingerprint_sha256": fingerprint_digest(fingerprint),
        "channel_names": fingerprint["channel_names"],
        "labels": fingerprint["labels"],
        "regions_class_order": regions_class_order,
        "ignore_label": fingerprint["labels"].get("ignore"),
        "file_ending": fingerprint["file_ending"],
        "transpose_forward": forward,
        "transpose_backward": backward,
        "original_median_spacing": [float(s) for s in np.median(np.asarray(fingerprint["spacings"]), axis=0)],
        "target_spacing": target,
        "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
        "budget": dict(record, seconds=budget_seconds),
        "configurations": configurations,
        "notes": ctx.notes,
    }


def _planning_context(fingerprint: dict[str, Any], network: str, memory_budget_bytes: float,
                      budget_seconds: float | None, device: torch.device, cache_dir: Path | None,
                      timing_factory: TimingFactory | None, bf16_check: Bf16Check | None, timed_thread_share: float,
                      record: dict[str, Any], device_present: bool) -> _Context:
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
    ctx = _Context(network, in_channels, n_classes, n_foreground, memory_budget_bytes, budget_seconds, device, cache_dir,
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


def _plan_3d(ctx: _Context, wanted: set[str], spacing: list[float], forward: list[int], fingerprint: dict[str, Any],
             plans_name: str, explicit: bool) -> dict[str, dict[str, Any]]:
    """3d_fullres, and 3d_lowres with the cascade when the fullres patch covers too little of the
    median image (at the target spacing: a budget that coarsened fullres already chose resolution).
    ``explicit``: the user asked for these configurations, so one that does not apply is an error."""
    fullres = _plan_configuration(ctx, CONFIG_FULLRES, spacing, 3, fingerprint, forward, f"{plans_name}_{CONFIG_FULLRES}")
    lowres = None
    coverage = np.prod(fullres["patch_size"]) / np.prod(_transposed_median(fingerprint, spacing, forward))
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


def _flat_3d_patch_notes(configurations: dict[str, dict[str, Any]], budget_seconds: float | None) -> list[str]:
    """A note per 3D configuration whose patch is one voxel thick (thin volumes, small budgets): its
    network sees no context across that axis, so it is a costlier 2D model, which the table alone hides."""
    notes = []
    for name, config in configurations.items():
        patch = config.get("patch_size") or []
        if len(patch) == 3 and 1 in patch:
            notes.append(
                f"{name}: its patch {patch} is one voxel thick, so the 3D network sees no context across that axis "
                f"and does what {CONFIG_2D} does at more cost; compare them by cross-validation (find-best)"
                f"{', or give a larger --budget' if budget_seconds else ''}"
            )
    return notes


def _too_few_cases_notes(cases: int) -> list[str]:
    """Why folds 0-4 of this plan cannot train: with fewer cases than folds ``autoseg train`` refuses them, and
    the plan (whose budget prices a final validation of fold 0) gave no hint of it."""
    if cases >= NUM_FOLDS:
        return []
    return [f"{cases} training case(s) cannot be split into {NUM_FOLDS} folds, so `autoseg train` refuses folds "
            f"0-{NUM_FOLDS - 1}: add cases, train fold 'all' (no final validation, so the plan reserves no time for "
            "one), or write splits_final.json with fewer folds into the dataset's preprocessed folder (training then "
            "keeps its final validation's time from the iterations)"]


def _voxel_count(count: int) -> str:
    """``count`` in 3 significant digits; through ``Decimal`` because a product of resampled sizes can pass
    the largest float (a case at 1e5 mm among cases at 1e-100 mm), where ``f"{count:.3g}"`` raises
    OverflowError (``Decimal`` writes "e+9" where float writes "e+09", hence only then)."""
    try:
        return f"{count:.3g}"
    except OverflowError:
        return f"{Decimal(count):.3g}"


def _check_resampled_sizes(fingerprint: dict[str, Any], target: Sequence[float]) -> None:
    """Refuse a case whose voxel size would resample it to more voxels than any machine holds, or to a
    few voxels (more than ``MAX_CASE_DOWNSAMPLING`` times coarser along an axis).

    A header in microns among millimetres (1000x the spacing) passed verify and fingerprint, planned
    "1 iteration, 17893h" and failed in preprocess as "out of memory; retry with fewer workers"; one in
    metres was preprocessed to a single voxel and trained on without a word.
    """
    case_ids = fingerprint.get("case_ids") or [str(i) for i in range(len(fingerprint["spacings"]))]
    shown = lambda values: " x ".join(f"{v:g}" for v in values)  # noqa: E731
    for case, shape, spacing in zip(case_ids, fingerprint["shapes_after_crop"], fingerprint["spacings"]):
        if math.prod(shape) > C.MAX_RESAMPLED_VOXELS:  # huge as stored: no header fix can help (it was advised)
            raise PlanError(
                f"{fingerprint.get('dataset_name', 'dataset')}: case {case} holds {shown(shape)} = {_voxel_count(math.prod(shape))} "
                f"voxels after cropping, more than one case may hold ({C.MAX_RESAMPLED_VOXELS:.3g}, 8 GiB per float32 "
                "channel); crop it to the region of interest or resample it coarser, then re-run `autoseg fingerprint` and `autoseg plan`"
            )
        found = implausible_resampling(shape, spacing, target)
        if found is None:
            continue
        kind, resampled = found
        if kind == "voxels":
            outcome, units = f"{_voxel_count(math.prod(resampled))} voxels", "microns or cm instead of mm?"
        else:
            outcome, units = f"{shown(resampled)}", "metres or cm instead of mm?"
        raise PlanError(
            f"{fingerprint.get('dataset_name', 'dataset')}: case {case} has voxel spacing {shown(spacing)} mm "
            f"(z, y, x) against the planned {shown(target)} mm: its {shown(shape)} voxels would resample to "
            f"{outcome}; fix that case's header voxel size ({units}), then re-run `autoseg fingerprint` and `autoseg plan`"
        )


def _checked_configs(configs: str | Sequence[str] | None) -> list[str] | None:
    """The configurations asked for (None: all that apply), refused when one is unknown."""
    if configs is not None:  # one name, not its letters ("unknown configuration(s) 3, _, d, ...")
        configs = string_list(configs)
    unknown = sorted(set(configs or ()) - set(ALL_CONFIGURATIONS))
    if unknown:
        raise PlanError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(ALL_CONFIGURATIONS)}")
    return configs


def plannable_configurations(configs: str | Sequence[str] | None, family_dims: tuple[int, ...],
                             is_2d: bool | None = None) -> set[str]:
    """The configurations a plan can hold at most: those asked for (all without ``configs``) that the
    family's dimensionalities build and, once the fingerprint tells (``is_2d``), the dataset's."""
    possible = set(_checked_configs(configs) or ALL_CONFIGURATIONS)
    if 2 not in family_dims or is_2d is False:
        possible.discard(CONFIG_2D)
    if 3 not in family_dims or is_2d:
        possible -= {CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE}
    return possible


def dataset_is_2d(fingerprint: dict[str, Any]) -> bool:
    """A 2D dataset: 2D images, or volumes whose cases all hold one slice after cropping."""
    return bool(fingerprint["is_2d"]) or single_slice_axis(fingerprint["shapes_after_crop"]) is not None


def _wanted_configurations(configs: str | Sequence[str] | None, is_2d: bool, family_dims: tuple[int, ...],
                           ctx: _Context) -> set[str]:
    configs = _checked_configs(configs)
    possible = {CONFIG_2D} if is_2d else set(ALL_CONFIGURATIONS)
    if 2 not in family_dims:
        possible.discard(CONFIG_2D)
        ctx.notes.append(f"{CONFIG_2D}: skipped, network {ctx.network!r} is 3D only")
    if 3 not in family_dims:
        possible -= {CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE}
    if not possible:  # the family lacks the dataset's dimensionality: no -c choice can help
        dims = "2D" if is_2d else "3D"
        raise PlanError(f"network {ctx.network!r} builds {'/'.join(f'{d}D' for d in family_dims)} networks only and this "
                        f"dataset is {dims}: nothing can be planned; choose a family with {dims} in `autoseg networks`")
    wanted = set(configs) if configs is not None else possible
    impossible = sorted(wanted - possible)
    if impossible or not wanted:
        kind = "2D" if is_2d else "3D"
        raise PlanError(
            f"configuration(s) {', '.join(impossible) or '(none)'} cannot be planned for this {kind} dataset with "
            f"network {ctx.network!r}; possible: {', '.join(sorted(possible)) or 'none (choose another network)'}"
        )
    return wanted


# ---------------------------------------------------------------------------------- entry point
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


def _print_warning(warning: str) -> None:
    """One warning of the fingerprint plan runs, on stderr beside the plan table as ``autoseg fingerprint`` prints it."""
    print(f"WARNING {warning}", file=sys.stderr, flush=True)


def plan_dataset(
    dataset_spec: DatasetSpec,
    gpu_memory_gb: float | None = None,
    budget_seconds: float | None = None,
    network: str | None = None,
    configs: str | Sequence[str] | None = None,
    plans_name: str = C.DEFAULT_PLANS_NAME,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    num_workers: int | None = None,
    transfer_from: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Plan a dataset and write ``<preprocessed>/<Dataset>/<plans_name>.json``; returns (plans, table).

    ``transfer_from`` (a plans file or model folder) keeps the source's network, patch and batch for
    fine-tuning its weights (``planning/transfer.py``).

    Fingerprints the dataset first when ``fingerprint.json`` is missing. With no GPU (or ``device``
    'cpu') the plan is sized for a compute budget (``budget_seconds``, default 12 h per fold), unless
    ``gpu_memory_gb`` asks for a GPU plan (see ``target_device``).
    """
    from autoseg.dataset.description import load_description
    from autoseg.fingerprint.file import fingerprint_is_stale, fingerprint_path, load_fingerprint
    from autoseg.paths import resolve_dataset

    check_gpu_memory(gpu_memory_gb)  # a bad number, a typo or a wrong label kind fail before fingerprinting
    if budget_seconds is not None:
        check_budget_seconds(budget_seconds, PlanError)
    spec = get_network_spec(network or default_network())
    network = spec.name
    location = resolve_dataset(dataset_spec)
    spec.check_label_kind(load_description(location.raw_dir).regions_class_order is not None)
    plans_path(location.preprocessed_dir, plans_name)  # so does a plans name that is not a file name
    donor = None
    if transfer_from is not None:  # a source of other channels or configurations fails before fingerprinting and timing
        from autoseg.planning.transfer import fitting_source_plans

        donor = fitting_source_plans(location.name, load_description(location.raw_dir).channel_names, transfer_from,
                                     plannable_configurations(configs, spec.constraints.spatial_dims))
    if not fingerprint_path(location).is_file() or fingerprint_is_stale(location):
        from autoseg.fingerprint.extract import extract_fingerprint  # SimpleITK and scipy: only when needed

        # Its warnings (axis order, NRRD space units) are printed here, as autoseg fingerprint prints them; a
        # fingerprint.json already written was warned of when it was made, so reading it prints nothing.
        extract_fingerprint(location, num_workers, warn=_print_warning)
    fingerprint = load_fingerprint(location)
    if donor is not None:  # a 2D dataset's plan holds 2d only: known before the timing probe
        from autoseg.planning.transfer import refuse_without_shared

        is_2d = dataset_is_2d(check_fingerprint(fingerprint, str(fingerprint_path(location))))
        refuse_without_shared(donor[0], donor[1], plannable_configurations(configs, spec.constraints.spatial_dims, is_2d))
    chosen, present = target_device(device, gpu_memory_gb, budget_seconds)
    usable, nominal = memory_budget(chosen, gpu_memory_gb)
    if budget_seconds is None and chosen.type == "cpu":
        budget_seconds = C.DEFAULT_CPU_BUDGET_SECONDS
    # Timed with the math threads training's `math_threads: auto` will start with: two threads on two
    # cores, one of them busy, wait for each other and time 2x slower per thread, which flipped the
    # demo's recipe under load; one thread on the idle core times the speed training will get, and the
    # recipe is chosen for all threads (load changes the iterations, not the recipe).
    threads = idle_thread_choice() if chosen.type == "cpu" and present else None
    with applied(threads):
        plans = build_plans(
            fingerprint,
            network=network,
            memory_budget_bytes=usable,
            budget_seconds=budget_seconds,
            device=chosen,
            configs=configs,
            plans_name=plans_name,
            regions_class_order=load_description(location.raw_dir).regions_class_order,
            cache_dir=location.preprocessed_dir / "planning_cache",
            budget_record={"device": chosen.type, "device_name": T.device_name(chosen) if present else None,
                           "gpu_memory_gb": nominal},
            source=str(fingerprint_path(location)),
            device_present=present,
            timed_thread_share=threads.threads / threads.limit if threads else 1.0,
        )
    if threads is not None and threads.threads < threads.limit:
        plans["notes"].append(f"timed with {threads.describe()}, as training with math_threads: auto starts: "
                              f"the recipe is the one for all {threads.limit} threads, the iterations are for "
                              f"{threads.threads} (a quieter machine at training time trains more)")
    if donor is not None:
        from autoseg.planning.transfer import transfer_plans

        plans = transfer_plans(plans, *donor)
    write_plans(plans, plans_path(location.preprocessed_dir, plans_name), overwrite=overwrite)
    return plans, format_plan_table(plans)
