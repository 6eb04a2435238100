"""A train of a fold whose split file names a case that ``autoseg preprocess`` stores again right then (its marker
removed for a moment) stopped with 'fold 0 names 1 case(s) missing from the preprocessed data'; it now waits for the
writer, as the batches do, and takes the case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoseg.preprocessing import store as store_module
from autoseg.training.run import resolve_fold_run

from test_store_readers_conc2 import _run_while_storing
from training_helpers import CASES, DATASET, data_roots  # noqa: F401 - fixture


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's flock")
def test_a_split_case_being_stored_again_is_waited_for(data_roots: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                       capfd: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "STORE_WAIT_SECONDS", 3600.0)
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    (preprocessed / DATASET / "splits_final.json").write_text(json.dumps([{"train": CASES[:6], "val": CASES[6:]}]))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    store = preprocessed / DATASET / "autosegPlans_3d_fullres"
    outcome, err, code = _run_while_storing(
        store_module.case_paths(store, CASES[7])[2],
        lambda: resolve_fold_run(DATASET, "3d_fullres", "0", None, "autosegPlans", [], "cpu", epochs=1,
                                 budget_seconds=None, resume=False), capfd)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    assert (outcome[0].train_cases, outcome[0].val_cases) == (CASES[:6], CASES[6:]) and code == 0
    assert err == f"waiting for a preprocess run writing into {store}\n"


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's flock")
def test_fold_all_listed_while_a_case_is_stored_again_is_refused(data_roots: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A preprocess run that began storing a case again while train listed the store (after its check for writers)
    left that case out of fold 'all' without a word; the writers are now asked again once the cases are listed."""
    import subprocess
    import sys

    from autoseg.errors import TrainingError
    from autoseg.training import splits as splits_module
    from test_store_wait_mend3 import WRITER

    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    store = preprocessed / DATASET / "autosegPlans_3d_fullres"
    listing, writers = splits_module.list_cases, []

    def listed_while_storing(folder: Path) -> list[str]:
        if writers:  # listed again once the wait ended: the run still stores the case
            return listing(folder)
        writers.append(subprocess.Popen([sys.executable, "-c", WRITER, str(store_module.case_paths(store, CASES[7])[2])],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        assert writers[0].stdout.readline() == "storing\n"  # the marker is removed, the store's lock held
        return listing(folder)

    monkeypatch.setattr(splits_module, "list_cases", listed_while_storing)
    monkeypatch.setattr(store_module, "STORE_WAIT_SECONDS", 0.5)  # the case is waited for, in vain: it stays out
    try:
        with pytest.raises(TrainingError) as refused:
            resolve_fold_run(DATASET, "3d_fullres", "all", None, "autosegPlans", [], "cpu", epochs=1,
                             budget_seconds=None, resume=False)
    finally:
        for writer in writers:
            writer.communicate("")
    assert str(refused.value) == (
        f"{store}: `autoseg preprocess` (process {writers[0].pid}) is storing cases into this folder right now, and "
        f"1 of the dataset's 8 training case(s) are not stored yet ({CASES[7]}), so fold all's cases would be only "
        "those stored so far; start train again once that preprocess has finished")
