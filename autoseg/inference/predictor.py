"""Predict one case from arrays: preprocess, sliding window over all folds, restore to the input grid.

``predict_array`` is the Python API (arrays in, arrays out); ``batch.predict_folder`` wraps it for
files. Folds are averaged as probabilities tile by tile inside the sliding window; a cascade's
low-resolution stage runs first and its labels enter as one-hot channels (docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from autoseg.dataset.description import channel_list
from autoseg.dataset.imageio import Geometry
from autoseg.errors import InferenceError
from autoseg.inference.engine import LoadedModel
from autoseg.inference.tiling import DEFAULT_STEP, Network, check_batch_tiles, check_step, numpy_sliding_window_slabs
from autoseg.preprocessing.inverse import ProbabilityExport, label_to_preprocessed_grid
from autoseg.preprocessing.pipeline import configuration_dict, preprocess_case, target_spacing, transposed
from autoseg.preprocessing.resampling import implausible_resampling
from autoseg.utils.grid_check import geometry_problem

if TYPE_CHECKING:  # torch is imported where the torch engine runs: the onnxruntime engine runs without it
    import torch

# reference.md §4: float16 accumulators halve memory (14 classes x 512x512x400: 2.9 vs 5.9 GB). When the
# whole probability map is asked for (``predict_preprocessed``) and float32 would exceed this, float16.
FLOAT16_ACCUMULATOR_ABOVE_BYTES = 2 * 1024**3


@dataclass
class Prediction:
    """A case's prediction in the input's grid.

    Attributes:
        labels: (z, y, x) uint8 (uint16 when a label value exceeds 255).
        probabilities: (C, z, y, x) float16 class (or region) probabilities, when asked for.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None


class SliceNetwork:
    """Runs a 2D network on (B, C, 1, y, x) tiles, so one 3D sliding window serves 2D models too
    (torch modules and onnxruntime sessions alike: only indexing is used)."""

    def __init__(self, network: Network) -> None:
        self.network = network

    def __call__(self, x: Any) -> Any:
        return self.network(x[:, :, 0])[:, :, None]


def check_input(model: LoadedModel, data: np.ndarray, geometry: Geometry) -> None:
    """Raise ``InferenceError`` for data the model cannot take (channel count, dimensionality)."""
    if data.ndim != 4:
        raise InferenceError(f"input has shape {data.shape}; expected (channels, z, y, x)")
    _check_geometry(data.shape[1:], geometry)
    expected = model.num_image_channels
    if data.shape[0] != expected:
        raise InferenceError(
            f"input has {data.shape[0]} channel(s), the model expects {expected} "
            f"({channel_list(model.dataset.channel_names)}); give one "
            "file per channel named <case>_0000, <case>_0001, ... (an RGB PNG holds 3)"
        )
    if geometry.is_2d and model.spatial_dims == 3:
        raise InferenceError(
            f"input is a 2D image but configuration {model.configuration_name} is 3D; use a 2d model"
        )
    if not np.all(np.isfinite(data)):
        raise InferenceError("input holds NaN or infinite values; fix the image (e.g. replace NaN by the background value)")
    _check_grid(model, data.shape[1:], geometry)


def _check_geometry(shape: Sequence[int], geometry: Geometry) -> None:
    """Refuse a geometry that cannot place an array of spatial ``shape``, by the check ensemble runs on a sidecar
    (``geometry_problem``): a hand-made one given to ``predict_array`` failed with an IndexError deep in
    preprocessing, and a singular direction only when its label map was written."""
    problem = geometry_problem(geometry, shape)
    if problem is not None:
        raise InferenceError(f"geometry: {problem}; fix the image header, or give predict_array the geometry "
                             "read_case_images returns")


def _check_grid(model: LoadedModel, shape: Sequence[int], geometry: Geometry) -> None:
    """Refuse empty images and voxel sizes that cannot be resampled to the model's spacing."""
    if 0 in shape:
        raise InferenceError(f"input has shape {tuple(shape)}: the image holds no voxels; export it again")
    spacing = ", ".join(f"{s:g}" for s in geometry.spacing)  # positive and finite: _check_geometry
    order = [int(a) for a in model.plans.get("transpose_forward", range(len(shape)))]
    config = configuration_dict(model.plans, model.configuration_name)
    case_spacing = transposed(geometry.spacing, order)
    found = implausible_resampling(transposed(shape, order), case_spacing, target_spacing(config, case_spacing))
    if found is not None:  # as plan refuses such a training case
        kind, resampled = found
        outcome = (f"hold {math.prod(resampled):.3g} voxels" if kind == "voxels"
                   else f"shrink to {'x'.join(map(str, resampled))} voxels")
        raise InferenceError(
            f"voxel spacing ({spacing}) mm: resampled to the model's spacing {config['spacing']} this "
            f"{'x'.join(map(str, shape))} image would {outcome}; fix the image header's voxel size"
        )


def _activation(model: LoadedModel) -> str:
    return "sigmoid" if model.regions_class_order else "softmax"


def _accumulator_dtype(n_outputs: int, shape: Sequence[int]) -> torch.dtype:
    import torch

    n_bytes = n_outputs * math.prod(shape) * 4
    return torch.float16 if n_bytes > FLOAT16_ACCUMULATOR_ABOVE_BYTES else torch.float32


def _window_options(model: LoadedModel, tta: bool, mixed_precision: str, **options: Any) -> dict[str, Any]:
    """Arguments of the sliding window for ``model``: its folds, patch and mirror axes (2D models run as
    3D with a one-slice patch) and its activation; for the torch engine also its device and autocast dtype."""
    patch = tuple(model.patch_size)
    mirror_axes = model.tta_mirror_axes(tta)
    networks: list[Network] = list(model.networks)
    if model.spatial_dims == 2:
        networks = [SliceNetwork(n) for n in networks]
        patch = (1, *patch)
        mirror_axes = tuple(a + 1 for a in mirror_axes)
    window = dict(network=networks, patch_size=patch, mirror_axes=mirror_axes, activation=_activation(model), **options)
    if model.engine == "torch":
        from autoseg.utils.device import autocast_dtype

        window.update(device=model.device, autocast_dtype=autocast_dtype(mixed_precision, model.device, InferenceError))
    return window


def _slabs(model: LoadedModel, data_pp: Any, options: dict[str, Any]) -> Iterator[tuple[int, Any]]:
    """The sliding window of ``model``'s engine over a preprocessed case: (row, probability slab) pairs."""
    if model.engine == "onnxruntime":
        return numpy_sliding_window_slabs(data=np.asarray(data_pp), **options)
    import torch

    from autoseg.inference.sliding_window import sliding_window_slabs

    return sliding_window_slabs(data=torch.as_tensor(data_pp), **options)


def predict_preprocessed(
    model: LoadedModel,
    data_pp: np.ndarray | torch.Tensor,
    *,
    step: float = DEFAULT_STEP,
    tta: bool = True,
    batch_tiles: int | None = None,
    mixed_precision: str = "auto",
    accumulator_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fold-averaged probabilities (C, z, y, x) on the preprocessed grid of ``model``'s configuration.

    ``data_pp`` already holds the cascade channels if the model is a cascade stage. The whole map in
    one tensor (float16 when float32 would exceed 2 GiB); ``export_preprocessed`` goes to labels on the
    input grid without it.
    """
    import torch

    from autoseg.inference.sliding_window import sliding_window_predict

    if model.engine != "torch":
        raise InferenceError(f"the whole probability map is computed by the torch engine; {model.engine} models go through export_preprocessed")
    data = torch.as_tensor(data_pp)
    n_outputs = int(model.dataset.num_output_channels)
    dtype = accumulator_dtype or _accumulator_dtype(n_outputs, data.shape[1:])
    options = _window_options(model, tta, mixed_precision, step=step, batch_tiles=batch_tiles)
    return sliding_window_predict(data=data, accumulator_dtype=dtype, **options).cpu()


def export_preprocessed(
    model: LoadedModel,
    data_pp: np.ndarray | torch.Tensor,
    properties: dict[str, Any],
    *,
    step: float = DEFAULT_STEP,
    tta: bool = True,
    batch_tiles: int | None = None,
    mixed_precision: str = "auto",
    return_probabilities: bool = False,
) -> Prediction:
    """Predict a preprocessed case and map it to its input grid, slab by slab.

    The sliding window hands each slab of rows to ``ProbabilityExport`` as soon as it is final, so
    neither the preprocessed probabilities nor the resampled ones exist whole (reference §1.6); used by
    ``predict_array`` and by training's final validation.
    """
    export = ProbabilityExport(
        properties, model.plans, model.configuration_name, regions_class_order=model.regions_class_order,
        return_probabilities=return_probabilities,
    )
    options = _window_options(model, tta, mixed_precision, step=step, batch_tiles=batch_tiles)
    for row, slab in _slabs(model, data_pp, options):
        export.add(row, slab)
    restored = export.finish()
    if return_probabilities:
        labels, probabilities = restored
        return Prediction(labels, probabilities)
    return Prediction(restored)


def append_previous_stage(data_pp: np.ndarray, labels_pp: np.ndarray, foreground_labels: Sequence[int]) -> np.ndarray:
    """Image channels followed by one one-hot channel per foreground label (the cascade's input)."""
    one_hot = np.stack([labels_pp == label for label in foreground_labels]).astype(data_pp.dtype)
    return np.concatenate([data_pp, one_hot.reshape(len(foreground_labels), *data_pp.shape[1:])])


def predict_array(
    model: LoadedModel,
    data: np.ndarray,
    geometry: Geometry,
    *,
    step: float = DEFAULT_STEP,
    tta: bool = True,
    return_probabilities: bool = False,
    batch_tiles: int | None = None,
    mixed_precision: str = "auto",
    overwrite_input: bool = False,
) -> Prediction:
    """Segment one case given as arrays; the result lies on the input's grid.

    Args:
        model: from ``load_model``.
        data: (C, z, y, x) image channels in SimpleITK array order, as ``read_case_images`` gives.
        geometry: the input's geometry (spacing is what preprocessing resamples from).
        step: sliding-window step as a fraction of the patch (reference §1.6).
        tta: mirroring test-time augmentation over the axes the model was trained with.
        return_probabilities: also return (C, z, y, x) float16 probabilities on the input grid.
        batch_tiles: tiles per forward pass (default from the patch size).
        mixed_precision: ``auto`` (fp16 on CUDA, bf16 on CPUs with native bf16, else float32; its Dice
            impact is measured in docs/benchmarks.md), ``bf16``, ``fp16`` (CUDA) or ``off``.
        overwrite_input: let preprocessing normalize a float32 ``data`` in place, saving one image-sized
            copy, for callers that no longer need it (``predict_folder``); ``data`` is then garbage.
    """
    check_step(step, InferenceError)
    check_batch_tiles(batch_tiles, InferenceError)
    check_input(model, data, geometry)
    options = dict(step=step, tta=tta, batch_tiles=batch_tiles, mixed_precision=mixed_precision)
    lowres_labels = None
    if model.previous_stage is not None:
        lowres_labels = predict_array(model.previous_stage, data, geometry, **options).labels
    data_pp, _, properties = preprocess_case(
        data, geometry, model.plans, model.configuration_name, copy=not overwrite_input
    )
    if lowres_labels is not None:
        labels_pp = label_to_preprocessed_grid(lowres_labels, properties, model.plans, model.configuration_name)
        data_pp = append_previous_stage(data_pp, labels_pp, model.previous_stage.dataset.foreground_labels)
    return export_preprocessed(model, data_pp, properties, return_probabilities=return_probabilities, **options)
