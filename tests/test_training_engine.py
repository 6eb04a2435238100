"""The training engine part by part (schedule and run state, pseudo-validation, checkpoints, budget
re-planning, warm-iteration timing), and one fixed-seed run whose losses, learning rates, pseudo-Dice
and weights were recorded before the trainer was split into those parts (issue 18): the refactor
changed no number."""

from __future__ import annotations

import math
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
from autoseg.training.pseudo_validation import confusion, dice_from_counts
from autoseg.training.replanning import BudgetReplanner, deadline, validation_passes
from autoseg.training.schedule import TrainingState, learning_rate, planned_total, retarget
from autoseg.training.steps import LabelSpec
from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION, write_checkpoint

from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

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


def test_planned_total_follows_epochs_then_plan_then_config() -> None:
    config = {"use_plan_schedule": True, "num_epochs": 10}
    assert planned_total(config, {"num_iterations": 77}, epochs=3, per_epoch=5) == 15
    assert planned_total(config, {"num_iterations": 77}, epochs=None, per_epoch=5) == 77
    assert planned_total({**config, "use_plan_schedule": False}, {"num_iterations": 77}, None, 5) == 50
    assert planned_total(config, {}, None, 5) == 50


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
    checkpoint = training_checkpoint(setup, {"grad_scaler": {"scale": 1.0}}, state, {"network": "unet", "configuration": "2d"})
    assert checkpoint["metadata"]["format_version"] == CHECKPOINT_FORMAT_VERSION
    write_checkpoint(tmp_path / "c.safetensors", checkpoint)
    fresh, step = _setup(), _Step()
    restored = restore_training_checkpoint(tmp_path / "c.safetensors", fresh, step, "unet", "2d", torch.device("cpu"))
    assert restored == state and step.loaded == {"grad_scaler": {"scale": 1.0}}
    assert torch.equal(fresh.network.weight, setup.network.weight)
    momentum = fresh.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, setup.optimizer.state_dict()["state"][0]["momentum_buffer"])
    with pytest.raises(TrainingError, match=r"was trained as unet/2d, not unet/3d_fullres; use another results folder or drop --continue"):
        restore_training_checkpoint(tmp_path / "c.safetensors", fresh, step, "unet", "3d_fullres", torch.device("cpu"))


# ----------------------------------------------------------------------------------- budget, timing


def test_deadline_and_validation_passes() -> None:
    assert deadline(100.0, None, 0.1) is None
    assert deadline(100.0, 200.0, 0.25) == 250.0
    assert validation_passes([0, 1, 2], {}) == 8 and validation_passes([0, 1, 2], {"validation_tta": False}) == 1


def test_replanner_fits_the_schedule_before_the_deadline_less_the_validation_reserve(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("autoseg.training.replanning.time.monotonic", lambda: now[0])
    measured: list[int] = []
    logs: list[str] = []
    replanner = BudgetReplanner(deadline=1100.0, reserve_inputs=([4, 1], [0.5, 0.5]), passes=2,
                                tile_seconds=lambda: measured.append(1) or 1.0, config=POLY,
                                context=DistributedContext(), log=logs.append)
    state = TrainingState(total_iterations=1000, iteration=10)
    replanner.replan(state, seconds_per_iteration=0.5)
    # reserve: 5 tiles x 2 passes x 1 s + 1 s export = 11 s; (100 - 11) / 0.5 = 178 more iterations
    assert replanner.validation_estimate == 11.0 and state.total_iterations == 10 + 178
    assert state.lr_anchor == PolyAnchor(10, poly_lr(1.0, 10, 1000, 0.9))
    assert "schedule set to 188 iterations (was 1000)" in logs[0]
    replanner.replan(state, seconds_per_iteration=0.5)
    assert measured == [1] and len(logs) == 1  # the tile is timed once; an unchanged total is not logged


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
    timer.new_epoch()
    assert timer.seconds_per_iteration(5) is None
    timer.before_iteration(5)  # later epochs are timed from their first iteration
    now[0] += 2.0
    assert timer.seconds_per_iteration(6) == 2.0
