"""The demo shows the fingerprint's warnings, as autoseg plan does (ac368fd)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def test_demo_prints_the_fingerprint_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo fingerprinted without ``warn``: a case stored in another axis order was not mentioned."""
    import autoseg.planning.planner
    from autoseg.demo import EXAMPLE_DATASET, run_demo
    from preprocessing_helpers import store_hippocampus_006_in_another_axis_order

    dataset = tmp_path / "Dataset904_HippocampusMini"
    shutil.copytree(EXAMPLE_DATASET, dataset)
    store_hippocampus_006_in_another_axis_order(dataset)

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
