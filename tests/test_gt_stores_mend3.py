"""gt_segmentations/ is shared by every plans name of a dataset: a run of one plans file failing a case must keep
the case's reference while a store of another plans file still holds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autoseg.dataset.cases import Case
from autoseg.preprocessing.runner import GT_FOLDER, PreprocessReport, copy_ground_truths, stored_in_any
from autoseg.preprocessing.store import save_case

def _dataset(tmp_path: Path) -> Path:
    """A dataset's preprocessed folder whose store of plans autosegPlans holds case x, x's reference copied."""
    preprocessed = tmp_path / "Dataset001_X"
    save_case(preprocessed / "autosegPlans_3d_fullres", "x", np.zeros((1, 2, 2, 2), np.float32),
              np.zeros((1, 2, 2, 2), np.int16), {"shape": [2, 2, 2]})
    (preprocessed / GT_FOLDER).mkdir()
    (preprocessed / GT_FOLDER / "x.nii.gz").write_bytes(b"x's reference")
    return preprocessed


def test_a_case_stored_by_another_plans_file_is_stored(tmp_path: Path) -> None:
    preprocessed = _dataset(tmp_path)
    assert stored_in_any(preprocessed, "x")
    assert not stored_in_any(preprocessed, "y")


def test_failing_a_case_keeps_its_reference_while_another_plans_store_holds_it(tmp_path: Path) -> None:
    """Was: the run of OtherPlans failed x, found it in none of its own stores and deleted x's reference, though
    autosegPlans' store still held x and its evaluation then lost the case."""
    preprocessed = _dataset(tmp_path)
    label = tmp_path / "x_label.nii.gz"
    label.write_bytes(b"x's new label")
    report = PreprocessReport("Dataset001_X", "OtherPlans", [])
    copy_ground_truths(report, preprocessed / GT_FOLDER, [Case("x", [], label)], ".nii.gz", {"x"},
                       lambda case_id: stored_in_any(preprocessed, case_id))
    assert report.gt_dropped == [] and report.gt_failed == ["x"]
    assert (preprocessed / GT_FOLDER / "x.nii.gz").read_bytes() == b"x's reference"
