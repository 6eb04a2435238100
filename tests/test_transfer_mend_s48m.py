"""plan --transfer-plans-from when the -c asked for or the network family decide what the target can plan:
the cascade's full-resolution stage is planned with -c 3d_lowres, and a family that cannot plan what was
asked is told so (R1's reproductions of ec41547)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import autoseg, autoseg_fails
from preprocessing_helpers import make_configuration, make_plans
from test_transfer import PATCH, SOURCE, SOURCE_SPACING, TARGET, one_class_target


def _write_source(folder: Path) -> None:
    """A source plan holding 3d_fullres alone."""
    source = {**make_plans({"3d_fullres": make_configuration(SOURCE_SPACING, patch_size=PATCH, spatial_dims=3)}),
              "dataset_name": SOURCE}
    (folder / "plans.json").write_text(json.dumps(source))


def _reshaped_fingerprint(roots: dict[str, Path], shape_of) -> None:
    """The target's fingerprint with each case's shape after cropping replaced by ``shape_of(shape)``."""
    fingerprint = roots["preprocessed"] / TARGET / "fingerprint.json"
    autoseg("fingerprint", TARGET)
    written = json.loads(fingerprint.read_text())
    written["shapes_after_crop"] = [shape_of(shape) for shape in written["shapes_after_crop"]]
    fingerprint.write_text(json.dumps(written))


@pytest.mark.parametrize("asked", [[], ["-c", "3d_fullres"]])
def test_a_2d_only_family_on_a_3d_dataset_is_told_so(roots: dict[str, Path], tmp_path: Path, asked: list[str]) -> None:
    """Was: 'the target can plan only ; none in common to transfer (plan the target with -c 3d_fullres)'; 2d is
    what swinunet plans on volumes."""
    one_class_target(roots)
    _write_source(tmp_path)
    output = " ".join(autoseg_fails("plan", TARGET, "--device", "cpu", "--network", "swinunet", *asked,
                                    "--transfer-plans-from", tmp_path).split())
    expected = ("configuration(s) 3d_fullres cannot be planned for this 3D dataset with network 'swinunet'; possible: 2d"
                if asked else "plans.json: has configurations 3d_fullres, the target can plan only 2d; none in common")
    assert expected in output


def test_3d_fullres_asked_on_a_2d_dataset_is_told_so(roots: dict[str, Path], tmp_path: Path) -> None:
    """Was: 'the target can plan only ; none in common to transfer'; the plan of a 2D dataset holds 2d only."""
    one_class_target(roots)
    _reshaped_fingerprint(roots, lambda shape: [1, *shape[1:]])
    _write_source(tmp_path)
    output = " ".join(autoseg_fails("plan", TARGET, "--device", "cpu", "-c", "3d_fullres",
                                    "--transfer-plans-from", tmp_path).split())
    assert "configuration(s) 3d_fullres cannot be planned for this 2D dataset with network 'unet'; possible: 2d" in output


def test_lowres_asked_transfers_the_cascades_fullres_stage(roots: dict[str, Path], tmp_path: Path) -> None:
    """-c 3d_lowres plans 3d_fullres too (the cascade's full-resolution stage), which a 3d_fullres source
    shares: was refused before planning as sharing nothing."""
    one_class_target(roots)
    _reshaped_fingerprint(roots, lambda shape: [8 * s for s in shape])  # large volumes: a cascade applies
    autoseg("plan", TARGET, "--gpu-memory", "8", "-c", "3d_fullres", "--plans-name", "Src")
    source = json.loads((roots["preprocessed"] / TARGET / "Src.json").read_text())
    assert list(source["configurations"]) == ["3d_fullres"]
    (tmp_path / "plans.json").write_text(json.dumps(source))
    autoseg("plan", TARGET, "--gpu-memory", "8", "-c", "3d_lowres", "--transfer-plans-from", tmp_path)
    plans = json.loads((roots["preprocessed"] / TARGET / "autosegPlans.json").read_text())
    assert list(plans["configurations"]) == ["3d_fullres"]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == source["configurations"]["3d_fullres"]["patch_size"]
    assert any(note.startswith("3d_lowres: not transferred") for note in plans["notes"])


def test_a_2d_source_transfers_its_2d_to_a_3d_dataset(roots: dict[str, Path], tmp_path: Path) -> None:
    """A 3D dataset plans 2d too: a 2d-only source was refused once the fingerprint was read ('the target can
    plan only 3d_cascade_fullres, 3d_fullres, 3d_lowres'), where it had transferred its 2d."""
    one_class_target(roots)
    autoseg("plan", TARGET, "--gpu-memory", "8", "-c", "2d", "--plans-name", "Src")  # a real 2d-only plan
    source = json.loads((roots["preprocessed"] / TARGET / "Src.json").read_text())
    source["configurations"]["2d"]["patch_size"] = [16, 16]  # the source's own patch, told from the target's
    (tmp_path / "plans.json").write_text(json.dumps(source))
    autoseg("plan", TARGET, "--gpu-memory", "8", "--transfer-plans-from", tmp_path)
    plans = json.loads((roots["preprocessed"] / TARGET / "autosegPlans.json").read_text())
    assert list(plans["configurations"]) == ["2d"]
    assert plans["configurations"]["2d"]["patch_size"] == [16, 16]
