"""Plan transfer from a model folder notes what the folder holds no weights for (mend helper M2)."""

from __future__ import annotations

import json
from pathlib import Path

from autoseg.planning.transfer import read_source_plans, transfer_plans
from preprocessing_helpers import make_configuration, make_plans

PATCH = [16, 16, 16]


def cascade_plans() -> dict:
    fullres = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
    lowres = {**make_configuration([2.0, 2.0, 2.0], patch_size=PATCH, data_identifier="autosegPlans_3d_lowres"),
              "next_stage": "3d_cascade_fullres"}
    return make_plans({"3d_fullres": fullres, "3d_lowres": lowres,
                       "3d_cascade_fullres": {**fullres, "previous_stage": "3d_lowres"}})


def model_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "plans.json").write_text(json.dumps(cascade_plans()))
    return folder


def test_a_cascade_model_notes_that_it_holds_no_weights_for_its_previous_stage(tmp_path: Path) -> None:
    """Was: 3d_lowres noted only as 'transferred', though a 3d_cascade_fullres folder holds no weights for it."""
    folder = model_folder(tmp_path, "unet__autosegPlans__3d_cascade_fullres")
    plans = transfer_plans(cascade_plans(), *read_source_plans(folder))
    assert sorted(plans["configurations"]) == ["3d_cascade_fullres", "3d_lowres"]
    source = folder / "plans.json"
    assert plans["notes"][-1] == (
        f"3d_lowres: transferred from {source} only as 3d_cascade_fullres's previous stage: that model holds no "
        "weights for 3d_lowres (its own model, unet__autosegPlans__3d_lowres, does); train 3d_lowres with "
        "--pretrained-weights from that model, or without them")


def test_a_renamed_model_folder_is_noted_as_transferring_every_configuration(tmp_path: Path) -> None:
    """Was: a model folder renamed away from <network>__<plans>__<configuration> transferred every configuration
    of its plans.json without a word, though its weights fit only the one it was trained for."""
    folder = model_folder(tmp_path, "my_best_model")
    plans = transfer_plans(cascade_plans(), *read_source_plans(folder))
    assert sorted(plans["configurations"]) == ["3d_cascade_fullres", "3d_fullres", "3d_lowres"]
    assert plans["notes"][-1] == (
        f"{folder}: its name is not <network>__<plans>__<configuration>, so the configuration its weights are for is "
        "unknown and every configuration of its plans.json that this dataset plans was transferred; only the one it "
        "was trained for fits its weights: give the folder its name back (one of unet__autosegPlans__3d_fullres, "
        "unet__autosegPlans__3d_lowres, unet__autosegPlans__3d_cascade_fullres) or plan that configuration alone (-c)")


def test_a_plans_file_gets_no_model_note(tmp_path: Path) -> None:
    (tmp_path / "autosegPlans.json").write_text(json.dumps(cascade_plans()))
    plans = transfer_plans(cascade_plans(), *read_source_plans(tmp_path / "autosegPlans.json"))
    assert not any("its name is not" in note or "holds no weights" in note for note in plans["notes"])
