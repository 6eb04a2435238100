"""Output paths of the commands that write one file (a model zip, a report, a decision): an existing
folder there is refused up front with the fix, before anything is written (it was an internal error
from the final rename, and the report had already written its figures beside it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autoseg.errors import EvaluationError, ModelFileError
from autoseg.evaluation.model_files import export_model
from autoseg.evaluation.report import build_report
from autoseg.postprocessing.determine import determine_postprocessing
from conftest import SHARED_DATA

MESSAGE = r"outdir: is a folder; give a file name to write \(a new file, or one to replace\)"


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "outdir").mkdir()
    return tmp_path / "outdir"


def test_export_model_refuses_a_folder_as_the_zip(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=MESSAGE):
        export_model([tmp_path / "results" / "Dataset004_X" / "unet__autosegPlans__3d_fullres"], _folder(tmp_path), ["0"])


def test_postprocess_determine_refuses_a_folder_as_the_decision(tmp_path: Path) -> None:
    """``-o EXISTING_FOLDER`` was told to give a file name only, though ``-o EXISTING_FOLDER/`` (a folder for
    postprocessing.json, as --help says) is what the user meant: the refusal now offers it. The folder's name holds
    regular-expression characters: the path is matched escaped, as any path a user may have."""
    base = tmp_path / "run+1 (copy)"
    base.mkdir()
    where = re.escape(str(base))
    with pytest.raises(EvaluationError, match=rf"^{where}/{MESSAGE}, or {where}/outdir/ to write postprocessing\.json in it$"):
        determine_postprocessing(base / "cv", base / "gt", {"background": 0, "a": 1}, _folder(base), file_ending=".nii.gz")


def test_postprocess_determine_cli_offers_the_folder_with_a_separator(tmp_path: Path) -> None:
    """The command line's refusal of ``-o EXISTING_FOLDER``: one line offering ``EXISTING_FOLDER/``, exit 2, no file."""
    from typer.testing import CliRunner

    from autoseg.cli import app

    for name in ("cv", "gt"):
        (tmp_path / name).mkdir()
    out = _folder(tmp_path)
    result = CliRunner().invoke(app, ["postprocess", "determine", "-p", str(tmp_path / "cv"), "-r", str(tmp_path / "gt"),
                                      "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"or {out}/ to write postprocessing.json in it" in " ".join(result.output.split())
    assert "Traceback" not in result.output and list(out.iterdir()) == []


def test_export_model_offers_no_folder_it_cannot_write_into(tmp_path: Path) -> None:
    """export-model's -o is the zip itself (no folder form): its refusal offers no ``outdir/``."""
    with pytest.raises(ModelFileError, match=rf"{MESSAGE}$"):
        export_model([tmp_path / "results" / "Dataset004_X" / "unet__autosegPlans__3d_fullres"], _folder(tmp_path), ["0"])


def test_postprocess_determine_refuses_a_decision_that_is_a_cases_probability_sidecar(tmp_path: Path) -> None:
    """A case named ``postprocessing`` predicted with --save-probabilities has ``postprocessing.json`` beside
    ``postprocessing.npz``; determine's default decision file replaced it, and the case could no longer be ensembled."""
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "postprocessing.npz").write_bytes(b"probabilities")
    (tmp_path / "cv" / "postprocessing.json").write_text("{}")
    with pytest.raises(EvaluationError, match=r"cv/postprocessing\.json: is the probabilities' sidecar of case "
                                              r"postprocessing \(postprocessing\.npz beside it\), which this output would replace"):
        determine_postprocessing(tmp_path / "cv", tmp_path / "gt", {"background": 0, "a": 1}, file_ending=".nii.gz")
    assert (tmp_path / "cv" / "postprocessing.json").read_text() == "{}"


def test_report_refuses_a_folder_before_writing_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSEG_RAW", str(SHARED_DATA))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    with pytest.raises(EvaluationError, match=MESSAGE):
        build_report("Dataset004_Hippocampus", _folder(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]


def test_an_output_folder_below_a_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    """``-o notes.txt/predictions``: the mkdir failed as an internal error (NotADirectoryError)."""
    from autoseg.errors import InferenceError
    from autoseg.inference.batch import predict_folder

    (tmp_path / "in").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InferenceError, match=r"notes\.txt: exists and is not a folder; give a folder \(new or existing\) "
                                             r"for the outputs"):
        predict_folder(tmp_path / "in", tmp_path / "notes.txt" / "predictions" / "run1", tmp_path / "model")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_output_file_below_a_file_is_refused_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-o notes.txt/report.html`` (report, export-model, postprocess determine): the mkdir of its folder
    failed as an internal error (FileExistsError), the report's after it had built its figures."""
    monkeypatch.setenv("AUTOSEG_RAW", str(SHARED_DATA))
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "results"))
    (tmp_path / "notes.txt").write_text("mine")
    below = r"notes\.txt: exists and is not a folder; give a folder \(new or existing\) for the outputs"
    with pytest.raises(EvaluationError, match=below):
        build_report("Dataset004_Hippocampus", tmp_path / "notes.txt" / "report.html")
    with pytest.raises(ModelFileError, match=below):
        export_model([tmp_path / "results" / "Dataset004_X" / "unet__autosegPlans__3d_fullres"],
                     tmp_path / "notes.txt" / "model.zip", ["0"])
    with pytest.raises(EvaluationError, match=below):
        determine_postprocessing(tmp_path / "cv", tmp_path / "gt", {"background": 0, "a": 1},
                                 tmp_path / "notes.txt" / "sub" / "postprocessing.json", file_ending=".nii.gz")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("below", [False, True])
def test_an_output_folder_at_a_dangling_link_is_refused_naming_it(below: bool, tmp_path: Path) -> None:
    """``-o link`` (or ``link/run1``) where the link's target is gone (an unmounted disk): predict computed
    every case, then each failed in mkdir with a bare FileExistsError."""
    from autoseg.errors import InferenceError
    from autoseg.inference.batch import predict_folder

    (tmp_path / "in").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    output = tmp_path / "link" / "run1" if below else tmp_path / "link"
    with pytest.raises(InferenceError, match=rf"link: a symbolic link to {tmp_path / 'gone'}, which does not exist; "
                                             "create that folder, or give another folder"):
        predict_folder(tmp_path / "in", output, tmp_path / "model")
    assert not (tmp_path / "gone").exists()


def test_an_output_folder_named_as_an_image_file_is_refused(tmp_path: Path) -> None:
    """``predict -i case_0000.nii.gz -o case_seg.nii.gz`` made a folder named case_seg.nii.gz holding case.nii.gz; an
    existing folder of such a name is still written into."""
    from autoseg.errors import InferenceError
    from autoseg.inference.batch import predict_folder

    (tmp_path / "in").mkdir()
    with pytest.raises(InferenceError, match=r"case_seg\.nii\.gz: is named as an image file \(\.nii\.gz\), but the outputs are "
                                             r"written into a folder, one <case><ending> file each; give a folder, e\.g\. .*/case_seg$"):
        predict_folder(tmp_path / "in", tmp_path / "case_seg.nii.gz", tmp_path / "model")
    assert not (tmp_path / "case_seg.nii.gz").exists()
    (tmp_path / "old.nii.gz").mkdir()
    with pytest.raises(InferenceError, match=r"in: no images"):
        predict_folder(tmp_path / "in", tmp_path / "old.nii.gz", tmp_path / "model")
