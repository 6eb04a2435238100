"""The compute budget (issue 14): a learning rate that never jumps when the budget re-estimates the
schedule, the plan's time accounting, resolution as a planning choice and plans robust to timing noise."""

from __future__ import annotations

import pytest

from autoseg.training.budget import PolyAnchor, poly_lr

LR, EXPONENT = 0.01, 0.9


def _run_schedule(first_total: int, re_estimates: dict[int, float]) -> tuple[list[float], list[int]]:
    """The learning rates of a run whose total is multiplied by ``re_estimates[i]`` at iteration i, the
    way the trainer re-budgets (re-anchor, then keep stepping); also the total in force at each step."""
    anchor, total, lrs, totals, iteration = PolyAnchor(), first_total, [], [], 0
    while iteration < total:
        if iteration in re_estimates:
            new_total = max(iteration + 1, round(total * re_estimates[iteration]))
            anchor, total = anchor.retarget(iteration, total, new_total, EXPONENT), new_total
        lrs.append(anchor.lr(LR, iteration, total, EXPONENT))
        totals.append(total)
        iteration += 1
    return lrs, totals


def test_default_anchor_is_the_plain_poly_schedule():
    for iteration in (0, 1, 250, 999, 1000, 1200):
        assert PolyAnchor().lr(LR, iteration, 1000, EXPONENT) == poly_lr(LR, iteration, 1000, EXPONENT)


@pytest.mark.parametrize("factors", [
    {12: 0.5, 250: 2.0, 500: 0.5, 750: 2.0, 1000: 0.75},  # halve / double alternately
    {12: 2.0, 300: 2.0, 900: 0.5, 1300: 0.5},
    {12: 0.5, 100: 0.5, 200: 0.5},
])
def test_learning_rate_stays_continuous_under_re_estimates(factors):
    lrs, totals = _run_schedule(2000, factors)
    assert lrs[0] == LR and len(lrs) == totals[-1]
    for t in range(len(lrs) - 1):
        remaining = totals[t] - t  # the step from t to t + 1 follows the total in force at t
        # never up, and never down faster than a poly step with the iterations remaining
        assert lrs[t + 1] <= lrs[t]
        bound = 1 - ((remaining - 1) / remaining) ** EXPONENT
        assert (lrs[t] - lrs[t + 1]) / lrs[t] <= bound + 1e-12, (t, lrs[t], lrs[t + 1])
        if remaining > 100:  # far from the end: below 1% of the initial lr per iteration
            assert lrs[t] - lrs[t + 1] < 0.01 * LR
    assert lrs[-1] < 0.05 * LR  # still decays to (almost) zero by the last iteration


def test_unanchored_poly_over_a_changing_total_jumps():
    """What the anchor fixes: the plain poly over a total doubled at iteration 500 jumps up by ~40%."""
    before, after = poly_lr(LR, 499, 1000, EXPONENT), poly_lr(LR, 500, 2000, EXPONENT)
    assert after / before > 1.4
    anchor = PolyAnchor().retarget(500, 1000, 2000, EXPONENT)
    assert anchor.lr(LR, 500, 2000, EXPONENT) == pytest.approx(poly_lr(LR, 500, 1000, EXPONENT))
    assert anchor.retarget(700, 2000, 2000, EXPONENT) is anchor  # unchanged total: no new anchor
