"""Two ``autoseg preprocess`` runs of one dataset at once: a case the other run starts storing again while this run
checks it (its marker removed, its arrays being replaced) was reported as 'found damaged, hence redone'; it is
absent (stored by this run too), while a case damaged for certain is still reported as damaged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoseg.preprocessing import runner, store
from autoseg.preprocessing.store import case_paths, save_case

SHAPE = (1, 4, 4, 4)


def _stored(folder: Path) -> None:
    save_case(folder, "a", np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.int16),
              {"shape_after_resampling": list(SHAPE[1:]), "input_fingerprint": "f"})


def test_a_case_another_run_stores_again_during_the_check_is_absent_not_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stored(tmp_path)
    opened = store.open_case

    def other_run_starts_storing(folder: Path, case_id: str) -> Any:
        case_paths(folder, case_id)[2].unlink()  # save_case's first step, in the other run
        return opened(folder, case_id)

    monkeypatch.setattr(store, "open_case", other_run_starts_storing)
    assert runner.stored_state(tmp_path, "a", "f") == "absent"


def test_a_damaged_case_is_still_damaged(tmp_path: Path) -> None:
    _stored(tmp_path)
    assert runner.stored_state(tmp_path, "a", "f") == "done"
    case_paths(tmp_path, "a")[0].write_bytes(b"overwritten")
    assert runner.stored_state(tmp_path, "a", "f") == "damaged"


def test_cases_dropped_from_another_store_are_dropped_under_its_shared_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``preprocess -c 3d_fullres`` deletes a case taken out of the dataset from the 2d store too; a train of 2d
    starting meanwhile saw no writer there (``shared_holder``), listed the case and split it."""
    from autoseg.utils.atomic import shared_holder

    other = tmp_path / "autosegPlans_2d"
    _stored(other)
    seen: list[int | None] = []
    removed = store.remove_case

    def removing(folder: Path, case_id: str) -> bool:
        seen.append(shared_holder(folder))
        return removed(folder, case_id)

    monkeypatch.setattr(store, "remove_case", removing)
    plans = {"configurations": {"2d": {"data_identifier": "autosegPlans_2d"},
                                "3d_fullres": {"data_identifier": "autosegPlans_3d_fullres"}}}
    assert runner.drop_stale_cases_elsewhere(plans, tmp_path, ["autosegPlans_3d_fullres"], {"b"}) == {
        "autosegPlans_2d": ["a"]}
    assert seen == [os.getpid()] and store.list_cases(other) == [] and shared_holder(other) is None
