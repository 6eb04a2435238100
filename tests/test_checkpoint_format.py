"""The one checkpoint format: names, version, and the same checks for training, inference, model files
and pretrained weights (each reader with its own error class and fix)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from autoseg.errors import InferenceError, ModelFileError, TrainingError
from autoseg.evaluation.model_files import _check_weights, export_model
from autoseg.inference.model import _load_checkpoint
from autoseg.training.checkpoints import BEST, FINAL, LATEST, load_checkpoint
from autoseg.training.pretrained import read_pretrained
from autoseg.utils.checkpoint_format import (
    CHECKPOINT_FORMAT_VERSION,
    checkpoint_from_bytes,
    checkpoint_name,
    network_checkpoint_bytes,
    read_checkpoint,
    write_checkpoint,
)


def _checkpoint(version: object = CHECKPOINT_FORMAT_VERSION) -> dict:
    return {
        "network_weights": {"conv.weight": torch.arange(6.0).view(2, 3), "conv.bias": torch.zeros(2)},
        "optimizer_state": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.01}]},
        "metadata": {"format_version": version, "network": "unet", "patch_size": [16, 16]},
    }


def test_names_follow_the_kind() -> None:
    assert (FINAL, BEST, LATEST) == tuple(checkpoint_name(k) for k in ("final", "best", "latest"))
    assert FINAL == "checkpoint_final.safetensors"


def test_round_trip_and_network_part(tmp_path: Path) -> None:
    path = tmp_path / FINAL
    write_checkpoint(path, _checkpoint())
    loaded = read_checkpoint(path, TrainingError, "missing", "fix")
    assert torch.equal(loaded["network_weights"]["conv.weight"], torch.arange(6.0).view(2, 3))
    assert loaded["optimizer_state"]["param_groups"][0]["lr"] == 0.01
    network = checkpoint_from_bytes(network_checkpoint_bytes(loaded), "member", ModelFileError, "fix")
    assert set(network) == {"network_weights", "metadata"} and network["metadata"] == loaded["metadata"]


READERS = [
    (lambda p: load_checkpoint(p), TrainingError, "delete it to train the fold from the start"),
    (lambda p: _load_checkpoint(p, torch.device("cpu")), InferenceError, "use a matching autoseg version or retrain"),
    (lambda p: read_pretrained(p), TrainingError, "give a checkpoint written by this autoseg"),
]


def test_pretrained_weights_read_a_legacy_pt_checkpoint_given_as_a_file(tmp_path: Path) -> None:
    """A model folder holding only autoseg's pre-safetensors checkpoint_final.pt was read, the file itself was refused
    as 'not a readable safetensors file ... not written by autoseg'; neither runs code from it."""
    legacy = tmp_path / "fold_0" / "checkpoint_final.pt"
    legacy.parent.mkdir()
    torch.save(_checkpoint(), legacy)
    weights, metadata, where = read_pretrained(legacy)
    assert torch.equal(weights["conv.weight"], torch.arange(6.0).view(2, 3)) and where == str(legacy)
    assert read_pretrained(tmp_path)[0].keys() == weights.keys()  # as its model folder gives it
    write_checkpoint(legacy.with_suffix(".safetensors"), _checkpoint())  # was named a pickle, no autoseg checkpoint
    with pytest.raises(TrainingError) as caught:
        read_pretrained(legacy)
    assert str(caught.value) == (f"{legacy}: autoseg's checkpoint before safetensors, with {legacy.with_suffix('.safetensors')} "
                                 "beside it, which autoseg reads in its place; give that file (or move it away to "
                                 "fine-tune from this one)")


@pytest.mark.parametrize("read, error, fix", READERS)
def test_every_reader_refuses_another_version_with_its_fix(tmp_path: Path, read, error, fix) -> None:
    path = tmp_path / FINAL
    write_checkpoint(path, _checkpoint(version=2))
    with pytest.raises(error) as info:
        read(path)
    assert str(info.value) == f"{path}: checkpoint format version 2, this autoseg reads {CHECKPOINT_FORMAT_VERSION}; {fix}"


@pytest.mark.parametrize("read, error, fix", READERS)
def test_every_reader_refuses_a_foreign_tree(tmp_path: Path, read, error, fix) -> None:
    path = tmp_path / FINAL
    write_checkpoint(path, {"weights": torch.zeros(1)})
    with pytest.raises(error, match=rf"{FINAL}: is not an autoseg checkpoint \(needs 'network_weights' and 'metadata'\); {fix}"):
        read(path)


def test_missing_checkpoint_messages(tmp_path: Path) -> None:
    (tmp_path / BEST).write_bytes(b"")
    with pytest.raises(TrainingError, match=r"checkpoint_final.safetensors: checkpoint not found; train first"):
        load_checkpoint(tmp_path / FINAL)
    with pytest.raises(InferenceError, match=r"checkpoint_final.safetensors: not found \(present: best\)"):
        _load_checkpoint(tmp_path / FINAL, torch.device("cpu"))


def test_a_damaged_latest_beside_a_final_model_is_not_advised_away(tmp_path: Path) -> None:
    """Was: "delete it to restart the fold", after which --continue refused the final model without training state."""
    write_checkpoint(tmp_path / FINAL, _checkpoint())
    (tmp_path / LATEST).write_bytes((tmp_path / FINAL).read_bytes()[:100])
    with pytest.raises(TrainingError) as info:
        load_checkpoint(tmp_path / LATEST)
    assert str(info.value).endswith(f"the fold's {FINAL} is kept for prediction, but without a readable {LATEST} the fold "
                                    f"cannot be continued or extended: delete the folder {tmp_path} to train the fold again")
    assert "restart" not in str(info.value)


def test_model_files_refuse_another_checkpoint_version_at_export_and_import(tmp_path: Path) -> None:
    model = tmp_path / "Dataset001_X" / "unet__autosegPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}"), (model / "dataset.json").write_text("{}")
    write_checkpoint(model / "fold_0" / FINAL, _checkpoint(version=7))
    with pytest.raises(ModelFileError, match=r"checkpoint format version 7, this autoseg reads \d+; export a checkpoint"):
        export_model(model, tmp_path / "m.zip", folds=[0])
    write_checkpoint(model / "fold_0" / FINAL, _checkpoint())
    zip_path = export_model(model, tmp_path / "m.zip", folds=[0])
    with zipfile.ZipFile(zip_path) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".safetensors"))
        exported = checkpoint_from_bytes(archive.read(member), member, ModelFileError, "fix")
    assert "optimizer_state" not in exported
    # import checks every weight member the same way
    old = network_checkpoint_bytes(_checkpoint(version=7))
    with pytest.raises(ModelFileError, match=r"^member: checkpoint format version 7, .*not written by autoseg export-model$"):
        _check_weights(old, "member")
