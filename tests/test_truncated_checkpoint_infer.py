"""A model whose checkpoint was cut short (an interrupted copy, download or full disk) was refused by predict and
export-model as 'not a readable safetensors file (...); it is damaged or not written by autoseg', which sent users
to another autoseg version; the refusal now says the file is truncated, by how much, and to copy it again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoseg.cli import app

from cli_helpers import runner
from conftest import HIPPOCAMPUS
from test_inference_predict import make_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"), "3d_fullres", folds=("0",))


def _cut(model: Path, tmp_path: Path, keep: int | None) -> tuple[Path, int]:
    """A copy of ``model`` whose fold 0 checkpoint keeps ``keep`` bytes (None: half); the checkpoint and its full size."""
    copy = tmp_path / "results" / model.parent.name / model.name
    shutil.copytree(model, copy)
    checkpoint = copy / "fold_0" / "checkpoint_final.safetensors"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2 if keep is None else keep])
    return checkpoint, len(whole)


@pytest.mark.parametrize("command", ["predict", "export-model"])
@pytest.mark.parametrize("keep", [None, 100])
def test_a_truncated_checkpoint_is_named_as_truncated(command: str, keep: int | None, model: Path, tmp_path: Path) -> None:
    checkpoint, size = _cut(model, tmp_path, keep)
    header = 8 + int.from_bytes(checkpoint.read_bytes()[:8], "little")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "case_0000.nii.gz")
    argv = {"predict": ["predict", "-i", inputs, "-o", tmp_path / "out", "-m", checkpoint.parents[1], "--no-tta"],
            "export-model": ["export-model", "-m", checkpoint.parents[1], "-o", tmp_path / "model.zip", "-f", "0"]}[command]
    result = runner.invoke(app, [str(arg) for arg in argv])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    cut = f"{size // 2} of the {size} bytes its header describes" if keep is None else f"100 bytes, fewer than its {header}-byte header"
    assert f"{checkpoint}: is truncated ({cut}: an interrupted copy, download or write?); copy it again whole; " in (
        " ".join(result.output.split()))
    assert not (tmp_path / "out").exists() and not (tmp_path / "model.zip").exists()
