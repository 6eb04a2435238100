"""The exact inverse of ``pipeline.preprocess_case``: preprocessed grid -> the case's input grid.

Resample back to the cropped shape, un-crop, transpose back. Inference writes its predictions with
these functions, and the cascade brings lowres predictions forward with ``label_to_preprocessed_grid``.
Memory: probabilities are resampled slab by slab and one class at a time into a running argmax
(``ProbabilityExport``, which also takes the sliding window's slabs as they are finalized), so no float
copy of all classes at full resolution exists unless the probabilities themselves are asked for.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from autoseg.preprocessing.pipeline import configuration_dict
from autoseg.preprocessing.resampling import (
    LABEL_SLAB_VOXELS,
    SPLINE_PAD,
    ResamplingScheme,
    resample_block,
    resample_label,
    scheme_for,
)

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


def _as_float32(probs: Any) -> np.ndarray:
    """A numpy array or torch tensor as float32 numpy (torch is never imported here)."""
    if hasattr(probs, "detach"):
        probs = probs.detach().float().cpu().numpy()
    return np.asarray(probs, dtype=np.float32)


def _rows(pieces: Sequence[tuple[int, np.ndarray]], start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` (axis 1) of consecutive pieces (first row, (C, rows, ...)): a view when one
    piece holds them all."""
    parts = [
        rows[:, max(0, start - first) : stop - first]
        for first, rows in pieces
        if first < stop and first + rows.shape[1] > start
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


class ProbabilityExport:
    """Probabilities on the preprocessed grid, given slab by slab along axis 0 -> label map on the input grid.

    ``add`` takes consecutive row slabs (C, rows, ...) as the sliding window finalizes them; every output
    row whose input rows have all arrived is resampled class by class into a running argmax (or region
    thresholds) at once, and input rows no longer needed are dropped. So memory holds the label map plus
    about a slab of float32 probabilities, never all classes over the whole image (reference §1.6:
    nnU-Net's export of one 14-class CT peaks at several GB). Interpolation orders <= 1 read a finite
    neighbourhood, so slab by slab gives what the whole volume gives; a higher order's spline prefilter
    reaches further, with an influence that decays by 0.27 per voxel for cubic splines, so
    ``SPLINE_PAD`` (12) more rows on each side make a slab agree with the whole volume to about 1e-7. ``finish`` returns what
    ``restore_probabilities_to_labels`` documents.
    """

    HALO = 2  # input rows beyond those an order-1 sample reads, kept on each side of an output slab

    def __init__(
        self,
        properties: dict[str, Any],
        plans: dict[str, Any],
        configuration: str | dict[str, Any],
        regions_class_order: Sequence[int] | None = None,
        return_probabilities: bool = False,
    ) -> None:
        self.properties = properties
        self.scheme = _scheme(properties, plans, configuration)
        self.regions = plans.get("regions_class_order") if regions_class_order is None else regions_class_order
        self.in_shape = tuple(int(s) for s in properties["shape_after_resampling"])
        self.out_shape = tuple(int(s) for s in properties["shape_after_crop"])
        self.labels = np.zeros(self.out_shape, dtype=label_dtype(plans))
        self.return_probabilities = return_probabilities
        self.probabilities: np.ndarray | None = None
        self.kept: list[tuple[int, np.ndarray]] = []  # copies of input rows still needed: (first row, rows)
        self.end = 0  # input rows [0, end) have arrived
        self.done = 0  # output rows [0, done) are written

    def _rows_needed(self, z0: int, z1: int) -> tuple[int, int]:
        """Input rows that output rows ``[z0, z1)`` read."""
        n_in, n_out = self.in_shape[0], self.out_shape[0]
        if n_in == n_out:
            return z0, z1
        halo = self.HALO + (SPLINE_PAD if max(self.scheme.order, self.scheme.order_z) > 1 else 0)
        scale = n_in / n_out
        lo = int(np.floor((z0 + 0.5) * scale - 0.5)) - halo
        hi = int(np.ceil((z1 - 0.5) * scale - 0.5)) + 1 + halo
        return max(0, lo), min(n_in, hi)

    def _ready_until(self, available: int) -> int:
        """The largest ``z1`` such that output rows ``[done, z1)`` read only input rows below ``available``."""
        lo, hi = self.done, self.out_shape[0]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._rows_needed(self.done, mid)[1] <= available:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def add(self, row: int, probs: Any) -> None:
        """Input rows ``[row, row + probs.shape[1])`` of the (C, ...) probabilities; rows come in order.

        ``probs`` is only read during the call (the sliding window's slabs are views into its buffer):
        rows needed later are copied.
        """
        probs = _as_float32(probs)
        if row != self.end or probs.shape[2:] != self.in_shape[1:] or row + probs.shape[1] > self.in_shape[0]:
            raise ValueError(
                f"slab of shape {probs.shape} at row {row} does not continue the rows so far ({self.end}) of the "
                f"grid {self.in_shape}"
            )
        pieces = [*self.kept, (row, probs)]
        self.end = row + probs.shape[1]
        z1 = self._ready_until(self.end)
        if z1 > self.done:
            i0, i1 = self._rows_needed(self.done, z1)
            self._export(_rows(pieces, i0, i1), i0, self.done, z1)
            self.done = z1
        keep = self._rows_needed(self.done, self.done + 1)[0] if self.done < self.out_shape[0] else self.end
        self.kept = [(max(start, keep), rows[:, max(0, keep - start) :]) for start, rows in self.kept
                     if start + rows.shape[1] > keep]
        if keep < self.end:
            first = max(row, keep)
            self.kept.append((first, probs[:, first - row :].copy()))

    def _export(self, block: np.ndarray, first_row: int, z0: int, z1: int) -> None:
        """Output rows ``[z0, z1)`` from the input rows ``block`` (starting at ``first_row``)."""
        window = [slice(z0, z1), *(slice(0, s) for s in self.out_shape[1:])]
        in_start = [first_row] + [0] * (len(self.out_shape) - 1)
        labels = self.labels[z0:z1]
        best = None if self.regions else np.full(labels.shape, -np.inf, dtype=np.float32)
        if self.return_probabilities and self.probabilities is None:
            self.probabilities = np.empty((block.shape[0], *self.out_shape), dtype=np.float16)
        for c in range(block.shape[0]):
            prob = resample_block(
                block[c], in_start, self.in_shape, window, self.out_shape, self.scheme, self.scheme.order
            )
            if self.regions:
                labels[prob > REGION_THRESHOLD] = self.regions[c]
            else:
                better = prob > best
                best[better] = prob[better]
                labels[better] = c
            if self.probabilities is not None:
                self.probabilities[c, z0:z1] = prob

    def finish(self) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The label map on the input grid (and the probabilities, when asked for)."""
        if self.done < self.out_shape[0]:
            raise ValueError(f"only {self.done} of {self.out_shape[0]} output rows were given probabilities")
        label = _to_input_grid(self.labels, self.properties, 0)
        if not self.return_probabilities:
            return label
        assert self.probabilities is not None
        full = _to_input_grid(self.probabilities, self.properties, 0.0, leading=1)
        if not self.regions:
            outside = np.ones(self.properties["shape_before_crop"], dtype=bool)
            outside[_crop_slices(self.properties)] = False
            full[0][outside.transpose(_backward(self.properties))] = 1.0
        return label, full


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
    exceeds 0.5, in order. With ``return_probabilities`` also returns float16 (C, z, y, x) probabilities on
    the input grid (outside the crop: background 1 for softmax, 0 for regions). Resamples class by class
    in slabs (``ProbabilityExport``), so no float copy of all classes exists unless asked for.
    """
    export = ProbabilityExport(properties, plans, configuration, regions_class_order, return_probabilities)
    rows = max(1, LABEL_SLAB_VOXELS // max(1, math.prod(probs_pp.shape[2:])))
    for z0 in range(0, probs_pp.shape[1], rows):
        export.add(z0, probs_pp[:, z0 : z0 + rows])
    return export.finish()


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
