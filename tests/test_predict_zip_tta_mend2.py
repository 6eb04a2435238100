"""predict -m model.zip --no-tta passes the TTA choice to the zip's loading (cli.py -> loaded_model_zip)."""

from __future__ import annotations

from pathlib import Path

from autoseg.evaluation.model_files import export_model

from cli_helpers import autoseg, autoseg_fails
from conftest import HIPPOCAMPUS
from test_mirror_axes_mend1 import _fold_1_mirrors_axis_0_only


def test_predict_from_a_zip_of_folds_with_other_mirror_axes_runs_with_no_tta(tmp_path: Path) -> None:
    """predict -m model.zip --no-tta of folds trained with different mirror axes was refused as with TTA, though
    nothing is mirrored without it; with TTA it is still refused, naming the zip's members."""
    model = _fold_1_mirrors_axis_0_only(tmp_path)
    zip_path = export_model(model, tmp_path / "model.zip", folds=("0", "1"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    refused = autoseg_fails("predict", "-i", tmp_path / "in", "-o", tmp_path / "tta", "-m", zip_path, "--device", "cpu")
    assert "was trained with mirror_axes [0]" in refused and not (tmp_path / "tta").exists()
    autoseg("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", zip_path, "--no-tta", "--device", "cpu")
    assert (tmp_path / "out" / "case.nii.gz").is_file()
