"""A fold whose validation cases lack their reference files (``gt_segmentations/`` there, files gone): refused before
it trains, naming the missing cases, not after its whole schedule in validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoseg.errors import TrainingError
from autoseg.training import train_fold

from test_training_locks import FAST
from training_helpers import DATASET, data_roots  # noqa: F401 - fixture


def test_a_fold_missing_reference_files_is_refused_before_it_trains(
        data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    gt = preprocessed / DATASET / "gt_segmentations"
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    ending = json.loads((data_roots["raw"] / DATASET / "dataset.json").read_text())["file_ending"]
    val = [f"hippocampus_{i:03d}" for i in (3, 4, 6, 8, 11)]
    train = [f"hippocampus_{i:03d}" for i in (1, 14, 15)]
    (preprocessed / DATASET / "splits_final.json").write_text(json.dumps([{"train": train, "val": val}]))
    fix = f"re-run `autoseg preprocess {DATASET} -c 3d_fullres` (it copies them), then train again"
    (gt / f"{val[1]}{ending}").unlink()
    with pytest.raises(TrainingError) as info:
        train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=FAST)
    assert str(info.value) == (f"{gt}: no reference ({ending}) of 1 of fold 0's 5 validation case(s) ({val[1]}); the "
                               f"fold's validation scores its predictions against them: {fix}")
    for case in val[2:]:
        (gt / f"{case}{ending}").unlink()
    (gt / f"{val[0]}{ending}").unlink()
    (gt / f"{val[0]}{ending}").mkdir()  # a folder under the reference's name is no reference either
    with pytest.raises(TrainingError) as info:
        train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=FAST)
    assert str(info.value) == (f"{gt}: no reference ({ending}) of 5 of fold 0's 5 validation case(s) ({', '.join(val[:3])}"
                               f" and 2 more); the fold's validation scores its predictions against them: {fix}")
    assert not list((tmp_path / "results").rglob("checkpoint_*"))  # refused before it trained
    train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0, overrides=FAST)  # fold all validates nothing
