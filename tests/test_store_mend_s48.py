"""train's store check of a case damaged (or stored by an older autoseg) while a preprocess run holds the store: the
run may be the very re-run its message advises, redoing the case; it is waited for (within ``STORE_WAIT_SECONDS``), as
before 5cb8254, which refused the case at once. Past the wait the case is refused naming its file, its fix and the run
still holding the store; without a run holding it, at once."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import blosc2
import numpy as np
import pytest

from autoseg.errors import PreprocessingError
from autoseg.preprocessing import store
from autoseg.preprocessing.store import OutdatedStore, case_paths, check_stored, save_case
from autoseg.utils.atomic import folder_lock

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")

SHAPE = (1, 4, 4, 4)
REDO_AFTER_SECONDS = 0.5


def _save(folder: Path, case_id: str) -> None:
    save_case(folder, case_id, np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.int16), {"shape": list(SHAPE[1:])})


def _damage(folder: Path, case_id: str) -> None:
    case_paths(folder, case_id)[0].write_bytes(b"not a blosc2 array")


def _outdate(folder: Path, case_id: str) -> None:
    """The case as an autoseg before the chunk checksums stored it (its marker untouched)."""
    array = blosc2.open(str(case_paths(folder, case_id)[0]), mode="a")
    del array.schunk.vlmeta[store.CHUNK_CHECKSUMS]
    del array


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "Dataset001_X" / "autosegPlans_3d_fullres"
    _save(folder, "b")
    return folder


@contextlib.contextmanager
def _redoing_run(folder: Path) -> Iterator[None]:
    """A preprocess run holding the store (its shared lock) that stores case b again after ``REDO_AFTER_SECONDS``, as
    `autoseg preprocess` redoes a damaged or outdated case."""
    held = threading.Event()

    def run() -> None:
        with folder_lock(folder, shared=True):
            held.set()
            time.sleep(REDO_AFTER_SECONDS)
            _save(folder, "b")

    thread = threading.Thread(target=run)
    thread.start()
    held.wait()
    try:
        yield
    finally:
        thread.join()


def _fix(folder: Path) -> str:
    return (f"re-run `autoseg preprocess {folder.parent.name}` with the -c and --plans-name that made {folder.name}; "
            "it redoes this case")


def _still_held(seconds: int) -> str:
    return (f"; a preprocess run (process {os.getpid()}) still holds this folder and did not store the case again in "
            f"the {seconds} s waited for it: if it is that re-run, start train again once it has finished")


@pytest.mark.parametrize("spoil", [_damage, _outdate])
def test_a_case_the_holding_run_stores_again_within_the_wait_passes(
        folder: Path, spoil: Callable[[Path, str], None], capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 60.0)  # only the case stored again may end the wait
    spoil(folder, "b")
    with _redoing_run(folder):
        check_stored(folder, "b")  # refused at once before, as damaged while the advised re-run was redoing it
    assert store.load_case(folder, "b", mmap=False)[0].shape == SHAPE
    assert capfd.readouterr().err == f"waiting for a preprocess run writing into {folder}\n"


def test_a_damaged_case_the_holding_run_does_not_store_again_names_its_file_and_the_run(
        folder: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 0.3)
    _damage(folder, "b")
    data = case_paths(folder, "b")[0]
    with folder_lock(folder, shared=True), pytest.raises(PreprocessingError) as info:
        check_stored(folder, "b")
    assert str(info.value) == (
        f"{data}: cannot be opened as a blosc2 array (cut short or overwritten); the preprocessed case is damaged (a "
        f"power loss, a full disk or an interrupted copy?): {_fix(folder)}{_still_held(0)}")
    assert capfd.readouterr().err == f"waiting for a preprocess run writing into {folder}\n"


def test_an_outdated_case_the_holding_run_does_not_store_again_names_its_file_and_the_run(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 2.0)
    _outdate(folder, "b")
    with folder_lock(folder, shared=True), pytest.raises(OutdatedStore) as info:
        check_stored(folder, "b")
    assert str(info.value) == (
        f"{case_paths(folder, 'b')[0]}: was stored by an older autoseg, without the checksums of its chunks that "
        f"every read now checks; {_fix(folder)}{_still_held(2)}")


def test_with_other_failing_cases_the_damaged_one_is_named_and_the_others_counted(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 0.0)
    _save(folder, "a")
    case_paths(folder, "a")[2].unlink()  # being stored again: no marker
    _damage(folder, "b")
    with folder_lock(folder, shared=True), pytest.raises(PreprocessingError) as info:
        store.check_stored_cases(folder, ["a", "b"])
    assert str(info.value).startswith(f"{case_paths(folder, 'b')[0]}: cannot be opened as a blosc2 array")
    assert str(info.value).endswith(f"{_fix(folder)}; 1 other case fails its check too{_still_held(0)}")


def test_a_damaged_case_without_a_run_holding_the_store_is_refused_at_once(
        folder: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "STORE_WAIT_SECONDS", 3600.0)  # a wait would hang the test
    _damage(folder, "b")
    with pytest.raises(PreprocessingError) as info:
        check_stored(folder, "b")
    assert str(info.value).endswith(f": {_fix(folder)}")
    assert capfd.readouterr().err == ""
