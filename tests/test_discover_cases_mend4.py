"""``-i`` given a folder whose images lie in ``imagesTr``, ``imagesTs`` and ``labelsTr`` subfolders (a dataset folder
without its dataset.json) suggested ``-i .../imagesTr``, the first alphabetically, and offered the label maps of
``labelsTr`` as images; it now suggests ``imagesTs``, the test images, and leaves ``labels*`` out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoseg.dataset.imageio import SUPPORTED_ENDINGS
from autoseg.errors import InferenceError
from autoseg.inference.batch import discover_cases

from conftest import HIPPOCAMPUS

CASE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
LABEL = HIPPOCAMPUS / "labelsTr" / "hippocampus_001.nii.gz"


def _dataset_like(folder: Path, subfolders: tuple[str, ...]) -> Path:
    for name in subfolders:
        (folder / name).mkdir(parents=True)
        shutil.copy(LABEL if name.startswith("labels") else CASE, folder / name / "hippocampus_001_0000.nii.gz")
    return folder


def test_a_folder_above_the_images_suggests_imagesTs_and_no_labels(tmp_path: Path) -> None:
    folder = _dataset_like(tmp_path / "Dataset004_copy", ("imagesTr", "imagesTs", "labelsTr"))
    with pytest.raises(InferenceError) as caught:
        discover_cases(folder)
    assert str(caught.value) == (f"{folder}: no images found in it, but its subfolder(s) imagesTs, imagesTr hold images, "
                                 f"which predict does not look into; give that folder, e.g. -i {folder / 'imagesTs'}")


def test_the_note_beside_cases_suggests_imagesTs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _dataset_like(tmp_path / "in", ("imagesTr", "imagesTs", "labelsTr"))
    shutil.copy(CASE, folder / "top_0000.nii.gz")
    assert [case.case_id for case in discover_cases(folder)] == ["top"]
    assert (f"note: {folder}: skipped subfolder(s) imagesTr, imagesTs, labelsTr: no DICOM files in them (a DICOM series "
            f"is read from a folder of its slice files); imagesTs, imagesTr hold(s) images: predict them with -i "
            f"{folder / 'imagesTs'}") in " ".join(capsys.readouterr().err.split())


def test_a_folder_above_label_maps_only_offers_no_subfolder(tmp_path: Path) -> None:
    folder = _dataset_like(tmp_path / "in", ("labelsTr",))
    with pytest.raises(InferenceError) as caught:
        discover_cases(folder)
    assert str(caught.value) == (f"{folder}: no images found (not images: labelsTr); expected <case>_0000<ending> files "
                                 f"({', '.join(SUPPORTED_ENDINGS)}) or DICOM series folders")
