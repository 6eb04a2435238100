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
    """One warning naming the cases whose coarse axis is not the one most cases have, else ``None``. When the axes are
    split evenly, which group is "the other" would depend on case order, so every group is named instead."""
    axes = {case_id: coarse_axis(spacing) for case_id, spacing in zip(case_ids, spacings)}
    counts = Counter(axis for axis in axes.values() if axis is not None)
    if len(counts) < 2:
        return None
    groups = {axis: [(case_id, spacing) for (case_id, a), spacing in zip(axes.items(), spacings) if a == axis]
              for axis in sorted(counts)}
    fix = (f"the median spacing {spacing_text(median_spacing)} mixes the orders. autoseg, like nnU-Net, does not "
           "reorient images: rewrite")
    (usual, num_usual), (_, num_next) = counts.most_common(2)
    if num_usual == num_next:
        named = " and ".join(f"axis {axis} in {len(cases)} case(s) ({_shown(cases)})" for axis, cases in groups.items())
        return (f"the {sum(counts.values())} cases with a coarsest spacing axis are split evenly between array axes: "
                f"{named}; their axes are stored in different orders, and {fix} one group's cases (images and labels) "
                "in the other's axis order, then fingerprint again")
    odd = [case for axis, cases in groups.items() if axis != usual for case in cases]
    return (f"{len(odd)} case(s) have their coarsest spacing on another array axis than the {num_usual} of "
            f"{len(case_ids)} that have it on axis {usual}: {_shown(odd)}; their axes are stored in another order, "
            f"and {fix} those cases (images and labels) in the other cases' axis order, then fingerprint again")


def _shown(cases: Sequence[tuple[str, Sequence[float]]]) -> str:
    """Up to ``SHOWN_CASES`` cases with their spacing, and how many more."""
    shown = ", ".join(f"{case_id} {spacing_text(spacing)}" for case_id, spacing in cases[:SHOWN_CASES])
    return shown + (f" (+ {len(cases) - SHOWN_CASES} more)" if len(cases) > SHOWN_CASES else "")


def spacing_text(spacing: Sequence[float]) -> str:
    """``(1, 1, 3) mm``: a spacing as the warnings show it."""
    return "(" + ", ".join(f"{value:g}" for value in spacing) + ") mm"
