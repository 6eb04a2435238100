"""A short readable summary of a fingerprint for the terminal."""

from __future__ import annotations

from typing import Any

import numpy as np

from autoseg.dataset.imageio import SLICE_SPACING_2D


def _vec(values: Any) -> str:
    return " x ".join(f"{v:g}" for v in values)


def format_fingerprint(fp: dict[str, Any]) -> str:
    lines = [
        f"{fp['dataset_name']}: {fp['num_cases']} cases, channels {fp['channel_names']}",
        f"  median spacing (z, y, x): {_vec(fp['median_spacing'])} mm   anisotropy ratio {fp['anisotropy_ratio']:.2f}",
        f"  median shape after crop:  {_vec(fp['median_shape_after_crop'])}   median relative size after crop "
        f"{fp['median_relative_size_after_crop']:.3f}",
    ]
    for channel, stats in fp["foreground_intensity_properties_per_channel"].items():
        lines.append(
            f"  channel {channel} foreground intensity: mean {stats['mean']:.4g}, std {stats['std']:.4g}, "
            f"p0.5 {stats['percentile_00_5']:.4g}, p99.5 {stats['percentile_99_5']:.4g}"
        )
    # 2D images' placeholder slice spacing counts as 1 mm (imageio.physical_volume_mm3): their "volumes" are areas
    size = "area" if fp["median_spacing"][0] == SLICE_SPACING_2D else "volume"
    unit = "mm^2" if size == "area" else "mm^3"
    for label, volumes in fp["class_volumes_mm3"].items():
        lines.append(f"  class {label} ({_label_name(fp['labels'], int(label))}): median {size} {_amount(float(np.median(volumes)))} {unit}"
                     f"{_presence(volumes, _region_cases(fp, int(label)))}")
    thickness = fp.get("median_structure_thickness_mm") or {}
    if thickness:
        values = ", ".join(f"{name} {v:.3g}" if v is not None else f"{name} absent" for name, v in thickness.items())
        lines.append(f"  median structure thickness (mm, 2x mean distance to the outside): {values}")
    return "\n".join(lines)


def _amount(value: float) -> str:
    """A volume or area to one decimal, or to three significant digits where one decimal hides it: a microscopy
    stack in mm (1e-4 mm voxels) printed 'median volume 0.0 mm^3' for a class in every case."""
    return f"{value:.1f}" if value == 0 or 0.1 <= abs(value) < 1e9 else f"{value:.3g}"


def _region_cases(fp: dict[str, Any], value: int) -> int | None:
    """For a label value of regions, the number of cases holding the least present region containing it (a region
    is learnt from any of its values); ``None`` for a plain class."""
    regions = [declared for declared in fp["labels"].values() if isinstance(declared, list) and value in declared]
    volumes = fp["class_volumes_mm3"]
    counts = [sum(1 for case in zip(*(volumes[str(v)] for v in region if str(v) in volumes)) if any(case))
              for region in regions]
    return min(counts) if counts else None


def _presence(volumes: list[float], region_cases: int | None = None) -> str:
    """How many cases hold a class, when not all: a median volume of 0 alone hides a class in one case or none.
    A region's label value missing from cases is learnt through the region's other values: BraTS-style labels
    absent from every case were said to be unlearnable, though every region holding them was in every case."""
    present = sum(1 for v in volumes if v)
    if present == len(volumes):
        return ""
    if region_cases is not None and region_cases > 1:
        held = f"{present} of {len(volumes)} cases" if present else "no case"
        return f", in {held} (each region holding it is in at least {region_cases} of {len(volumes)} cases)"
    if present == 0:
        return ", in no case: no model can learn it (check the labels, or remove the class from dataset.json and renumber those after it)"
    if present == 1:
        return f", in 1 of {len(volumes)} cases: the fold validating that case cannot learn it"
    return f", in {present} of {len(volumes)} cases"


def _label_name(labels: dict[str, Any], value: int) -> str:
    """The label's name, or for region datasets the regions it belongs to (its own value has no name)."""
    for name, declared in labels.items():
        if declared == value:
            return name
    regions = [name for name, declared in labels.items() if isinstance(declared, list) and value in declared]
    return f"in {', '.join(regions)}" if regions else "unnamed"
