"""``autoseg plan``: fingerprint -> plans file, under a memory budget and optionally a compute budget.

Order of decisions per configuration: spacing and transpose (rules.py), the largest patch whose
measured memory model fits the memory budget at batch 2 (reference §1.3's shrinking order), the
batch that fills the memory (capped at 5% of the dataset), then, under a compute budget, the widest
network and largest patch that still afford ``MIN_BUDGET_ITERATIONS`` within the budget.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from autoseg import __version__
from autoseg.errors import FingerprintError, PlanError
from autoseg.networks import Topology, default_network, get_network_spec
from autoseg.planning import constants as C
from autoseg.planning import compute_budget as T
from autoseg.planning import rules
from autoseg.planning.memory import MemoryModel, calibrate_memory
from autoseg.planning.plans import format_plan_table, plans_path, write_plans
from autoseg.planning.topology import divisible_patch, features_per_stage, plan_topology, shrink_patch
from autoseg.utils.device import choose_device, device_memory_bytes

CONFIG_2D, CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE = "2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"
ALL_CONFIGURATIONS = (CONFIG_2D, CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE)
_FINGERPRINT_KEYS = (
    "dataset_name", "channel_names", "labels", "file_ending", "spacings", "shapes_after_crop",
    "median_relative_size_after_crop", "foreground_intensity_properties_per_channel", "is_2d",
)
_MAX_LOWRES_STEPS = 500
TimingFactory = Callable[[int, int], T.TimingModel]  # (spatial_dims, width) -> timing model


@dataclass
class _Context:
    """What every configuration is planned against."""

    network: str
    in_channels: int
    n_classes: int
    memory_budget_bytes: float
    budget_seconds: float | None
    device: torch.device
    cache_dir: Path | None
    timing_factory: TimingFactory | None  # None: the target device is not on this machine, nothing is timed
    planned_for: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _memory: dict[str, MemoryModel] = field(default_factory=dict)
    _timing: dict[tuple[int, int], T.TimingModel] = field(default_factory=dict)

    @property
    def constraints(self):
        return get_network_spec(self.network).constraints

    def memory(self, topology: Topology, in_channels: int | None = None) -> MemoryModel:
        channels = in_channels or self.in_channels
        key = json.dumps([topology.to_dict(), channels], sort_keys=True)
        if key not in self._memory:
            self._memory[key] = calibrate_memory(
                self.network, topology, channels, self.n_classes, self.options, self.cache_dir
            )
        return self._memory[key]

    def iteration_seconds(self, topology: Topology, patch: Sequence[int], batch: int, width: int,
                          in_channels: int | None = None) -> float | None:
        if self.timing_factory is None:
            return None
        dims = topology.spatial_dims
        if (dims, width) not in self._timing:
            self._timing[(dims, width)] = self.timing_factory(dims, width)
        gflop = T.training_gflop(self.network, topology, in_channels or self.in_channels, self.n_classes,
                                 patch, batch, self.options)
        return T.seconds_per_iteration(self._timing[(dims, width)].predict(gflop), self.device)


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
    except (TypeError, ValueError):
        raise FingerprintError(f"{source}: spacings and shapes must be lists of 3 numbers per case; {fix}") from None
    if spacing_array.ndim != 2 or spacing_array.shape[1] != 3 or shape_array.shape != spacing_array.shape:
        raise FingerprintError(f"{source}: spacings and shapes must be lists of 3 numbers per case; {fix}")
    if not (np.all(spacing_array > 0) and np.all(shape_array >= 1)):
        raise FingerprintError(f"{source}: spacings must be > 0 and shapes >= 1 in every case; {fix}")
    channels = fingerprint["channel_names"]
    absent = [c for c in channels if c not in fingerprint["foreground_intensity_properties_per_channel"]]
    if absent:
        raise FingerprintError(f"{source}: no intensity statistics for channel(s) {', '.join(absent)}; {fix}")
    return fingerprint


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


def memory_budget(device: torch.device, gpu_memory_gb: float | None) -> tuple[float, float | None]:
    """(usable bytes, nominal GB): the given or detected GPU memory, else a share of the RAM."""
    if gpu_memory_gb is not None:
        if gpu_memory_gb <= 0:
            raise PlanError(f"--gpu-memory must be positive, got {gpu_memory_gb}")
        return gpu_memory_gb * 2**30 * C.GPU_MEMORY_USABLE_FRACTION, float(gpu_memory_gb)
    total = device_memory_bytes(device)
    if total is not None:
        return total * C.GPU_MEMORY_USABLE_FRACTION, round(total / 2**30, 2)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram * C.CPU_MEMORY_USABLE_FRACTION, None


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
        patch = divisible_patch(raw, topology)
        if np.prod(patch) < previous:
            previous = float(np.prod(patch))
            yield patch, topology
        smaller = shrink_patch(patch, median_shape, topology)
        if smaller is None:
            return
        raw = smaller


def _fit_memory(ctx: _Context, spacing: Sequence[float], median_shape: Sequence[float]
                ) -> tuple[list[int], Topology, MemoryModel]:
    start = rules.initial_patch_size(spacing, median_shape)
    for patch, topology in _patch_candidates(start, spacing, median_shape, ctx, C.BASE_FEATURES):
        model = ctx.memory(topology)
        if model.predict(patch, C.MIN_BATCH_SIZE) <= ctx.memory_budget_bytes:
            return patch, topology, model
    raise PlanError(
        f"network {ctx.network!r} does not fit in {ctx.memory_budget_bytes / 2**30:.2f} GiB usable memory even "
        "with its smallest patch at batch 2; give more memory (--gpu-memory) or choose a smaller network"
    )


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


def _fit_compute(ctx: _Context, name: str, fitted: list[int], fitted_topology: Topology,
                 spacing: Sequence[float], median_shape: Sequence[float]) -> tuple[list[int], Topology, int, float, int]:
    """The first budget candidate that affords ``MIN_BUDGET_ITERATIONS`` within the budget.

    Before the patch shrinks below the memory-fitted one, the narrowest network at that patch is
    kept if it affords ``MIN_ITERATIONS_FULL_PATCH``: context is worth more than iterations.
    """
    assert ctx.budget_seconds is not None
    choice = None
    for patch, topology, width in _budget_candidates(ctx, fitted, fitted_topology, spacing, median_shape):
        if choice is not None and choice[0] == fitted and patch != fitted and choice[4] >= C.MIN_ITERATIONS_FULL_PATCH:
            return choice
        seconds = ctx.iteration_seconds(topology, patch, C.MIN_BATCH_SIZE, width)
        choice = (patch, topology, width, seconds, T.affordable_iterations(ctx.budget_seconds, seconds))
        if choice[4] >= C.MIN_BUDGET_ITERATIONS:
            return choice
    assert choice is not None
    ctx.notes.append(
        f"{name}: the budget of {ctx.budget_seconds:.0f} s affords only {choice[4]} iterations even with the "
        f"smallest network; expect a weak model or give a larger --budget"
    )
    return choice


# ------------------------------------------------------------------------------- configurations
def _plan_configuration(
    ctx: _Context, name: str, spacing: Sequence[float], median_shape: Sequence[float], dims: int,
    dataset_voxels: float, fingerprint: dict[str, Any], data_identifier: str,
) -> dict[str, Any]:
    """One configuration; ``spacing``/``median_shape`` are the 3 transposed values."""
    axes_spacing, axes_shape = list(spacing)[3 - dims:], list(median_shape)[3 - dims:]
    patch, topology, model = _fit_memory(ctx, axes_spacing, axes_shape)
    batch = min(model.max_batch(patch, ctx.memory_budget_bytes), rules.max_batch_size(patch, dataset_voxels))
    batch = max(C.MIN_BATCH_SIZE, batch)
    width = C.BASE_FEATURES
    seconds = ctx.iteration_seconds(topology, patch, batch, width)
    iterations = C.MAX_ITERATIONS
    if ctx.budget_seconds is not None and seconds is not None:
        iterations = T.affordable_iterations(ctx.budget_seconds, seconds)
        if iterations < C.MAX_ITERATIONS:
            batch = C.MIN_BATCH_SIZE
            patch, topology, width, seconds, iterations = _fit_compute(ctx, name, patch, topology, axes_spacing, axes_shape)
            model = ctx.memory(topology)
    num_iterations, per_epoch = T.schedule(iterations)
    return {
        "data_identifier": data_identifier,
        "spatial_dims": dims,
        "spacing": [float(s) for s in spacing],
        "median_shape": [float(s) for s in median_shape],
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch),
        "normalization": rules.normalization_schemes(fingerprint),
        "resampling": rules.resampling_parameters(),
        "network": {"name": ctx.network, "topology": topology.to_dict(), "options": dict(ctx.options)},
        "width": width,
        "predicted_memory_bytes": model.predict(patch, batch),
        "memory_model": asdict(model),
        "planned_for": dict(ctx.planned_for),
        "predicted_seconds_per_iteration": _rounded(seconds, 4),
        "num_iterations": num_iterations,
        "iterations_per_epoch": per_epoch,
        "predicted_total_seconds": _rounded(seconds and T.predicted_total_seconds(num_iterations, seconds), 1),
        "previous_stage": None,
        "next_stage": None,
    }


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
        raw_spacing = [spacing[forward.index(a)] for a in range(3)]
        median = [_median_shape_at(fingerprint, raw_spacing)[a] for a in forward]
        patch, _, _ = _fit_memory(ctx, spacing, median)
        if np.prod(patch) / np.prod(median) >= C.LOWRES_TRIGGER_COVERAGE:
            break
    if np.prod(fullres["median_shape"]) / np.prod(median) < C.LOWRES_MIN_VOXEL_RATIO:
        ctx.notes.append(f"{CONFIG_LOWRES}: dropped, it would save less than {C.LOWRES_MIN_VOXEL_RATIO:g}x voxels")
        return None
    voxels = _dataset_voxels(fingerprint, raw_spacing)
    return _plan_configuration(ctx, CONFIG_LOWRES, spacing, median, 3, voxels, fingerprint,
                               f"{plans_name}_{CONFIG_LOWRES}")


def _cascade(ctx: _Context, fullres: dict[str, Any], n_foreground: int) -> dict[str, Any]:
    """3d_cascade_fullres: the fullres plan with one more input channel per foreground label."""
    cascade = json.loads(json.dumps(fullres))
    topology = Topology.from_dict(fullres["network"]["topology"])
    channels = ctx.in_channels + n_foreground
    model = ctx.memory(topology, channels)
    cascade["predicted_memory_bytes"] = model.predict(fullres["patch_size"], fullres["batch_size"])
    cascade["memory_model"] = asdict(model)
    seconds = ctx.iteration_seconds(topology, fullres["patch_size"], fullres["batch_size"], fullres["width"], channels)
    cascade["predicted_seconds_per_iteration"] = _rounded(seconds, 4)
    cascade["predicted_total_seconds"] = _rounded(seconds and T.predicted_total_seconds(cascade["num_iterations"], seconds), 1)
    cascade["previous_stage"] = CONFIG_LOWRES
    return cascade


def build_plans(
    fingerprint: dict[str, Any],
    *,
    network: str | None = None,
    memory_budget_bytes: float,
    budget_seconds: float | None = None,
    device: torch.device | str = "cpu",
    configs: Sequence[str] | None = None,
    plans_name: str = C.DEFAULT_PLANS_NAME,
    regions_class_order: list[int] | None = None,
    cache_dir: Path | None = None,
    timing_factory: TimingFactory | None = None,
    budget_record: dict[str, Any] | None = None,
    source: str = "fingerprint",
    device_present: bool = True,
) -> dict[str, Any]:
    """The plans dict for a fingerprint (pure apart from timing, which ``timing_factory`` replaces).

    ``device_present=False`` plans for a device this machine lacks (``--gpu-memory`` without a GPU):
    memory is modelled as always, nothing is timed, and no compute budget can apply.
    """
    check_fingerprint(fingerprint, source)
    device = torch.device(device)
    network = network or default_network()
    spec = get_network_spec(network)
    n_classes, n_foreground = output_channels(fingerprint["labels"])
    in_channels = len(fingerprint["channel_names"])
    if budget_seconds is not None and budget_seconds <= 0:
        raise PlanError(f"--budget must be positive, got {budget_seconds} s")
    if budget_seconds is not None and not device_present and timing_factory is None:
        raise PlanError("--budget times training on this machine, which lacks the device planned for; "
                        "plan for the GPU with --gpu-memory alone, or drop --gpu-memory to plan for this machine")

    def measured(dims: int, width: int) -> T.TimingModel:
        return T.measure_timing(network, spec.constraints, dims, in_channels, n_classes, width, device,
                                cache_dir=cache_dir)

    record = dict(budget_record or {}, memory_bytes_usable=int(memory_budget_bytes))
    planned_for = {k: record.get(k) for k in ("device", "device_name", "gpu_memory_gb", "memory_bytes_usable")}
    planned_for["timed_on_device"] = device_present
    ctx = _Context(network, in_channels, n_classes, memory_budget_bytes, budget_seconds, device, cache_dir,
                   timing_factory or (measured if device_present else None), planned_for)
    if not device_present:
        gb = f" with {record['gpu_memory_gb']:g} GB" if record.get("gpu_memory_gb") else ""
        ctx.notes.append(
            f"planned for a {device.type} device{gb} (usable {memory_budget_bytes / 2**30:.1f} GiB) that this "
            "machine lacks: memory is modelled (saved-tensor count on the meta device), not measured there; "
            "speed is not predicted and nnU-Net's schedule (1000 epochs) applies"
        )
    target = rules.target_spacing(fingerprint["spacings"], fingerprint["shapes_after_crop"])
    forward, backward = rules.transpose_axes(target)
    spacing = [target[a] for a in forward]
    median = [_median_shape_at(fingerprint, target)[a] for a in forward]
    voxels = _dataset_voxels(fingerprint, target)
    wanted = _wanted_configurations(configs, fingerprint["is_2d"], spec.constraints.spatial_dims, ctx)

    configurations: dict[str, dict[str, Any]] = {}
    if CONFIG_2D in wanted:
        configurations[CONFIG_2D] = _plan_configuration(ctx, CONFIG_2D, spacing, median, 2, voxels, fingerprint,
                                                        f"{plans_name}_{CONFIG_2D}")
    if wanted & {CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE}:
        fullres = _plan_configuration(ctx, CONFIG_FULLRES, spacing, median, 3, voxels, fingerprint,
                                      f"{plans_name}_{CONFIG_FULLRES}")
        lowres = None
        coverage = np.prod(fullres["patch_size"]) / np.prod(median)
        if wanted & {CONFIG_LOWRES, CONFIG_CASCADE} and coverage < C.LOWRES_TRIGGER_COVERAGE:
            lowres = _plan_lowres(ctx, fullres, forward, fingerprint, plans_name)
        elif wanted & {CONFIG_LOWRES, CONFIG_CASCADE}:
            ctx.notes.append(f"{CONFIG_LOWRES}: not needed, the fullres patch covers {coverage:.0%} of the median image")
        if wanted & {CONFIG_LOWRES, CONFIG_CASCADE} and lowres is None and configs is not None:
            raise PlanError(
                f"{fingerprint['dataset_name']}: {CONFIG_LOWRES}/{CONFIG_CASCADE} do not apply ({ctx.notes[-1]}); "
                f"plan {CONFIG_FULLRES} instead"
            )
        if CONFIG_FULLRES in wanted or lowres is not None:
            configurations[CONFIG_FULLRES] = fullres
        if lowres is not None:
            configurations[CONFIG_LOWRES] = lowres
            lowres["next_stage"] = CONFIG_CASCADE
            configurations[CONFIG_CASCADE] = _cascade(ctx, fullres, n_foreground)

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


def _wanted_configurations(configs: Sequence[str] | None, is_2d: bool, family_dims: tuple[int, ...],
                           ctx: _Context) -> set[str]:
    unknown = sorted(set(configs or ()) - set(ALL_CONFIGURATIONS))
    if unknown:
        raise PlanError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(ALL_CONFIGURATIONS)}")
    possible = {CONFIG_2D} if is_2d else set(ALL_CONFIGURATIONS)
    if 2 not in family_dims:
        possible.discard(CONFIG_2D)
        ctx.notes.append(f"{CONFIG_2D}: skipped, network {ctx.network!r} is 3D only")
    if 3 not in family_dims:
        possible -= {CONFIG_FULLRES, CONFIG_LOWRES, CONFIG_CASCADE}
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


def plan_dataset(
    dataset_spec: str | os.PathLike[str],
    gpu_memory_gb: float | None = None,
    budget_seconds: float | None = None,
    network: str | None = None,
    configs: Sequence[str] | None = None,
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
    from autoseg.fingerprint.file import fingerprint_path, load_fingerprint
    from autoseg.paths import resolve_dataset

    network = get_network_spec(network or default_network()).name  # a typo fails before fingerprinting
    location = resolve_dataset(dataset_spec)
    if not fingerprint_path(location).is_file():
        from autoseg.fingerprint.extract import extract_fingerprint  # SimpleITK and scipy: only when needed

        extract_fingerprint(location, num_workers)
    fingerprint = load_fingerprint(location)
    chosen, present = target_device(device, gpu_memory_gb, budget_seconds)
    usable, nominal = memory_budget(chosen, gpu_memory_gb)
    if budget_seconds is None and chosen.type == "cpu":
        budget_seconds = C.DEFAULT_CPU_BUDGET_SECONDS
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
    )
    if transfer_from is not None:
        from autoseg.planning.transfer import transfer_plans_from

        plans = transfer_plans_from(plans, transfer_from)
    write_plans(plans, plans_path(location.preprocessed_dir, plans_name), overwrite=overwrite)
    return plans, format_plan_table(plans)
