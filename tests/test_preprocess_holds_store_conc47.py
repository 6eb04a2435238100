"""``autoseg preprocess`` holds a store's shared lock for its whole run, not only while it writes each case: a train
started between two cases of the dataset's first run found no writer and split the cases stored so far, those stored
later in no fold; one started before the references were copied was refused for references missing. A store's check still waits for the one case it needs, not for the
whole run, and preprocess runs of other stores go on beside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from autoseg.errors import TrainingError
from autoseg.preprocessing import store
from autoseg.preprocessing.runner import GT_FOLDER, preprocess_dataset
from autoseg.preprocessing.store import case_paths, check_stored, list_cases, save_case
from autoseg.training import cascade, train_fold
from autoseg.training import run as run_module
from autoseg.training.cascade import NEXT_STAGE_FOLDER
from autoseg.training.checkpoints import split_digest
from autoseg.training.splits import SPLITS_FILE
from autoseg.utils.atomic import shared_holder

from training_helpers import CASES, DATASET, data_roots  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")

# A real preprocess run (one worker, in its process) that stops before call number argv[3] (from 0) of the runner's
# function argv[2] (a case's preprocessing, a reference's copy) until its stdin closes.
PAUSED = """
import sys
from autoseg.preprocessing import runner
name, before = sys.argv[2], int(sys.argv[3])
real, calls = getattr(runner, name), []
def paused(*args):
    if len(calls) == before:
        print("paused", flush=True)
        sys.stdin.read()
    calls.append(args[0])
    return real(*args)
setattr(runner, name, paused)
runner.preprocess_dataset(sys.argv[1], ["3d_fullres"], num_workers=1)
"""


def _first_run(data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    """A copy of the preprocessed dataset before its first preprocess run (no store, no references, no split file)."""
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    shutil.rmtree(preprocessed / DATASET / "autosegPlans_3d_fullres")
    shutil.rmtree(preprocessed / DATASET / GT_FOLDER, ignore_errors=True)
    (preprocessed / DATASET / SPLITS_FILE).unlink(missing_ok=True)
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    return preprocessed / DATASET


@pytest.mark.parametrize(("paused", "before", "fold", "stored", "other"), [
    ("preprocess_one", 1, "all", 1, ["other"]),  # between two cases; another store's preprocess goes on meanwhile
    ("copy_ground_truth", 0, "0", len(CASES), []),  # every case stored, no reference copied yet (under their lock)
])
def test_a_train_during_the_first_preprocess_is_refused_and_other_stores_go_on(
        data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        paused: str, before: int, fold: str, stored: int, other: list[str]) -> None:
    dataset = _first_run(data_roots, tmp_path, monkeypatch)
    plans = json.loads((dataset / "autosegPlans.json").read_text())
    plans["configurations"]["other"] = {**plans["configurations"]["3d_fullres"], "data_identifier": "autosegPlans_other"}
    (dataset / "autosegPlans.json").write_text(json.dumps(plans))
    store_folder = dataset / "autosegPlans_3d_fullres"
    writer = subprocess.Popen([sys.executable, "-c", PAUSED, DATASET, paused, str(before)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "paused\n"
        assert len(list_cases(store_folder)) == stored and shared_holder(store_folder) == writer.pid
        unstored = sorted(set(CASES) - set(list_cases(store_folder)))
        with pytest.raises(TrainingError) as refused:
            train_fold(DATASET, "3d_fullres", fold, epochs=1, workers=0)
        beside = [preprocess_dataset(DATASET, [name], num_workers=1) for name in other]  # not held up by the writer
    finally:
        writer.communicate("")
    pending = (f"7 of the dataset's 8 training case(s) are not stored yet ({', '.join(unstored[:5])}...), so fold all's "
               "cases would be only those stored so far" if fold == "all" else
               f"the references of 8 case(s) ({', '.join(sorted(CASES)[:5])}...), which fold 0's validation scores "
               f"against, are not copied into {dataset / GT_FOLDER} yet")
    assert str(refused.value) == (
        f"{store_folder}: `autoseg preprocess` (process {writer.pid}) is storing cases into this folder right now, and "
        f"{pending}; start train again once that preprocess has finished")
    assert writer.returncode == 0 and list_cases(store_folder) == sorted(CASES) and shared_holder(store_folder) is None
    assert [report.outputs[0].processed for report in beside] == [sorted(CASES)] * len(other)
    assert not (dataset / SPLITS_FILE).exists() and not (tmp_path / "results").exists()


# A preprocess run storing case a again: the store's shared lock held the whole run, the marker removed until a line
# comes on stdin, then put back while the run goes on (other cases) until stdin closes.
RESTORING = ("import sys; from pathlib import Path; from autoseg.utils.atomic import folder_lock\n"
             "marker = Path(sys.argv[1]); text = marker.read_text()\n"
             "with folder_lock(marker.parent, shared=True):\n"
             "    marker.unlink(); print('storing', flush=True); sys.stdin.readline()\n"
             "    marker.write_text(text); print('stored', flush=True); sys.stdin.read()")


WAIT_BOUND = 120.0  # seconds: far above the few polls (STORE_POLL_SECONDS) the wait takes once the case is back


def while_stored_again(folder: Path, case_id: str, action: Callable[[], Any], capfd: pytest.CaptureFixture[str],
                       ) -> tuple[list[Any], bool, str]:
    """Run ``action`` in a thread while a writer process (``RESTORING``) stores ``case_id`` of ``folder`` again; once
    ``action`` says it waits, the case is put back while the writer still holds the store. ``action``'s result (or
    error), whether the writer still held the store when it ended, and its stderr."""
    writer = subprocess.Popen([sys.executable, "-c", RESTORING, str(case_paths(folder, case_id)[2])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    outcome: list[Any] = []
    ended = threading.Event()

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:  # noqa: BLE001 - the test reports it
            outcome.append(exc)
        finally:
            ended.set()

    try:
        assert writer.stdout.readline() == "storing\n"
        capfd.readouterr()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        err = ""
        while "waiting for" not in err and thread.is_alive():
            thread.join(0.05)
            err += capfd.readouterr().err
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "stored\n"
        # Ends as soon as the case is back, the writer still holding the store; before, it waited for the whole run
        # (STORE_WAIT_SECONDS is an hour): the bound only keeps a regression from hanging, never reached otherwise.
        assert ended.wait(WAIT_BOUND), f"{action} still waits with the case back (the writer holds the store)"
        held = shared_holder(folder)
    finally:
        writer.communicate("")
    return outcome, held == writer.pid, err + capfd.readouterr().err


def _tiny_case(folder: Path, case_id: str) -> None:
    save_case(folder, case_id, np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.int16),
              {"shape": [4, 4, 4]})


def test_the_store_check_takes_a_case_stored_again_while_the_run_goes_on(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 3600.0)  # only the case's return may end the wait
    folder = tmp_path / "store"
    _tiny_case(folder, "a")
    outcome, held, err = while_stored_again(folder, "a", lambda: check_stored(folder, "a"), capfd)
    assert outcome == [None] and held  # the writer still held the store
    assert err == f"waiting for a preprocess run writing into {folder}\n"


def _split_store(tmp_path: Path) -> Path:
    """A store of cases a and b whose split file's fold 0 validates a, fold 1 b."""
    folder = tmp_path / "preprocessed" / "store"
    for case_id in ("a", "b"):
        _tiny_case(folder, case_id)
    splits = [{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}]
    (folder.parent / SPLITS_FILE).write_text(json.dumps(splits))
    return folder


def test_the_cascade_waits_for_a_case_stored_again_before_judging_a_handed_on_prediction(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A case of fold 0's training being stored again while the cascade checked fold 0's handed-on prediction of
    case a: fold 0 was read as trained on another split, and the cascade refused the prediction."""
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 3600.0)
    folder = _split_store(tmp_path)
    predictions = tmp_path / "results" / NEXT_STAGE_FOLDER
    (tmp_path / "results" / "fold_0" / "validation").mkdir(parents=True)
    (tmp_path / "results" / "fold_0" / "validation" / "a.nii.gz").write_bytes(b"label map")
    predictions.mkdir()
    (predictions / "a.nii.gz").write_bytes(b"label map")
    cascade.record_handed_on(predictions, "a", "0", split_digest(["b"], ["a"]))
    outcome, held, err = while_stored_again(
        folder, "b", lambda: cascade._stale_handing(predictions, "a", folder, ".nii.gz", cascade._fold_splits(folder)),
        capfd)
    assert outcome == [None] and held
    assert err == f"waiting for a preprocess run writing into {folder}\n"


def test_a_fresh_start_lists_the_validation_of_a_case_stored_again(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh start removes the fold's earlier validation files, and refuses a folder in their place, from the store's
    listing: a validation case being stored again then was left out of both."""
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 3600.0)
    folder = _split_store(tmp_path)
    fold = SimpleNamespace(fold_folder=tmp_path / "fold_0", store=folder, fold="0",
                           description=SimpleNamespace(file_ending=".nii.gz"))
    outcome, held, _ = while_stored_again(folder, "a", lambda: run_module._validation_files(fold), capfd)
    assert held and tmp_path / "fold_0" / "validation" / "a.nii.gz" in outcome[0]
