"""Cases whose voxel spacing is far from the rest of the dataset's.

One case written in other units (spacing 10 among cases of 1 mm: cm against mm) or with a wrong header is
resampled to the median spacing like every case: 1000 times its voxels, and preprocessing takes minutes. nnU-Net
accepts it in silence; autoseg accepts it too (a dataset may mix slice thicknesses), but names such a case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from autoseg.dataset.imageio import SLICE_SPACING_2D
from autoseg.fingerprint.axis_order import spacing_text

# A case is named when its spacing along some axis is at least this many times the dataset's median, or at most
# its inverse; ACDC's slice thicknesses (5 to 10 mm) stay well inside.
OUTLIER_FACTOR = 5.0
# With fewer cases the median is no dataset's norm: of two cases 10x apart, neither is the odd one.
MIN_CASES = 3
SHOWN_CASES = 10
# (factor, units) of the usual unit mix-ups against mm, each matched within 25%.
UNIT_FACTORS = ((10.0, "cm and mm differ 10x"), (1000.0, "m or micrometres and mm differ 1000x"))


def spacing_outlier_warnings(case_ids: Sequence[str], spacings: Sequence[Sequence[float]],
                             median_spacing: Sequence[float]) -> list[str]:
    """One warning per case (up to ``SHOWN_CASES``, then a count) whose spacing along some axis is at least
    ``OUTLIER_FACTOR`` times the median or at most its inverse. A case whose spacings match the median's once
    both are sorted is stored in another axis order, which ``axis_order`` names instead."""
    if len(case_ids) < MIN_CASES:
        return []
    odd = [(case_id, spacing) for case_id, spacing in zip(case_ids, spacings)
           if _outlier_axes(spacing, median_spacing) and _outlier_axes(sorted(spacing), sorted(median_spacing))]
    lines = [_warning(case_id, spacing, median_spacing) for case_id, spacing in odd[:SHOWN_CASES]]
    if len(odd) > SHOWN_CASES:
        lines.append(f"{len(odd) - SHOWN_CASES} more case(s) have a spacing {OUTLIER_FACTOR:g}x or more off the "
                     f"median {spacing_text(median_spacing)} along some axis; check their headers the same way")
    return lines


def _resampled_axes(median: Sequence[float]) -> list[int]:
    """The axes resampling changes: all but a 2D dataset's slice axis (median spacing 999), along which no case is
    resampled. A one-slice volume of slice thickness 1 mm among 2D images was named as 1/999 of the median along it
    ('1/3,996 of its voxels', 'a header in m or micrometres'), none of which was true."""
    return [axis for axis, middle in enumerate(median) if middle < SLICE_SPACING_2D]


def _outlier_axes(spacing: Sequence[float], median: Sequence[float]) -> list[int]:
    """The resampled axes along which ``spacing`` is ``OUTLIER_FACTOR`` or more off ``median`` (either way)."""
    return [axis for axis in _resampled_axes(median) if (value := spacing[axis]) > 0 and (middle := median[axis]) > 0
            and max(value / middle, middle / value) >= OUTLIER_FACTOR]


def _warning(case_id: str, spacing: Sequence[float], median: Sequence[float]) -> str:
    """The line naming one case: how far off, along which axes, the likely cause and what resampling makes of it."""
    axes = _outlier_axes(spacing, median)
    ratio = max((spacing[axis] / median[axis] for axis in axes), key=lambda r: abs(math.log(r)))
    voxels = math.prod(spacing[axis] / median[axis] for axis in _resampled_axes(median))
    resampled = f"{_number(voxels)} times its voxels" if voxels >= 1 else f"1/{_number(1 / voxels)} of its voxels"
    where = f"axis {axes[0]}" if len(axes) == 1 else f"axes {', '.join(map(str, axes))}"
    return (f"case {case_id}: spacing {spacing_text(spacing)} is {_factor(ratio)} the dataset's median "
            f"{spacing_text(median)} along {where} (named from {OUTLIER_FACTOR:g}x off, either way); "
            f"likely cause: {_cause(ratio)}; it is resampled to the median spacing ({resampled}): check its header "
            "(write the spacing in mm), then fingerprint again")


def _factor(ratio: float) -> str:
    return f"{_number(ratio)}x" if ratio >= 1 else f"1/{_number(1 / ratio)} of"


def _number(value: float) -> str:
    """Three significant digits, up to a million in full with thousands separators (``1,000``, not ``1e+03``)."""
    return f"{value:,.0f}" if 1000 <= value < 1e6 else f"{value:.3g}"


def _cause(ratio: float) -> str:
    """A unit mix-up when the ratio is near 10 or 1000 (either way), else a wrong header."""
    off = max(ratio, 1 / ratio)
    units = next((text for factor, text in UNIT_FACTORS if factor / 1.25 <= off <= factor * 1.25), None)
    if units is not None:
        return f"its header gives the spacing in other units than the others ({units})"
    return "a wrong spacing in its header (or a scan unlike the others)"
