"""The plans file: the one contract between planning and every later stage.

Human-readable JSON, versioned, written atomically; an existing plans file with different content is
never replaced silently (a new plans name is the safe default, ``overwrite=True`` the explicit one),
because preprocessed data and trained models of the old plan depend on it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from autoseg.dataset.description import DatasetDescription
from autoseg.utils.jsonio import read_json
from autoseg.errors import NetworkError, PlanError
from autoseg.fingerprint.file import FINGERPRINT_FILE
from autoseg.networks.topology import REPLAN, Topology
from autoseg.planning import constants as C
from autoseg.utils.atomic import atomic_write_json, folder_lock
from autoseg.utils.finite import is_finite_number

REQUIRED_TOP_LEVEL = (
    "version", "plans_name", "dataset_name", "channel_names", "labels", "file_ending",
    "transpose_forward", "transpose_backward", "foreground_intensity_properties_per_channel",
    "configurations",
)
REQUIRED_CONFIGURATION = (
    "data_identifier", "spatial_dims", "spacing", "median_shape", "patch_size", "batch_size",
    "normalization", "resampling", "network", "predicted_memory_bytes",
    "predicted_seconds_per_iteration", "num_iterations", "iterations_per_epoch",
    "previous_stage", "next_stage",
)


# A plans name becomes a file name and the middle of a model folder's <network>__<plans>__<config>:
# no path separators or '..' (it wrote outside the dataset folder), no leading dot, no '__', and no trailing '_'
# ('P_' made unet__P___3d_fullres, read back as plans 'P' and configuration '_3d_fullres': training failed at its
# final validation, and predict, find-best and export-model never found the configuration).
PLANS_NAME = re.compile(r"^(?!.*__)(?!.*_$)[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def plans_path(preprocessed_dir: str | Path, plans_name: str = C.DEFAULT_PLANS_NAME) -> Path:
    """``<preprocessed>/<Dataset>/<plans_name>.json``; ``PlanError`` for a name that is not a plain file name
    or names another file of that folder (``--plans-name fingerprint --overwrite`` replaced fingerprint.json)."""
    from autoseg.training.splits import SPLITS_FILE  # the training package loads nothing heavy with it

    if not PLANS_NAME.match(plans_name):
        raise PlanError(
            f"--plans-name {plans_name!r}: give a plain name (letters, digits, _ . + -; not starting with a dot, "
            "no '__' and not ending in '_': '__' separates the parts of a model folder's name), e.g. autosegPlans_small"
        )
    if f"{plans_name}.json".lower() in (FINGERPRINT_FILE, SPLITS_FILE):
        raise PlanError(f"--plans-name {plans_name!r}: {plans_name}.json is the dataset's {plans_name.lower()} file, "
                        "which a plans file must not replace; choose another name, e.g. autosegPlans_small")
    return Path(preprocessed_dir) / f"{plans_name}.json"


def validate_plans(plans: Any, source: str) -> dict[str, Any]:
    """Check the structure later stages rely on; ``PlanError`` naming the file and the fix."""
    fix = "re-run `autoseg plan` to write a fresh plans file"
    if not isinstance(plans, dict):
        raise PlanError(f"{source}: a plans file must hold a JSON object; {fix}")
    missing = [k for k in REQUIRED_TOP_LEVEL if k not in plans]
    if missing:
        raise PlanError(f"{source}: missing {', '.join(missing)}; {fix}")
    if plans["version"] != C.PLANS_VERSION:
        raise PlanError(
            f"{source}: plans version {plans['version']!r} but this autoseg reads version {C.PLANS_VERSION}; {fix}"
        )
    forward, backward = plans["transpose_forward"], plans["transpose_backward"]
    axes = [0, 1, 2]
    if (not isinstance(forward, list) or not isinstance(backward, list) or sorted(forward) != axes
            or sorted(backward) != axes or [forward[b] for b in backward] != axes):
        # a hand-edited order failed every case on its own in numpy's words ("repeated axis in transpose")
        raise PlanError(f"{source}: transpose_forward {forward!r} and transpose_backward {backward!r} must be "
                        f"permutations of 0, 1, 2 and each other's inverse; {fix}")
    _check_channels_and_labels(plans, source, fix)
    _check_budget(plans, source, fix)
    configurations = plans["configurations"]
    if not isinstance(configurations, dict) or not configurations:
        raise PlanError(f"{source}: 'configurations' is empty; {fix}")
    for name, config in configurations.items():
        absent = [k for k in REQUIRED_CONFIGURATION if not isinstance(config, dict) or k not in config]
        if absent:
            raise PlanError(f"{source}: configuration {name!r} lacks {', '.join(absent)}; {fix}")
        dims = config["spatial_dims"]
        if dims not in (2, 3) or len(config["patch_size"]) != dims:
            raise PlanError(f"{source}: configuration {name!r} has patch_size {config['patch_size']} for {dims}-D; {fix}")
        _check_grid(config, source, name, fix)
        _check_costs(config, f"{source}: configuration {name!r}", fix)
        _check_preprocessing(config, len(plans["channel_names"]), f"{source}: configuration {name!r}", fix)
        for link in ("previous_stage", "next_stage"):
            if config[link] is not None and config[link] not in configurations:
                raise PlanError(f"{source}: configuration {name!r} names {link} {config[link]!r}, which is not planned; {fix}")
    return plans


def _check_channels_and_labels(plans: dict[str, Any], source: str, fix: str) -> None:
    """channel_names and labels as dataset.json gives them: a hand-edited list of labels failed every case of
    ``preprocess`` with an internal AttributeError (and removed the copies stored before)."""
    channels, labels = plans["channel_names"], plans["labels"]
    if not isinstance(channels, dict) or not channels:
        raise PlanError(f"{source}: channel_names {channels!r} must map channel indices to names, e.g. {{\"0\": \"MRI\"}}; {fix}")
    values = labels.values() if isinstance(labels, dict) else []
    if (not isinstance(labels, dict) or labels.get("background") != 0
            or not all(is_finite_number(v, True) or isinstance(v, list) and v and all(is_finite_number(x, True) for x in v) for v in values)):
        raise PlanError(f"{source}: labels {labels!r} must map names to label values (whole numbers, or lists of them "
                        f"for regions), \"background\" to 0; {fix}")


def _check_budget(plans: dict[str, Any], source: str, fix: str) -> None:
    """The plan's compute budget, which training takes when neither --epochs nor --budget is given: a hand-edited
    "600" or [600] stopped training with an internal TypeError or AttributeError after the data loaders had
    started, and NaN trained towards a deadline of NaN."""
    budget = plans.get("budget")
    if budget is None:
        return
    seconds = budget.get("seconds") if isinstance(budget, dict) else None
    if not isinstance(budget, dict) or seconds is not None and not _positive(seconds, False):
        raise PlanError(f"{source}: budget {budget!r} must be a JSON object whose \"seconds\" is a number > 0, or null "
                        f"for no budget; {fix}")


def _positive(value: Any, integer: bool) -> bool:
    """A positive finite number (an integer if asked)."""
    return is_finite_number(value, integer) and value > 0


# The fields of planning/memory.py's MemoryModel a plan must hold (optimizer_buffers has a default).
_MEMORY_MODEL_KEYS = ("parameter_bytes", "activation_intercept", "activation_per_voxel")


def _check_costs(config: dict[str, Any], where: str, fix: str) -> None:
    """The predicted costs that ``--transfer-plans-from`` takes from a source plan (a file or model zip made
    elsewhere) to refit the target's schedule: "fast" or NaN seconds per iteration stopped plan with an internal
    TypeError or ValueError, -1 planned 1 iteration without a word, a memory model of 5 a TypeError. Null where
    nothing was measured (a plan for a device this machine lacks)."""
    for key in ("predicted_seconds_per_iteration", "recipe_seconds_per_iteration"):
        value = config.get(key)
        if value is not None and not (is_finite_number(value) and value >= 0):  # 0: rounded, a step under 0.1 ms
            raise PlanError(f"{where}: {key} {value!r} is not a number >= 0 (or null); {fix}")
    _check_memory_model(config.get("memory_model"), where, fix)


def _check_memory_model(model: Any, where: str, fix: str) -> None:
    """A memory model of ``planning/memory.py: MemoryModel``'s fields (or null): an object with other keys
    stopped training (and plan's refit) with an internal TypeError, a count of "5" or NaN mispredicted the memory.
    Plain keys here, so that reading a plans file needs no torch."""
    if model is None:
        return
    keys = set(model) if isinstance(model, dict) else set()
    if not isinstance(model, dict) or not set(_MEMORY_MODEL_KEYS) <= keys <= {*_MEMORY_MODEL_KEYS, "optimizer_buffers"} \
            or not all(is_finite_number(v) and (v >= 0 or key == "activation_intercept") for key, v in model.items()):
        # the intercept of the fitted activation line may be negative (nnFormer's: -5632 bytes)
        raise PlanError(f"{where}: memory_model {model!r} is not a JSON object (or null) holding numbers for "
                        f"{', '.join(_MEMORY_MODEL_KEYS)} (and optionally optimizer_buffers), >= 0 except the "
                        f"intercept; {fix}")


def _check_grid(config: dict[str, Any], source: str, name: str, fix: str) -> None:
    """The values a hand-edited plan breaks silently: a spacing of 0 or below (preprocessing stored every case as
    one slice), a patch the network's strides and windows do not divide (training crashed inside the network)."""
    dims = config["spatial_dims"]
    for key, integer in (("spacing", False), ("patch_size", True)):
        values = config[key]
        if not isinstance(values, list) or len(values) not in (dims, 3) or not all(_positive(v, integer) for v in values):
            raise PlanError(f"{source}: configuration {key} {values!r} is not a list of {dims} positive numbers "
                            f"({'whole voxels' if integer else 'mm'}; configuration {name!r}); {fix}")
    where, patch = f"{source}: configuration {name!r}", config["patch_size"]
    if not _positive(config["batch_size"], True):
        raise PlanError(f"{where}: batch_size {config['batch_size']!r} is not a positive integer; {fix}")
    network = config["network"]
    if not isinstance(network, dict) or not network.get("topology"):
        return  # no topology to check the patch against: building the network names that (preprocessing needs none)
    try:
        topology = Topology.from_dict(network["topology"])
    except NetworkError as exc:
        raise PlanError(f"{where}: network {str(exc).removesuffix('; ' + REPLAN)}; {fix}") from None
    multiple = topology.size_multiple
    if topology.spatial_dims != dims or any(p % m for p, m in zip(patch, multiple)):
        raise PlanError(
            f"{where}: patch_size {patch} is not a multiple of {multiple}, which network "
            f"{network.get('name')!r} needs (its strides{' and attention windows' if topology.window_sizes else ''}); "
            f"use a multiple of it or {fix}"
        )


def _check_preprocessing(config: dict[str, Any], n_channels: int, where: str, fix: str) -> None:
    """Normalization and resampling as ``preprocessing`` reads them: a misspelt scheme or a CT entry without
    its statistics failed every case separately, with no word of the plans file."""
    from autoseg.preprocessing.normalization import SCHEMES  # numpy only; the package loads lazily

    schemes = config["normalization"]
    if not isinstance(schemes, list) or len(schemes) != n_channels:
        raise PlanError(f"{where}: normalization must list one entry per channel ({n_channels}); {fix}")
    for c, entry in enumerate(schemes):
        scheme = entry.get("scheme") if isinstance(entry, dict) else None
        if scheme not in SCHEMES:
            raise PlanError(f"{where}: normalization[{c}] scheme {scheme!r} is not one of {', '.join(SCHEMES)}; {fix}")
        clip = entry.get("clip")
        if scheme == "ct" and not (isinstance(clip, list) and len(clip) == 2 and all(is_finite_number(v) for v in clip)
                                   and clip[0] <= clip[1] and is_finite_number(entry.get("mean")) and is_finite_number(entry.get("std")) and entry["std"] >= 0):
            raise PlanError(f"{where}: normalization[{c}] (ct) needs clip [low, high] with low <= high, a finite mean "
                            f"and std >= 0, got clip {clip!r}, mean {entry.get('mean')!r}, std {entry.get('std')!r}; {fix}")
    resampling = config["resampling"]
    orders = [resampling.get(k) if isinstance(resampling, dict) else None for k in ("image_order", "label_order", "order_z")]
    threshold = resampling.get("separate_z_anisotropy_threshold") if isinstance(resampling, dict) else None
    if not all(is_finite_number(o, integer=True) and 0 <= o <= 5 for o in orders) or not _positive(threshold, False):
        raise PlanError(f"{where}: resampling {resampling!r} needs image_order, label_order and order_z in 0..5 and a "
                        f"positive separate_z_anisotropy_threshold; {fix}")


def load_plans(path: str | Path) -> dict[str, Any]:
    """Read and validate a plans file."""
    plans = read_json(
        path, PlanError, "plans file not found; run `autoseg plan DATASET` (or check --plans-name)",
        "re-run `autoseg plan` to write a fresh plans file",
    )
    return validate_plans(plans, str(path))


def get_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    """One configuration of a plan; ``PlanError`` listing those planned if ``name`` is not."""
    configurations = plans["configurations"]
    if name not in configurations:
        raise PlanError(
            f"configuration {name!r} is not in plans {plans.get('plans_name')!r} of {plans.get('dataset_name')}; "
            f"planned: {', '.join(configurations)}"
        )
    return configurations[name]


def check_plans_match_dataset(plans: dict[str, Any], description: DatasetDescription, plans_file: str | Path,
                              dataset_file: str | Path, fix: str) -> None:
    """``PlanError`` naming both files when the plans' regions_class_order or ignore label is not dataset.json's.

    Export writes the plans' regions_class_order and preprocessing keeps the plans' ignore label, while
    the loss, the network's outputs and evaluation follow dataset.json: a dataset.json edited after
    planning made them disagree without a word (a region added later was never written to a label map,
    a new order written with the old values).
    """
    pairs = (
        ("regions_class_order", plans.get("regions_class_order") or None, description.regions_class_order or None),
        ("ignore label", plans.get("ignore_label"), description.ignore_label),
    )
    for what, planned, declared in pairs:
        if planned != declared:
            raise PlanError(f"{dataset_file}: {what} is {declared}, but {plans_file} was planned with {planned}; {fix}")


def replan_advice(dataset: str, plans_name: str) -> str:
    """The fix for a dataset.json edited after planning: the fingerprint, plan and store follow it again."""
    return (f"dataset.json changed after planning: re-run autoseg fingerprint {dataset}, autoseg plan {dataset} "
            f"--plans-name {plans_name} --overwrite and autoseg preprocess {dataset}")


def check_labels_match_dataset(plans: dict[str, Any], description: DatasetDescription, plans_file: str | Path,
                               dataset_file: str | Path, fix: str) -> None:
    """``PlanError`` naming both files when the plans' labels are not dataset.json's: a class added after planning
    had no class locations in the store (never oversampled) while the network trained an output for it, and the
    model folder's plans.json and dataset.json disagreed on the classes."""
    if plans["labels"] != description.labels:
        raise PlanError(f"{dataset_file}: labels are {description.labels}, but {plans_file} was planned with "
                        f"{plans['labels']}; {fix}")


def check_plans_follow_dataset(plans: dict[str, Any], description: DatasetDescription, plans_file: str | Path,
                               dataset_file: str | Path, dataset: str, plans_name: str) -> None:
    """Both checks above with the re-plan advice: preprocess and train refuse a dataset.json edited after planning
    (the store keeps the plans' labels, regions and ignore label)."""
    fix = replan_advice(dataset, plans_name)
    check_plans_match_dataset(plans, description, plans_file, dataset_file, fix)
    check_labels_match_dataset(plans, description, plans_file, dataset_file, fix)


def write_plans(plans: dict[str, Any], path: str | Path, overwrite: bool = False) -> bool:
    """Write ``plans`` atomically; returns False when an identical file is already there.

    A different existing plan is kept unless ``overwrite``: its preprocessed data and models would
    no longer match it. Check and write happen under a lock on the folder, so of two ``plan`` runs
    finishing together the second sees the first's plan (else both found none, both wrote, and one
    printed a plan the file does not hold).
    """
    path = Path(path)
    validate_plans(plans, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path.parent):
        if path.is_file():
            try:
                existing = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                existing = None
            if existing == json.loads(json.dumps(plans)):
                return False
            if not overwrite:
                raise PlanError(
                    f"{path}: a different plan with this name exists (its preprocessed data and trained models "
                    "depend on it; another `autoseg plan` running at the same time writes one too); choose a "
                    "new name with --plans-name, or pass --overwrite to replace it"
                )
        atomic_write_json(path, plans)
    return True


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _memory(size: float) -> str:
    """A predicted memory size for the table: below 0.1 GiB in MiB (small networks on small patches read 0.00 GiB)."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 / 10 else f"{size / 2**20:.0f} MiB"


def _numbers(values: list[float], digits: int = 2) -> str:
    texts = [f"{v:.{digits}f}" for v in values]
    return "x".join(t.rstrip("0").rstrip(".") if "." in t else t for t in texts)


def format_plan_table(plans: dict[str, Any]) -> str:
    """One row per configuration: what was planned and what it is predicted to cost."""
    header = ("configuration", "spacing (mm)", "median shape", "patch", "batch", "network", "stages",
              "features", "memory", "s/iter", "iterations", "total")
    rows = [header]
    for name, config in plans["configurations"].items():
        topology = config["network"]["topology"]
        features = topology["features_per_stage"]
        rows.append((
            name,
            _numbers(config["spacing"][-config["spatial_dims"]:]),
            _numbers(config["median_shape"][-config["spatial_dims"]:], 0),
            "x".join(str(p) for p in config["patch_size"]),
            str(config["batch_size"]),
            config["network"]["name"],
            str(len(features)),
            f"{features[0]}-{features[-1]}",
            _memory(config["predicted_memory_bytes"]),
            _seconds(config["predicted_seconds_per_iteration"]),
            str(config["num_iterations"]),
            _duration(config.get("predicted_total_seconds")),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    budget = plans.get("budget", {})
    title = f"plans {plans['plans_name']!r} for {plans['dataset_name']}"
    if budget:
        title += f" (device {budget.get('device_name') or budget.get('device', '?')}"
        if budget.get("gpu_memory_gb"):
            title += f" {budget['gpu_memory_gb']:g} GB"
        title += f", usable memory {budget.get('memory_bytes_usable', 0) / 2**30:.1f} GiB"
        title += f", compute budget {_duration(budget.get('seconds'))} per fold)"
    notes = [f"note: {n}" for n in plans.get("notes", [])]
    return "\n".join([title, *lines, *_time_lines(plans), *notes])


def _time_lines(plans: dict[str, Any]) -> list[str]:
    """Each configuration's predicted time, part by part (docs/planning.md)."""
    lines = []
    for name, config in plans["configurations"].items():
        parts = config.get("predicted_seconds")
        if parts:
            listed = " + ".join(f"{part.replace('_', ' ')} {_duration(parts[part])}" for part in
                                ("preprocess", "startup", "training", "checkpoints", "final_validation"))
            tta = "" if config.get("validation_tta", True) else " (validation without mirroring)"
            lines.append(f"time {name}: {listed} = {_duration(parts['total'])}{tta}")
    return lines
