"""The raw dataset is never modified: every file of a small raw copy is hashed (content, mode, mtime)
before and after the whole command-line pipeline, verify to report, and runs that fail on the way."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from autoseg.cli import app, expand_multi_value_options

from cli_helpers import TRAIN_SETTINGS, autoseg, runner, set_options
from conftest import make_hippocampus_subset, small_timing_probe
from preprocessing_helpers import make_configuration, make_plans
from training_helpers import CASES, PATCH, TINY_TOPOLOGY

DATASET = "Dataset996_RawUntouched"
MODEL = "unet__autosegPlans__3d_fullres"


def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """Relative path -> (sha256 of the content, mode, mtime in ns) of everything under ``folder``."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(folder))] = (digest, info.st_mode, info.st_mtime_ns)
    return state


def fails(*args: object) -> str:
    """Run ``autoseg ARGS``, which must fail with exit code 2 and one message (no traceback)."""
    result = runner.invoke(app, expand_multi_value_options([str(a) for a in args]))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def tiny_plans(preprocessed: Path) -> None:
    configuration = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
    configuration["network"]["topology"] = TINY_TOPOLOGY
    plans = make_plans({"3d_fullres": configuration})
    plans["dataset_name"] = DATASET
    (preprocessed / DATASET / "autosegPlans.json").write_text(json.dumps(plans))


def test_no_stage_modifies_the_raw_dataset(roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_timing_probe(monkeypatch)
    raw = make_hippocampus_subset(roots["raw"], CASES[:6], DATASET)
    images, labels = raw / "imagesTr", raw / "labelsTr"
    before = snapshot(raw)
    assert len(before) == 2 * 6 + 3  # the images, the labels, dataset.json and the two folders

    autoseg("verify", DATASET, "-np", 1)
    autoseg("fingerprint", DATASET, "-np", 1)
    autoseg("plan", DATASET, "-c", "3d_fullres", "--budget", "5m", "--plans-name", "measured", "-np", 1)
    tiny_plans(roots["preprocessed"])
    autoseg("preprocess", DATASET, "-np", 1)
    autoseg("train", DATASET, "3d_fullres", 0, "--epochs", 1, *set_options(TRAIN_SETTINGS), "--workers", 0)
    model = roots["results"] / DATASET / MODEL
    predictions = tmp_path / "predictions"
    autoseg("predict", "-i", images, "-o", predictions, "-m", model, "-f", 0, "--no-tta", "--mixed-precision", "off")
    autoseg("evaluate", "-p", predictions, "-r", labels, "-d", DATASET, "-np", 1)
    validation = model / "fold_0" / "validation"
    autoseg("postprocess", "determine", "-p", validation, "-r", labels, "-d", DATASET, "-np", 1)
    autoseg("postprocess", "apply", "-i", predictions, "-o", tmp_path / "postprocessed",
            "--decision", validation / "postprocessing.json")
    autoseg("find-best", DATASET, "-f", 0, "-np", 1)
    autoseg("export-model", "-m", model, "-o", tmp_path / "model.zip", "-f", 0)
    autoseg("import-model", tmp_path / "model.zip", "--results-root", tmp_path / "imported")
    autoseg("report", DATASET, "-np", 1)

    # Runs that fail on the way, several of them pointed into the raw folder itself.
    assert "output folder lies inside the input folder" in fails("predict", "-i", images, "-o", images / "out", "-m", model)
    assert "output folder equals the input folder" in fails("predict", "-i", images, "-o", images, "-m", model)
    fails("train", DATASET, "3d_fullres", 9, *set_options(TRAIN_SETTINGS))
    fails("preprocess", DATASET, "-c", "2d", "-np", 1)
    fails("plan", DATASET, "-c", "3d_fullres", "--budget", "-5m")
    fails("evaluate", "-p", images, "-r", labels, "-o", tmp_path / "bad_eval")
    (tmp_path / "garbage.zip").write_bytes(b"PK\x03\x04 not really a zip")
    fails("import-model", tmp_path / "garbage.zip", "--results-root", roots["raw"])

    assert snapshot(raw) == before
    assert sorted(p.name for p in roots["raw"].iterdir()) == [DATASET]
