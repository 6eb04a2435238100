"""``autoseg predict`` and ``autoseg export-model`` of a fold another process is training right now (holding the fold's
lock) took the previous run's checkpoint_final in silence: one warning line now names the fold, the training process
and the checkpoint's time; a fold without the checkpoint is still refused."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from autoseg.cli import app

from cli_helpers import runner
from conftest import HIPPOCAMPUS
from test_inference_predict import make_model
from test_training_locks import _holder

CASE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
WRITTEN = time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1))  # the earlier run's checkpoint time, local


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = make_model(tmp_path / "results", "3d_fullres", folds=("0",))
    os.utime(folder / "fold_0" / "checkpoint_final.safetensors", (WRITTEN, WRITTEN))
    return folder


def _commands(model: Path, tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "in").mkdir(exist_ok=True)
    shutil.copy(CASE, tmp_path / "in" / "case_0000.nii.gz")
    return {"predict": ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model), "-f", "0",
                        "--no-tta", "--mixed-precision", "off"],
            "export-model": ["export-model", "-m", str(model), "-o", str(tmp_path / "model.zip"), "-f", "0"]}


@pytest.mark.parametrize("command", ["predict", "export-model"])
def test_a_fold_being_trained_is_used_with_one_warning(command: str, model: Path, tmp_path: Path) -> None:
    fold = model / "fold_0"
    argv = _commands(model, tmp_path)[command]
    quiet = runner.invoke(app, argv)
    assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    (tmp_path / "model.zip").unlink(missing_ok=True)
    holder = _holder(fold)
    try:
        result = runner.invoke(app, argv)
    finally:
        holder.stdin.close()  # the holder leaves its lock as a finished training does, removing its lock file
        holder.wait()
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {fold}: is being trained right now by process {holder.pid}; using its "
                        "checkpoint_final.safetensors of 2026-01-02 03:04:05, which that run will replace (run again "
                        "once it has ended for the new one)"], result.output
    if command == "predict":
        assert (tmp_path / "out" / "case.nii.gz").is_file()
    else:
        assert "unet__autosegPlans__3d_fullres/fold_0/checkpoint_final.safetensors" in zipfile.ZipFile(
            tmp_path / "model.zip").namelist()
    assert os.listdir(fold) == ["checkpoint_final.safetensors"]  # the lock file went with its holder; none written


@pytest.mark.parametrize("command", ["predict", "export-model"])
def test_a_fold_being_trained_for_the_first_time_is_refused(command: str, model: Path, tmp_path: Path) -> None:
    fold = model / "fold_0"
    (fold / "checkpoint_final.safetensors").unlink()
    holder = _holder(fold)
    try:
        result = runner.invoke(app, _commands(model, tmp_path)[command])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"{fold / 'checkpoint_final.safetensors'}: not found (present: none)" in result.output
    assert "warning" not in result.output


def test_the_process_holding_the_fold_itself_gets_no_warning(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Training's own final validation loads its fold's checkpoint while holding the fold."""
    from autoseg.inference.model import load_model
    from autoseg.utils.atomic import folder_lock

    with folder_lock(model / "fold_0"):
        load_model(model, folds=["0"], device="cpu")
    assert capsys.readouterr().err == ""
