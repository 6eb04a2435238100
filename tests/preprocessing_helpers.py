"""A minimal valid plans dict for preprocessing tests (the planner's output format, docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def make_configuration(
    spacing: Sequence[float], patch_size: Sequence[int] = (40, 56, 40), normalization: list[dict] | None = None,
    spatial_dims: int = 3, data_identifier: str = "autosegPlans_3d_fullres",
) -> dict[str, Any]:
    return {
        "data_identifier": data_identifier,
        "spatial_dims": spatial_dims,
        "spacing": list(spacing),
        "median_shape": [36, 50, 35],
        "patch_size": list(patch_size),
        "batch_size": 2,
        "normalization": normalization
        or [{"scheme": "zscore", "use_mask": False, "clip": None, "mean": None, "std": None}],
        "resampling": {"image_order": 3, "label_order": 1, "order_z": 0, "separate_z_anisotropy_threshold": 3.0},
        "network": {"name": "unet", "topology": {}, "options": {}},
        "predicted_memory_bytes": 0,
        "predicted_seconds_per_iteration": 0.0,
        "num_iterations": None,
        "iterations_per_epoch": 250,
        "previous_stage": None,
        "next_stage": None,
    }


def make_plans(
    configurations: dict[str, dict[str, Any]], transpose_forward: Sequence[int] = (0, 1, 2),
    labels: dict[str, Any] | None = None, regions_class_order: list[int] | None = None,
) -> dict[str, Any]:
    backward = [list(transpose_forward).index(a) for a in range(len(transpose_forward))]
    return {
        "version": 1,
        "plans_name": "autosegPlans",
        "dataset_name": "Dataset999_Test",
        "channel_names": {"0": "MRI"},
        "labels": labels or {"background": 0, "Anterior": 1, "Posterior": 2},
        "regions_class_order": regions_class_order,
        "ignore_label": None,
        "file_ending": ".nii.gz",
        "transpose_forward": list(transpose_forward),
        "transpose_backward": backward,
        "foreground_intensity_properties_per_channel": {},
        "configurations": configurations,
    }


def stored_files(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``root``, but the preprocessing's wall-time record
    (``<store>_preprocess_timing.json``), which differs between any two runs."""
    from autoseg.preprocessing.runner import TIMING_SUFFIX

    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(TIMING_SUFFIX)}


def store_hippocampus_006_in_another_axis_order(dataset: Path) -> None:
    """Rewrite a Hippocampus dataset's files: hippocampus_006 with its array axes reversed (array spacing
    (3, 1, 1) mm), every other case at (1, 1, 3) mm, as a dataset mixing two axis orders stores them."""
    import SimpleITK as sitk

    for path in [*(dataset / "imagesTr").iterdir(), *(dataset / "labelsTr").iterdir()]:
        odd = path.name.startswith("hippocampus_006")
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        image = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy() if odd else array)
        image.SetSpacing((3.0, 1.0, 1.0) if odd else (1.0, 1.0, 3.0))  # x, y, z: array spacing (1, 1, 3) or (3, 1, 1)
        sitk.WriteImage(image, str(path))
