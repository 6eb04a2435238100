"""Two ``autoseg preprocess`` runs of one dataset at once: a case the other run starts storing again while this run
checks it (its marker removed, its arrays being replaced) was reported as 'found damaged, hence redone'; it is
absent (stored by this run too), while a case damaged for certain is still reported as damaged."""

from __future__ import annotations

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
