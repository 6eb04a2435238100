"""A stored case whose arrays are damaged while a preprocess run holds the store: past the writers' wait (the run may
be the re-run that redoes the case: tests/test_store_mend_s48.py) its damage is told naming the file, the fix and the
run, where it was told only as 'probably storing the case again'. A case really being stored again (its marker
removed) is still told so."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import PreprocessingError
from autoseg.preprocessing import store
from autoseg.preprocessing.store import case_paths, check_stored, check_stored_cases, load_case_waiting, save_case
from autoseg.utils.atomic import folder_lock

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")

SHAPE = (1, 4, 4, 4)


def _store(folder: Path, *case_ids: str) -> None:
    for case_id in case_ids:
        save_case(folder, case_id, np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.int16), {"shape": list(SHAPE[1:])})


def _fix(folder: Path) -> str:
    return ("the preprocessed case is damaged (a power loss, a full disk or an interrupted copy?): re-run `autoseg "
            f"preprocess {folder.parent.name}` with the -c and --plans-name that made {folder.name}; it redoes this case")


def test_damaged_arrays_are_named_after_the_wait_while_a_preprocess_run_holds_the_store(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "Dataset001_X" / "autosegPlans_3d_fullres"
    _store(folder, "a", "b", "c")
    data = case_paths(folder, "b")[0]
    data.write_bytes(b"not a blosc2 array")
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 0.0)  # the bound is reached at the second poll
    held = (f"; a preprocess run (process {os.getpid()}) still holds this folder and did not store the case again in "
            "the 0 s waited for it: if it is that re-run, start train again once it has finished")
    with folder_lock(folder, shared=True):  # a preprocess run's hold, for its whole storing
        with pytest.raises(PreprocessingError) as info:
            check_stored_cases(folder, ["a", "b"])
        assert str(info.value) == (
            f"{data}: cannot be opened as a blosc2 array (cut short or overwritten); {_fix(folder)}{held}")
        seg = case_paths(folder, "a")[1]
        seg.unlink()
        with pytest.raises(PreprocessingError) as info:
            check_stored(folder, "a")
        assert str(info.value) == f"{seg}: is missing; {_fix(folder)}{held}"
        data = case_paths(folder, "c")[0]
        data.write_bytes(data.read_bytes()[:-100])  # cut short
        with pytest.raises(PreprocessingError) as info:
            load_case_waiting(folder, "c")  # training's and the cascade's reads
        assert str(info.value).startswith(f"{data}: ") and str(info.value).endswith(f"; {_fix(folder)}{held}")
    assert capfd.readouterr().err == f"waiting for a preprocess run writing into {folder}\n" * 3


def test_a_case_whose_marker_is_gone_is_still_waited_for(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker removed (``save_case`` removes it before it replaces the arrays): being stored again."""
    folder = tmp_path / "store"
    _store(folder, "a")
    case_paths(folder, "a")[2].unlink()
    case_paths(folder, "a")[0].write_bytes(b"")
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 0.0)
    with folder_lock(folder, shared=True), pytest.raises(PreprocessingError, match="probably storing the case again"):
        check_stored(folder, "a")
    assert capfd.readouterr().err == f"waiting for a preprocess run writing into {folder}\n"
