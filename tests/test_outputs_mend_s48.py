"""Mends of session 48's ensemble staging (helper M3): a killed worker's temporary is not moved into -o, and a failed
run makes none of -o's missing parent folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import autoseg.evaluation.ensemble as ensemble
from autoseg.errors import EvaluationError
from autoseg.utils.atomic import HOST_TAG
from autoseg.utils.probability_files import write_probability_files
from test_ensemble import GEOMETRY, LABELS, _ensemble_inputs, _softmax


def test_a_killed_workers_temporary_is_not_moved_into_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x"], seed=3)
    real = ensemble.ensemble_case

    def killed_once(case, input_dirs, out, ending, save, staging):  # type: ignore[no-untyped-def]
        (staging / f".{case}.nii.gz.{HOST_TAG}-999999-{'0' * 16}.tmp.nii.gz").write_bytes(b"half")  # a killed write
        return real(case, input_dirs, out, ending, save, staging)

    monkeypatch.setattr(ensemble, "ensemble_case", killed_once)
    assert ensemble.ensemble_folders(dirs, tmp_path / "out", num_workers=1) == ["x"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".autoseg_outputs.json", "x.nii.gz"]


def test_a_failed_run_makes_no_missing_parent_of_out(tmp_path: Path) -> None:
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x"], seed=6)
    probabilities = _softmax(np.random.default_rng(1))
    probabilities[0, 0, 0, :2] = np.nan
    write_probability_files(dirs[1], "x", probabilities, GEOMETRY, LABELS, None)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(EvaluationError, match=r"hold 2 NaN or infinite value\(s\)"):
        ensemble.ensemble_folders(dirs, tmp_path / "a" / "b" / "out", num_workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # neither a/ nor a staging folder left


def test_a_finished_run_makes_outs_missing_parents(tmp_path: Path) -> None:
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x"], seed=6)
    out = tmp_path / "a" / "b" / "out"
    assert ensemble.ensemble_folders(dirs, out, num_workers=1) == ["x"]
    assert sorted(p.name for p in out.iterdir()) == [".autoseg_outputs.json", "x.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m0", "m1"]
