"""One case from its input grid to the preprocessed grid (reference §1.4), for training and inference.

Order: cast to float32, transpose, crop to nonzero, normalize, resample. ``properties`` records every
shape and spacing on the way so ``inverse.py`` can map predictions back to the exact input grid.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from autoseg.dataset.imageio import Geometry
from autoseg.errors import PlanError
from autoseg.fingerprint.cropping import crop_to_nonzero
from autoseg.preprocessing.normalization import normalize
from autoseg.preprocessing.resampling import new_shape, resample_data, resample_label, scheme_for

PROPERTIES_VERSION = 1


def configuration_dict(plans: dict[str, Any], configuration: str | dict[str, Any]) -> dict[str, Any]:
    """The configuration dict, given either the dict itself or its name in ``plans``."""
    if isinstance(configuration, dict):
        return configuration
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise PlanError(
            f"configuration {configuration!r} is not in plans {plans.get('plans_name', '')!r} "
            f"(available: {', '.join(configurations) or 'none'}); pick one of those or re-run `autoseg plan`"
        )
    return configurations[configuration]


def transposed(values: Sequence[Any], order: Sequence[int]) -> list[Any]:
    return [values[i] for i in order]


def target_spacing(config: dict[str, Any], spacing: Sequence[float]) -> list[float]:
    """The configuration's spacing; 2D configurations keep the case's own slice spacing (never resampled)."""
    target = [float(s) for s in config["spacing"]]
    if int(config.get("spatial_dims", len(target))) == 2:
        target = [float(spacing[0]), *target[-2:]]
    if len(target) != len(spacing):
        raise PlanError(
            f"configuration spacing {config['spacing']} has {len(target)} values for a {len(spacing)}D image; "
            "re-run `autoseg plan`"
        )
    return target


def preprocess_case(
    data: np.ndarray,
    geometry: Geometry,
    plans: dict[str, Any],
    configuration: str | dict[str, Any],
    seg: np.ndarray | None = None,
    copy: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Preprocess one case.

    Args:
        data: image channels (C, z, y, x), any numeric dtype.
        geometry: the input's geometry (spacing in array order).
        plans: the plans dict; configuration: a configuration name or dict from it.
        seg: label map (z, y, x) or (1, z, y, x), or None (inference).
        copy: False lets a float32 ``data`` be normalized in place (saves one image-sized copy for
            callers that no longer need it); True never modifies ``data``.

    Returns:
        ``(data_pp float32 (C, ...), seg_pp int16 (1, ...) or None, properties)``; seg_pp is -1 outside
        the nonzero mask.
    """
    config = configuration_dict(plans, configuration)
    order = [int(a) for a in plans.get("transpose_forward", range(data.ndim - 1))]
    axes = [0, *(a + 1 for a in order)]
    spacing = transposed(geometry.spacing, order)
    view = data.transpose(axes)
    if seg is not None:
        seg = (seg if seg.ndim == data.ndim else seg[None]).transpose(axes)
    cropped, seg, bbox, mask = crop_to_nonzero(view, seg)
    image = cropped.astype(np.float32, copy=copy)
    normalize(image, config["normalization"], mask)
    del mask
    target = target_spacing(config, spacing)
    shape = new_shape(image.shape[1:], spacing, target)
    spatial_dims = int(config.get("spatial_dims", 3))
    properties = {
        "version": PROPERTIES_VERSION,
        "shape_original": list(data.shape[1:]),
        "geometry": geometry.to_dict(),
        "transpose_forward": order,
        "shape_before_crop": list(view.shape[1:]),
        "bbox": bbox,
        "shape_after_crop": list(image.shape[1:]),
        "spacing": spacing,
        "target_spacing": target,
        "shape_after_resampling": list(shape),
    }
    resampling = config["resampling"]
    image = resample_data(image, shape, scheme_for(resampling, spacing, target, "image", spatial_dims))
    image = np.ascontiguousarray(image)  # a view of ``data`` when nothing was cropped or resampled
    if seg is not None:
        seg = resample_label(seg[0], shape, scheme_for(resampling, spacing, target, "label", spatial_dims))[None]
    return image, seg, properties
