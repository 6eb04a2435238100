"""A tiny real dataset for training tests: Hippocampus cases, a hand-written plan, the real preprocessing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import os

import pytest
import torch
from preprocessing_helpers import make_configuration, make_plans

from conftest import make_hippocampus_subset

DATASET = "Dataset998_TrainTest"
CASES = [f"hippocampus_{i:03d}" for i in (1, 3, 4, 6, 8, 11, 14, 15)]
PATCH = [16, 16, 16]
# For trainings whose validation a test does not check: no mirroring, so the final validation predicts each
# tile once, not 8 times (2/3 of such a run's time); mirrored validation: test_training_engine.py, test_mirroring.py.
UNMIRRORED = "augmentation.mirror.axes=[]"
# 3 stages of 8-16-32 features (GroupNorm(8) networks need multiples of 8): small enough for many CPU
# iterations per second.
TINY_TOPOLOGY: dict[str, Any] = {
    "spatial_dims": 3,
    "features_per_stage": [8, 16, 32],
    "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
}


def build_dataset(roots: dict[str, Path], cases: list[str] = CASES) -> Path:
    """Raw subset + plans (1 mm, tiny topology, 2 iterations per epoch) + preprocessed store."""
    from autoseg.preprocessing.runner import preprocess_dataset

    raw = make_hippocampus_subset(roots["raw"], cases, DATASET)
    configuration = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
    configuration["network"]["topology"] = TINY_TOPOLOGY
    configuration["iterations_per_epoch"] = 2
    plans = make_plans({"3d_fullres": configuration})
    plans["dataset_name"] = DATASET
    folder = roots["preprocessed"] / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "autosegPlans.json").write_text(json.dumps(plans))
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    return raw


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("training")
    roots = {k: base / k for k in ("raw", "preprocessed", "results")}
    for path in roots.values():
        path.mkdir()
    saved = {var: os.environ.get(var) for var in ("AUTOSEG_RAW", "AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS")}
    os.environ.update(
        AUTOSEG_RAW=str(roots["raw"]), AUTOSEG_PREPROCESSED=str(roots["preprocessed"]), AUTOSEG_RESULTS=str(roots["results"])
    )
    build_dataset(roots)
    yield roots
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture
def results(data_roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh results root per test (raw and preprocessed data are shared)."""
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    torch.set_num_threads(1)
    return tmp_path / "results"
