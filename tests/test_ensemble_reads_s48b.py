"""ensemble reads each .npz once (session 48, helper B): every .npz was read (decompressed) to check it before any
case was written, then read again to average it; now it is checked as it is averaged, the cases built in a hidden
staging folder and moved into -o only once every case succeeded, so a bad .npz still leaves no output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import autoseg.evaluation.ensemble as ensemble
from autoseg.dataset.imageio import read_image
from autoseg.errors import EvaluationError
from autoseg.evaluation.ensemble import ensemble_folders, probabilities_to_labels
from autoseg.utils.probability_files import write_probability_files
from test_ensemble import GEOMETRY, LABELS, _ensemble_inputs, _softmax


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often ensemble reads each .npz (as ``<folder>/<case>``)."""
    reads: Counter[str] = Counter()
    real = ensemble.read_probabilities

    def counting(folder, case, sidecar, error):  # type: ignore[no-untyped-def]
        reads[f"{Path(folder).name}/{case}"] += 1
        return real(folder, case, sidecar, error)

    monkeypatch.setattr(ensemble, "read_probabilities", counting)
    return reads


@pytest.mark.parametrize("save_probabilities", [False, True])
def test_each_npz_is_read_once(tmp_path, monkeypatch, save_probabilities):
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=5)
    reads = _counting_reads(monkeypatch)
    assert ensemble_folders(dirs, tmp_path / "out", save_probabilities=save_probabilities, num_workers=1) == ["x", "y"]
    assert reads == {"m0/x": 1, "m0/y": 1, "m1/x": 1, "m1/y": 1}
    for case in ("x", "y"):
        mean = sum(np.load(d / f"{case}.npz")["probabilities"].astype(np.float32) for d in dirs) / 2
        assert np.array_equal(read_image(tmp_path / "out" / f"{case}.nii.gz")[0], probabilities_to_labels(mean, LABELS, None))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [".autoseg_outputs.json", *(["x.json", "x.nii.gz", "x.npz", "y.json", "y.nii.gz", "y.npz"]
                                                  if save_probabilities else ["x.nii.gz", "y.nii.gz"])]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left beside it


def test_a_bad_npz_of_a_later_case_leaves_an_existing_output_folder_as_it_was(tmp_path):
    """The case before it, averaged first, is not moved into -o, and the staging folder inside -o is removed."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=6)
    probabilities = _softmax(np.random.default_rng(1))
    probabilities[0, 0, 0, :2] = np.nan
    write_probability_files(dirs[1], "y", probabilities, GEOMETRY, LABELS, None)
    (tmp_path / "out").mkdir()
    with pytest.raises(EvaluationError, match=r"^1 of 2 cases could not be ensembled: y: .*m1/y\.npz: probabilities of case "
                                              r"y hold 2 NaN or infinite value\(s\) of 120; .*; no label map was written$"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="stale temporaries are recognised on POSIX only")
@pytest.mark.parametrize("out_exists", [False, True])
def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path, out_exists):
    """A killed ensemble leaves its staging folder (beside a new -o, or inside an existing one): the next run removes
    it, as it removes a killed run's temporary files."""
    from autoseg.utils.atomic import HOST_TAG

    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x"], seed=8)
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    if out_exists:
        out.mkdir()
    where, target = (out, "ensemble") if out_exists else (tmp_path, "out")
    staging = where / f".{target}.{HOST_TAG}-{int(dead.stdout)}-{'0' * 16}.tmp"
    staging.mkdir()
    (staging / "x.nii.gz").write_bytes(b"half")
    assert ensemble_folders(dirs, out, num_workers=1) == ["x"]
    assert not staging.exists()
    assert sorted(p.name for p in out.iterdir()) == [".autoseg_outputs.json", "x.nii.gz"]
