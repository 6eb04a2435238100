"""The store check and the ground-truth copy beside other runs: a case really missing its marker is still named as
damaged, and a run failing a case keeps the reference another run copies meanwhile. (A case being stored again while
train checks it: tests/test_store_wait_mend3.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import PreprocessingError
from autoseg.preprocessing.store import case_paths, check_stored, save_case
from autoseg.utils.atomic import LOCK_FILE, lock_key

def _waiting_on(folder: Path) -> bool:
    """Whether a process waits for a lock of ``folder`` (``/proc/locks`` lists blocked requests with '->')."""
    where = lock_key(folder / LOCK_FILE)
    return any("->" in line and where in line.split() for line in Path("/proc/locks").read_text().splitlines())


def test_a_case_missing_its_marker_is_still_named(tmp_path: Path) -> None:
    store = tmp_path / "store"
    save_case(store, "a", np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 4, 4), np.int16), {"shape": [4, 4, 4]})
    marker = case_paths(store, "a")[2]
    marker.unlink()
    with pytest.raises(PreprocessingError, match=rf"^{marker}: is missing; the preprocessed case is damaged"):
        check_stored(store, "a")


# Run B, storing case x and copying its reference under the ground-truth folder's lock, as copy_ground_truths does.
COPY_REFERENCE = ("import shutil, sys; from autoseg.utils.atomic import folder_lock\n"
                  "with folder_lock(sys.argv[2]):\n    shutil.copyfile(sys.argv[1], sys.argv[2] + '/x.nii.gz')")


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks to see the waiting copy")
def test_a_run_failing_a_case_keeps_the_reference_another_run_copies_meanwhile(tmp_path: Path) -> None:
    """Run A failed case x and found it stored nowhere; run B then stored x and copied its reference, which A went on
    to delete as an orphan: evaluation of B's store lost x's reference. A decides and deletes under the folder's lock,
    so B's copy comes after."""
    from autoseg.dataset.cases import Case
    from autoseg.preprocessing.runner import PreprocessReport, copy_ground_truths

    label, gt = tmp_path / "x_label.nii.gz", tmp_path / "gt_segmentations"
    label.write_bytes(b"x's label")
    gt.mkdir()
    (gt / "x.nii.gz").write_bytes(b"an earlier copy")
    copying: list[subprocess.Popen[str]] = []

    def still_stored(case_id: str) -> bool:  # A's check: x is stored nowhere yet; B starts storing and copying
        copying.append(subprocess.Popen([sys.executable, "-c", COPY_REFERENCE, str(label), str(gt)], text=True))
        while copying[0].poll() is None and not _waiting_on(gt):  # until B has copied or waits for the lock
            time.sleep(0.01)
        return False

    report = PreprocessReport("D", "P", [])
    copy_ground_truths(report, gt, [Case("x", [], label)], ".nii.gz", {"x"}, still_stored)
    assert copying[0].wait() == 0 and report.gt_dropped == ["x.nii.gz"]
    assert (gt / "x.nii.gz").read_bytes() == b"x's label"  # B's reference, copied after A's deletion
