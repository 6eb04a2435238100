"""A fold trained without the references its validation scores against: refused before it trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoseg.errors import TrainingError
from autoseg.training import train_fold

from test_training_locks import FAST
from training_helpers import DATASET, data_roots  # noqa: F401 - fixture


def test_a_fold_without_its_references_is_refused_before_it_trains(
        data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Without ``gt_segmentations/`` a fold trained its whole schedule, then failed in its validation with evaluate's
    'reference folder (-r/--ref) not found' (an option train has not)."""
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    gt = preprocessed / DATASET / "gt_segmentations"
    shutil.rmtree(gt)
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    with pytest.raises(TrainingError) as info:
        train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=FAST)
    assert str(info.value) == (f"{gt}: not found; the fold's validation scores its predictions against these "
                               f"references: re-run `autoseg preprocess {DATASET} -c 3d_fullres` (it copies them), then "
                               "train again")
    assert not list((tmp_path / "results").rglob("checkpoint_*"))  # refused before it trained
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)  # fold all validates nothing
