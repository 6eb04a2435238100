"""Cases stored in another axis order than the rest of the dataset.

Like nnU-Net v2, autoseg takes each image's array axes as they are stored and never reorients: a case whose
coarse (slice) axis is array axis 0 where the others have it as axis 2 is trained with its anatomy turned, and
the per-axis median spacing mixes the two orders (cases of (1, 1, 3) and (3, 1, 1) mm gave a median of
(2, 1, 2) mm, which no case has). Reorienting silently would change the geometry predictions are written in,
so the fingerprint names such cases instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

# A case's coarsest axis counts as its slice axis when its spacing is at least this many times the next one.
COARSE_AXIS_RATIO = 1.5
SHOWN_CASES = 5


def coarse_axis(spacing: Sequence[float]) -> int | None:
    """The array axis of the clearly largest spacing, ``None`` when no axis stands out (near-isotropic)."""
    if len(spacing) < 2:
        return None
    ordered = sorted(spacing)
    if ordered[-1] < COARSE_AXIS_RATIO * ordered[-2]:
        return None
    return max(range(len(spacing)), key=lambda axis: spacing[axis])


def axis_order_warning(case_ids: Sequence[str], spacings: Sequence[Sequence[float]],
                       median_spacing: Sequence[float]) -> str | None:
    """One warning naming the cases whose coarse axis is not the one most cases have, else ``None``."""
    axes = {case_id: coarse_axis(spacing) for case_id, spacing in zip(case_ids, spacings)}
    counts = Counter(axis for axis in axes.values() if axis is not None)
    if len(counts) < 2:
        return None
    usual, num_usual = counts.most_common(1)[0]
    odd = [(case_id, spacing) for (case_id, axis), spacing in zip(axes.items(), spacings)
           if axis is not None and axis != usual]
    shown = ", ".join(f"{case_id} {_mm(spacing)}" for case_id, spacing in odd[:SHOWN_CASES])
    more = f" (+ {len(odd) - SHOWN_CASES} more)" if len(odd) > SHOWN_CASES else ""
    return (f"{len(odd)} case(s) have their coarsest spacing on another array axis than the {num_usual} of "
            f"{len(case_ids)} that have it on axis {usual}: {shown}{more}; their axes are stored in another order, "
            f"and the median spacing {_mm(median_spacing)} mixes the orders. autoseg, like nnU-Net, does not reorient "
            "images: rewrite those cases (images and labels) in the other cases' axis order, then fingerprint again")


def _mm(spacing: Sequence[float]) -> str:
    return "(" + ", ".join(f"{value:g}" for value in spacing) + ") mm"
