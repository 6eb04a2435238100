"""Segmentation metrics per class or region, in physical units (reference §1.7, extended).

Overlap: Dice, IoU, precision, recall, TP/FP/FN voxel counts and volumes. Surface: HD95, average
symmetric surface distance (ASSD) and normalised surface Dice (NSD) at a tolerance in mm.

Conventions (every number in ``summary.json`` follows them):

* A class is a set of label values (a region is the union of several); its mask is ``isin(seg, values)``.
* Ignore label: reference voxels holding it are removed from both masks before every metric.
* Surface of a mask: the mask minus its binary erosion with a full-connectivity structuring element
  (3x3x3 in 3D), voxels outside the image counting as background, so a structure touching the image
  border has surface there. Axes of length 1 (2D images stored as one slice) are dropped first, so
  2D images get 2D surfaces and their placeholder slice spacing never enters a distance.
* Surface distance of a surface voxel: Euclidean distance in mm (anisotropic spacing) from its centre
  to the nearest surface voxel centre of the other mask (exact EDT, ``scipy.ndimage``).
* HD95: the larger of the two directed 95th percentiles (numpy's linear interpolation).
  ASSD: mean over the surface voxels of both masks of their surface distance.
  NSD: fraction of the surface voxels of both masks whose surface distance is <= the tolerance.
  All three count surface voxels (not surface areas).
* Both masks empty: ``empty_in_both`` is true and Dice, IoU, precision, recall, HD95, ASSD and NSD are
  NaN; such a case is left out of the means but counted (``n_empty_in_both``).
* Exactly one mask empty: Dice = IoU = NSD = 0; HD95 and ASSD have no surface to measure to and are
  set to the image's physical diagonal (the largest distance possible in it, the BraTS convention),
  so failures stay finite and penalise means; ``empty_reference``/``empty_prediction`` flag it.
* Volumes are in mm^3 (mm^2 for 2D images, whose slice spacing is a placeholder).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from autoseg.dataset.description import IGNORE_LABEL_NAME, DatasetDescription
from autoseg.dataset.imageio import physical_volume_mm3

HD_PERCENTILE = 95.0  # HD95: the 95th percentile of surface distances
DEFAULT_TOLERANCE_MM = 1.0  # NSD tolerance; pick one suited to the structure and the annotation noise

# Keys of one class's metrics in summary.json, in reading order.
METRIC_KEYS = (
    "dice", "iou", "hd95", "assd", "nsd", "precision", "recall",
    "tp", "fp", "fn", "volume_pred_mm3", "volume_ref_mm3",
)
FLAG_KEYS = ("empty_in_both", "empty_reference", "empty_prediction")

SegClass = tuple[str, tuple[int, ...]]


def evaluation_classes(description_or_labels: DatasetDescription | Mapping[str, Any]) -> tuple[list[SegClass], int | None]:
    """The classes/regions to evaluate as ``(name, label values)`` and the ignore label (or None).

    Accepts a ``DatasetDescription`` or a ``labels`` mapping in ``dataset.json`` form
    (name -> int, or list of ints for a region; ``background`` and ``ignore`` are not evaluated).
    """
    labels = description_or_labels.labels if isinstance(description_or_labels, DatasetDescription) else description_or_labels
    classes: list[SegClass] = []
    ignore = None
    for name, value in labels.items():
        if name == IGNORE_LABEL_NAME:
            ignore = int(value)
        elif name != "background":
            classes.append((str(name), tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)))
    return classes, ignore


def spatial_view(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Drop axes of length 1 (and their spacing) so a one-slice image is measured as 2D."""
    keep = [axis for axis, size in enumerate(mask.shape) if size > 1]
    if not keep:  # a single voxel: keep one axis so arrays stay at least 1D
        keep = [0]
    return mask.reshape([mask.shape[a] for a in keep]), tuple(float(spacing[a]) for a in keep)


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its full-connectivity erosion (outside the array is background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(int(nonzero[0]), int(nonzero[-1]) + 1))
    return tuple(slices)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to ``ref``'s surface, and back.

    Both masks must be non-empty and already in their spatial view. The masks are cropped to the
    bounding box of their union first: surfaces do not change (outside the box is background either
    way, and erosion treats the array border as background) and nearest-surface distances are
    Euclidean, not path lengths, so they need no margin; the distance transforms get much smaller.
    """
    box = _bounding_box(pred | ref)
    surf_pred, surf_ref = surface(pred[box]), surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)
    return to_ref[surf_pred], to_pred[surf_ref]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def binary_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    surface_metrics: bool = True,
) -> dict[str, Any]:
    """All metrics of one binary prediction against one binary reference (same shape, bool).

    ``surface_metrics=False`` skips HD95/ASSD/NSD (their keys are absent), for fast overlap-only use
    such as deciding postprocessing.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp, fn = n_pred - tp, n_ref - tp
    voxel_volume = voxel_volume_mm3(pred.shape, spacing)
    empty_both = n_pred == 0 and n_ref == 0
    out: dict[str, Any] = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_ref),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "volume_pred_mm3": float(n_pred * voxel_volume),
        "volume_ref_mm3": float(n_ref * voxel_volume),
        "empty_in_both": empty_both,
        "empty_reference": n_ref == 0 and not empty_both,
        "empty_prediction": n_pred == 0 and not empty_both,
    }
    if surface_metrics:
        out.update(_surface_metrics(pred, ref, spacing, tolerance_mm, n_pred, n_ref))
    return {key: out[key] for key in (*METRIC_KEYS, *FLAG_KEYS) if key in out}


def voxel_volume_mm3(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Volume of one voxel over the axes longer than 1 (a one-slice image measures area)."""
    return physical_volume_mm3([s for s, n in zip(spacing, shape) if n > 1])


SIZE_UNITS = ("voxels", "mm", "mm^2", "mm^3")  # by the number of axes longer than 1


def size_unit(shape: Sequence[int]) -> str:
    """The unit of ``voxel_volume_mm3`` for an image of ``shape``, by its axes longer than 1: ``mm^3`` for three,
    ``mm^2`` for two (a 2D image's sizes are areas), ``mm`` for one (a line of voxels: lengths, once called mm^2)
    and ``voxels`` for a single voxel, whose size counts as 1."""
    return SIZE_UNITS[min(sum(n > 1 for n in shape), len(SIZE_UNITS) - 1)]


def _surface_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float, n_pred: int, n_ref: int
) -> dict[str, float]:
    if n_pred == 0 and n_ref == 0:
        return {"hd95": math.nan, "assd": math.nan, "nsd": math.nan}
    if n_pred == 0 or n_ref == 0:
        view, view_spacing = spatial_view(pred, spacing)
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(view.shape, view_spacing)))
        return {"hd95": diagonal, "assd": diagonal, "nsd": 0.0}
    pred_view, view_spacing = spatial_view(pred, spacing)
    ref_view, _ = spatial_view(ref, spacing)
    d_pred, d_ref = surface_distances(pred_view, ref_view, view_spacing)
    both = np.concatenate([d_pred, d_ref])
    return {
        "hd95": float(max(np.percentile(d_pred, HD_PERCENTILE), np.percentile(d_ref, HD_PERCENTILE))),
        "assd": float(both.mean()),
        "nsd": float(np.count_nonzero(both <= tolerance_mm) / both.size),
    }


def case_metrics(
    pred_seg: np.ndarray,
    ref_seg: np.ndarray,
    spacing: Sequence[float],
    classes: Sequence[SegClass],
    ignore_label: int | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    surface_metrics: bool = True,
) -> dict[str, dict[str, Any]]:
    """Metrics of every class/region of one case: ``{class name: {metric: value}}``."""
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"prediction shape {pred_seg.shape} differs from reference shape {ref_seg.shape}")
    valid = None if ignore_label is None else ref_seg != ignore_label
    out = {}
    for name, values in classes:
        pred = np.isin(pred_seg, values)
        ref = np.isin(ref_seg, values)
        if valid is not None:
            pred &= valid
            ref &= valid
        out[name] = binary_metrics(pred, ref, spacing, tolerance_mm, surface_metrics)
    return out


def _nanmean(values: Sequence[float]) -> float:
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else math.nan


def mean_metrics(per_case: Sequence[Mapping[str, Mapping[str, Any]]], classes: Sequence[SegClass]) -> dict[str, Any]:
    """Per class: the mean of each metric over cases (NaN skipped) with case counts; and the
    foreground mean, the mean over classes of the class means (reference §1.7)."""
    means: dict[str, dict[str, Any]] = {}
    for name, _ in classes:
        rows = [case[name] for case in per_case]
        entry: dict[str, Any] = {
            key: _nanmean([row[key] for row in rows]) for key in METRIC_KEYS if rows and key in rows[0]
        }
        entry["n_cases"] = len(rows)
        entry["n_empty_in_both"] = sum(bool(row["empty_in_both"]) for row in rows)
        means[name] = entry
    keys = [key for key in METRIC_KEYS if means and all(key in m for m in means.values())]
    foreground = {key: _nanmean([m[key] for m in means.values()]) for key in keys}
    return {"mean": means, "foreground_mean": foreground}
