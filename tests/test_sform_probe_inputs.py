"""The ignored-sform probe (``imageio.nifti_sform_ignored``) on inputs predict is given: it must not open what
reading the input refuses by name (a named pipe, an ending ITK does not read as spelled)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset.imageio import nifti_sform_ignored
from test_verify import _shear_sform


def _sheared_nifti(path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(path))
    _shear_sform(path)
    return path


def test_a_sheared_sform_is_found(tmp_path: Path) -> None:
    """The control: the probe does find the sheared sform of a regular, lower-case file."""
    assert nifti_sform_ignored(_sheared_nifti(tmp_path / "case_0000.nii.gz"))


def test_an_ending_itk_does_not_read_as_spelled_is_not_probed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A .Nii.gz made ITK print '** mixed case extension ... is not valid' at each probe; reading it refuses it."""
    odd = _sheared_nifti(tmp_path / "case_0000.nii.gz").rename(tmp_path / "odd_0000.Nii.gz")
    assert not nifti_sform_ignored(odd)
    assert "mixed case" not in capfd.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_not_opened(tmp_path: Path) -> None:
    """A named pipe among predict's inputs: the probe opened it and waited forever for a writer (predict hung where
    it used to refuse the pipe as not a regular file)."""
    pipe = tmp_path / "pipe_0000.nii.gz"
    os.mkfifo(pipe)
    answers: list[bool] = []
    probe = threading.Thread(target=lambda: answers.append(nifti_sform_ignored(pipe)), daemon=True)
    probe.start()
    probe.join(60)
    try:
        assert answers == [False]
    finally:
        if probe.is_alive():  # release the blocked open so the test process can end
            with open(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK), "wb"):
                pass


def test_a_name_that_is_not_utf8_is_not_probed(tmp_path: Path) -> None:
    """SimpleITK aborts the whole process on a name that is not UTF-8 (caf\\xe9 from a Latin-1 system): the probe took
    predict down with it where predict names such a case and predicts the others."""
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9_0000.nii.gz"))
    _sheared_nifti(tmp_path / "case_0000.nii.gz").rename(odd)
    code = "import sys; from pathlib import Path; from autoseg.dataset.imageio import nifti_sform_ignored\n" \
           "print(nifti_sform_ignored(Path(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", code, os.fsencode(odd)], capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr[-2000:]
