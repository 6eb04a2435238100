"""Plan transfer from a trained model folder takes that model's configuration only (helper D, unseen datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.errors import PlanError
from autoseg.planning.transfer import read_source_plans, transfer_plans
from preprocessing_helpers import make_configuration, make_plans

PATCH = [16, 16, 16]


def two_configurations(patch_2d: list[int]) -> dict:
    return make_plans({"2d": make_configuration([1.0, 1.0, 1.0], patch_size=patch_2d, spatial_dims=2),
                       "3d_fullres": make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)})


def test_a_model_folder_transfers_only_the_configuration_it_holds_weights_for(tmp_path: Path) -> None:
    """Was: a 3d_fullres model folder's plans.json (every configuration of its plans) also transferred its 2d
    plan, noted as 'transferred', and train --pretrained-weights then found no tensor that fits a 2D network."""
    model = tmp_path / "unet__autosegPlans__3d_fullres"
    model.mkdir()
    (model / "plans.json").write_text(json.dumps(two_configurations([16, 16])))
    plans = transfer_plans(two_configurations([24, 24]), *read_source_plans(model))
    assert sorted(plans["configurations"]) == ["3d_fullres"]
    assert plans["notes"][-1] == (f"2d: not transferred: {model / 'plans.json'} has no 2d to start it from; "
                                  "plan it without --transfer-plans-from")
    assert plans["transferred_from"]["configurations"] == ["3d_fullres"]


def test_a_plans_file_still_transfers_every_shared_configuration(tmp_path: Path) -> None:
    (tmp_path / "autosegPlans.json").write_text(json.dumps(two_configurations([16, 16])))
    plans = transfer_plans(two_configurations([24, 24]), *read_source_plans(tmp_path / "autosegPlans.json"))
    assert sorted(plans["configurations"]) == ["2d", "3d_fullres"]
    assert plans["configurations"]["2d"]["patch_size"] == [16, 16]


def test_a_2d_target_and_a_3d_only_source_are_refused_with_advice_that_fits_a_2d_dataset(tmp_path: Path) -> None:
    """Was: '(plan the target with -c 3d_fullres)' only, which a 2D dataset then refused ('cannot be planned for
    this 2D dataset')."""
    model = tmp_path / "unet__autosegPlans__3d_fullres"
    model.mkdir()
    (model / "plans.json").write_text(json.dumps(two_configurations([16, 16])))
    target = make_plans({"2d": make_configuration([1.0, 0.5, 0.5], patch_size=[24, 24], spatial_dims=2)})
    with pytest.raises(PlanError) as refused:
        transfer_plans(target, *read_source_plans(model))
    assert str(refused.value) == (
        f"{model / 'plans.json'}: has configurations 3d_fullres, the target plans 2d; none in common to transfer "
        "(plan the target with -c 3d_fullres if its cases are volumes; a 2D dataset (one slice per case) needs a "
        "source with a 2d configuration)")
