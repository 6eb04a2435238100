"""predict --statistics reports what was predicted before it writes the statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoseg.errors import EvaluationError
from cli_helpers import autoseg_fails
from conftest import HIPPOCAMPUS


def test_the_predicted_line_is_kept_when_the_statistics_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Statistics that fail after every case was predicted (a full disk) came before the 'N case(s) predicted ... into
    OUT' line, which was lost: the user saw only the statistics' error, not that the label maps were written."""
    import autoseg.evaluation.statistics as statistics
    from test_inference_predict import make_model

    def full_disk(*args: object, **kwargs: object) -> Path:
        raise EvaluationError(f"{tmp_path / 'out'}: the disk is full (statistics.csv could not be written)")

    monkeypatch.setattr(statistics, "write_statistics", full_disk)
    model = make_model(tmp_path / "models", "3d_fullres", folds=("0",))
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    output = autoseg_fails("predict", "-i", inputs, "-o", tmp_path / "out", "-m", model, "--no-tta", "--statistics")
    assert f"1 case(s) predicted, 0 skipped, into {tmp_path / 'out'}" in output
    assert output.index("1 case(s) predicted") < output.index("the disk is full (statistics.csv could not be written)")
    assert (tmp_path / "out" / "good.nii.gz").is_file()
