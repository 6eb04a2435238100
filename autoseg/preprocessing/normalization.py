"""Intensity normalization per channel, as the plans say (reference §1.3).

* ``ct``: clip to the dataset's foreground [p0.5, p99.5] (``clip``), subtract the global foreground
  ``mean``, divide by its ``std``.
* ``zscore``: per image; with ``use_mask`` the statistics come from the nonzero mask only and only voxels
  inside it are changed (outside stays 0, the value cropping left there).
* ``none``: unchanged.

Works in place on a float32 array, one channel at a time, so it costs no copy of the image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from autoseg.errors import PlanError

MIN_STD = 1e-8  # guards the division for constant images (nnU-Net uses the same floor)
SCHEMES = ("ct", "zscore", "none")


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
    raise PlanError(
        f"normalization scheme {name!r} is unknown; the plans file must use one of {', '.join(SCHEMES)} "
        "(re-run `autoseg plan`)"
    )


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
