"""The demo shows the fingerprint's warnings, as autoseg plan does (ac368fd)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def test_demo_prints_the_fingerprint_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo fingerprinted without ``warn``: a case stored in another axis order was not mentioned."""
    import SimpleITK as sitk

    import autoseg.planning.planner
    from autoseg.demo import EXAMPLE_DATASET, run_demo

    dataset = tmp_path / "Dataset904_HippocampusMini"
    shutil.copytree(EXAMPLE_DATASET, dataset)
    for path in [*(dataset / "imagesTr").iterdir(), *(dataset / "labelsTr").iterdir()]:
        odd = path.name.startswith("hippocampus_006")
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        image = sitk.GetImageFromArray(array.transpose(2, 1, 0).copy() if odd else array)
        image.SetSpacing((3.0, 1.0, 1.0) if odd else (1.0, 1.0, 3.0))  # x, y, z: array spacing (1, 1, 3) or (3, 1, 1)
        sitk.WriteImage(image, str(path))

    class Stop(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(autoseg.planning.planner, "plan_dataset", stop)
    said: list[str] = []
    with pytest.raises(Stop):
        run_demo(tmp_path / "demo", 600.0, dataset=dataset, say=said.append)
    warnings = [line for line in said if line.startswith("WARNING")]
    assert len(warnings) == 1, said
    assert "hippocampus_006" in warnings[0] and "another array axis" in warnings[0], warnings
