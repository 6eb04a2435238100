"""A short readable summary of a fingerprint for the terminal."""

from __future__ import annotations

from typing import Any

import numpy as np


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
    # Region datasets name regions, not label values: their labels are listed by value only.
    names = {str(v): k for k, v in fp["labels"].items() if isinstance(v, int)}
    for label, volumes in fp["class_volumes_mm3"].items():
        name = f" ({names[label]})" if label in names else ""
        lines.append(f"  label {label}{name}: median volume {np.median(volumes):.1f} mm^3")
    return "\n".join(lines)
