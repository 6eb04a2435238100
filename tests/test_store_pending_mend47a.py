"""While ``autoseg preprocess`` holds a store (its shared lock, for its whole run), train picks a fold's cases only once
the cases the fold needs are stored: a run re-storing a complete store holds up no train (fold 'all' was refused for
the whole run), the cases it stores again are waited for with one bound for all (30 s each before), and cases still
missing are refused as being stored right now, naming them (not 'preprocess them or fix the split file')."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg.errors import TrainingError
from autoseg.preprocessing import store as store_module
from autoseg.preprocessing.store import list_cases
from autoseg.training.splits import SPLITS_FILE, load_or_create_splits, stored_cases
from autoseg.utils.atomic import shared_holder

from test_preprocess_holds_store_conc47 import PAUSED, _tiny_case
from training_helpers import CASES, DATASET, data_roots  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")

STORE = "autosegPlans_3d_fullres"


def _copies(data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    """Copies of the raw and preprocessed dataset (store, references and split file), used by the test's processes."""
    for kind in ("raw", "preprocessed"):
        shutil.copytree(data_roots[kind], tmp_path / kind)
        monkeypatch.setenv(f"AUTOSEG_{kind.upper()}", str(tmp_path / kind))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    dataset = tmp_path / "preprocessed" / DATASET
    load_or_create_splits(dataset, list_cases(dataset / STORE))
    return dataset


def _paused_run(stop_after_case: int) -> subprocess.Popen[str]:
    """A real preprocess run of the 3d_fullres store, paused before its case number ``stop_after_case`` (from 0)."""
    writer = subprocess.Popen([sys.executable, "-c", PAUSED, DATASET, "preprocess_one", str(stop_after_case)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "paused\n"
    return writer


def test_a_run_storing_every_case_again_holds_up_no_train_of_a_complete_store(
        data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    dataset = _copies(data_roots, tmp_path, monkeypatch)
    (dataset / SPLITS_FILE).unlink()  # fold 0 picks its cases too
    later = time.time() + 100
    for image in (tmp_path / "raw" / DATASET / "imagesTr").iterdir():  # every case stale: stored again
        os.utime(image, (later, later))
    writer = _paused_run(3)
    try:
        held = shared_holder(dataset / STORE)
        picked = [stored_cases(dataset / STORE, fold) for fold in ("all", "0")]
    finally:
        writer.communicate("")
    assert held == writer.pid and writer.returncode == 0
    assert picked == [sorted(CASES)] * 2


def test_a_fold_of_a_kept_split_file_is_refused_at_once_while_its_cases_are_stored_the_first_time(
        data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(store_module, "STORE_WAIT_SECONDS", 0.5)  # before: waited this long for each missing case
    dataset = _copies(data_roots, tmp_path, monkeypatch)
    shutil.rmtree(dataset / STORE)  # preprocessed again from scratch, the split file kept
    fold = json.loads((dataset / SPLITS_FILE).read_text())[0]
    writer = _paused_run(1)
    try:
        missing = sorted(set(fold["train"] + fold["val"]) - set(list_cases(dataset / STORE)))
        capfd.readouterr()
        with pytest.raises(TrainingError) as refused:
            stored_cases(dataset / STORE, "0")
    finally:
        writer.communicate("")
    assert str(refused.value) == (
        f"{dataset / STORE}: `autoseg preprocess` (process {writer.pid}) is storing cases into this folder right now, "
        f"and {len(missing)} case(s) of fold 0 are not stored yet ({', '.join(missing[:5])}...); start train again "
        "once that preprocess has finished")
    assert "waiting for" not in capfd.readouterr().err  # none of them is there to wait for


# Holds the store's shared lock with the markers of the cases argv[2:] removed (being stored again) until stdin closes.
RESTORING = ("import sys; from pathlib import Path; from autoseg.utils.atomic import folder_lock\n"
             "with folder_lock(sys.argv[1], shared=True):\n"
             "    [Path(sys.argv[1], case + '.json').unlink() for case in sys.argv[2:]]\n"
             "    print('storing', flush=True); sys.stdin.read()")


def test_cases_stored_again_are_waited_for_once_then_refused_as_being_stored(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "STORE_WAIT_SECONDS", 0.5)
    folder = tmp_path / "preprocessed" / "store"
    for case_id in ("a", "b", "c"):
        _tiny_case(folder, case_id)
    (folder.parent / SPLITS_FILE).write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}]))
    writer = subprocess.Popen([sys.executable, "-c", RESTORING, str(folder), "a", "c"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "storing\n"
        capfd.readouterr()
        with pytest.raises(TrainingError) as refused:
            stored_cases(folder, "0")
    finally:
        writer.communicate("")
    assert str(refused.value) == (
        f"{folder}: `autoseg preprocess` (process {writer.pid}) is storing cases into this folder right now, and 2 "
        "case(s) of fold 0 are not stored yet (a, c); start train again once that preprocess has finished")
    assert capfd.readouterr().err == f"waiting for a preprocess run writing into {folder}\n"  # one wait for both
