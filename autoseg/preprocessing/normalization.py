"""Intensity normalization per channel, as the plans say (reference §1.3).

* ``ct``: clip to the dataset's foreground [p0.5, p99.5] (``clip``), subtract the global foreground
  ``mean``, divide by its ``std``.
* ``zscore``: per image; with ``use_mask`` the statistics come from the nonzero mask only and only voxels
  inside it are changed (outside stays 0, the value cropping left there).
* ``none``: unchanged.
* ``rescale_to_0_1``: per image, minimum to 0 and maximum to 1 (nnU-Net v2's channel name of that name).
* ``rgb_to_0_1``: divided by 255; the values must lie in 0..255 (nnU-Net v2's ``rgb_to_0_1``).

Works in place on a float32 array, one channel at a time, so it costs no copy of the image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from autoseg.errors import DatasetError, PlanError

FLOAT32_MAX = float(np.finfo(np.float32).max)
MIN_STD = 1e-8  # guards the division for constant images (nnU-Net uses the same floor)
SCHEMES = ("ct", "zscore", "none", "rescale_to_0_1", "rgb_to_0_1")
RGB_MAX = 255.0


def normalize_channel(channel: np.ndarray, scheme: dict[str, Any], mask: np.ndarray | None) -> None:
    """Normalize one float32 channel in place according to one ``normalization`` entry of the plans."""
    name = scheme.get("scheme")
    if name == "none":
        return
    if name == "ct":
        lo, hi = scheme["clip"]
        np.clip(channel, lo, hi, out=channel)
        channel -= np.float32(scheme["mean"])
        channel /= np.float32(max(float(scheme["std"]), MIN_STD))
        return
    if name == "zscore":
        if scheme.get("use_mask") and mask is not None and mask.any():
            values = channel[mask]
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
            channel[mask] = (values - np.float32(mean)) / np.float32(max(std, MIN_STD))
            return
        mean, std = float(channel.mean(dtype=np.float64)), float(channel.std(dtype=np.float64))
        channel -= np.float32(mean)
        channel /= np.float32(max(std, MIN_STD))
        return
    if name == "rescale_to_0_1":
        low, high = float(channel.min()), float(channel.max())
        if high - low > FLOAT32_MAX:  # float32's channel - low would overflow to Inf, then Inf / Inf = NaN
            channel[...] = (channel.astype(np.float64) - low) / (high - low)
            return
        channel -= np.float32(low)
        channel /= np.float32(max(float(channel.max()), MIN_STD))
        return
    if name == "rgb_to_0_1":
        problem = rgb_range_problem(channel)
        if problem:
            raise DatasetError(problem)
        channel /= np.float32(RGB_MAX)
        return
    raise PlanError(
        f"normalization scheme {name!r} is unknown; the plans file must use one of {', '.join(SCHEMES)} "
        "(re-run `autoseg plan`)"
    )


def rgb_range_problem(channel: np.ndarray) -> str | None:
    """Why ``rgb_to_0_1`` cannot normalize ``channel`` (values outside 0..255, e.g. a 16-bit image), else
    None; shared by preprocessing and ``autoseg verify``, which names the file before any planning."""
    low, high = float(channel.min()), float(channel.max())
    if low >= 0 and high <= RGB_MAX:
        return None
    return (f"a channel named rgb_to_0_1 holds values {low:g}..{high:g}, outside 0..255; store 8-bit colour "
            "values there, or name the channel for another normalization (e.g. rescale_to_0_1)")


def normalize(data: np.ndarray, schemes: Sequence[dict[str, Any]], mask: np.ndarray | None) -> np.ndarray:
    """Normalize ``data`` (C, *spatial, float32) in place channel by channel; returns ``data``."""
    if len(schemes) != data.shape[0]:
        raise PlanError(
            f"the plans define normalization for {len(schemes)} channel(s) but the case has {data.shape[0]}; "
            "re-run `autoseg plan` for this dataset"
        )
    for c, scheme in enumerate(schemes):
        normalize_channel(data[c], scheme, mask)
    return data
