"""A train started while ``autoseg preprocess`` stores cases (the dataset's first run) wrote splits_final.json from the
cases stored so far: the cases stored later were in no fold, without a word. It is now refused, naming the writer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg.errors import TrainingError
from autoseg.preprocessing.store import remove_case
from autoseg.training import train_fold
from autoseg.training.splits import SPLITS_FILE

from training_helpers import CASES, DATASET, data_roots  # noqa: F401 - fixture

# Holds the store's shared lock, as save_case does while preprocess writes a case, until its stdin closes.
WRITER = ("import sys; from autoseg.utils.atomic import folder_lock\n"
          "with folder_lock(sys.argv[1], shared=True):\n    print('storing', flush=True); sys.stdin.read()")


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")
@pytest.mark.parametrize("fold", ["0", "all"])
def test_a_train_while_preprocess_stores_cases_is_refused_before_picking_its_cases(
        data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fold: str) -> None:  # noqa: F811
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    (preprocessed / DATASET / SPLITS_FILE).unlink(missing_ok=True)  # the dataset's first preprocess: no folds yet
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    store = preprocessed / DATASET / "autosegPlans_3d_fullres"
    last = sorted(CASES)[-1]
    remove_case(store, last)  # not stored yet (a complete store's run holds up no train)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline() == "storing\n"
        with pytest.raises(TrainingError) as refused:
            train_fold(DATASET, "3d_fullres", fold, epochs=1, workers=0)
    finally:
        writer.communicate("")
    assert str(refused.value) == (
        f"{store}: `autoseg preprocess` (process {writer.pid}) is storing cases into this folder right now, and 1 of "
        f"the dataset's {len(CASES)} training case(s) are not stored yet ({last}), so fold {fold}'s cases would be only "
        "those stored so far; start train again once that preprocess has finished")
    assert not (preprocessed / DATASET / SPLITS_FILE).exists() and not (tmp_path / "results").exists()
