"""Planning on datasets nobody had tried: a few cases, where the folds are not all the same size."""

from __future__ import annotations

import pytest

from autoseg.planning import accounting as A
from autoseg.planning import constants as C
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


def test_the_preprocessing_prediction_includes_the_commands_fixed_start_up():
    """Five Hippocampus cases were predicted at 0.1 s of preparation where `autoseg preprocess` took 4.6-9.4 s:
    imports, reading dataset.json and the plans and the process pool were not modelled. The prediction now
    starts at that fixed cost, whatever the case count or the workers."""
    case = A.preprocess_case_seconds(36 * 50 * 35, 1, None, 36 * 50 * 35, 3)
    assert case < 0.1
    assert A.preprocess_seconds([case] * 5, 2) == pytest.approx(C.PREPROCESS_STARTUP_SECONDS + 2.5 * case)
    assert A.preprocess_seconds([case], 8) == pytest.approx(C.PREPROCESS_STARTUP_SECONDS + case)
    assert C.PREPROCESS_STARTUP_SECONDS >= 4.0  # the start-up measured alone (every case stored): 4.8-6.1 s
