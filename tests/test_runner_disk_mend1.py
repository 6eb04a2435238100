"""preprocess stops at the first case a full disk fails, also when the writer (blosc2, SimpleITK) reports it as a
RuntimeError rather than an OSError: runner kept its own copy of the full-disk guard, which knew OSError only, so
every later case failed in turn with the same error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoseg.errors import PreprocessingError
from autoseg.preprocessing import list_cases, preprocess_dataset, store
from autoseg.preprocessing.runner import DiskFullError, timing_path
from test_preprocessing_runner import DATASET, IDENTIFIER, _write_plans


def test_a_full_disk_reported_as_a_runtime_error_stops_at_the_first_case(
        roots: dict[str, Path], small_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_plans(roots)
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    save_case, tried = store.save_case, []

    def save_until_full(folder: Path, case_id: str, *args: object, **kwargs: object) -> None:
        tried.append(case_id)
        if len(tried) > 1:
            raise RuntimeError("blosc2: could not write a chunk: No space left on device")
        save_case(folder, case_id, *args, **kwargs)

    monkeypatch.setattr(store, "save_case", save_until_full)
    with pytest.raises(DiskFullError, match=rf"^{re.escape(str(out))}: the disk is full \(case \w+ could "
                                            r"not be written\); free space there and re-run `autoseg preprocess`: the cases "
                                            r"stored so far are kept and skipped$") as info:
        preprocess_dataset(DATASET, "3d_fullres", num_workers=1)
    assert isinstance(info.value, PreprocessingError)
    assert len(tried) == 2 and tried[1] in str(info.value)  # stopped at the case that hit it: no later case tried
    assert list_cases(out) == tried[:1] and not timing_path(out).exists()
