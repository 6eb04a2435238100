"""Planning on datasets nobody had tried: a few cases, where the folds are not all the same size."""

from __future__ import annotations

import pytest

from autoseg.planning.planner import _Costs, largest_fold_share


@pytest.mark.parametrize(("cases", "largest"), [(5, 1), (6, 2), (8, 2), (10, 2), (11, 3), (208, 42)])
def test_the_budget_prices_the_final_validation_of_the_largest_fold(cases, largest):
    """Six CT crops planned a fifth of their tiles (1.2 cases) for the final validation, but fold 0, which
    ``autoseg train D 3d_fullres 0`` runs, validates 2 (the first cases % 5 folds take one more): predicted
    5 s, took 22, and the 2-minute run ended at 145 s. The plan now prices the largest fold."""
    assert largest_fold_share(cases) * cases == pytest.approx(largest)
    costs = _Costs(preprocess=0.0, shapes=[[12, 48, 48]] * cases, export=[])
    assert costs.tiles([12, 48, 48]) == pytest.approx(largest)  # one tile per case
    assert costs.tiles([12, 32, 32]) == pytest.approx(4 * largest)  # 2 x 2 tiles in-plane
