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


def test_continue_without_latest_and_final_resumes_from_best_and_says_so(results: Path) -> None:
    """Was: a fold holding only checkpoint_best (latest and final deleted) was trained from the start in silence."""
    fold = Path(_train(0, epochs=1)["model_folder"]) / "fold_0"
    (fold / "checkpoint_final.safetensors").unlink()
    (fold / "checkpoint_latest.safetensors").replace(fold / "checkpoint_best.safetensors")  # the best of epoch 1
    summary = _train(0, epochs=2, continue_=True)
    log = (fold / "training_log.txt").read_text()
    assert f"{fold / 'checkpoint_latest.safetensors'} and {fold / 'checkpoint_final.safetensors'} are missing: resuming " \
           "from checkpoint_best.safetensors at epoch 1, so the epochs after it are trained again" in log, log
    assert re.search(r"resumed from .*checkpoint_best.safetensors at epoch 1, iteration 1 of 2", log), log
    assert "no checkpoint to continue from yet" not in log
    assert (summary["epochs"], summary["iterations"]) == (2, 2)


@pytest.mark.parametrize("continue_", [False, True])
def test_a_folder_named_as_the_training_log_is_refused_before_any_work(results: Path, continue_: bool) -> None:
    """Was: an internal IsADirectoryError once the run wrote its first log line."""
    folder = results / DATASET / "unet__autosegPlans__3d_fullres" / "fold_0" / "training_log.txt"
    folder.mkdir(parents=True)
    with pytest.raises(TrainingError, match=r"fold_0/training_log.txt: is a folder, where training writes the fold's "
                                            r"training_log.txt; move or rename that folder, then train again$"):
        _train(0, epochs=1, continue_=continue_)
    assert [p.name for p in folder.parent.iterdir()] == ["training_log.txt"] and not any(folder.iterdir())


def _other_shapes(final: Path, target: Path) -> Path:
    """A copy of ``final`` whose decoder's last convolution has another kernel: a checkpoint of another topology."""
    checkpoint = load_checkpoint(final)
    weights = checkpoint["network_weights"]
    name = next(n for n in reversed(list(weights)) if weights[n].ndim == 5 and weights[n].shape[-1] == 3)
    weights[name] = weights[name][..., :2].contiguous()
    write_checkpoint(target, checkpoint)
    return target


@pytest.mark.parametrize("source", ["not a checkpoint", "other shapes"])
def test_a_refused_pretrained_source_leaves_the_earlier_runs_files(results: Path, tmp_path: Path, source: str) -> None:
    """Was: a fold trained again with --pretrained-weights set the earlier log aside and deleted the earlier
    validation before the weights were refused: nothing trained, the records gone."""
    fold = Path(_train(0, epochs=1)["model_folder"]) / "fold_0"
    if source == "other shapes":
        weights = _other_shapes(fold / "checkpoint_final.safetensors", tmp_path / "other.safetensors")
        expected = r"other.safetensors: does not fit this network: 1 tensor\(s\) have other shapes"
    else:
        weights = tmp_path / "weights.safetensors"
        weights.write_text("not a checkpoint")
        expected = r"weights.safetensors: .*give a checkpoint written by this autoseg"
    for checkpoint in fold.glob("checkpoint_*.safetensors"):
        checkpoint.unlink()
    before = _listing(fold)
    with pytest.raises(TrainingError, match=expected):
        _train(0, epochs=1, pretrained_weights=weights)
    assert _listing(fold) == before


def test_continue_refuses_a_checkpoint_of_another_patch_size(
    data_roots: dict[str, Path], results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: a fold copied from another results root (no plans.json beside it to compare) and continued after a
    re-plan to another patch size trained on, its weights fitting any patch, without a word."""
    fold = Path(_train(0, epochs=1)["model_folder"]) / "fold_0"
    (fold.parent / "plans.json").unlink()
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    plans_file = preprocessed / DATASET / "autosegPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 16, 24]
    plans_file.write_text(json.dumps(plans))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    before = _listing(fold)
    with pytest.raises(TrainingError, match=r"checkpoint_latest.safetensors: was trained with another plan than this "
                                            r"run's \(patch_size \[16, 16, 16\] \(trained\) vs \[16, 16, 24\] \(now\)\): "
                                            r".*or delete the fold folder to start over"):
        _train(0, epochs=2, continue_=True)
    assert _listing(fold) == before


def test_fine_tuning_from_another_fold_of_the_same_dataset_warns_of_optimistic_validation(results: Path) -> None:
    """Was: fold 0 fine-tuned from fold 1 of the same dataset, whose training cases are fold 0's validation cases,
    reported its validation Dice without a word of it being optimistic."""
    source = Path(_train(1, epochs=1)["model_folder"]) / "fold_1" / "checkpoint_final.safetensors"
    torch.manual_seed(0)
    summary = _train(0, epochs=1, pretrained_weights=source)
    warning = (f"warning: {source}: was trained on fold 1 of {DATASET}, whose training cases include fold 0's validation "
               "cases, so fold 0's validation Dice will be optimistic; for an honest cross-validation fine-tune from a "
               "model of another dataset, or from this dataset's fold 0")
    assert summary["pretrained"][-1] == warning
    assert warning in (source.parent.parent / "fold_0" / "training_log.txt").read_text()


@pytest.mark.parametrize("name", ["fold_0", "fold_0/validation"])
def test_a_file_where_training_makes_a_folder_is_refused_before_any_work(results: Path, name: str) -> None:
    """Was: a file named fold_0 or fold_0/validation stopped train with an internal NotADirectoryError naming a file
    inside it (metrics.jsonl, summary.json)."""
    path = results / DATASET / "unet__autosegPlans__3d_fullres" / name
    path.parent.mkdir(parents=True)
    path.write_text("mine")
    with pytest.raises(TrainingError, match=rf"{name}: is a file, where training makes a folder; move or rename that "
                                            r"file, then train again$"):
        _train(0, epochs=1)
    assert path.read_text() == "mine" and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_damaged_latest_beside_a_best_checkpoint_says_continue_resumes_from_the_best(tmp_path: Path) -> None:
    """Was: 'delete it to train the fold from the start', yet with checkpoint_best beside it a fresh start is refused
    and --continue resumes from the best."""
    latest = tmp_path / "checkpoint_latest.safetensors"
    latest.write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoint_best.safetensors").write_bytes(b"")
    with pytest.raises(TrainingError, match=r"checkpoint_latest.safetensors: not a readable safetensors file .*; delete it: "
                                            r"--continue then resumes from the fold's checkpoint_best.safetensors \(the "
                                            r"epochs after it are trained again\)$"):
        load_checkpoint(latest)


def test_a_fold_holding_only_its_best_checkpoint_keeps_the_plan_it_was_trained_with(results: Path) -> None:
    """Was: a fold with only checkpoint_best (which --continue resumes) was not counted as trained, so another fold
    trained after a re-plan replaced the plans.json that fold needs."""
    fold = Path(_train(0, epochs=1)["model_folder"]) / "fold_0"
    (fold / "checkpoint_final.safetensors").unlink()
    (fold / "checkpoint_latest.safetensors").replace(fold / "checkpoint_best.safetensors")
    stored = fold.parent / "plans.json"
    plans = json.loads(stored.read_text())
    plans["configurations"]["3d_fullres"]["spacing"] = [s * 2 for s in plans["configurations"]["3d_fullres"]["spacing"]]
    stored.write_text(json.dumps(plans))  # the plan fold 0 was trained with, before the re-plan
    before = stored.read_bytes()
    with pytest.raises(TrainingError, match=r"plans.json: fold_0 of this model were trained with another plan than "
                                            r".*autosegPlans.json \(spacing \[.*\] \(trained\) vs \[.*\] \(now\); "
                                            r"re-planned with --overwrite\?\)"):
        _train(1, epochs=1)
    assert stored.read_bytes() == before and not (fold.parent / "fold_1").exists()


def test_continue_with_other_network_options_of_the_same_shapes_loads_with_the_warning(results: Path) -> None:
    """Was: --continue of a checkpoint whose network options differ in a value that changes no shape (here one written
    before deep_supervision was put into the options) was refused as 'trained with another plan'; it loads, as the
    state dict fits, and training_config.yaml's changes are warned of as before."""
    fold = Path(_train(0, epochs=1)["model_folder"]) / "fold_0"
    latest = fold / "checkpoint_latest.safetensors"
    checkpoint = load_checkpoint(latest)
    assert checkpoint["metadata"]["network_options"] == {"deep_supervision": True}
    checkpoint["metadata"]["network_options"] = {}
    write_checkpoint(latest, checkpoint)
    summary = _train(0, epochs=2, continue_=True)
    assert summary["epochs"] == 2
    assert "resumed from" in (fold / "training_log.txt").read_text()


def test_continue_resumes_from_the_checkpoint_best_training_wrote(results: Path) -> None:
    """The tests above make a 'best' by renaming latest; here the checkpoint_best a run of 2 epochs wrote itself is
    resumed, at its own epoch, once latest and final are gone."""
    fold = Path(_train(0, epochs=2)["model_folder"]) / "fold_0"
    best = load_checkpoint(fold / "checkpoint_best.safetensors")["trainer_state"]
    for name in ("checkpoint_latest.safetensors", "checkpoint_final.safetensors"):
        (fold / name).unlink()
    summary = _train(0, epochs=3, continue_=True)
    log = (fold / "training_log.txt").read_text()
    assert f"resuming from checkpoint_best.safetensors at epoch {best['epoch']}, so the epochs after it" in log, log
    assert f"resumed from {fold / 'checkpoint_best.safetensors'} at epoch {best['epoch']}, iteration {best['iteration']} of" in log
    assert (summary["epochs"], summary["iterations"]) == (3, 3)


@pytest.mark.parametrize("name, what", [("plans.json", "the model folder's plans.json"),
                                        ("fold_0/validation/summary.json", "the fold's validation/summary.json")])
def test_a_folder_where_training_writes_a_model_or_validation_file_is_refused_before_any_work(
        results: Path, name: str, what: str) -> None:
    """Was: an internal IsADirectoryError, from atomic_write_json once training had started (plans.json) or from the
    fresh start's clearing of the earlier validation (summary.json), after the earlier training_log.txt was set aside."""
    model = results / DATASET / "unet__autosegPlans__3d_fullres"
    (model / name).mkdir(parents=True)
    (model / "fold_0").mkdir(exist_ok=True)
    (model / "fold_0" / "training_log.txt").write_text("earlier run")
    before = sorted(str(p.relative_to(model)) for p in model.rglob("*"))
    with pytest.raises(TrainingError, match=rf"{re.escape(name)}: is a folder, where training writes {what}; move or "
                                            r"rename that folder, then train again$"):
        _train(0, epochs=1)
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*")) == before
    assert (model / "fold_0" / "training_log.txt").read_text() == "earlier run"


def test_a_file_named_as_the_dataset_results_folder_is_refused_before_any_work(results: Path) -> None:
    """Was: an internal NotADirectoryError."""
    results.mkdir()
    (results / DATASET).write_text("mine")
    with pytest.raises(TrainingError, match=rf"{DATASET}: is a file, where training makes a folder; move or rename "
                                            r"that file, then train again$"):
        _train(0, epochs=1)
    assert (results / DATASET).read_text() == "mine"


@pytest.mark.parametrize("kept", ["checkpoint_best.safetensors", "checkpoint_latest.safetensors"])
def test_continue_without_plans_json_refuses_a_checkpoint_of_another_spacing(
    data_roots: dict[str, Path], results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: str
) -> None:
    """Was: a fold holding only checkpoint_best (or latest), with no plans.json beside its model folder to compare,
    continued after a re-plan to another spacing (same patch and network) without a word, on a grid it never saw;
    the checkpoint's prediction_plan records the spacing, and it is refused as the other re-plan checks refuse."""
    fold = Path(_train(0, epochs=1)["model_folder"]) / "fold_0"
    (fold / "checkpoint_final.safetensors").unlink()
    (fold / "checkpoint_latest.safetensors").replace(fold / kept)
    (fold.parent / "plans.json").unlink()
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    plans_file = preprocessed / DATASET / "autosegPlans.json"
    plans = json.loads(plans_file.read_text())
    spacing = plans["configurations"]["3d_fullres"]["spacing"]
    plans["configurations"]["3d_fullres"]["spacing"] = [s * 2 for s in spacing]
    plans_file.write_text(json.dumps(plans))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(preprocessed))
    before = _listing(fold)
    trained, now = json.dumps(spacing), json.dumps([s * 2 for s in spacing])
    with pytest.raises(TrainingError, match=rf"{kept}: was trained with another plan than this run's \(configuration "
                                            rf"3d_fullres: spacing {re.escape(trained)} \(trained\) vs {re.escape(now)} \(now\)\): "
                                            r"the fold comes from another results root or the model was re-planned; "
                                            r".*or delete the fold folder to start over$"):
        _train(0, epochs=2, continue_=True)
    assert _listing(fold) == before and not (fold.parent / "plans.json").exists()
