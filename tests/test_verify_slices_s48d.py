"""A case of one slice (one voxel along an axis) in a 3D dataset passed verify without a word; it is one warning
naming the cases (a few, then a count), their size and what it means. Not an error: nnU-Net accepts such cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset import verify

from conftest import PLAIN_CASE, UINT8_IMAGE_CASE

runner = CliRunner()


def _cut(dataset: Path, case: str, region: tuple[slice, slice, slice]) -> None:
    """Keep ``region`` (x, y, z, as SimpleITK slices) of the case's image and label."""
    for path in (dataset / "imagesTr" / f"{case}_0000.nii.gz", dataset / "labelsTr" / f"{case}.nii.gz"):
        sitk.WriteImage(sitk.ReadImage(str(path))[region], str(path))


def _warnings(dataset: Path) -> list[str]:
    result = runner.invoke(app, ["verify", str(dataset), "-np", "1"])
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line.startswith("WARNING")]


def test_a_single_slice_case_is_one_warning(small_dataset: Path) -> None:
    _cut(small_dataset, PLAIN_CASE, (slice(None), slice(None), slice(10, 11)))
    size = sitk.ReadImage(str(small_dataset / "labelsTr" / f"{PLAIN_CASE}.nii.gz")).GetSize()
    assert size[2] == 1 and min(size[:2]) > 1
    assert _warnings(small_dataset) == [
        f"WARNING 1 case(s) are one voxel thick along an axis in a 3D dataset: {PLAIN_CASE} (size {size}); a 3D model "
        "sees no context along that axis in them (nnU-Net accepts them): if the dataset is of such slices, the 2d "
        "configuration may suit it, else check those files' export or crop"]


def test_many_single_slice_cases_are_one_line_naming_a_few(small_dataset: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "SHOWN_SLICE_CASES", 1)
    _cut(small_dataset, PLAIN_CASE, (slice(None), slice(3, 4), slice(None)))
    _cut(small_dataset, UINT8_IMAGE_CASE, (slice(None), slice(None), slice(0, 1)))
    (warning,) = _warnings(small_dataset)
    shown = sitk.ReadImage(str(small_dataset / "labelsTr" / f"{UINT8_IMAGE_CASE}.nii.gz")).GetSize()
    assert warning.startswith(f"WARNING 2 case(s) are one voxel thick along an axis in a 3D dataset: {UINT8_IMAGE_CASE} "
                              f"(size {shown}) and 1 more; a 3D model sees no context")


def test_a_dataset_of_volumes_gets_no_such_warning(small_dataset: Path) -> None:
    assert not [line for line in _warnings(small_dataset) if "one voxel thick" in line]
