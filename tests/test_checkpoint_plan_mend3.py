"""train --continue's check of the checkpoint's recorded prediction plan: read from the file's metadata alone, and
worded as predict words it (the transpose is plan-wide, not the configuration's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from autoseg.errors import TrainingError
from autoseg.inference.model import PREDICTION_PLAN, prediction_plan
from autoseg.training.checkpoints import refuse_another_prediction_plan
from autoseg.utils import weights_file
from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION

PLANS = {"transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
         "configurations": {"3d_fullres": {"spatial_dims": 3, "spacing": [1.0, 1.0, 1.0], "normalization": ["ZScore"],
                                           "resampling": {"order": 3}}}}


def _checkpoint(folder: Path) -> Path:
    path = folder / "checkpoint_latest.safetensors"
    weights_file.save_weights(path, {
        "network_weights": {"conv.weight": torch.ones(4, 4)}, "optimizer_state": {"state": {"0": torch.ones(4)}},
        "metadata": {"format_version": CHECKPOINT_FORMAT_VERSION, PREDICTION_PLAN: prediction_plan(PLANS, "3d_fullres")},
    })
    return path


@pytest.fixture
def no_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a checkpoint's tensors fails: every rank read weights and optimizer state for the metadata alone."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint's tensors were read")

    monkeypatch.setattr(weights_file.safetensors.torch, "load_file", refuse)


def test_continue_names_plan_wide_and_configuration_differences_from_the_metadata_alone(tmp_path, no_tensor_reads):
    path = _checkpoint(tmp_path)
    replanned = {**PLANS, "transpose_forward": [2, 1, 0], "transpose_backward": [2, 1, 0],
                 "configurations": {"3d_fullres": {**PLANS["configurations"]["3d_fullres"], "spacing": [2.0, 1.0, 1.0]}}}
    expected = (f"{path}: was trained with another plan than this run's (plan-wide: transpose_forward [0, 1, 2] "
                "(trained) vs [2, 1, 0] (now); transpose_backward [0, 1, 2] (trained) vs [2, 1, 0] (now); configuration "
                "3d_fullres: spacing [1.0, 1.0, 1.0] (trained) vs [2.0, 1.0, 1.0] (now)): the fold comes from another "
                "results root or the model was re-planned; continue with the plan and --set the fold was trained with "
                "(the plans.json and training_config.yaml of the model folder it came from), or delete the fold folder "
                "to start over")
    with pytest.raises(TrainingError, match=f"^{re.escape(expected)}$"):
        refuse_another_prediction_plan(path, replanned, "3d_fullres")
    refuse_another_prediction_plan(path, PLANS, "3d_fullres")  # the same plan passes


def test_a_damaged_checkpoint_header_is_named_with_its_fix(tmp_path, no_tensor_reads):
    path = _checkpoint(tmp_path)
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(TrainingError, match=rf"^{re.escape(str(path))}: not a readable safetensors file \(.*\); it is "
                                            r"damaged or not written by autoseg; delete it to train the fold from the start$"):
        refuse_another_prediction_plan(path, PLANS, "3d_fullres")
