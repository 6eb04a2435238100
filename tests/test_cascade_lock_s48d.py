"""A cascade fold checks the previous stage's handed-on copies under predicted_next_stage/'s lock (each copy with its
record), but the store's listing, which waits up to 30 s for a case being stored again, is read before it: every
lowres fold handing a case on waited behind the lock that long."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from autoseg.errors import TrainingError
from autoseg.training import cascade
from autoseg.utils.atomic import lock_holder


def test_the_store_listing_is_read_before_the_predictions_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handed, store, cache = tmp_path / cascade.NEXT_STAGE_FOLDER, tmp_path / "store", tmp_path / "cache"
    validation = tmp_path / "fold_all" / "validation"
    for folder in (handed, store, cache, validation):
        folder.mkdir(parents=True)
    (validation / "a.nii.gz").write_bytes(b"fold all's map")
    (handed / "a.nii.gz").write_bytes(b"fold all's map")
    cascade.record_handed_on(handed, "a", "all", None)
    np.save(cache / "a.npy", np.zeros((1, 1, 1, 1), np.int16))  # up to date: nothing is read or written
    listed: list[int | None] = []
    checked: list[int | None] = []
    stale = cascade._stale_handing

    def listing(folder: Path, fold: str) -> list[str]:
        listed.append(lock_holder(handed))
        return ["a"]

    def checking(predictions: Path, *args: object) -> str | None:
        checked.append(lock_holder(predictions))
        return stale(predictions, *args)

    monkeypatch.setattr(cascade, "stored_cases", listing)
    monkeypatch.setattr(cascade, "_stale_handing", checking)
    monkeypatch.setattr(cascade, "_stored_time", lambda store, case_id: 0.0)
    assert cascade.prepare_previous_stage(handed, cache, store, ["a"], {}, "3d_fullres", ".nii.gz") == cache
    assert listed == [None]  # listed once, with the lock free
    assert checked == [os.getpid()]  # the copy checked with its record under the lock, as before


def test_a_record_removed_before_the_lock_is_read_under_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record another fold removes between the listing and the lock (a fold trained afresh takes its copies back)
    is not an error before the lock: the check under the lock finds what is there then."""
    handed, store, cache = tmp_path / cascade.NEXT_STAGE_FOLDER, tmp_path / "store", tmp_path / "cache"
    for folder in (handed, store, cache):
        folder.mkdir(parents=True)
    (handed / "a.nii.gz").write_bytes(b"a map")
    cascade.record_handed_on(handed, "a", "all", None)
    np.save(cache / "a.npy", np.zeros((1, 1, 1, 1), np.int16))
    record = cascade.handed_by_path(handed, "a")
    monkeypatch.setattr(cascade, "stored_cases", lambda folder, fold: ["a"])
    monkeypatch.setattr(cascade, "_stored_time", lambda store, case_id: 0.0)
    monkeypatch.setattr(cascade, "_handed_record", _removed_once(record, cascade._handed_record))
    assert cascade.prepare_previous_stage(handed, cache, store, ["a"], {}, "3d_fullres", ".nii.gz") == cache
    assert not record.exists()


def _removed_once(record: Path, read: Callable[[Path, str], Any]) -> Callable[[Path, str], Any]:
    """``_handed_record`` whose first call finds the record removed after it saw the file (a raced ``is_file``)."""
    calls: list[str] = []

    def reading(predictions: Path, case_id: str) -> Any:
        calls.append(case_id)
        if len(calls) == 1:
            record.unlink()
            raise TrainingError(f"{record}: missing")
        return read(predictions, case_id)

    return reading
