"""Readers of the preprocessed store other than training's batches (the final validation, the cascade) wait for a
``preprocess`` run storing a case again, as ``BatchSource`` does, instead of reporting the case as damaged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autoseg.training import train_fold

from test_store_wait_mend3 import WRITER
from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures


def _run_while_storing(marker: Path, action, capfd: pytest.CaptureFixture[str]) -> tuple[list[object], str, int]:
    """``action()`` in a thread while a writer process, holding the store's shared lock as ``save_case`` does, has
    removed ``marker``; the writer restores it once the action says it waits (or ended). Outcome, stderr, writer's
    exit code."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(marker)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:  # noqa: BLE001 - compared by the caller
            outcome.append(exc)

    thread, err = threading.Thread(target=run), ""
    try:
        assert writer.stdout.readline() == "storing\n"
        capfd.readouterr()
        thread.start()
        while thread.is_alive() and "waiting for" not in err:  # the writer finishes once the reader waits
            time.sleep(0.01)
            err += capfd.readouterr().err
    finally:
        writer.communicate("")
    thread.join()
    return outcome, err + capfd.readouterr().err, writer.returncode


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's flock")
def test_the_final_validation_waits_for_a_case_being_stored_again(
        results: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: validate_fold failed at once with '<case>.json: is missing; the preprocessed case is damaged' while
    preprocess re-stored the case; it now waits for the writer, then validates every case."""
    from autoseg.dataset.description import load_description
    from autoseg.preprocessing import store as store_module
    from autoseg.training.validation import GT_FOLDER, validate_fold

    monkeypatch.setattr(store_module, "STORE_WAIT_SECONDS", 3600.0)
    summary = train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0,
                         overrides=["iterations_per_epoch=1", "val_iterations_per_epoch=1"])
    model_folder = Path(summary["model_folder"])
    plans = json.loads((model_folder / "plans.json").read_text())
    preprocessed = Path(os.environ["AUTOSEG_PREPROCESSED"]) / DATASET
    store = tmp_path / "store"  # a copy: the module's store is shared by other tests
    shutil.copytree(preprocessed / plans["configurations"]["3d_fullres"]["data_identifier"], store)
    cases = [row["case_id"] for row in summary["validation"]["metric_per_case"]]
    description = load_description(Path(os.environ["AUTOSEG_RAW"]) / DATASET)
    outcome, err, code = _run_while_storing(
        store_module.case_paths(store, cases[0])[2],
        lambda: validate_fold(model_folder, "0", store, preprocessed / GT_FOLDER, cases, description, "cpu",
                              log=lambda line: None), capfd)
    assert len(outcome) == 1 and isinstance(outcome[0], dict), outcome
    assert outcome[0]["num_cases"] == len(cases) and code == 0
    assert err == f"waiting for a preprocess run writing into {store}\n"
