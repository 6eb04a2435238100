"""The HTML report: self-contained (embedded PNGs, inline CSS, no URLs), right numbers in its table,
training curves and overlays saved beside it, and rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from autoseg.dataset.imageio import read_image, write_image
from autoseg.errors import DatasetError, EvaluationError
from autoseg.evaluation.evaluate import DiskFullError
from autoseg.evaluation.report import build_report, numeric_series, overlay, overlay_slice, read_metrics_log, training_curves
from autoseg.evaluation.selection import find_best
from autoseg.utils.checkpoint_format import checkpoint_name
from conftest import drive_crop
from test_selection import BAD, BAD_FOREGROUND, CASES, DATASET, GOOD, GOOD_FOREGROUND, GOOD_LEFT, PARTIAL, make_results

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def report(roots: dict[str, Path]) -> tuple[Path, str]:
    make_results(roots)
    path = build_report(DATASET, roots["results"] / "out" / "report.html", num_workers=1)
    return path, path.read_text()


def test_report_is_self_contained_with_the_table_and_figures(report: tuple[Path, str], roots: dict[str, Path]) -> None:
    path, text = report
    assert path == roots["results"] / "out" / "report.html"
    # No external resource of any kind: only data: URIs.
    assert not re.search(r"(?:src|href)\s*=\s*['\"](?!data:)", text) and "http" not in text
    assert "<style>" in text and "<link" not in text and "<script" not in text
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    saved = sorted(p.name for p in path.parent.glob("report_*.png"))
    assert saved == sorted([
        "report_dice_boxplot.png",
        f"report_training_{BAD}.png",
        f"report_training_{GOOD}.png",
        "report_case_best_case_009.png",
        "report_case_worst_case_000.png",
    ])
    assert len(images) == len(saved)
    embedded = {base64.b64decode(data) for data in images}
    assert embedded == {p.read_bytes() for p in path.parent.glob("report_*.png")}
    assert all(data.startswith(PNG_SIGNATURE) for data in embedded)
    # Table: ensemble first and highlighted, then GOOD and BAD with their hand-computed Dice.
    rows = re.findall(r"<tr(?: class=best)?>(.*?)</tr>", text)
    names = [re.search(r"<span title='([^']+)'", r).group(1) for r in rows[1:]]
    assert names == [f"ensemble___{BAD}___{GOOD}", GOOD, BAD]
    assert "<tr class=best><td>1</td>" in text
    good_row = rows[2]
    assert f"<td>{GOOD_LEFT:.4f} &plusmn; 0.0000</td>" in good_row and f"<td>{GOOD_FOREGROUND:.4f}</td>" in good_row
    assert f"<td>{BAD_FOREGROUND:.4f}</td>" in rows[3] and "<td>10</td>" in rows[3]


def test_overlay_best_and_worst_cases(roots: dict[str, Path]) -> None:
    """Without probabilities GOOD is best with the same Dice on every case, so the best/worst tie is
    broken by case id; the overlay shows the slice with the most class voxels (not ignore ones)."""
    make_results(roots, probabilities_for=())
    path = build_report(DATASET, num_workers=1)
    assert path == roots["results"] / DATASET / "report.html"
    names = sorted(p.name for p in path.parent.glob("report_case_*.png"))
    assert names == [f"report_case_best_{CASES[-1]}.png", f"report_case_worst_{CASES[0]}.png"]
    picture = imread(io.BytesIO(path.with_name(names[0]).read_bytes()))
    assert picture.shape[0] > 100 and picture.std() > 0.05  # an image, not a blank canvas
    reference = np.zeros((4, 5, 5), np.uint8)
    reference[1, :2, :2] = 1
    prediction = np.zeros_like(reference)
    prediction[2, :3, :3] = 1
    assert overlay_slice(reference, prediction, [1]) == 2
    reference[3] = 3  # a slice of the ignore label alone outnumbers the class voxels of slices 1 and 2
    assert overlay_slice(reference, prediction, [1]) == 2
    figure = overlay(np.ones((4, 5, 5)), reference, prediction, (1.0, 1.0, 1.0), [("a", (1,))], "case")
    assert figure.axes[0].get_title() == "case (slice 2)"


def test_figures_of_an_earlier_report_are_not_left_beside_it(roots: dict[str, Path]) -> None:
    """An earlier report's best case (or a removed configuration's curves) stayed beside the new HTML."""
    make_results(roots, probabilities_for=())
    out = roots["results"] / "out"
    out.mkdir()
    stale = [out / "report_case_best_case_777.png", out / f"report_training_{BAD}x.png"]
    unrelated = [out / "report.png", out / "other_case_best_case_777.png", out / "report_notes.png"]
    for path in stale + unrelated:
        path.write_bytes(PNG_SIGNATURE)
    path = build_report(DATASET, out / "report.html", num_workers=1)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in unrelated)
    assert sorted(p.name for p in out.glob("report_case_*.png")) == [
        f"report_case_best_{CASES[-1]}.png", f"report_case_worst_{CASES[0]}.png"
    ]
    assert path.is_file()


def test_files_of_the_user_beside_the_report_are_kept(roots: dict[str, Path]) -> None:
    """``-o thesis/report.html`` deleted the user's ``report_case_notes.png`` and ``report_training_log.png``:
    every ``<stem>_case_*`` / ``<stem>_training_*`` PNG counted as an earlier report's figure."""
    make_results(roots, probabilities_for=())
    out = roots["results"] / "thesis"
    out.mkdir()
    mine = [out / "report_case_notes.png", out / "report_training_log.png", out / "report_dice_boxplot_old.png"]
    for path in mine:
        path.write_bytes(PNG_SIGNATURE)
    build_report(DATASET, out / "report.html", num_workers=1)
    assert all(p.read_bytes() == PNG_SIGNATURE for p in mine)


def test_numeric_series_plots_every_numeric_key() -> None:
    records = [
        {"epoch": 0, "train_loss": 1.0, "pseudo_dice": [0.2, 0.4], "lr": 0.01, "timestamp": 5.0, "note": "x"},
        {"epoch": 1, "train_loss": 0.5, "pseudo_dice": [0.4, 0.8], "lr": 0.005, "new_key": 3, "val_loss": float("nan")},
    ]
    series = numeric_series(records)
    assert series == {
        "train_loss": ([0.0, 1.0], [1.0, 0.5]),
        "pseudo_dice (mean of 2)": ([0.0, 1.0], [pytest.approx(0.3), pytest.approx(0.6)]),
        "lr": ([0.0, 1.0], [0.01, 0.005]),
        "new_key": ([1.0], [3.0]),
    }


def test_records_whose_epoch_is_no_number_are_skipped() -> None:
    """An edited metrics.jsonl line (``"epoch": "a"``, ``null``, ``true``, an integer of 401 digits) stopped the
    report with an internal error (ValueError or OverflowError in float); it is skipped as a line cut by a crash is."""
    records = [{"epoch": 0, "train_loss": 1.0}, {"epoch": "a", "train_loss": 9.0}, {"epoch": None, "train_loss": 9.0},
               {"epoch": True, "train_loss": 9.0}, {"epoch": 10**400, "train_loss": 9.0},
               {"epoch": 2, "train_loss": 0.5, "lr": 10**400}]
    assert numeric_series(records) == {"train_loss": ([0.0, 2.0], [1.0, 0.5])}


def test_a_list_holding_a_value_no_float_holds_is_skipped() -> None:
    """An edited per-class list with an integer of 401 digits (JSON reads it) stopped the report with an internal
    OverflowError in the mean; a boolean counted as 1. The list is skipped, the record's other keys are kept."""
    records = [{"epoch": 0, "pseudo_dice": [10**400, 0.5], "train_loss": 1.0}, {"epoch": 1, "pseudo_dice": [True, 0.5]},
               {"epoch": 2, "pseudo_dice": [0.25, 0.75]}]
    assert numeric_series(records) == {"train_loss": ([0.0], [1.0]), "pseudo_dice (mean of 2)": ([2.0], [0.5])}


def test_values_beyond_what_training_logs_are_skipped_and_the_curves_draw(tmp_path: Path) -> None:
    """An edited metrics.jsonl with train_loss 1e308 and then -1e308 overflowed the axis span: the report stopped with
    an internal ValueError (matplotlib's "arange: cannot compute length"). Values beyond float32, which training logs
    in, are skipped; float32's own extremes still draw."""
    fold = tmp_path / "model" / "fold_0"
    fold.mkdir(parents=True)
    records = [{"epoch": 0, "train_loss": 1e308, "val_loss": 3.4e38}, {"epoch": 1, "train_loss": -1e308, "val_loss": -3.4e38},
               {"epoch": 2, "train_loss": 0.5, "val_loss": 0.25}]
    (fold / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert numeric_series(records) == {"train_loss": ([2.0], [0.5]), "val_loss": ([0.0, 1.0, 2.0], [3.4e38, -3.4e38, 0.25])}
    training_curves(tmp_path / "model").savefig(io.BytesIO(), format="png")


def test_metrics_log_lines_python_cannot_read_are_skipped(tmp_path: Path) -> None:
    """A metrics.jsonl line in Latin-1 (an edited note), with an integer of 5000 digits, or nested 100000 deep stopped
    the report with an internal UnicodeDecodeError (for the whole file), ValueError or RecursionError."""
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"epoch": 0, "train_loss": 1.0}\n{"epoch": 1, "note": "t\xeate"}\n{"epoch": ' + b"1" * 5000 + b"}\n"
                    + b"[" * 100_000 + b"\n" + b'{"epoch": 2, "train_loss": 0.5}\n')
    assert read_metrics_log(log) == [{"epoch": 0, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed (CI installs it)")
def test_report_renders_in_headless_chromium(report: tuple[Path, str], tmp_path: Path) -> None:
    assert CHROMIUM is not None, "chromium is required in CI"
    path, _ = report
    screenshot = tmp_path / "shot.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2400", f"--screenshot={screenshot}", path.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
    pixels = imread(str(screenshot))[..., :3]
    # Non-blank: the rendered page holds text, table borders and the plots' colours.
    assert pixels.std() > 0.05
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 0.2
    assert coloured.mean() > 0.001


@pytest.mark.parametrize("num_channels", [3, 4])
def test_colour_image_overlay_is_drawn_in_its_colours(num_channels: int) -> None:
    """An RGB(A) case (C, 1, y, x) is shown as its R, G, B planes, windowed together; grey stays grey."""
    rgb, mask = drive_crop("drive_21")
    channels = np.moveaxis(rgb, -1, 0)[:, None].astype(np.float32)
    if num_channels == 4:
        channels = np.concatenate([channels, np.full_like(channels[:1], 255)])
    labels = mask[None].astype(np.uint8)
    figure = overlay(channels, labels, labels, (999.0, 1.0, 1.0), [("vessel", (1,))], "drive_21")
    shown = figure.axes[0].images[0].get_array()
    assert shown.shape == (64, 64, 3)
    low, high = np.percentile(rgb.astype(np.float32), (0.5, 99.5))
    np.testing.assert_allclose(shown, np.clip((rgb - low) / (high - low), 0, 1), atol=1e-6)
    grey = overlay(channels[1], labels, labels, (999.0, 1.0, 1.0), [("vessel", (1,))], "drive_21")
    assert grey.axes[0].images[0].get_array().shape == (64, 64)


@pytest.mark.parametrize("damage", ["cut", "not_an_object"])
@pytest.mark.parametrize("which", ["instructions", "summary"])
def test_damaged_find_best_files_are_named_with_the_fix(roots: dict[str, Path], which: str, damage: str) -> None:
    """A cut-short or foreign inference_instructions.json or summary.json: one line naming it, no parser trace."""
    make_results(roots, probabilities_for=())
    instructions = find_best(DATASET, num_workers=1)
    path = roots["results"] / DATASET / "inference_instructions.json"
    if which == "summary":
        path = Path(instructions["candidates"][0]["summary_file"])
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if damage == "cut" else "[]")
    problem = "is not valid JSON" if damage == "cut" else "is not what autoseg find-best writes"
    with pytest.raises(EvaluationError, match=rf"{re.escape(str(path))}: {problem} .*re-run autoseg find-best {DATASET}"):
        build_report(DATASET, num_workers=1)


@pytest.mark.parametrize("edit, problem", [
    (lambda i: i["candidates"][0].pop("summary_file"), "candidates is not a non-empty list of find-best's candidate records"),
    (lambda i: i.update(candidates=[]), "candidates is not a non-empty list of find-best's candidate records"),
    (lambda i: i["best"].pop("postprocessing_steps"), "best is not one of its candidates with model folders and postprocessing steps"),
    (lambda i: i.update(best=None), "best is not one of its candidates with model folders and postprocessing steps"),
    (lambda i: i.update(folds=[0, 1]), "folds is not a list of fold names"),
    (lambda i: i.update(rank_metric=5), "rank_metric is not a text"),
])
def test_edited_instructions_records_are_named_with_the_fix(roots: dict[str, Path], edit: Any, problem: str) -> None:
    """Instructions whose records lack what the report reads stopped it with an internal error (KeyError,
    TypeError); now one line naming the file, what is wrong and the fix, and no report."""
    make_results(roots, probabilities_for=())
    find_best(DATASET, num_workers=1)
    path = roots["results"] / DATASET / "inference_instructions.json"
    instructions = json.loads(path.read_text())
    edit(instructions)
    path.write_text(json.dumps(instructions))
    with pytest.raises(EvaluationError) as refused:
        build_report(DATASET, num_workers=1)
    assert str(refused.value) == (f"{path}: is not what autoseg find-best writes ({problem}); "
                                  f"re-run autoseg find-best {DATASET}")
    assert not (roots["results"] / DATASET / "report.html").exists()


def test_a_summary_without_a_class_of_the_dataset_is_named_with_the_fix(roots: dict[str, Path]) -> None:
    """A label renamed in the model's dataset.json after find-best (or a summary row edited) stopped the report
    with an internal error (KeyError: the class name); now one line naming the summary, the class and the fix."""
    make_results(roots, probabilities_for=())
    instructions = find_best(DATASET, num_workers=1)
    path = Path(instructions["candidates"][0]["summary_file"])
    summary = json.loads(path.read_text())
    name = next(iter(summary["mean"]))
    del summary["metric_per_case"][0]["metrics"][name]
    path.write_text(json.dumps(summary))
    with pytest.raises(EvaluationError, match=rf"{re.escape(str(path))}: holds no Dice of {name} for every case.*"
                                              rf"re-run autoseg find-best {DATASET}"):
        build_report(DATASET, num_workers=1)
    assert not (roots["results"] / DATASET / "report.html").exists()


def test_an_output_that_is_a_file_the_report_reads_is_refused(roots: dict[str, Path]) -> None:
    """``-o <results>/<Dataset>/inference_instructions.json`` (or a model's plans.json, a summary) replaced the
    file with the HTML; now refused before any figure is written. An earlier report is still replaced."""
    make_results(roots, probabilities_for=())
    instructions = find_best(DATASET, num_workers=1)
    dataset_results = roots["results"] / DATASET
    model_folder = Path(instructions["candidates"][0]["model_folders"][0])
    for target in (dataset_results / "inference_instructions.json", model_folder / "plans.json",
                   Path(instructions["candidates"][0]["summary_file"])):
        before = target.read_bytes()
        with pytest.raises(EvaluationError, match=rf"{re.escape(str(target))}: is a file of find-best, a model or the "
                                                  "dataset, which the report would replace"):
            build_report(DATASET, target, num_workers=1)
        assert target.read_bytes() == before and not list(target.parent.glob(f"{target.stem}_*.png"))
    for _ in range(2):
        assert build_report(DATASET, model_folder / "report.html", num_workers=1).is_file()


def test_a_reference_replaced_since_find_best_is_named_not_broadcast(roots: dict[str, Path]) -> None:
    """A reference of another shape than the case's image and prediction (replaced since find-best evaluated it)
    stopped the report with numpy's broadcast error; now one line naming the case, the files and their shapes."""
    make_results(roots, probabilities_for=())
    find_best(DATASET, num_workers=1)
    for reference in (roots["preprocessed"] / DATASET / "gt_segmentations").glob("*.nii.gz"):
        labels, geometry = read_image(reference)
        write_image(labels[:, :, 1:], geometry, reference)
    with pytest.raises(EvaluationError, match=r"its image, reference and prediction differ in shape \(.*gt_segmentations"):
        build_report(DATASET, num_workers=1)
    assert not (roots["results"] / DATASET / "report.html").exists()
    assert not list((roots["results"] / DATASET).glob("report_*.png"))  # no figures of a report never written


def test_relative_roots_give_instructions_usable_from_any_folder(
    roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUTOSEG_RESULTS=results run from its parent: the instructions recorded relative paths, and report
    (or the printed commands) from another folder found no summary."""
    make_results(roots, probabilities_for=())
    monkeypatch.chdir(roots["results"].parent)
    for key, var in (("preprocessed", "AUTOSEG_PREPROCESSED"), ("results", "AUTOSEG_RESULTS")):
        monkeypatch.setenv(var, key)
    instructions = find_best(DATASET, num_workers=1)
    assert Path(instructions["reference_folder"]).is_absolute()
    assert all(Path(c["summary_file"]).is_absolute() for c in instructions["candidates"])
    assert str(roots["results"]) in instructions["commands"][0]
    elsewhere = roots["results"] / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("AUTOSEG_RESULTS", str(roots["results"]))
    assert build_report(DATASET, num_workers=1).is_file()


def test_copied_results_root_reports_from_the_copy(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A results root copied elsewhere (another machine, ``cp -r``): the instructions recorded absolute
    paths, so the report of the copy read the original's summaries, and failed once it was gone."""
    make_results(roots)
    find_best(DATASET, num_workers=1)
    copy = roots["results"].with_name("results_copy")
    shutil.copytree(roots["results"], copy)
    shutil.rmtree(roots["results"])
    monkeypatch.setenv("AUTOSEG_RESULTS", str(copy))
    # The preprocessed root (the references) moved too, as to another machine.
    shutil.move(roots["preprocessed"], roots["preprocessed"].with_name("preprocessed_moved"))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(roots["preprocessed"].with_name("preprocessed_moved")))
    path = build_report(DATASET, num_workers=1)
    assert path == copy / DATASET / "report.html" and (copy / DATASET / "report_case_best_case_009.png").is_file()
    commands = re.search(r"<pre>(.*?)</pre>", path.read_text(), re.S).group(1)
    assert f"-m {copy / DATASET / GOOD}" in commands and f"{roots['results']}/" not in commands


def test_instructions_with_absolute_paths_still_load(roots: dict[str, Path]) -> None:
    """inference_instructions.json of earlier versions held absolute paths: the report still reads them."""
    make_results(roots, probabilities_for=())
    instructions = find_best(DATASET, num_workers=1)  # resolved: absolute paths, as earlier files held them
    (roots["results"] / DATASET / "inference_instructions.json").write_text(json.dumps(instructions))
    assert build_report(DATASET, num_workers=1).is_file()


def test_a_results_root_without_its_raw_data_still_reports(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A results root copied to a machine without the raw dataset: the report failed ('not found in the raw
    root') though the raw images serve only the overlays, which now say they are missing."""
    make_results(roots, probabilities_for=())
    find_best(DATASET, num_workers=1)
    empty = roots["raw"].with_name("raw_elsewhere")
    empty.mkdir()
    monkeypatch.setenv("AUTOSEG_RAW", str(empty))
    text = build_report(DATASET.split("_")[0], num_workers=1).read_text()  # Dataset777: the id alone
    assert f"{CASES[-1]}: raw image not found in {empty / DATASET}" in text
    assert "<h2>Cross-validation</h2>" in text
    # An id the raw root holds twice stays ambiguous, though the results root holds one of them.
    (empty / "Dataset777_Other").mkdir()
    (empty / DATASET).mkdir()
    with pytest.raises(DatasetError, match="dataset id 777 is ambiguous"):
        build_report("777", num_workers=1)


def test_an_output_among_the_cases_autoseg_reads_is_refused(roots: dict[str, Path]) -> None:
    """``-o <raw>/<Dataset>/labelsTr/report.html`` (or imagesTr, gt_segmentations, a merged cross-validation) put the
    report and its PNG figures among the cases: verify then refused the dataset, and in a PNG dataset they read as
    cases. The dataset folder itself and a model folder still take a report."""
    make_results(roots, probabilities_for=())
    instructions = find_best(DATASET, num_workers=1)
    raw = roots["raw"] / DATASET
    crossval = Path(instructions["candidates"][0]["crossval_folder"])
    for folder in (raw / "labelsTr", raw / "imagesTr", roots["preprocessed"] / DATASET / "gt_segmentations", crossval):
        before = sorted(p.name for p in folder.iterdir())
        with pytest.raises(EvaluationError, match=rf"{re.escape(str(folder / 'r.html'))}: lies in .*, among the cases "
                                                  r"autoseg reads.*; write it elsewhere"):
            build_report(DATASET, folder / "r.html", num_workers=1)
        assert sorted(p.name for p in folder.iterdir()) == before
    assert build_report(DATASET, raw / "report.html", num_workers=1).is_file()


def test_an_output_that_is_a_users_file_or_an_image_name_is_refused(roots: dict[str, Path], tmp_path: Path) -> None:
    """``-o scans/case_0000.nii.gz`` (outside every folder autoseg reads) replaced the user's scan with the HTML, and
    ``-o notes.txt`` the notes; a new ``x.nii.gz`` in a predictions folder was then read there as a label map."""
    make_results(roots, probabilities_for=())
    find_best(DATASET, num_workers=1)
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "case_0000.nii.gz").write_bytes(b"scan")
    (scans / "notes.txt").write_text("notes")
    refusals = {"case_0000.nii.gz": "the report is HTML, not an image, and would be read as one there; give a .html file name",
                "new.nii.gz": "the report is HTML, not an image, and would be read as one there; give a .html file name",
                "notes.txt": "exists and is not an HTML report, which the report would replace; give a new file name"}
    for name, expected in refusals.items():
        with pytest.raises(EvaluationError, match=rf"{re.escape(str(scans / name))}: {re.escape(expected)}"):
            build_report(DATASET, scans / name, num_workers=1)
    assert sorted(p.name for p in scans.iterdir()) == ["case_0000.nii.gz", "notes.txt"]
    assert (scans / "case_0000.nii.gz").read_bytes() == b"scan"


def test_a_refused_output_leaves_find_best_unrun(roots: dict[str, Path], tmp_path: Path) -> None:
    """Without find-best's instructions, ``report -o notes.txt`` (or ``-o x.nii.gz``) ran find-best, wrote its
    instructions, and only then refused the output: the refusal now comes first and nothing is written."""
    make_results(roots, probabilities_for=())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("notes")
    for output in (mine / "notes.txt", mine / "x.nii.gz"):
        with pytest.raises(EvaluationError, match=re.escape(str(output))):
            build_report(DATASET, output, num_workers=1)
    assert not (roots["results"] / DATASET / "inference_instructions.json").exists()
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_an_output_ending_in_a_separator_is_a_folder_for_report_html(roots: dict[str, Path], tmp_path: Path) -> None:
    """``-o reports/`` wrote a file named ``reports`` (no .html) with ``reports_*.png`` beside it: the command line's
    path dropped the separator. It names a folder to write report.html in, as postprocess determine's -o does."""
    from cli_helpers import autoseg

    make_results(roots, probabilities_for=())
    find_best(DATASET, num_workers=1)
    assert build_report(DATASET, f"{tmp_path / 'api'}/", num_workers=1) == tmp_path / "api" / "report.html"
    assert autoseg("report", DATASET, "-o", f"{tmp_path / 'cli'}/", "-np", 1).strip() == f"written: {tmp_path / 'cli' / 'report.html'}"
    for folder in ("api", "cli"):
        assert (tmp_path / folder).is_dir() and (tmp_path / folder / "report_dice_boxplot.png").is_file()


def test_an_existing_folder_as_output_is_refused_offering_it_with_a_separator(roots: dict[str, Path], tmp_path: Path) -> None:
    """``report -o reports`` (an existing folder, no separator) was refused with 'give a file name' only, though
    --help offers ``-o reports/`` for report.html in it."""
    make_results(roots, probabilities_for=())
    (tmp_path / "reports").mkdir()
    with pytest.raises(EvaluationError, match=re.escape(f"or {tmp_path / 'reports'}{os.sep} to write report.html in it")):
        build_report(DATASET, tmp_path / "reports", num_workers=1)
    assert not any((tmp_path / "reports").iterdir())


def test_a_report_of_fewer_folds_than_find_bests_defaults_says_how_to_choose_them(roots: dict[str, Path]) -> None:
    """Without find-best's instructions the report runs find-best with its default folds 0-4: over a model of one fold
    it was told only to train folds 1 to 4, though ``find-best -f 0`` run first (the report has no -f) reports fold 0."""
    make_results(roots)
    for config in (GOOD, BAD):
        for fold in (1, 2, 3, 4):
            shutil.rmtree(roots["results"] / DATASET / config / f"fold_{fold}")
    with pytest.raises(EvaluationError) as refused:
        build_report(DATASET, num_workers=1)
    instructions = roots["results"] / DATASET / "inference_instructions.json"
    assert str(refused.value).endswith(
        f"(autoseg find-best {DATASET} -f 0) (the report ran autoseg find-best with its default folds, as {instructions} "
        "does not exist; it reports the folds of the find-best run written there)"), refused.value
    assert "no configuration has validation predictions for folds 0, 1, 2, 3, 4" in str(refused.value)
    assert str(refused.value).count("autoseg find-best") == 2, refused.value  # the -f advice once, not repeated
    find_best(DATASET, folds=["0"], num_workers=1)
    assert "folds 0; " in build_report(DATASET, num_workers=1).read_text()


def test_a_report_refused_as_find_best_refuses_a_ranking_gets_no_fold_advice(roots: dict[str, Path]) -> None:
    """The report's note on find-best's defaults was added to every find-best refusal: 'no configuration can be ranked'
    (every model folder's checkpoints deleted) was told to choose the folds, which changes nothing."""
    results = make_results(roots)
    shutil.rmtree(results / PARTIAL)
    for checkpoint in results.glob(f"*/fold_*/{checkpoint_name('final')}"):
        checkpoint.unlink()
    with pytest.raises(EvaluationError) as refused:
        build_report(DATASET, num_workers=1)
    with pytest.raises(EvaluationError) as by_find_best:
        find_best(DATASET, num_workers=1)
    assert "no configuration can be ranked over folds 0, 1, 2, 3, 4" in str(refused.value), refused.value
    assert str(refused.value) == str(by_find_best.value)


def test_a_report_keeps_the_type_and_text_of_find_bests_other_errors(roots: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every EvaluationError of find-best was raised again as a plain EvaluationError with the note on its defaults: a
    full disk (DiskFullError, which callers tell apart) lost its type."""
    import autoseg.evaluation.report as report

    make_results(roots)
    full = DiskFullError("/results: the disk of the output folder is full; free space, then run the same command again")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise full

    monkeypatch.setattr(report, "find_best", fail)
    with pytest.raises(DiskFullError) as refused:
        build_report(DATASET, num_workers=1)
    assert refused.value is full
