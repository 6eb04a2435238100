"""predict's outputs around failed and damaged cases (session 48, helper B): statistics of the cases a failing run
wrote, and ``--continue`` over PNG/TIFF label maps cut short."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import autoseg_fails
from conftest import HIPPOCAMPUS

from autoseg.evaluation.statistics import SUMMARY_CSV


def test_statistics_of_the_written_cases_when_another_case_fails(tmp_path: Path) -> None:
    """predict --statistics raised on a failed case before any statistics were written: the case predicted got no
    <case>_statistics.json and no statistics.csv. Now they are written, and the run still fails naming the case."""
    from test_inference_predict import make_model

    model = make_model(tmp_path / "models", "3d_fullres", folds=("0",))
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "good_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    (inputs / "broken_0000.nii.gz").write_bytes(b"not an image")
    message = autoseg_fails("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--statistics")
    assert "1 of 2 case(s) failed (broken: " in message
    assert f"statistics of the 1 other case(s): {out / SUMMARY_CSV}" in message
    stats = json.loads((out / "good_statistics.json").read_text())
    assert stats["case_id"] == "good" and set(stats["structures"]) == {"Anterior", "Posterior"}
    rows = (out / SUMMARY_CSV).read_text().splitlines()
    assert [row.split(",")[:2] for row in rows[1:]] == [["good", "Anterior"], ["good", "Posterior"]]
    assert not (out / "broken_statistics.json").exists()
