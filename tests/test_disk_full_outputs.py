"""A full disk stops postprocess apply and ensemble at the first case it hits, as predict and preprocess stop:
every later case failed the same way, each after its work was done, and the message listed the same
'No space left on device' once per case."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import pytest

import autoseg.evaluation.ensemble as ensemble
import autoseg.postprocessing.determine as determine
from autoseg.errors import EvaluationError

from cli_helpers import autoseg_fails
from test_ensemble import _ensemble_inputs
from test_postprocessing import LABELS, _make_cv_folders


def _full_disk(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[Path]:
    """Make ``module``'s label map writer fail as a full disk does; returns the paths it was asked to write."""
    asked: list[Path] = []

    def write_image(seg: Any, geometry: Any, path: Path) -> None:
        asked.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{path}.tmp")

    monkeypatch.setattr(module, "write_image", write_image)
    return asked


def test_a_full_disk_stops_postprocess_apply_at_the_first_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preds, refs = _make_cv_folders(tmp_path)
    determine.determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")
    asked = _full_disk(monkeypatch, determine)
    out = tmp_path / "out"
    output = autoseg_fails("postprocess", "apply", "-i", preds, "-o", out, "--decision", preds / "postprocessing.json",
                           "-np", 1)
    assert " ".join(output.split()) == (
        f"autoseg: error: {out}: the disk is full (the label map case0.nii.gz could not be written); free space there and "
        "re-run the same `autoseg postprocess apply`, which writes every case again")
    assert [path.name for path in asked] == ["case0.nii.gz"]
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []


def test_a_full_disk_stops_ensemble_at_the_first_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y", "z"], seed=3)
    asked = _full_disk(monkeypatch, ensemble)
    out = tmp_path / "out"
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(out))}: the disk is full \(the label map of case x could not "
                                              r"be written\); free space there and re-run the same `autoseg ensemble`, "
                                              r"which writes every case again$"):
        ensemble.ensemble_folders(dirs, out, num_workers=1)
    assert [path.name for path in asked] == ["x.nii.gz"]
    # the cases are ensembled in a staging folder beside -o, which is made only once every case succeeded
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_other_write_errors_still_fail_case_by_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a full disk stops the run: another error of one case (a permission) fails that case and the others are
    still tried, each failure named; the ensemble, all or nothing, then writes no label map."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=4)
    asked: list[Path] = []

    def write_image(seg: Any, geometry: Any, path: Path) -> None:
        asked.append(path)
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(ensemble, "write_image", write_image)
    with pytest.raises(EvaluationError, match=r"^2 of 2 cases could not be ensembled: x: .*; no label map was written$"):
        ensemble.ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert [path.name for path in asked] == ["x.nii.gz", "y.nii.gz"]


def test_a_failing_postprocessing_step_on_a_nearly_full_disk_is_not_called_a_full_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps ran inside the full-disk guard, which takes any error on a nearly full disk for a full disk: a step
    that failed (here a ValueError) stopped apply with 'the label map ... could not be written'. Only the write is
    guarded now; the step's own error is the case's failure."""
    import autoseg.utils.atomic as atomic

    preds, refs = _make_cv_folders(tmp_path)
    determine.determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".nii.gz")

    def failing_step(*args: Any) -> Any:
        raise ValueError("the step failed")

    decision = determine.load_decision(preds / "postprocessing.json")
    monkeypatch.setattr(atomic, "_space_left", lambda folder: 0)
    monkeypatch.setattr(determine, "apply_postprocessing", failing_step)
    with pytest.raises(ValueError, match="^the step failed$"):
        determine._apply_file(preds / "case0.nii.gz", tmp_path / "case0.nii.gz", decision, None)
    assert not (tmp_path / "case0.nii.gz").exists()


def test_a_full_disk_writing_the_probabilities_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while ensemble wrote a case's probabilities said its label map could not be written, after the
    label map was written; the probabilities are named now."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=5)

    def write_probability_files(folder: Path, case: str, *args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / f"{case}.npz.tmp"))

    monkeypatch.setattr(ensemble, "write_probability_files", write_probability_files)
    out = tmp_path / "out"
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(out))}: the disk is full \(the probabilities of case x could "
                                              r"not be written\); free space there and re-run the same `autoseg ensemble`"):
        ensemble.ensemble_folders(dirs, out, save_probabilities=True, num_workers=1)
    assert not out.exists()  # its label map, written first, stayed in the staging folder, removed with it
