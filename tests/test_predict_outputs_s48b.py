"""predict's outputs around failed and damaged cases (session 48, helper B): statistics of the cases a failing run
wrote, and ``--continue`` over PNG/TIFF label maps cut short."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import DatasetError
from autoseg.evaluation.statistics import SUMMARY_CSV
from autoseg.inference.batch import InputCase, _finished
from cli_helpers import autoseg_fails
from conftest import HIPPOCAMPUS

GEOMETRY_2D = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))


def test_statistics_of_the_written_cases_when_another_case_fails(tmp_path: Path) -> None:
    """predict --statistics raised on a failed case before any statistics were written: the case predicted got no
    <case>_statistics.json and no statistics.csv. Now they are written, and the run still fails naming the case."""
    from test_inference_predict import make_model

    model = make_model(tmp_path / "models", "3d_fullres", folds=("0",))
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "good_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    (inputs / "broken_0000.nii.gz").write_bytes(b"not an image")
    message = autoseg_fails("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--statistics")
    assert "1 of 2 case(s) failed (broken: " in message
    assert f"statistics of the 1 other case(s): {out / SUMMARY_CSV}" in message
    stats = json.loads((out / "good_statistics.json").read_text())
    assert stats["case_id"] == "good" and set(stats["structures"]) == {"Anterior", "Posterior"}
    rows = (out / SUMMARY_CSV).read_text().splitlines()
    assert [row.split(",")[:2] for row in rows[1:]] == [["good", "Anterior"], ["good", "Posterior"]]
    assert not (out / "broken_statistics.json").exists()


def _png_case(folder: Path, ending: str) -> tuple[InputCase, list[Path]]:
    """A 2D case ``c`` (its image) and the label map a finished predict run wrote for it in ``folder``."""
    folder.mkdir()
    write_image(np.random.default_rng(0).normal(size=(1, 40, 40)).astype(np.float32), GEOMETRY_2D, folder / "c_0000.nii.gz")
    label_map = folder / f"c{ending}"
    write_image(np.random.default_rng(1).integers(0, 3, (1, 40, 40)).astype(np.uint8), GEOMETRY_2D, label_map)
    return InputCase("c", {0: folder / "c_0000.nii.gz"}), [label_map]


@pytest.mark.parametrize("ending", [".png", ".tif", ".tiff", ".bmp"])
@pytest.mark.parametrize("damage", ["cut in half", "not an image"])
def test_continue_predicts_again_a_png_or_tiff_label_map_cut_short(tmp_path, capsys, ending, damage):
    """--continue checked the label maps of ITK's formats and .npz only: a PNG/TIFF label map cut short (an interrupted
    copy) or overwritten was kept as finished, and evaluate then refused it."""
    case, files = _png_case(tmp_path / "out", ending)
    assert _finished(case, files)
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[: len(data) // 2] if damage == "cut in half" else b"<html>not found</html>")
    with pytest.raises(DatasetError):
        read_image(files[-1])
    capsys.readouterr()
    assert not _finished(case, files)
    assert capsys.readouterr().err == (f"note: case c: its label map {files[-1]} cannot be decoded (damaged or cut "
                                       "short); predicting it again\n")


def test_a_failed_run_whose_statistics_cannot_be_written_says_why(tmp_path: Path) -> None:
    """Where the other cases' statistics fail too (a label map gone meanwhile), the run's error still names the failed
    case, and says why no statistics were written, in one line."""
    from autoseg.dataset.description import load_description
    from autoseg.errors import InferenceError
    from autoseg.evaluation.statistics import predict_with_statistics_on_failure
    from autoseg.inference.batch import PredictReport
    from autoseg.utils.progress import Failure

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    (inputs / "good_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    report = PredictReport(out, dataset=load_description(HIPPOCAMPUS), predicted=["good"],
                           failed=[Failure("broken", "cannot be read")])

    def failing_run() -> PredictReport:
        error = InferenceError("1 of 2 case(s) failed (broken: cannot be read); the others are in out")
        error.report = report  # type: ignore[attr-defined]
        raise error

    with pytest.raises(InferenceError) as raised:
        predict_with_statistics_on_failure(failing_run, inputs, out)
    assert str(raised.value) == ("1 of 2 case(s) failed (broken: cannot be read); the others are in out; statistics not "
                                 f"written: {out / 'good.nii.gz'}: prediction not found; predict case good first")
    assert raised.value.report is report  # type: ignore[attr-defined]
    assert list(out.iterdir()) == []
