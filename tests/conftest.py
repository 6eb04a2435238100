"""Shared test fixtures: small copies of the real data in ../shared/data (never written to)."""

from __future__ import annotations

import json
import locale
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

# pytest-xdist: one worker per core, the timing tests alone (tests/parallel_runs.py)
from parallel_runs import (  # noqa: F401
    pytest_configure,
    pytest_runtest_protocol,
    pytest_unconfigure,
    pytest_xdist_auto_num_workers,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED_DATA.is_dir():  # CI and developer checkouts keep shared/ beside the repository
    SHARED_DATA = Path(os.environ.get("AUTOSEG_SHARED_DATA", "/work/shared/data"))
HIPPOCAMPUS = SHARED_DATA / "Dataset004_Hippocampus"
EXAMPLE_DATASET = Path(__file__).resolve().parents[1] / "examples" / "Dataset904_HippocampusMini"

# Case ids with known quirks: uint8 image, float32 label, plain float32 image + integer label.
UINT8_IMAGE_CASE = "hippocampus_001"
FLOAT_LABEL_CASE = "hippocampus_003"
PLAIN_CASE = "hippocampus_004"


def make_hippocampus_subset(root: Path, case_ids: list[str], name: str = "Dataset999_Test") -> Path:
    """Copy real cases into ``root/name`` in nnU-Net layout and write a matching dataset.json."""
    dataset = root / name
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    for case in case_ids:
        shutil.copy(HIPPOCAMPUS / "imagesTr" / f"{case}_0000.nii.gz", dataset / "imagesTr")
        shutil.copy(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz", dataset / "labelsTr")
    description = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    description["numTraining"] = len(case_ids)
    (dataset / "dataset.json").write_text(json.dumps(description, indent=2))
    return dataset


DRIVE = SHARED_DATA / "Dataset906_DRIVE"
# 64x64 of the fundus where each of drive_21..drive_26 has 12-32 % vessel pixels.
DRIVE_CROP = (slice(96, 160), slice(352, 416))


def drive_crop(case_id: str, crop: tuple[slice, slice] = DRIVE_CROP) -> tuple[np.ndarray, np.ndarray]:
    """A crop of a real DRIVE case: the RGB image (y, x, 3) uint8 and its 0/1 vessel mask (y, x)."""
    from skimage import io as skio

    image = skio.imread(DRIVE / "imagesTr" / f"{case_id}_0000.png")
    mask = skio.imread(DRIVE / "labelsTr" / f"{case_id}.png")
    return image[crop], mask[crop]


def make_drive_subset(root: Path, case_ids: list[str], name: str = "Dataset996_DriveCrop") -> Path:
    """Crops of real DRIVE cases in nnU-Net's natural-image layout (one RGB ``<case>_0000.png``)."""
    from skimage import io as skio

    dataset = root / name
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    for case in case_ids:
        image, mask = drive_crop(case)
        skio.imsave(dataset / "imagesTr" / f"{case}_0000.png", image, check_contrast=False)
        skio.imsave(dataset / "labelsTr" / f"{case}.png", mask, check_contrast=False)
    description = json.loads((DRIVE / "dataset.json").read_text())
    description["numTraining"] = len(case_ids)
    (dataset / "dataset.json").write_text(json.dumps(description, indent=2))
    return dataset


_GFLOP_COUNTS: dict[str, float] = {}


def memoize_gflop(patch: pytest.MonkeyPatch) -> None:
    """Make ``compute_budget.training_gflop`` remember its counts for the whole test session.

    A count depends only on its arguments, but each is a forward pass under ``FlopCounterMode`` (~1-2 s
    on one core), and every budget search asks for dozens of the same ones again: memoised, the planner
    gets the same numbers without recounting them in every test.
    """
    from autoseg.planning import compute_budget

    count = compute_budget.training_gflop

    def memoized(network_name, topology, in_channels, n_classes, patch_size, batch_size, options=None):
        key = json.dumps([network_name, topology.to_dict(), in_channels, n_classes, list(patch_size), batch_size,
                          options or {}], sort_keys=True)
        if key not in _GFLOP_COUNTS:
            _GFLOP_COUNTS[key] = count(network_name, topology, in_channels, n_classes, patch_size, batch_size, options)
        return _GFLOP_COUNTS[key]

    patch.setattr(compute_budget, "training_gflop", memoized)


def small_timing_probe(patch: pytest.MonkeyPatch) -> None:
    """Time a smaller probe network in ``autoseg plan`` (24^3 / 64^2, 2 measured steps).

    Planning times one probe per configuration, 10-15 s of a 20-25 s pipeline on 2 cores. Tests that
    plan on the way to other checks time the small probe through the same code; the probe at its real
    size is tested by test_planning_memory.py, and for every family by test_network_registry_matrix.py.
    """
    from autoseg.planning import constants

    patch.setattr(constants, "TIMING_PROBE_SIZE", {2: 64, 3: 24})
    patch.setattr(constants, "TIMING_MEASURED_STEPS", 2)


@pytest.fixture(autouse=True)
def _locale_kept() -> Iterator[None]:
    """GDCM's DICOM writer (tests that build series use it) leaves the C locale behind: Python then reads
    and writes text as ASCII, and every later test of the worker that reads a non-ASCII file failed."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    if locale.setlocale(locale.LC_ALL) != saved:
        locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="module")
def memoized_gflop() -> Iterator[None]:
    """Module-scoped, so that module-scoped pipelines (planning through the CLI) see it too."""
    with pytest.MonkeyPatch.context() as patch:
        memoize_gflop(patch)
        yield


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point the three roots at empty temporary folders (and hide nnU-Net's variables)."""
    paths = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    for key, var in (("raw", "AUTOSEG_RAW"), ("preprocessed", "AUTOSEG_PREPROCESSED"), ("results", "AUTOSEG_RESULTS")):
        paths[key].mkdir()
        monkeypatch.setenv(var, str(paths[key]))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    return paths


@pytest.fixture
def small_dataset(roots: dict[str, Path]) -> Path:
    """Four real Hippocampus cases (with the uint8-image and float-label quirks) in the raw root."""
    return make_hippocampus_subset(
        roots["raw"], [UINT8_IMAGE_CASE, FLOAT_LABEL_CASE, PLAIN_CASE, "hippocampus_006"], "Dataset999_Test"
    )
