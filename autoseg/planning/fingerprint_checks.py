"""The fingerprint a plan is made from, checked: its fields and types, and case sizes that the
planned spacing would resample to implausibly many or few voxels.
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Any, Sequence

import numpy as np

from autoseg.dataset.imageio import SUPPORTED_ENDINGS
from autoseg.dataset.verify import MAX_SPACING_MM
from autoseg.errors import FingerprintError, PlanError
from autoseg.planning import constants as C
from autoseg.preprocessing.resampling import implausible_resampling
from autoseg.utils.finite import is_finite_number


_FINGERPRINT_KEYS = (
    "dataset_name", "channel_names", "labels", "file_ending", "spacings", "shapes_after_crop",
    "median_relative_size_after_crop", "foreground_intensity_properties_per_channel", "is_2d",
)


_CT_INTENSITY_KEYS = ("percentile_00_5", "percentile_99_5", "mean", "std")  # what CT normalization reads (rules.py)


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
    shown = _shown(spacing_array[index])
    raise FingerprintError(
        f"{source}: case {case} has voxel spacing {shown} mm, beyond the {MAX_SPACING_MM:g} mm `autoseg verify` "
        "accepts (a fingerprint edited by hand?); delete it and re-run `autoseg fingerprint`"
    )


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _voxel_count(count: int) -> str:
    """``count`` in 3 significant digits; through ``Decimal`` because a product of resampled sizes can pass
    the largest float (a case at 1e5 mm among cases at 1e-100 mm), where ``f"{count:.3g}"`` raises
    OverflowError (``Decimal`` writes "e+9" where float writes "e+09", hence only then)."""
    try:
        return f"{count:.3g}"
    except OverflowError:
        return f"{Decimal(count):.3g}"


def _shown(values: Sequence[float]) -> str:
    """Sizes or spacings as the refusals show them: '24 x 32 x 24'."""
    return " x ".join(f"{v:g}" for v in values)


def check_resampled_sizes(fingerprint: dict[str, Any], target: Sequence[float]) -> None:
    """Refuse a case whose voxel size would resample it to more voxels than any machine holds, or to a
    few voxels (more than ``MAX_CASE_DOWNSAMPLING`` times coarser along an axis).

    A header in microns among millimetres (1000x the spacing) passed verify and fingerprint, planned
    "1 iteration, 17893h" and failed in preprocess as "out of memory; retry with fewer workers"; one in
    metres was preprocessed to a single voxel and trained on without a word.
    """
    case_ids = fingerprint.get("case_ids") or [str(i) for i in range(len(fingerprint["spacings"]))]
    for case, shape, spacing in zip(case_ids, fingerprint["shapes_after_crop"], fingerprint["spacings"]):
        if math.prod(shape) > C.MAX_RESAMPLED_VOXELS:  # huge as stored: no header fix can help (it was advised)
            raise PlanError(
                f"{fingerprint.get('dataset_name', 'dataset')}: case {case} holds {_shown(shape)} = {_voxel_count(math.prod(shape))} "
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
            outcome, units = f"{_shown(resampled)}", "metres or cm instead of mm?"
        raise PlanError(
            f"{fingerprint.get('dataset_name', 'dataset')}: case {case} has voxel spacing {_shown(spacing)} mm "
            f"(z, y, x) against the planned {_shown(target)} mm: its {_shown(shape)} voxels would resample to "
            f"{outcome}; fix that case's header voxel size ({units}), then re-run `autoseg fingerprint` and `autoseg plan`"
        )
