"""Training on another device than the plan's: the decision, with fake device memory."""

from __future__ import annotations

import copy

import pytest

from autoseg.errors import TrainingError
from autoseg.planning import constants as C
from autoseg.planning import memory
from autoseg.training.plan_device import check_plan_device, modelled_memory

GIB = 2**30
PATCH = [10, 256, 224]
# By hand: weights + gradients + momentum = 3 x 256 MiB = 0.75 GiB; one sample of PATCH = 1 GiB.
MODEL = {"parameter_bytes": 2**28, "activation_intercept": 0.0, "activation_per_voxel": GIB / (10 * 256 * 224)}


def plans_for(device: str = "cuda", gpu_memory_gb: float | None = 8.0, batch: int = 5) -> dict:
    record = {"device": device, "device_name": None, "gpu_memory_gb": gpu_memory_gb,
              "memory_bytes_usable": int((gpu_memory_gb or 0) * GIB * 0.8), "timed_on_device": False}
    return {
        "dataset_name": "Dataset027_ACDC", "plans_name": "autosegPlans", "budget": dict(record, seconds=None),
        "configurations": {"3d_fullres": {
            "patch_size": PATCH, "batch_size": batch, "memory_model": MODEL, "planned_for": record,
            "predicted_memory_bytes": int(0.75 * GIB + batch * GIB),
        }},
    }


def check(plans: dict, device: str, memory_gib: float | None, batch: int = 5, patch=PATCH, processes: int = 1) -> list[str]:
    memory = None if memory_gib is None else int(memory_gib * GIB)
    return check_plan_device(plans, "3d_fullres", device, memory, patch, batch, processes)


def test_modelled_memory_follows_the_plans_model():
    plan = plans_for()["configurations"]["3d_fullres"]
    assert modelled_memory(plan, PATCH, 5) == int(5.75 * GIB)
    assert modelled_memory(plan, [10, 128, 224], 2) == int(1.75 * GIB)  # half the voxels, batch 2
    assert modelled_memory(plan, PATCH, 5, "adamw") == int(6.0 * GIB)  # Adam's second moment: one more 256 MiB


def test_same_gpu_as_planned_says_nothing():
    assert check(plans_for(), "cuda", 8.0) == []


def test_refuses_with_the_fix_when_the_plan_cannot_fit():
    # 5.75 GiB needed on a 4 GiB GPU; 80% of 4 GiB leaves (3.2 - 0.75) // 1 = 2 samples
    with pytest.raises(TrainingError) as info:
        check(plans_for(), "cuda", 4.0)
    message = str(info.value)
    assert "needs about 5.8 GiB (modelled), more than this GPU's 4.0 GiB" in message
    assert "autoseg plan Dataset027_ACDC --gpu-memory 4 --plans-name autosegPlans_new" in message
    assert "--set batch_size=2" in message


def test_the_runs_optimizer_counts():
    """AdamW keeps a second buffer per parameter: 6.0 GiB where SGD needs 5.75, over a 5.9 GiB GPU;
    80% of it leaves (4.72 - 1.0) // 1 = 3 samples."""
    check_plan_device(plans_for(), "3d_fullres", "cuda", int(5.9 * GIB), PATCH, 5)  # SGD: fits (with a warning)
    with pytest.raises(TrainingError, match=r"needs about 6\.0 GiB \(modelled\), more than this GPU's 5\.9 GiB.*--set batch_size=3"):
        check_plan_device(plans_for(), "3d_fullres", "cuda", int(5.9 * GIB), PATCH, 5, optimizer="adamw")


def test_the_suggested_batch_then_fits():
    assert check(plans_for(), "cuda", 4.0, batch=2) == []


def test_batch_suggestion_counts_every_process():
    with pytest.raises(TrainingError, match="--set batch_size=4"):
        check(plans_for(), "cuda", 4.0, batch=5, processes=2)


def test_no_sample_fits_asks_for_a_smaller_patch():
    with pytest.raises(TrainingError, match=r"smaller --set patch_size=\[\.\.\.\]"):
        check(plans_for(), "cuda", 1.0)


def test_tight_fit_warns_it_may_run_out():
    # 5.75 GiB of 6.5 GiB: fits, but above the 80% plans leave free
    assert 5.75 > C.GPU_MEMORY_USABLE_FRACTION * 6.5
    (warning,) = check(plans_for(), "cuda", 6.5)
    assert "may run out of memory" in warning and "--set batch_size=4" in warning


def test_larger_gpu_than_planned_warns_and_names_the_re_plan():
    (warning,) = check(plans_for(), "cuda", 80.0)
    assert "planned for a smaller GPU (8 GB; this one has 80 GiB)" in warning
    assert "uses about 7% of it" in warning and "--gpu-memory 80" in warning
    assert check(plans_for(), "cuda", 9.5) == []  # within 25%: a nominal difference, not a smaller GPU


def test_gpu_plan_on_the_cpu_warns_and_points_to_budget():
    (warning,) = check(plans_for(), "cpu", None)
    assert "planned for a GPU (8 GB) and will be slow on the CPU" in warning
    assert "autoseg plan Dataset027_ACDC --budget 12h --plans-name autosegPlans_new" in warning


def test_cpu_plan_on_a_gpu_warns():
    (warning,) = check(plans_for("cpu", None, batch=2), "cuda", 8.0, batch=2)
    assert "planned for the CPU" in warning


def test_another_network_than_planned_is_not_memory_checked():
    plans = plans_for()
    plans["configurations"]["3d_fullres"]["network"] = {"name": "unet"}
    with pytest.raises(TrainingError):
        check_plan_device(plans, "3d_fullres", "cuda", 4 * GIB, PATCH, 5, network="unet")
    assert check_plan_device(plans, "3d_fullres", "cuda", 4 * GIB, PATCH, 5, network="segresnet") == []


def test_a_cpu_step_beyond_the_machine_s_ram_is_refused_with_the_fix(monkeypatch):
    """--set patch_size=[512,512,512] on the CPU (177 GiB modelled on a 23.5 GiB machine) ran into the
    kernel's out-of-memory killer without a word, or under a memory limit into an internal error. By hand,
    on 8 GiB: batch 5 needs 5.75 GiB, batch 8 8.75; 25% of the RAM leaves (2 - 0.75) // 1 = 1 sample."""
    monkeypatch.setattr(memory, "machine_ram_bytes", lambda: 8 * GIB)
    assert check(plans_for("cpu", None), "cpu", None) == []
    with pytest.raises(TrainingError) as info:
        check(plans_for("cpu", None), "cpu", None, batch=8)
    assert ("3d_fullres at patch [10, 256, 224], batch 8 needs about 8.8 GiB (modelled), more than this machine's "
            "8.0 GiB of RAM; train with --set batch_size=1, or plan for this machine with `autoseg plan "
            "Dataset027_ACDC --budget 12h --plans-name autosegPlans_new`") == str(info.value)
    # two processes of batch 4 need 2 x 4.75 GiB; 1 GiB each leaves no sample: a smaller patch
    with pytest.raises(TrainingError, match=r"in each of 2 processes, more than .* a smaller --set patch_size"):
        check(plans_for("cpu", None), "cpu", None, batch=4, processes=2)


def test_unknown_device_memory_checks_only_the_kind():
    assert check(plans_for(), "mps", None) == []


def test_plans_without_the_record_fall_back_to_the_budget_and_prediction():
    old = copy.deepcopy(plans_for())
    config = old["configurations"]["3d_fullres"]
    del config["planned_for"], config["memory_model"]
    with pytest.raises(TrainingError, match="needs about 5.8 GiB"):
        check(old, "cuda", 4.0)
    # an override the old plan has no model for cannot be checked: no refusal
    assert check(old, "cuda", 4.0, batch=2) == []
