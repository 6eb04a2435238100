"""A short budgeted schedule's training settings: the planner writes them into the plan (3D, the
family's measured settings, at most SHORT_SCHEDULE_MAX_ITERATIONS at the recipe speed, so a faster or
noisier measurement does not change them), training applies them under ``--set``, and a hand-edited
plan is checked like a ``--set``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autoseg.errors import TrainingError
from autoseg.networks import get_network_spec
from autoseg.planning import constants as C
from autoseg.planning import short_schedule
from autoseg.planning.memory import MemoryModel
from autoseg.planning.short_schedule import short_schedule_training
from autoseg.planning.transfer import transfer_plans
from autoseg.training.config import resolve_config, resolve_training_config
from autoseg.training.model_setup import OPTIMIZERS, build_optimizer
from preprocessing_helpers import make_configuration
from test_planning import DATA_2D, MRI_SMALL, plan

pytestmark = pytest.mark.usefixtures("memoized_gflop")

ADAMW = {"optimizer": {"name": "adamw", "lr": 1.0e-3}}


def _short_plan(**kw):
    plans = plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=600.0, **kw)
    return plans, plans["configurations"]["3d_fullres"]


def test_a_short_budgeted_3d_unet_plan_trains_with_adamw_and_says_why():
    plans, full = _short_plan()
    assert full["recipe_iterations"] <= C.SHORT_SCHEDULE_MAX_ITERATIONS
    assert full["training"] == ADAMW
    [note] = [n for n in plans["notes"] if "trains with" in n]
    assert note.startswith("3d_fullres: trains with optimizer.name=adamw, optimizer.lr=0.001: ")
    assert (f"{full['recipe_iterations']} iterations at the recipe speed ({full['num_iterations']} planned at this "
            "machine's)") in note and "--set optimizer.name=sgd" in note


@pytest.mark.parametrize("case", ["no budget", "long budget", "2d", "another family"])
def test_long_unbudgeted_2d_and_unmeasured_plans_keep_nnunets_sgd(case):
    if case == "no budget":
        plans = plan(MRI_SMALL, configs=["3d_fullres"])
    elif case == "long budget":
        plans = plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=1e9)
        assert plans["configurations"]["3d_fullres"]["recipe_iterations"] > C.SHORT_SCHEDULE_MAX_ITERATIONS
    elif case == "2d":
        plans = plan(DATA_2D, configs=["2d"], budget_seconds=600.0)
        assert plans["configurations"]["2d"]["recipe_iterations"] <= C.SHORT_SCHEDULE_MAX_ITERATIONS
    else:
        plans = plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=600.0, network="resenc")
    [config] = plans["configurations"].values()
    assert config["training"] == {}
    assert not any("trains with" in n for n in plans["notes"])


def test_the_limit_counts_the_recipe_speeds_iterations_inclusively():
    limit = C.SHORT_SCHEDULE_MAX_ITERATIONS
    config = {"spatial_dims": 3, "network": {"name": "unet"}, "recipe_iterations": limit, "num_iterations": 10 * limit}
    assert short_schedule_training(config, 600.0) == ADAMW  # however many this machine trains
    assert short_schedule_training({**config, "recipe_iterations": limit + 1, "num_iterations": 1}, 600.0) == {}
    assert short_schedule_training(config, None) == {}
    assert get_network_spec("unet").short_schedule_training == ADAMW  # the measured setting, not a copy of it


def test_training_applies_the_plans_settings_under_the_users_overrides():
    plan_config = make_configuration([1.0, 1.0, 1.0], patch_size=(16, 16, 16))
    plan_config["training"] = copy.deepcopy(ADAMW)
    config = resolve_training_config("unet", [], plan_config)
    assert config["optimizer"]["name"] == "adamw" and config["optimizer"]["lr"] == 0.001
    assert config["optimizer"]["weight_decay"] == 3.0e-5  # the rest of the section keeps the defaults
    nnunet = resolve_training_config("unet", ["optimizer.name=sgd", "optimizer.lr=0.01"], plan_config)
    assert nnunet["optimizer"]["name"] == "sgd" and nnunet["optimizer"]["lr"] == 0.01
    # chosen for the plan's family: another family trains with its own defaults
    assert resolve_training_config("resenc", [], plan_config)["optimizer"]["name"] == "sgd"
    # a plan written before these settings existed trains as before
    del plan_config["training"]
    assert resolve_training_config("unet", [], plan_config)["optimizer"] == resolve_config("unet")["optimizer"]


@pytest.mark.parametrize("training, message", [
    ({"optimizer": {"name": "sgdd"}}, r"^the plans file: its 'training' settings are refused: optimizer.name='sgdd': choose sgd, adam or adamw"),
    ({"optimizer": {"lr": -1}}, r"^the plans file: its 'training' settings are refused: optimizer.lr=-1(\.0)?: "),
    ({"optimiser": {"lr": 0.1}}, r"^the plans file: its 'training' settings are refused: .*unknown configuration key 'optimiser.lr'"),
    (["adamw"], r"^the plans file: its 'training' settings must be a mapping of setting to value, got list"),
])
def test_a_hand_edited_plan_setting_is_refused_like_a_set(training, message):
    with pytest.raises(TrainingError, match=message) as refused:
        resolve_config("unet", planned=training)
    assert "--set" not in str(refused.value)  # the user typed no --set: the plans file is the source


def test_a_refused_plan_setting_names_the_plans_file_training_reads():
    plan_config = make_configuration([1.0, 1.0, 1.0], patch_size=(16, 16, 16))
    plan_config["training"] = {"optimizer": {"name": "sgdd"}}
    with pytest.raises(TrainingError, match=r"^/p/plans\.json: its 'training' settings are refused: optimizer.name="):
        resolve_training_config("unet", [], plan_config, "/p/plans.json")


def test_a_transferred_plan_takes_the_settings_of_the_source_family():
    target, _ = _short_plan()
    source, _ = _short_plan(network="resenc")
    transferred = transfer_plans(target, source, "source.json")
    assert transferred["configurations"]["3d_fullres"]["network"]["name"] == "resenc"
    assert transferred["configurations"]["3d_fullres"]["training"] == {}
    assert not any("trains with" in n for n in transferred["notes"])
    back = transfer_plans(source, target, "target.json")  # resenc target, unet source
    assert back["configurations"]["3d_fullres"]["training"] == ADAMW
    assert sum("trains with" in n for n in back["notes"]) == 1


def test_a_transfer_refits_the_recipe_speeds_count_at_the_sources_recipe_step():
    """The source network's recipe step over the target's budget, as its measured step gives the
    iterations; a source planned before the recipe step was stored counts at its measured step."""
    target, _ = _short_plan()
    source, _ = _short_plan()
    donor = source["configurations"]["3d_fullres"]
    donor["recipe_seconds_per_iteration"] = 2 * donor["predicted_seconds_per_iteration"]
    moved = transfer_plans(target, source, "source.json")["configurations"]["3d_fullres"]
    assert moved["recipe_seconds_per_iteration"] == donor["recipe_seconds_per_iteration"]
    assert moved["recipe_iterations"] == pytest.approx(moved["num_iterations"] / 2, rel=0.05)
    del donor["recipe_seconds_per_iteration"]
    old = transfer_plans(target, source, "source.json")["configurations"]["3d_fullres"]
    assert old["recipe_seconds_per_iteration"] == old["predicted_seconds_per_iteration"]
    epochs = old["num_iterations"] // old["iterations_per_epoch"]
    assert 0 <= old["recipe_iterations"] - old["num_iterations"] < epochs  # whole epochs round the schedule down


def test_the_plan_counts_the_memory_of_its_optimizer():
    _, adamw = _short_plan()
    sgd = plan(MRI_SMALL, configs=["3d_fullres"], budget_seconds=600.0, network="resenc")["configurations"]["3d_fullres"]
    model = adamw["memory_model"]
    assert model["optimizer_buffers"] == 2 and sgd["memory_model"]["optimizer_buffers"] == 1
    # weights + gradients + Adam's two moments, by hand
    activations = model["activation_intercept"] + model["activation_per_voxel"] * np.prod(adamw["patch_size"])
    assert adamw["predicted_memory_bytes"] == round(4 * model["parameter_bytes"] + adamw["batch_size"] * activations)


def test_settings_whose_optimizer_state_does_not_fit_are_left_out():
    _, full = _short_plan()
    configuration = copy.deepcopy(full)
    sgd_bytes = MemoryModel(**full["memory_model"]).for_optimizer("sgd").predict(full["patch_size"], full["batch_size"])
    configuration["planned_for"]["memory_bytes_usable"] = sgd_bytes  # the plan's SGD step fits exactly, AdamW's not
    notes = short_schedule.apply({"3d_fullres": configuration}, 600.0)
    assert configuration["training"] == {} and configuration["predicted_memory_bytes"] == sgd_bytes
    assert configuration["memory_model"]["optimizer_buffers"] == 1
    assert notes == [f"3d_fullres: keeps nnU-Net's SGD although its schedule is short: adamw's state would take the step "
                     f"to {(sgd_bytes + full['memory_model']['parameter_bytes']) / 2**30:.2f} GiB, over the "
                     f"{sgd_bytes / 2**30:.2f} GiB usable"]


def test_optimizer_buffers_match_what_torch_keeps():
    """The memory model's count per optimizer is the state torch's optimizers hold after a step."""
    assert set(C.OPTIMIZER_BUFFERS_PER_PARAMETER) == set(OPTIMIZERS)
    for name in OPTIMIZERS:
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = build_optimizer([weight], resolve_config("unet", [f"optimizer.name={name}"])["optimizer"])
        weight.sum().backward()
        optimizer.step()
        buffers = [v for v in optimizer.state[weight].values() if torch.is_tensor(v) and v.shape == weight.shape]
        assert len(buffers) == C.OPTIMIZER_BUFFERS_PER_PARAMETER[name], name
