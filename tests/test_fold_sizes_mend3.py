"""The planner prices the final validation of the fold that ``kfold_splits`` makes largest: one rule."""

from __future__ import annotations

import pytest

from autoseg.planning.recipes import largest_fold_share
from autoseg.training.splits import NUM_FOLDS, fold_sizes, kfold_splits


@pytest.mark.parametrize("cases", [5, 6, 7, 9, 10, 11, 23, 208])
def test_fold_sizes_are_the_split_s_and_the_planner_s(cases):
    splits = kfold_splits([f"case_{i:03d}" for i in range(cases)])
    sizes = [len(split["val"]) for split in splits]
    assert len(splits) == NUM_FOLDS and sizes == fold_sizes(cases) and sum(sizes) == cases
    assert largest_fold_share(cases) * cases == pytest.approx(max(sizes)) == pytest.approx(sizes[0])
