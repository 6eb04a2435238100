"""Which axes training mirrors (and the final validation and prediction average over): every spatial axis
except those along which two foreground labels lie in a fixed order in (nearly) every case.

Mirroring is nnU-Net's augmentation along every axis. Where labels are told apart by where they lie (the
anterior and posterior hippocampus, left and right organs, the right ventricle beside the left), a
mirrored sample shows an arrangement no real case has, and the network must learn to label either
arrangement from shape alone: "this makes it harder ... so it might make sense to disable mirroring
for the left/right axis" (F. Isensee, nnU-Net issue #80; #869 reports left/right labels swapped, and
TotalSegmentator trains without mirroring, nnU-Net pull request #1938). nnU-Net leaves the axes to the
user (a trainer class per choice); autoseg reads them from the fingerprint's label centroids.

The rule, per axis of the arrays as read: for some pair of foreground labels present together in a
case, the sign of their centroids' difference along the axis agrees in at least ``ORDER_SHARE`` of the
cases where it is not zero, and a two-sided sign test puts the chance of that agreement under
``MAX_P_VALUE`` divided by the number of pair-and-axis tests (Bonferroni). A few cases never qualify
(six cases in the same order happen by chance once in 32), nested regions and labels scattered around
each other do not either.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from autoseg.errors import FingerprintError

ORDER_SHARE = 0.95
MAX_P_VALUE = 1e-3


@dataclass(frozen=True)
class FixedOrder:
    """Label ``before`` lies at lower indices than label ``after`` along array ``axis`` in ``agreeing``
    of ``cases`` cases (those holding both at different positions along it)."""

    axis: int
    before: str
    after: str
    agreeing: int
    cases: int
    p_value: float


def sign_test_p(agreeing: int, cases: int) -> float:
    """Two-sided sign test: the chance of ``agreeing`` or more of ``cases`` fair coin flips landing
    the same way, either way (summed in log space: thousands of cases stay fast, tiny values go to 0)."""
    log_half = cases * math.log(2.0)
    terms = [math.lgamma(cases + 1) - math.lgamma(k + 1) - math.lgamma(cases - k + 1) - log_half
             for k in range(agreeing, cases + 1)]
    top = max(terms)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(t - top) for t in terms))


def _positions(fingerprint: dict[str, Any]) -> dict[str, np.ndarray]:
    """label value -> (cases, 3) centroids, NaN where a case lacks the label; FingerprintError when
    ``class_centroids`` is not one list of 3 numbers or null per case and label."""
    centroids = fingerprint.get("class_centroids") or {}
    n_cases = len(fingerprint["spacings"]) if "spacings" in fingerprint else len(next(iter(centroids.values()), []))
    try:
        positions = {str(int(name)): np.array([[np.nan] * 3 if c is None else c for c in per_case], dtype=float)
                     for name, per_case in centroids.items()}
    except (TypeError, ValueError):
        positions = None
    if positions is None or any(p.shape != (n_cases, 3) for p in positions.values()):
        raise FingerprintError(
            f"fingerprint of {fingerprint.get('dataset_name', 'the dataset')}: class_centroids must hold, per label "
            f"value, one [i, j, k] or null for each of its {n_cases} cases; delete it and re-run `autoseg fingerprint`"
        )
    return positions


def _strength(order: FixedOrder) -> tuple[float, int]:
    return order.agreeing / order.cases, order.cases


def fixed_orders(fingerprint: dict[str, Any]) -> list[FixedOrder]:
    """The axes' fixed label orders in a fingerprint, the strongest pair per axis (none without
    ``class_centroids``, which fingerprints written before autoseg recorded them lack)."""
    positions = _positions(fingerprint)
    counts: dict[tuple[int, str, str], tuple[int, int]] = {}  # (axis, first, second) -> (second later, cases)
    for first, second in itertools.combinations(sorted(positions, key=int), 2):
        difference = positions[second] - positions[first]
        for axis in range(3):
            signs = np.sign(difference[:, axis])
            signs = signs[~np.isnan(signs) & (signs != 0)]
            if signs.size:
                counts[(axis, first, second)] = (int((signs > 0).sum()), int(signs.size))
    threshold = MAX_P_VALUE / max(len(counts), 1)
    best: dict[int, FixedOrder] = {}
    for (axis, first, second), (later, n) in counts.items():
        agreeing = max(later, n - later)
        if agreeing < ORDER_SHARE * n or (p_value := sign_test_p(agreeing, n)) >= threshold:
            continue
        before, after = (first, second) if later >= n - later else (second, first)
        order = FixedOrder(axis, before, after, agreeing, n, p_value)
        if axis not in best or _strength(order) > _strength(best[axis]):
            best[axis] = order
    return [best[a] for a in sorted(best)]


def mirror_axes(orders: Sequence[FixedOrder], forward: Sequence[int], dims: int) -> list[int]:
    """The spatial axes of a ``dims``-D configuration to mirror: its (transposed) axes without a fixed
    order; a 2D configuration's axes are the transposed axes 1 and 2."""
    fixed = {list(forward).index(order.axis) for order in orders}
    free = [a for a in range(3) if a not in fixed]
    return free if dims == 3 else [a - 1 for a in free if a >= 1]


def mirroring_notes(fingerprint: dict[str, Any], orders: Sequence[FixedOrder]) -> list[str]:
    """One plan note per axis left unmirrored, with its evidence; one for a fingerprint without centroids."""
    if "class_centroids" not in fingerprint:
        return ["mirroring: every axis, unchecked: the fingerprint has no class_centroids (written by an earlier "
                f"autoseg); re-run `autoseg fingerprint {fingerprint.get('dataset_name', 'DATASET')}` and plan again "
                "to leave out axes along which the labels lie in a fixed order"]
    names = {str(v): k for k, v in fingerprint["labels"].items() if isinstance(v, int)}

    def label(value: str) -> str:
        return f"{names[value]} ({value})" if value in names else value

    return [
        f"mirroring: off along image axis {o.axis} (the arrays' order as read): {label(o.before)} lies at lower "
        f"indices than {label(o.after)} in {o.agreeing} of {o.cases} cases (sign test p = {o.p_value:.1e}); "
        "a mirrored sample would show an arrangement no case has (docs/planning.md, mirroring)"
        for o in orders
    ]
