"""The planning rules of reference §1.3 as small, named functions of the fingerprint.

Axis order: ``target_spacing`` and friends work in the raw array order; everything after
``transpose_axes`` is in the plan's transposed order (coarsest axis first).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from autoseg.planning import constants as C


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> list[float]:
    """Per-axis median spacing, with the anisotropy rule of reference §1.3 for the coarsest axis.

    When the coarsest axis is more than ``ANISOTROPY_THRESHOLD`` x coarser than every other axis and
    so short that ``ANISOTROPY_SIZE_FACTOR`` x its median size is below the smallest other median
    size, it takes the 10th percentile of its spacings instead (never finer than the other axes):
    resampling thick slices to the median would invent many slices for few real ones.
    """
    spacing_array = np.asarray(spacings, dtype=float)
    target = np.median(spacing_array, axis=0)
    median_shape = np.median(np.asarray(shapes, dtype=float), axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    if not others:
        return [float(t) for t in target]
    coarse = target[worst] > C.ANISOTROPY_THRESHOLD * max(target[a] for a in others)
    short = median_shape[worst] * C.ANISOTROPY_SIZE_FACTOR < min(median_shape[a] for a in others)
    if coarse and short:
        low = float(np.percentile(spacing_array[:, worst], C.ANISOTROPIC_SPACING_PERCENTILE))
        target[worst] = max(low, max(target[a] for a in others))
    return [float(t) for t in target]


def transpose_axes(spacing: Sequence[float], first: int | None = None) -> tuple[list[int], list[int]]:
    """(forward, backward) axis permutations putting ``first`` (default: the coarsest axis) first, the rest in order.

    Ties keep the array order, so isotropic data is not transposed.
    """
    worst = int(np.argmax(np.asarray(spacing))) if first is None else first
    forward = [worst] + [a for a in range(len(spacing)) if a != worst]
    backward = [forward.index(a) for a in range(len(spacing))]
    return forward, backward


def normalization_schemes(fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """One normalization entry per channel, chosen by channel name (reference §1.3).

    ``CT`` channels are clipped to the dataset's foreground [p0.5, p99.5] and standardised with the
    global foreground mean and std (Hounsfield units mean the same in every image); ``noNorm`` keeps
    the values; nnU-Net v2's ``rescale_to_0_1`` and ``rgb_to_0_1`` do what they say; every other
    channel is z-scored per image, inside the nonzero mask when cropping removed more than 25% of the
    median image (the mask then marks where the body is).
    """
    use_mask = float(fingerprint["median_relative_size_after_crop"]) < C.USE_MASK_RELATIVE_SIZE
    schemes = []
    for index, name in sorted(fingerprint["channel_names"].items(), key=lambda kv: int(kv[0])):
        kind = str(name).strip().lower()
        if kind == C.CT_CHANNEL_NAME:
            props = fingerprint["foreground_intensity_properties_per_channel"][index]
            schemes.append({
                "scheme": "ct", "use_mask": False,
                "clip": [float(props["percentile_00_5"]), float(props["percentile_99_5"])],
                "mean": float(props["mean"]), "std": float(props["std"]),
            })
        elif kind in C.NO_NORMALIZATION_NAMES:
            schemes.append({"scheme": "none", "use_mask": False, "clip": None, "mean": None, "std": None})
        elif kind in C.NNUNET_SCHEME_NAMES:
            schemes.append({"scheme": kind, "use_mask": False, "clip": None, "mean": None, "std": None})
        else:
            schemes.append({"scheme": "zscore", "use_mask": use_mask, "clip": None, "mean": None, "std": None})
    return schemes


def resampling_parameters() -> dict[str, Any]:
    """Interpolation orders (reference §1.3); ``separate_z_axis`` decides per case where they apply."""
    return {
        "image_order": C.IMAGE_RESAMPLING_ORDER,
        "label_order": C.LABEL_RESAMPLING_ORDER,
        "order_z": C.OUT_OF_PLANE_ORDER,
        "separate_z_anisotropy_threshold": C.SEPARATE_Z_ANISOTROPY_THRESHOLD,
    }


def separate_z_axis(
    original_spacing: Sequence[float],
    target: Sequence[float],
    threshold: float = C.SEPARATE_Z_ANISOTROPY_THRESHOLD,
) -> int | None:
    """The axis to resample out-of-plane (order ``order_z``) separately, or ``None``.

    A case whose own spacing is anisotropic (max/min > threshold) is resampled in-plane first and
    along its coarse axis with nearest neighbour: a cubic spline across 5 mm slices rings. If the
    case is isotropic but the target is anisotropic, the target's coarse axis is used.
    """
    for spacing in (original_spacing, target):
        values = np.asarray(spacing, dtype=float)
        if values.max() / values.min() > threshold:
            return int(np.argmax(values))
    return None


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[int]) -> list[int]:
    """Patch shaped like 1/spacing (same physical extent per axis) with the reference volume,
    clipped to the median image shape (reference §1.3)."""
    dims = len(spacing)
    inverse = 1.0 / np.asarray(spacing, dtype=float)
    edge = C.REFERENCE_PATCH_EDGE[dims]
    scale = (edge**dims / float(np.prod(inverse))) ** (1.0 / dims)
    patch = np.round(inverse * scale).astype(int)
    return [int(max(1, min(p, s))) for p, s in zip(patch, median_shape)]


def grow_lowres_spacing(spacing: Sequence[float]) -> list[float]:
    """One 3% step of the 3d_lowres spacing search (reference §1.3).

    Anisotropic spacings grow only the axes more than 2x finer than the coarsest, as nnU-Net v2 grows
    them, so the coarse axis is not made even coarser before the others catch up (of 2.5 x 1.5 x 0.7 mm
    only the 0.7 mm axis grows).
    """
    values = np.asarray(spacing, dtype=float)
    grow = values.max() / values > C.LOWRES_ANISOTROPIC_RATIO
    if not grow.any():
        grow = np.ones_like(values, dtype=bool)
    return [float(v * C.LOWRES_SPACING_STEP) if g else float(v) for v, g in zip(values, grow)]


def shape_at_spacing(shape: Sequence[float], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """The voxel shape of an image of ``shape`` at ``spacing`` once resampled to ``new_spacing``."""
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]


def max_batch_size(patch: Sequence[int], dataset_voxels: float) -> int:
    """The batch cap: one batch covers at most 5% of the dataset's voxels, but never below 2."""
    cap = math.floor(C.MAX_BATCH_DATASET_FRACTION * dataset_voxels / float(np.prod(patch)))
    return max(C.MIN_BATCH_SIZE, cap)
