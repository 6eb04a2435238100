"""The exact inverse of ``pipeline.preprocess_case``: preprocessed grid -> the case's input grid.

Resample back to the cropped shape, un-crop, transpose back. Inference writes its predictions with
these functions, and the cascade brings lowres predictions forward with ``label_to_preprocessed_grid``.
Memory: probabilities are resampled one class at a time into a running argmax, so no float copy of all
classes at full resolution exists unless the probabilities themselves are asked for.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from autoseg.preprocessing.pipeline import configuration_dict
from autoseg.preprocessing.resampling import ResamplingScheme, resample_array, resample_label, scheme_for

REGION_THRESHOLD = 0.5  # region outputs are sigmoids (reference §1.1): present above 0.5


def label_dtype(plans: dict[str, Any]) -> type[np.unsignedinteger]:
    """uint8 when every label value fits, else uint16 (docs/architecture.md, Labels)."""
    values = [0]
    for value in plans.get("labels", {}).values():
        values.extend(value if isinstance(value, list) else [value])
    values.extend(plans.get("regions_class_order") or [])
    return np.uint8 if max(values) <= np.iinfo(np.uint8).max else np.uint16


def _scheme(properties: dict[str, Any], plans: dict[str, Any], configuration: str | dict[str, Any]) -> ResamplingScheme:
    """The label/probability resampling scheme from the preprocessed grid back to the cropped input grid."""
    config = configuration_dict(plans, configuration)
    return scheme_for(
        config["resampling"], properties["spacing"], properties["target_spacing"], "label",
        int(config.get("spatial_dims", 3)),
    )


def _crop_slices(properties: dict[str, Any]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in properties["bbox"])


def _backward(properties: dict[str, Any]) -> list[int]:
    return [int(a) for a in np.argsort(properties["transpose_forward"])]


def _to_input_grid(cropped: np.ndarray, properties: dict[str, Any], fill: float, leading: int = 0) -> np.ndarray:
    """Un-crop ``cropped`` (``leading`` extra axes first) into the full transposed grid, transpose back."""
    lead = cropped.shape[:leading]
    full = np.full((*lead, *properties["shape_before_crop"]), fill, dtype=cropped.dtype)
    full[(slice(None),) * leading + _crop_slices(properties)] = cropped
    order = [*range(leading), *(a + leading for a in _backward(properties))]
    return np.ascontiguousarray(full.transpose(order))


def _spatial(seg: np.ndarray, ndim: int) -> np.ndarray:
    return seg[0] if seg.ndim == ndim + 1 else seg


def restore_label(
    seg_pp: np.ndarray, properties: dict[str, Any], plans: dict[str, Any], configuration: str | dict[str, Any]
) -> np.ndarray:
    """A preprocessed label map ((1, ...) or spatial) as a label map (z, y, x) on the input grid.

    Voxels marked -1 (outside the nonzero mask) and voxels outside the crop become background.
    """
    seg = _spatial(np.asarray(seg_pp), len(properties["shape_after_crop"]))
    seg = resample_label(seg, properties["shape_after_crop"], _scheme(properties, plans, configuration))
    dtype = label_dtype(plans)
    cropped = np.where(seg < 0, 0, seg).astype(dtype)
    return _to_input_grid(cropped, properties, 0)


def _channel(probs: Any, c: int) -> np.ndarray:
    """Channel ``c`` of a numpy array or torch tensor as float32 numpy (torch is never imported here)."""
    channel = probs[c]
    if hasattr(channel, "detach"):
        channel = channel.detach().float().cpu().numpy()
    return np.asarray(channel, dtype=np.float32)


def restore_probabilities_to_labels(
    probs_pp: Any,
    properties: dict[str, Any],
    plans: dict[str, Any],
    configuration: str | dict[str, Any],
    regions_class_order: Sequence[int] | None = None,
    return_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Class probabilities (C, ...) on the preprocessed grid -> label map (z, y, x) on the input grid.

    Softmax outputs (channel = label value) take the argmax; region outputs (sigmoid, one channel per
    entry of ``regions_class_order``, default the plans') write each region's label where its probability
    exceeds 0.5, in order. With ``return_probabilities`` also returns float32 (C, z, y, x) probabilities on
    the input grid (outside the crop: background 1 for softmax, 0 for regions).
    """
    if regions_class_order is None:
        regions_class_order = plans.get("regions_class_order")
    scheme = _scheme(properties, plans, configuration)
    shape = tuple(properties["shape_after_crop"])
    num_channels = probs_pp.shape[0]
    labels = np.zeros(shape, dtype=label_dtype(plans))
    best = None if regions_class_order else np.full(shape, -np.inf, dtype=np.float32)
    restored = np.empty((num_channels, *shape), dtype=np.float32) if return_probabilities else None
    for c in range(num_channels):
        prob = resample_array(_channel(probs_pp, c), shape, scheme)
        if regions_class_order:
            labels[prob > REGION_THRESHOLD] = regions_class_order[c]
        else:
            better = prob > best
            best[better] = prob[better]
            labels[better] = c
        if restored is not None:
            restored[c] = prob
    label = _to_input_grid(labels, properties, 0)
    if restored is None:
        return label
    full = _to_input_grid(restored, properties, 0.0, leading=1)
    if not regions_class_order:
        outside = np.ones(properties["shape_before_crop"], dtype=bool)
        outside[_crop_slices(properties)] = False
        full[0][outside.transpose(_backward(properties))] = 1.0
    return label, full


def label_to_preprocessed_grid(
    seg_original: np.ndarray, properties: dict[str, Any], plans: dict[str, Any], configuration: str | dict[str, Any]
) -> np.ndarray:
    """A label map on a case's input grid ((z, y, x) or (1, z, y, x)) moved onto its preprocessed grid.

    Same transpose, crop and label resampling as the training labels (used for the cascade's lowres
    predictions); returns the same rank as given.
    """
    config = configuration_dict(plans, configuration)
    seg = _spatial(np.asarray(seg_original), len(properties["shape_original"]))
    seg = seg.transpose(properties["transpose_forward"])[_crop_slices(properties)]
    scheme = scheme_for(
        config["resampling"], properties["spacing"], properties["target_spacing"], "label",
        int(config.get("spatial_dims", 3)),
    )
    out = resample_label(np.ascontiguousarray(seg), properties["shape_after_resampling"], scheme)
    return out[None] if np.asarray(seg_original).ndim == len(properties["shape_original"]) + 1 else out
