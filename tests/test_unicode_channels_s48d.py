"""Two channel files of one case named in different Unicode forms (``café_0000`` with é one character, ``café_0001``
with e and a combining accent) were reported as two cases each missing a channel, naming files that were there; they
are now one problem naming both files, their forms and the rename."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from autoseg.dataset.cases import scan_images, scan_training_cases
from autoseg.dataset.description import load_description

DESCRIPTION = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1}, "numTraining": 2,
               "file_ending": ".nii.gz"}
COMPOSED, DECOMPOSED = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def _dataset(folder: Path, names: dict[str, list[str]]) -> Path:
    (folder / "dataset.json").write_text(json.dumps(DESCRIPTION))
    for subfolder, files in names.items():
        (folder / subfolder).mkdir()
        for name in files:
            (folder / subfolder / name).write_bytes(b"")
    return folder


def _problem(folder: Path) -> str:
    first, second = sorted([f"{COMPOSED}_0000.nii.gz", f"{DECOMPOSED}_0001.nii.gz"])
    forms = {f"{COMPOSED}_0000.nii.gz": "composed (NFC)", f"{DECOMPOSED}_0001.nii.gz": "decomposed (NFD)"}
    return (f"{folder / first}: the channel files of one case spell its case id in different Unicode forms ({first} "
            f"{forms[first]}, {second} {forms[second]}: alike on screen, other names on disk), so they were read as "
            "separate cases each missing channels; rename them so all use the same (composed, NFC) characters")


def test_channels_of_one_case_in_two_unicode_forms_are_one_problem(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, {"imagesTr": [f"{COMPOSED}_0000.nii.gz", f"{DECOMPOSED}_0001.nii.gz", "b_0000.nii.gz",
                                               "b_0001.nii.gz"],
                                  "labelsTr": [f"{COMPOSED}.nii.gz", "b.nii.gz"]})
    scan = scan_training_cases(dataset, load_description(dataset))
    assert scan.problems == [_problem(dataset / "imagesTr")]  # no missing channel, no label without images
    assert [case.case_id for case in scan.cases] == ["b"]
    assert scan.num_declared_cases == 2  # numTraining 2 is right: café counted once


def test_test_images_in_two_unicode_forms_are_one_problem(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path, {"imagesTs": [f"{COMPOSED}_0000.nii.gz", f"{DECOMPOSED}_0001.nii.gz"]})
    scan = scan_images(dataset / "imagesTs", load_description(dataset))
    assert scan.problems == [_problem(dataset / "imagesTs")] and scan.cases == []


def test_one_channel_in_both_forms_is_named_as_copies(tmp_path: Path) -> None:
    """Both spellings of one channel: renaming one onto the other would overwrite it on most file systems."""
    names = [f"{COMPOSED}_0000.nii.gz", f"{COMPOSED}_0001.nii.gz", f"{DECOMPOSED}_0000.nii.gz"]
    dataset = _dataset(tmp_path, {"imagesTs": names})
    (problem,) = scan_images(dataset / "imagesTs", load_description(dataset)).problems
    assert problem.endswith("so they were read as separate cases with a channel given twice; keep one file "
                            "per channel, named in the composed (NFC) form")
    assert all(name in problem for name in names)
