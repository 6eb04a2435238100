"""``predict --statistics``: volumes, voxel counts, components and intensities against hand-computed values."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.description import parse_description
from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import EvaluationError, InferenceError
from autoseg.evaluation.statistics import SUMMARY_CSV, case_statistics, write_statistics
from cli_helpers import autoseg, autoseg_fails
from conftest import HIPPOCAMPUS

SPACING = (2.0, 0.5, 1.5)  # (z, y, x) mm: one voxel is 1.5 mm3
GEOMETRY = Geometry(SPACING, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
CLASSES = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "liver": 1, "lesion": 2, "spleen": 3},
           "numTraining": 1, "file_ending": ".nii.gz"}


def synthetic_case() -> tuple[np.ndarray, np.ndarray]:
    """Liver: a 2x2x2 block holding intensities 1..8 and one separate voxel holding 9 (two components);
    lesion: one voxel; spleen: absent. The second channel is the first times -10."""
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    data = np.zeros((2, 4, 5, 6), dtype=np.float32)
    labels[0:2, 0:2, 0:2] = 1
    data[0, 0:2, 0:2, 0:2] = np.arange(1, 9).reshape(2, 2, 2)
    labels[3, 4, 5], data[0, 3, 4, 5] = 1, 9
    labels[3, 0, 5], data[0, 3, 0, 5] = 2, 100
    data[1] = -10 * data[0]
    return labels, data


def images_of(cases: tuple[str, ...], tmp_path: Path) -> tuple[np.ndarray, Path, Path]:
    """The synthetic case's labels, and the folders in/ (its two channels written for each of ``cases``) and out/."""
    labels, data = synthetic_case()
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir(), output.mkdir()
    for case in cases:
        for channel in (0, 1):
            write_image(data[channel], GEOMETRY, inputs / f"{case}_000{channel}.nii.gz")
    return labels, inputs, output


def test_volumes_components_and_intensities_match_hand_computed_values() -> None:
    labels, data = synthetic_case()
    stats = case_statistics(labels, data, GEOMETRY, parse_description(CLASSES, Path("dataset.json")))
    assert stats["voxel_volume_mm3"] == 1.5 and stats["percentiles"] == [5, 25, 50, 75, 95]
    liver, lesion, spleen = (stats["structures"][k] for k in ("liver", "lesion", "spleen"))
    assert (liver["voxels"], liver["volume_mm3"], liver["components"]) == (9, 13.5, 2)
    # intensities 1..9: mean 5; linear percentiles at positions 0.4, 2, 4, 6, 7.6 of the sorted values
    assert liver["intensity"]["0:CT"] == pytest.approx({"mean": 5, "p5": 1.4, "p25": 3, "p50": 5, "p75": 7, "p95": 8.6})
    assert liver["intensity"]["1:PET"] == pytest.approx({"mean": -50, "p5": -86, "p25": -70, "p50": -50, "p75": -30, "p95": -14})
    assert (lesion["voxels"], lesion["volume_mm3"], lesion["components"]) == (1, 1.5, 1)
    assert lesion["intensity"]["0:CT"]["p95"] == 100
    assert (spleen["voxels"], spleen["volume_mm3"], spleen["components"]) == (0, 0.0, 0)
    assert spleen["intensity"]["0:CT"] == {"mean": None, "p5": None, "p25": None, "p50": None, "p75": None, "p95": None}


def test_a_region_is_the_union_of_its_label_values() -> None:
    labels, data = synthetic_case()
    regions = {**CLASSES, "labels": {"background": 0, "whole": [1, 2], "core": [2]}, "regions_class_order": [1, 2]}
    stats = case_statistics(labels, data, GEOMETRY, parse_description(regions, Path("dataset.json")))
    whole, core = stats["structures"]["whole"], stats["structures"]["core"]
    assert (whole["voxels"], whole["volume_mm3"], whole["components"]) == (10, 15.0, 3)
    assert (core["voxels"], core["components"]) == (1, 1)
    assert whole["intensity"]["0:CT"]["mean"] == pytest.approx((45 + 100) / 10)


def test_files_give_one_json_per_case_and_a_summary_csv(tmp_path: Path) -> None:
    labels, inputs, output = images_of(("a", "b"), tmp_path)
    for case, shift in (("a", 0), ("b", 1)):
        write_image(np.roll(labels, shift, axis=0), GEOMETRY, output / f"{case}.nii.gz")
    csv_path = write_statistics(inputs, output, parse_description(CLASSES, Path("dataset.json")))
    assert csv_path == output / SUMMARY_CSV
    a = json.loads((output / "a_statistics.json").read_text())
    assert a["case_id"] == "a" and a["spacing"] == list(SPACING) and a["structures"]["liver"]["volume_mm3"] == 13.5
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["case"], r["structure"]) for r in rows] == [(c, s) for c in "ab" for s in ("liver", "lesion", "spleen")]
    assert rows[0]["0:CT:mean"] == "5.0" and rows[0]["components"] == "2" and rows[2]["0:CT:p50"] == ""
    # case b: the label map rolled by one slice no longer covers the same intensities
    assert float(rows[3]["0:CT:mean"]) != 5.0 and rows[3]["voxels"] == "9"


def _one_case_model(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny one-fold Hippocampus model and an input folder holding hippocampus_001."""
    from test_inference_predict import make_model

    model = make_model(tmp_path / "models", "3d_fullres", folds=("0",))
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "hippocampus_001_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    return model, inputs


def test_cli_predict_statistics_measure_the_written_labels(tmp_path: Path) -> None:
    model, inputs = _one_case_model(tmp_path)
    out = autoseg("predict", "-i", inputs, "-o", tmp_path / "out", "-m", model, "--no-tta", "--statistics")
    assert f"statistics: {tmp_path / 'out' / SUMMARY_CSV}" in out
    labels, geometry = read_image(tmp_path / "out" / "hippocampus_001.nii.gz")
    image, _ = read_image(inputs / "hippocampus_001_0000.nii.gz")
    stats = json.loads((tmp_path / "out" / "hippocampus_001_statistics.json").read_text())
    for name, value in (("Anterior", 1), ("Posterior", 2)):
        entry, mask = stats["structures"][name], labels == value
        assert entry["voxels"] == int(mask.sum())
        assert entry["volume_mm3"] == pytest.approx(mask.sum() * float(np.prod(geometry.spacing)))
        if mask.any():
            assert entry["intensity"]["0:MRI"]["mean"] == pytest.approx(float(image[mask].mean()), rel=1e-5)


def test_cli_predict_statistics_notes_skipped_images_once(tmp_path: Path) -> None:
    """predict --statistics discovers the input three times (the name check, predict, the statistics): an image of a
    format autoseg does not read beside the case was noted three times."""
    from cli_helpers import runner

    from autoseg.cli import app

    model, inputs = _one_case_model(tmp_path)
    (inputs / "snapshot.jpg").write_bytes(b"")
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--no-tta",
                                 "--statistics"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("skipped snapshot.jpg: images in a format autoseg does not read") == 1
    assert (tmp_path / "out" / "hippocampus_001_statistics.json").is_file()


def test_statistics_never_replace_another_cases_probabilities(tmp_path: Path) -> None:
    """Case x's x_statistics.json is also the probabilities' sidecar of a case named x_statistics: it was
    overwritten (the sidecar lost, ensemble refused the case). Refused before anything is predicted."""
    from test_inference_predict import make_model

    model = make_model(tmp_path / "models", "3d_fullres", folds=("0",))
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("x", "x_statistics"):
        (inputs / f"{case}_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    message = autoseg_fails("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--save-probabilities", "--statistics")
    assert f"cases x and x_statistics: the statistics of x and the probabilities' sidecar of x_statistics would both be {out / 'x_statistics.json'}" in message
    assert not out.exists()
    # Probabilities an earlier run saved count too; without any, the names do not clash.
    autoseg("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--save-probabilities")
    assert "x_statistics would both be" in autoseg_fails("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--statistics", "--continue")
    autoseg("predict", "-i", inputs, "-o", tmp_path / "labels", "-m", model, "--no-tta", "--statistics")
    assert {"x_statistics.json", "x_statistics_statistics.json"} <= {p.name for p in (tmp_path / "labels").iterdir()}


@pytest.mark.parametrize("name", [SUMMARY_CSV, "a_statistics.json"])
def test_a_folder_where_a_statistics_file_goes_is_refused_before_predicting(tmp_path: Path, name: str) -> None:
    """A folder named statistics.csv (or <case>_statistics.json) in the output folder was an internal error
    (IsADirectoryError) after every case was predicted."""
    from autoseg.evaluation.statistics import refuse_name_clashes

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    (tmp_path / "out" / name).mkdir(parents=True)
    with pytest.raises(InferenceError, match=rf"out/{name}: is a folder where autoseg predict --statistics writes a file; "
                                             "move or rename that folder, or give -o another folder"):
        refuse_name_clashes(inputs, tmp_path / "out", save_probabilities=False)


def test_parts_sharing_a_folder_give_one_csv_over_all_their_cases(tmp_path: Path) -> None:
    """``--num-parts 2 --statistics``: each part wrote statistics.csv of its own cases over the other's,
    so the folder's CSV held only the part that finished last."""
    labels, inputs, output = images_of(("a", "b", "c"), tmp_path)
    for case in ("a", "b"):
        write_image(labels, GEOMETRY, output / f"{case}.nii.gz")
    description = parse_description(CLASSES, Path("dataset.json"))
    write_statistics(inputs, output, description, ["b"])  # part 1 first
    csv_path = write_statistics(inputs, output, description, ["a"])  # then part 0 (case c: not predicted yet)
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["case"], r["structure"]) for r in rows] == [(c, s) for c in "ab" for s in ("liver", "lesion", "spleen")]
    assert rows[0]["volume_mm3"] == rows[3]["volume_mm3"] == "13.5"


def test_a_foreign_file_under_a_statistics_name_is_named(tmp_path: Path) -> None:
    """The CSV is made from the folder's <case>_statistics.json files: one that is not (a case x_statistics's
    probabilities' sidecar) failed with an internal KeyError."""
    labels, inputs, output = images_of(("a", "b"), tmp_path)
    write_image(labels, GEOMETRY, output / "a.nii.gz")
    (output / "b_statistics.json").write_text(json.dumps({"case_id": "b_statistics", "shape": [3, 4, 5, 6]}))
    with pytest.raises(InferenceError, match=r"b_statistics\.json: not a statistics file"):
        write_statistics(inputs, output, parse_description(CLASSES, Path("dataset.json")), ["a"])


def test_the_predicted_line_is_kept_when_the_statistics_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Statistics that fail after every case was predicted (a full disk) came before the 'N case(s) predicted ... into
    OUT' line, which was lost: the user saw only the statistics' error, not that the label maps were written."""
    import autoseg.evaluation.statistics as statistics

    def full_disk(*args: object, **kwargs: object) -> Path:
        raise EvaluationError(f"{tmp_path / 'out'}: the disk is full (statistics.csv could not be written)")

    monkeypatch.setattr(statistics, "write_statistics", full_disk)
    model, inputs = _one_case_model(tmp_path)
    output = autoseg_fails("predict", "-i", inputs, "-o", tmp_path / "out", "-m", model, "--no-tta", "--statistics")
    assert f"1 case(s) predicted, 0 skipped, into {tmp_path / 'out'}" in output
    assert output.index("1 case(s) predicted") < output.index("the disk is full (statistics.csv could not be written)")
    assert (tmp_path / "out" / "hippocampus_001.nii.gz").is_file()
