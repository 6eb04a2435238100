"""A fold folder resumed, retrained or fine-tuned: --continue falls back to checkpoint_best, a folder in place of
a file is refused up front, a refused --pretrained-weights leaves the earlier run's files alone, --continue refuses
a checkpoint of another plan, and weights that saw the fold's validation cases are warned of."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from autoseg.errors import TrainingError
from autoseg.training import train_fold
from autoseg.training.checkpoints import load_checkpoint
from autoseg.utils.checkpoint_format import write_checkpoint

from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

OVERRIDES = ["iterations_per_epoch=1", "val_iterations_per_epoch=1"]


def _train(fold: int, **options: object) -> dict:
    return train_fold(DATASET, "3d_fullres", fold, workers=0, overrides=OVERRIDES, device="cpu", **options)


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("continue_", [False, True])
def test_a_folder_named_as_the_training_log_is_refused_before_any_work(results: Path, continue_: bool) -> None:
    """Was: an internal IsADirectoryError once the run wrote its first log line."""
    folder = results / DATASET / "unet__autosegPlans__3d_fullres" / "fold_0" / "training_log.txt"
    folder.mkdir(parents=True)
    with pytest.raises(TrainingError, match=r"fold_0/training_log.txt: is a folder, where training writes the fold's "
                                            r"training_log.txt; move or rename that folder, then train again$"):
        _train(0, epochs=1, continue_=continue_)
    assert [p.name for p in folder.parent.iterdir()] == ["training_log.txt"] and not any(folder.iterdir())