"""The training engine part by part (schedule and run state, pseudo-validation, checkpoints, budget
re-planning, warm-iteration timing), and one fixed-seed run whose losses, learning rates, pseudo-Dice
and weights were recorded before the trainer was split into those parts (issue 18): the refactor
changed no number."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from autoseg.errors import TrainingError
from autoseg.training import train_fold
from autoseg.training.budget import PolyAnchor, poly_lr
from autoseg.training.checkpoints import load_checkpoint, restore_training_checkpoint, training_checkpoint
from autoseg.training.distributed import DistributedContext
from autoseg.training.model_setup import ModelSetup, build_optimizer
from autoseg.training.monitor import WARMUP_ITERATIONS, WarmTimer
from autoseg.training.pseudo_validation import confusion, dice_from_counts, epoch_batches
from autoseg.training.replanning import BudgetReplanner, deadline, validation_passes
from autoseg.training.schedule import TrainingState, learning_rate, planned_total, retarget
from autoseg.training.steps import LabelSpec
from autoseg.training.validation import MirroringPace
from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION, write_checkpoint

from training_helpers import DATASET, UNMIRRORED, data_roots, results  # noqa: F401 - fixtures

SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
POLY = {"lr_schedule": {"name": "poly", "exponent": 0.9}, "optimizer": SGD}


# ----------------------------------------------------------------------------------- the recorded run


def test_fixed_seed_run_reproduces_the_numbers_recorded_before_the_split(results: Path) -> None:
    overrides = ["iterations_per_epoch=3", "val_iterations_per_epoch=2", "mixed_precision=off"]
    summary = train_fold(DATASET, "3d_fullres", "all", epochs=2, workers=0, deterministic=True, overrides=overrides)
    checkpoint = load_checkpoint(Path(summary["model_folder"]) / "fold_all" / "checkpoint_final.safetensors")
    history = checkpoint["trainer_state"]["history"]
    # Recorded on main before the split (1 thread, this repository's CPU build of torch).
    recorded = [
        (2.3266026973724365, 2.2089226245880127, 0.15778867155179058, 0.006942531626616071),
        (2.1767852306365967, 2.108826994895935, 0.18518732589950182, 0.001993718664752192),
    ]
    for row, (train_loss, val_loss, dice, lr) in zip(history, recorded, strict=True):
        assert row["train_loss"] == pytest.approx(train_loss, rel=1e-5)
        assert row["val_loss"] == pytest.approx(val_loss, rel=1e-5)
        assert row["pseudo_dice"] == pytest.approx(dice, rel=1e-4)
        assert row["learning_rate"] == pytest.approx(lr, rel=1e-12)  # the schedule is exact arithmetic
    weights = sum(float(t.double().abs().sum()) for t in checkpoint["network_weights"].values())
    assert weights == pytest.approx(2124.8538792074714, rel=1e-6)
    state = checkpoint["trainer_state"]
    assert (state["epoch"], state["iteration"], state["total_iterations"], state["lr_anchor"]) == (2, 6, 6, [0, 1.0])
    assert state["best_ema"] == pytest.approx(0.1605285369865617, rel=1e-4)


# ----------------------------------------------------------------------------------- schedule


def test_planned_total_follows_the_plan_then_the_config() -> None:
    config = {"use_plan_schedule": True, "num_epochs": 10}
    assert planned_total(config, {"num_iterations": 77}, per_epoch=5) == 77
    assert planned_total({**config, "use_plan_schedule": False}, {"num_iterations": 77}, 5) == 50
    assert planned_total(config, {}, 5) == 50


def test_learning_rate_stays_continuous_when_the_total_is_retargeted() -> None:
    state = TrainingState(total_iterations=100, iteration=40)
    before = learning_rate(POLY, state)
    assert before == pytest.approx(poly_lr(0.01, 40, 100, 0.9))
    retarget(POLY, state, 60)  # budget says: stop at 60
    assert state.total_iterations == 60 and state.lr_anchor == PolyAnchor(40, before / 0.01)
    assert learning_rate(POLY, state) == pytest.approx(before)  # no jump at the re-anchoring
    state.iteration = 50
    assert learning_rate(POLY, state) == pytest.approx(before * 0.5**0.9)  # half-way down the new span
    state.iteration = 60
    assert learning_rate(POLY, state) == 0.0
    constant = {**POLY, "lr_schedule": {"name": "constant"}}
    assert learning_rate(constant, state) == 0.01
    with pytest.raises(TrainingError, match="--set lr_schedule.name='cosine': choose poly or constant"):
        learning_rate({**POLY, "lr_schedule": {"name": "cosine"}}, state)


def test_training_state_round_trip_ema_and_epoch_end() -> None:
    state = TrainingState(total_iterations=10, iteration=7, epoch=2, lr_anchor=PolyAnchor(4, 0.5))
    assert state.epoch_end(5) == 10  # the last epoch is shorter
    assert state.add_pseudo_dice(0.4, 0.9) and state.ema == 0.4 and state.best_ema == 0.4
    assert not state.add_pseudo_dice(math.nan, 0.9) and state.ema == 0.4  # NaN: nothing seen, EMA kept
    assert not state.add_pseudo_dice(0.3, 0.9) and state.ema == pytest.approx(0.39)
    state.history.append({"epoch": 2})
    assert TrainingState.from_dict(state.to_dict()) == state
    legacy = {k: v for k, v in state.to_dict().items() if k != "lr_anchor"}  # before the continuous schedule
    assert TrainingState.from_dict(legacy).lr_anchor == PolyAnchor()


# ----------------------------------------------------------------------------------- pseudo-validation


def test_confusion_and_dice_by_hand() -> None:
    spec = LabelSpec(3, None, None)
    labels = torch.tensor([0, 1, 1, 2, 2, 0]).view(1, 1, 6, 1, 1)
    predicted = torch.tensor([0, 1, 2, 2, 0, 1])  # class 1: TP 1 FP 1 FN 1; class 2: TP 1 FP 1 FN 1
    logits = torch.nn.functional.one_hot(predicted, 3).T.reshape(1, 3, 6, 1, 1).float()
    counts = confusion(logits, labels, spec)
    assert counts.tolist() == [[1, 1], [1, 1], [1, 1]]
    dice, per_class = dice_from_counts(counts)
    assert per_class == [0.5, 0.5] and dice == 0.5
    # ignore label 2 (the highest): its voxels do not count at all
    ignoring = confusion(torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0, 1]), 2).T.reshape(1, 2, 6, 1, 1).float(),
                         labels, LabelSpec(2, None, 2))
    assert ignoring.tolist() == [[2], [1], [0]]  # voxels 3 and 4 (label 2) dropped, not counted as FP or FN
    dice, per_class = dice_from_counts(torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    assert per_class[0] == pytest.approx(4 / 6) and math.isnan(per_class[1]) and dice == pytest.approx(4 / 6)


def test_a_short_last_epoch_validates_proportionally_fewer_batches() -> None:
    assert epoch_batches(50, 250, 250) == 50  # a full epoch
    assert epoch_batches(50, 45, 250) == 9  # 45 of 250 iterations: ceil(9.0)
    assert epoch_batches(50, 46, 250) == 10  # ceil(9.2)
    assert epoch_batches(50, 1, 250) == 1  # at least one batch
    assert epoch_batches(50, 300, 250) == 50  # never more than configured
    assert epoch_batches(0, 250, 250) == 0  # pseudo-validation off stays off


def test_region_confusion_uses_sigmoid_threshold() -> None:
    spec = LabelSpec(2, [[1, 2], [2]], None)  # regions: foreground (1 or 2), and class 2
    labels = torch.tensor([0, 1, 2, 2]).view(1, 1, 4, 1, 1)
    logits = torch.tensor([[-1.0, 1.0, 1.0, -1.0], [-1.0, 1.0, 1.0, 1.0]]).view(1, 2, 4, 1, 1)
    assert confusion(logits, labels, spec).tolist() == [[2, 2], [0, 1], [1, 0]]


# ----------------------------------------------------------------------------------- checkpoints


def _setup() -> ModelSetup:
    network = torch.nn.Conv3d(1, 2, 3)
    optimizer = build_optimizer(network.parameters(), SGD)
    network(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    optimizer.step()
    return ModelSetup(network, network, optimizer, torch.contiguous_format, None, {}, {})


class _Step:
    def __init__(self) -> None:
        self.loaded: dict | None = None

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def test_training_checkpoint_round_trip(tmp_path: Path) -> None:
    setup, state = _setup(), TrainingState(total_iterations=9, iteration=4, epoch=2, lr_anchor=PolyAnchor(3, 0.7))
    checkpoint = training_checkpoint(setup, {"grad_scaler": {"scale": 1.0}}, state, {"network": "unet", "configuration": "2d", "optimizer": "sgd"})
    assert checkpoint["metadata"]["format_version"] == CHECKPOINT_FORMAT_VERSION
    write_checkpoint(tmp_path / "c.safetensors", checkpoint)
    fresh, step = _setup(), _Step()
    restored = restore_training_checkpoint(tmp_path / "c.safetensors", fresh, step, "unet", "2d", "sgd", torch.device("cpu"))
    assert restored == state and step.loaded == {"grad_scaler": {"scale": 1.0}}
    assert torch.equal(fresh.network.weight, setup.network.weight)
    momentum = fresh.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, setup.optimizer.state_dict()["state"][0]["momentum_buffer"])
    with pytest.raises(TrainingError, match=r"was trained as unet/2d, not unet/3d_fullres; use another results folder or drop --continue"):
        restore_training_checkpoint(tmp_path / "c.safetensors", fresh, step, "unet", "3d_fullres", "sgd", torch.device("cpu"))
    with pytest.raises(TrainingError, match=r"was trained with optimizer.name=sgd, this run sets adam;"):
        restore_training_checkpoint(tmp_path / "c.safetensors", fresh, step, "unet", "2d", "adam", torch.device("cpu"))


def test_another_folds_checkpoint_is_not_resumed(tmp_path: Path) -> None:
    """A checkpoint copied from another fold resumed without a word a model that had trained on this fold's
    validation cases."""
    setup, state = _setup(), TrainingState(total_iterations=9, iteration=4, epoch=2)
    meta = {"network": "unet", "configuration": "2d", "optimizer": "sgd", "fold": "1"}
    write_checkpoint(tmp_path / "c.safetensors", training_checkpoint(setup, {"grad_scaler": None}, state, meta))
    with pytest.raises(TrainingError, match=r"c\.safetensors: is the checkpoint of fold 1, not of fold 0 \(copied from another "
                                            r"fold\?\).*put this fold's own checkpoint back, or delete the fold folder"):
        restore_training_checkpoint(tmp_path / "c.safetensors", _setup(), _Step(), "unet", "2d", "sgd", torch.device("cpu"), "0")
    assert restore_training_checkpoint(tmp_path / "c.safetensors", _setup(), _Step(), "unet", "2d", "sgd",
                                       torch.device("cpu"), "1") == state


def test_a_checkpoint_of_another_plans_is_not_resumed(tmp_path: Path) -> None:
    """A checkpoint copied from unet__otherPlans__2d into this plans' fold was resumed without a word, and the final
    checkpoint then named this run's plans (predict refuses the copied checkpoint itself)."""
    setup, state = _setup(), TrainingState(total_iterations=9, iteration=4, epoch=2)
    meta = {"network": "unet", "configuration": "2d", "optimizer": "sgd", "fold": "0", "plans_name": "otherPlans"}
    write_checkpoint(tmp_path / "c.safetensors", training_checkpoint(setup, {"grad_scaler": None}, state, meta))
    with pytest.raises(TrainingError) as info:
        restore_training_checkpoint(tmp_path / "c.safetensors", _setup(), _Step(), "unet", "2d", "sgd", torch.device("cpu"),
                                    "0", model_name="unet__autosegPlans__2d")
    assert str(info.value) == (
        f"{tmp_path / 'c.safetensors'}: is a checkpoint of unet__otherPlans__2d, but its model folder is "
        "unet__autosegPlans__2d (a fold copied from another model folder, or the folder renamed?); put this model's own "
        "fold back, or use the checkpoint from a unet__otherPlans__2d folder"
    )
    assert restore_training_checkpoint(tmp_path / "c.safetensors", _setup(), _Step(), "unet", "2d", "sgd",
                                       torch.device("cpu"), "0", model_name="unet__otherPlans__2d") == state


def test_a_checkpoint_of_weights_only_is_named_as_such(tmp_path: Path) -> None:
    """An imported model's checkpoint (weights and metadata) put in as checkpoint_latest was refused as an optimiser
    state not fitting the optimizer settings (KeyError: 'optimizer_state'), with the fix to change them."""
    from autoseg.utils.checkpoint_format import network_checkpoint_bytes
    from autoseg.utils.weights_file import weights_from_bytes

    state = TrainingState(total_iterations=9, iteration=4, epoch=2)
    meta = {"network": "unet", "configuration": "2d", "optimizer": "sgd", "fold": "0"}
    full = training_checkpoint(_setup(), {"grad_scaler": None}, state, meta)
    write_checkpoint(tmp_path / "c.safetensors", weights_from_bytes(network_checkpoint_bytes(full), "c", TrainingError))
    with pytest.raises(TrainingError) as info:
        restore_training_checkpoint(tmp_path / "c.safetensors", _setup(), _Step(), "unet", "2d", "sgd", torch.device("cpu"), "0")
    assert str(info.value) == (
        f"{tmp_path / 'c.safetensors'}: holds network weights only, no training state (optimizer_state, rng_state, "
        "trainer_state): the checkpoint of an exported or imported model, which cannot be continued; put the fold's own "
        "checkpoint back, or fine-tune from it in a new fold or results folder (--pretrained-weights, without --continue)"
    )


def test_a_checkpoint_of_another_split_is_not_resumed(tmp_path: Path) -> None:
    """splits_final.json edited after training: --continue validated on cases the fold had trained on."""
    from autoseg.training.checkpoints import split_digest

    setup, state = _setup(), TrainingState(total_iterations=9, iteration=4, epoch=2)
    trained = split_digest(["a", "b", "c"], ["d"])
    assert split_digest(["c", "b", "a"], ["d"]) == trained  # the order of the lists does not matter
    meta = {"network": "unet", "configuration": "2d", "optimizer": "sgd", "fold": "0", "split_sha256": trained}
    write_checkpoint(tmp_path / "c.safetensors", training_checkpoint(setup, {"grad_scaler": None}, state, meta))
    with pytest.raises(TrainingError, match=r"was trained on another split of the cases than the split file now gives fold 0 "
                                            r"\(was splits_final.json edited\?\).*restore the split file, or delete the fold folder"):
        restore_training_checkpoint(tmp_path / "c.safetensors", _setup(), _Step(), "unet", "2d", "sgd", torch.device("cpu"),
                                    "0", split_digest(["a", "b", "d"], ["c"]))
    assert restore_training_checkpoint(tmp_path / "c.safetensors", _setup(), _Step(), "unet", "2d", "sgd",
                                       torch.device("cpu"), "0", trained) == state


def test_a_checkpoint_of_another_topology_names_the_tensor_and_the_fix(tmp_path: Path) -> None:
    """Was: only torch's header line 'Error(s) in loading state_dict for Conv3d:', without the tensor or a fix."""
    setup, state = _setup(), TrainingState(total_iterations=9, iteration=4, epoch=2)
    write_checkpoint(tmp_path / "c.safetensors", training_checkpoint(setup, {"grad_scaler": None}, state, {"network": "unet", "configuration": "2d", "optimizer": "sgd"}))
    network = torch.nn.Conv3d(1, 4, 3)  # the plan's features changed since the fold was trained
    other = ModelSetup(network, network, build_optimizer(network.parameters(), SGD), torch.contiguous_format, None, {}, {})
    with pytest.raises(TrainingError, match=r"does not fit this network \(size mismatch for weight: copying a param with shape "
                                            r"torch.Size\(\[2, 1, 3, 3, 3\]\) from checkpoint, .*\[4, 1, 3, 3, 3\]\)\): the plan's "
                                            r"network .* changed since the fold was trained; .* or delete the fold folder"):
        restore_training_checkpoint(tmp_path / "c.safetensors", other, _Step(), "unet", "2d", "sgd", torch.device("cpu"))


# ----------------------------------------------------------------------------------- budget, timing


def test_deadline_and_validation_passes() -> None:
    assert deadline(100.0, None, 0.1) is None
    assert deadline(100.0, 200.0, 0.25) == 250.0
    assert validation_passes([0, 1, 2], {}) == 8 and validation_passes([0, 1, 2], {"validation_tta": False}) == 1


def _replanner(monkeypatch, timings: list[list[float]], budget_seconds: float = 1000.0, passes: int = 2,
               tiles: list[int] = [4, 1]) -> tuple[BudgetReplanner, list[str], list[float]]:
    """A replanner at monotonic time 1000 with a deadline at 1100; each tile timing returns the next of ``timings``."""
    now = [1000.0]
    monkeypatch.setattr("autoseg.training.replanning.time.monotonic", lambda: now[0])
    logs: list[str] = []
    samples = iter(timings)
    replanner = BudgetReplanner(deadline=1100.0, budget_seconds=budget_seconds, reserve_inputs=(tiles, [0.5, 0.5]),
                                passes=passes, tile_seconds=lambda: next(samples), config=POLY,
                                context=DistributedContext(), log=logs.append)
    return replanner, logs, now


def test_replanner_fits_the_schedule_before_the_deadline_less_the_validation_reserve(monkeypatch) -> None:
    replanner, logs, _ = _replanner(monkeypatch, [[1.0, 1.0, 1.0], [1.0]])
    state = TrainingState(total_iterations=1000, iteration=10)
    replanner.replan(state, seconds_per_iteration=0.5)
    # reserve: 5 tiles x 2 passes x 1 s + 1 s export = 11 s; (100 - 11) / 0.5 = 178 more iterations
    assert replanner.validation_estimate == 11.0 and state.total_iterations == 10 + 178
    assert state.lr_anchor == PolyAnchor(10, poly_lr(1.0, 10, 1000, 0.9))
    assert "schedule set to 188 iterations (was 1000)" in logs[0]
    replanner.replan(state, seconds_per_iteration=0.5)
    assert len(logs) == 1  # an unchanged total is not logged


def test_replanner_times_the_tile_at_every_estimate_and_takes_the_median(monkeypatch) -> None:
    # one fast first timing (as FC-DenseNet's 0.4 s per tile against 0.8 s in its validation) is outvoted
    replanner, _, _ = _replanner(monkeypatch, [[0.5, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0]])
    state = TrainingState(total_iterations=1000, iteration=10)
    replanner.replan(state, seconds_per_iteration=0.5)
    assert replanner.validation_estimate == 5 * 2 * 1.0 + 1.0  # median of 0.5, 1, 1
    replanner.replan(state, seconds_per_iteration=0.5)
    assert replanner.validation_estimate == 5 * 2 * 1.0 + 1.0  # median of 0.5, 1, 1, 1, 1, 1
    replanner.replan(state, seconds_per_iteration=0.5)
    assert replanner.validation_estimate == 5 * 2 * 1.0 + 1.0  # one slow sample does not move it either
    assert replanner.mirroring


def test_replanner_decides_mirroring_from_the_fastest_first_timing(monkeypatch) -> None:
    # 5 tiles x 8 mirrorings: the slowest first timing (2 s: 80 s) would exceed 15% of 300 s, the
    # fastest (1 s: 40 s) does not; the reserve uses the median (1.5 s): 5 x 8 x 1.5 + 1 s export
    replanner, logs, _ = _replanner(monkeypatch, [[2.0, 1.0, 1.5]], budget_seconds=300.0, passes=8)
    replanner.replan(TrainingState(total_iterations=1000, iteration=10), seconds_per_iteration=0.5)
    assert replanner.mirroring and replanner.validation_estimate == 61.0
    assert not any("without mirroring" in line for line in logs)


def test_replanner_drops_mirroring_when_it_exceeds_the_planners_share_of_the_budget(monkeypatch) -> None:
    # 5 tiles x 8 mirrorings x 1 s = 40 s > 15% of 200 s: validated unmirrored, 5 tiles x 1 s + 1 s export
    replanner, logs, _ = _replanner(monkeypatch, [[1.0], [10.0]], budget_seconds=200.0, passes=8)
    state = TrainingState(total_iterations=1000, iteration=10)
    replanner.replan(state, seconds_per_iteration=0.5)
    assert not replanner.mirroring and replanner.validation_estimate == 6.0
    assert "validating without mirroring" in logs[0] and "40 s" in logs[0]
    # within the share (40 s <= 15% of 300 s) mirroring stays, and a later slower timing never flips it
    replanner, logs, _ = _replanner(monkeypatch, [[1.0], [10.0]], budget_seconds=300.0, passes=8)
    replanner.replan(state, seconds_per_iteration=0.5)
    assert replanner.mirroring and replanner.validation_estimate == 41.0
    replanner.replan(state, seconds_per_iteration=0.5)
    assert replanner.mirroring and not any("without mirroring" in line for line in logs)


def test_validation_pace_drops_mirroring_for_the_cases_that_would_end_late(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr("autoseg.training.validation.time.monotonic", lambda: now[0])
    assert all(MirroringPace(None, [1, 1, 1]).mirror(i) for i in range(3))  # no deadline: always
    pace = MirroringPace(35.0, [1, 2, 1, 1])
    assert pace.mirror(0)  # nothing timed yet
    now[0] = 10.0  # 10 s per tile: 3 tiles left end at 40 > 35
    assert pace.mirror(1) is False and pace.dropped_at == 1
    now[0] = 11.0
    assert pace.mirror(2) is False and pace.dropped_at == 1  # once dropped, stays dropped
    pace = MirroringPace(100.0, [1, 2, 1, 1])
    now[0] = 20.0  # started at 11: 9 s per tile, 4 tiles left end at 56 <= 100
    assert pace.mirror(1) and pace.dropped_at is None


def test_a_validation_behind_its_deadline_predicts_the_rest_unmirrored(results: Path, monkeypatch) -> None:
    from autoseg.dataset.description import load_description
    from autoseg.training import validation as validation_module
    from autoseg.training.validation import GT_FOLDER, VALIDATION_FOLDER, validate_fold

    summary = train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=["val_iterations_per_epoch=1"])
    fold = Path(summary["model_folder"]) / "fold_0"
    assert summary["validation"]["mirrored_cases"] == summary["validation"]["num_cases"] >= 2  # no budget: all
    seen: list[bool] = []
    export = validation_module.export_preprocessed
    monkeypatch.setattr(validation_module, "export_preprocessed", lambda *a, **k: seen.append(k["tta"]) or export(*a, **k))
    plans = json.loads((Path(summary["model_folder"]) / "plans.json").read_text())
    preprocessed = Path(os.environ["AUTOSEG_PREPROCESSED"]) / DATASET
    store = preprocessed / plans["configurations"]["3d_fullres"]["data_identifier"]
    cases = [row["case_id"] for row in summary["validation"]["metric_per_case"]]
    description = load_description(Path(os.environ["AUTOSEG_RAW"]) / DATASET)
    again = validate_fold(Path(summary["model_folder"]), "0", store, preprocessed / GT_FOLDER, cases, description, "cpu",
                          deadline=time.monotonic() - 1.0, log=lambda line: None)
    assert seen == [True] + [False] * (len(cases) - 1) and again["mirrored_cases"] == 1
    written = json.loads((fold / VALIDATION_FOLDER / "summary.json").read_text())
    assert written["mirrored_cases"] == 1 and written["num_cases"] == len(cases)


def test_an_extended_fold_validated_without_probabilities_drops_the_older_models(results: Path) -> None:
    """Was: --continue --epochs rewrote the label maps and kept the first run's --save-probabilities files,
    which find-best and ensemble would then average as this fold's though they came from another model."""
    overrides = ["iterations_per_epoch=2", "val_iterations_per_epoch=1", UNMIRRORED]
    first = train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=overrides, save_probabilities=True)
    validation = Path(first["model_folder"]) / "fold_0" / "validation"
    cases = [row["case_id"] for row in first["validation"]["metric_per_case"]]
    assert sorted(p.name for p in validation.glob("*.npz")) == sorted(f"{c}.npz" for c in cases)
    train_fold(DATASET, "3d_fullres", 0, epochs=2, workers=0, overrides=overrides, continue_=True)
    assert not list(validation.glob("*.npz")) and not [p for p in validation.glob("*.json") if p.name != "summary.json"]
    assert all((validation / f"{c}.nii.gz").is_file() for c in cases)


def test_the_budget_probe_ends_early_when_its_iterations_are_slow(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr("autoseg.training.monitor.time.monotonic", lambda: now[0])
    timer = WarmTimer(first_iteration=0)
    timer.new_epoch()
    done = []
    for iteration in range(WARMUP_ITERATIONS + 10):
        timer.before_iteration(iteration)
        now[0] += 12.0  # 12 s per iteration, a 3-minute budget's 5% is 9 s
        done.append(timer.probe_done(iteration + 1, probe_iterations=10, max_seconds=9.0))
    assert done.index(True) == WARMUP_ITERATIONS and done.count(True) == 1  # after the first timed iteration


@pytest.mark.parametrize("slow", [0, 4, 9])
def test_one_paused_iteration_in_the_budget_probe_barely_changes_the_schedule(monkeypatch, slow: int) -> None:
    # The probe's mean over 10 iterations of 0.1 s, one of them 1 s (a garbage collection, another process
    # on the core for a moment), was 0.19 s: the re-plan cut the schedule to about half of what fits.
    from autoseg.training.budget import affordable_total

    now = [0.0]
    monkeypatch.setattr("autoseg.training.monitor.time.monotonic", lambda: now[0])

    def probed_total(paused: int | None) -> int:
        timer = WarmTimer(first_iteration=0)
        timer.new_epoch()
        for iteration in range(WARMUP_ITERATIONS + 10):
            timer.before_iteration(iteration)
            now[0] += 0.1 if iteration - WARMUP_ITERATIONS != paused else 1.0
        assert timer.probe_done(WARMUP_ITERATIONS + 10, probe_iterations=10)
        return affordable_total(WARMUP_ITERATIONS + 10, 300.0, timer.seconds_per_iteration(WARMUP_ITERATIONS + 10))

    assert probed_total(slow) >= 0.97 * probed_total(None)


def test_warm_timer_skips_the_first_iterations_of_a_run(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr("autoseg.training.monitor.time.monotonic", lambda: now[0])
    timer = WarmTimer(first_iteration=0)
    timer.new_epoch()
    for iteration in range(5):
        timer.before_iteration(iteration)
        now[0] += 1.0 if iteration >= WARMUP_ITERATIONS else 10.0  # warm-up iterations are slow
    assert timer.seconds_per_iteration(5) == 1.0 and timer.iterations_per_second(5) == 1.0
    assert timer.probe_done(5, probe_iterations=3) and not timer.probe_done(6, probe_iterations=3)
    assert not timer.probe_done(5, probe_iterations=3)  # true only once
    timer.new_epoch()
    assert timer.seconds_per_iteration(5) is None
    timer.before_iteration(5)  # later epochs are timed from their first iteration
    now[0] += 2.0
    assert timer.seconds_per_iteration(6) == 2.0
