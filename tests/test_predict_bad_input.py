"""``autoseg predict`` on bad input: every kind is named with its case, a specific message and the fix,
exit code 2, no traceback, and the good case beside it is still predicted."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import app
from autoseg.dataset.imageio import read_image
from autoseg.errors import InferenceError
from autoseg.inference.batch import PREDICT_INFO, discover_cases

from cli_helpers import runner
from conftest import HIPPOCAMPUS, SHARED_DATA
from test_atomic import refuse_writes_in
from test_inference_predict import make_model
from test_verify import _shear_sform

SOURCE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
DICOM = SHARED_DATA / "dicom_examples"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"), "3d_fullres", folds=("0",))


def _predict(inputs: Path, output: Path, model: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta",
                                 "--mixed-precision", "off"])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _array(array: np.ndarray, path: Path, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def _hippocampus() -> np.ndarray:
    return read_image(SOURCE)[0].astype(np.float32)


def _with_value(value: float) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        array = _hippocampus()
        array[3, 4, 5] = value
        _array(array, folder / "bad_0000.nii.gz")
    return write


def _mha_header(folder: Path, replace: tuple[bytes, bytes], data: bool = True) -> None:
    """A MetaImage whose text header has one field changed (what a broken exporter writes)."""
    _array(np.ones((6, 7, 8), np.float32), folder / "bad_0000.mha")
    raw = (folder / "bad_0000.mha").read_bytes()
    header_end = raw.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    assert replace[0] in raw[:header_end]
    (folder / "bad_0000.mha").write_bytes(raw[:header_end].replace(*replace) + (raw[header_end:] if data else b""))


def _truncated_nifti(path: Path) -> None:
    sitk.WriteImage(sitk.ReadImage(str(SOURCE)), str(path))
    path.write_bytes(path.read_bytes()[:-500])


def _two_series(folder: Path) -> None:
    shutil.copytree(DICOM / "Study1" / "13_HCropVolume", folder / "bad")
    for file in (DICOM / "Study2" / "14_HCropVolume").iterdir():
        shutil.copy(file, folder / "bad" / f"second_{file.name}")


def _skewed_series(folder: Path) -> None:
    """A DICOM series whose ImageOrientationPatient is no pair of perpendicular directions (GDCM read it upright)."""
    (folder / "bad").mkdir()
    tag, upright, skewed = b" \x007\x00DS", b"1\\0\\0\\0\\1\\0 ", b"1\\0\\0\\0.05\\0.99875\\0"
    element = tag + struct.pack("<H", len(upright)) + upright
    for file in (DICOM / "Study1" / "13_HCropVolume").iterdir():
        data = file.read_bytes()
        assert data.count(element) == 1  # explicit VR: tag, VR, 2-byte length, value
        (folder / "bad" / file.name).write_bytes(data.replace(element, tag + struct.pack("<H", len(skewed)) + skewed))


def _png_rgb(path: Path) -> None:
    """A colour photograph where the model takes one grey channel."""
    from skimage import io as skio

    skio.imsave(path, np.stack([np.arange(20, dtype=np.uint8).reshape(4, 5) * (c + 1) for c in range(3)], -1), check_contrast=False)


# kind -> (how the bad case is written into the input folder, what the message must say)
BAD_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing channel file": (lambda f: shutil.copy(SOURCE, f / "bad_0001.nii.gz"),
                             "bad: case bad: has channel(s) 0001, the model expects 1 (0000: MRI); give one file per "
                             "channel: bad_0000.nii.gz"),
    "extra channel file": (lambda f: [shutil.copy(SOURCE, f / f"bad_000{c}.nii.gz") for c in (0, 1)],
                           "bad: case bad: has channel(s) 0000, 0001, the model expects 1 (0000: MRI)"),
    "colour image for a grey model": (lambda f: _png_rgb(f / "bad_0000.png"),
                                      "bad_0000.png: found 3 channel(s) (RGB), the model expects 1 (0000: MRI); save the "
                                      "image as grey (one channel))"),
    "2D image for a 3D model": (lambda f: _array(_hippocampus()[10], f / "bad_0000.nii.gz", (1.0, 1.0)),
                                "bad: input is a 2D image but configuration 3d_fullres is 3D; use a 2d model"),
    "4D image": (lambda f: sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(f / "bad_0000.nii.gz")),
                 "bad_0000.nii.gz: is 4D; autoseg reads 2D or 3D images. Split 4D series into channels"),
    "vector image (channels in one file)": (
        lambda f: sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 2), str(f / "bad_0000.nii.gz")),
        "bad_0000.nii.gz: has 2 components per voxel (RGB or vector image); save each channel as its own _XXXX file"),
    "NaN voxels": (_with_value(float("nan")), "bad_0000.nii.gz: holds 1 NaN and 0 infinite voxel(s); replace them"),
    "infinite voxels": (_with_value(float("-inf")), "bad_0000.nii.gz: holds 0 NaN and 1 infinite voxel(s); replace them"),
    "float64 voxels beyond float32": (
        lambda f: _array(np.where(np.arange(8 * 9 * 10).reshape(8, 9, 10) == 7, 1e300, 1.0), f / "bad_0000.nii.gz"),
        "bad_0000.nii.gz: 1 voxel(s) with magnitude up to 1e+300, beyond float32's 3.4e+38 that autoseg computes in"),
    "NaN voxels in NRRD": (lambda f: _array(np.where(np.arange(8 * 9 * 10).reshape(8, 9, 10) == 7, np.nan, 1.0)
                                            .astype(np.float32), f / "bad_0000.nrrd"),
                           "bad_0000.nrrd: holds 1 NaN and 0 infinite voxel(s); replace them"),
    "text named .nii.gz": (lambda f: (f / "bad_0000.nii.gz").write_text("patient notes, not an image"),
                           "bad_0000.nii.gz: cannot be read (truncated or corrupt file?)"),
    "zero-byte file": (lambda f: (f / "bad_0000.nii.gz").write_bytes(b""),
                       "bad_0000.nii.gz: file is empty (0 bytes; an interrupted copy or export?); copy or export it again"),
    "text named .png": (lambda f: (f / "bad_0000.png").write_text("not a picture"),
                        "bad_0000.png: cannot be read as an image"),
    "truncated NIfTI": (lambda f: _truncated_nifti(f / "bad_0000.nii"),
                        "bad_0000.nii: file is truncated (its voxel data ends early); copy or export it again"),
    "DICOM folder holding two series": (_two_series, "bad: holds 2 DICOM series ("),
    "DICOM series of skewed orientation": (_skewed_series, "bad: 1.dcm's ImageOrientationPatient (1\\0\\0\\0.05\\0.99875\\0) "
                                                           "has row and column directions 2.87 degrees off perpendicular"),
    "spacing 0": (lambda f: _mha_header(f, (b"ElementSpacing = 1 1 1", b"ElementSpacing = 0 1 1")),
                  "bad_0000.mha: voxel spacing is zero or not a number (Refusing to change spacing"),
    "spacing 1e6": (lambda f: _array(_hippocampus(), f / "bad_0000.nii.gz", (1e6, 1.0, 1.0)),
                    "bad: voxel spacing (1, 1, 1e+06) mm: resampled to the model's spacing [1.5, 1.2, 1.2] this "
                    "35x51x35 image would hold 2.82e+10 voxels; fix the image header's voxel size"),
    "spacing in metres": (lambda f: _array(_hippocampus(), f / "bad_0000.nii.gz", (1e-3, 1e-3, 1e-3)),
                          "bad: voxel spacing (0.001, 0.001, 0.001) mm: resampled to the model's spacing [1.5, 1.2, 1.2] "
                          "this 35x51x35 image would shrink to 1x1x1 voxels; fix the image header's voxel size"),
    "zero-size image": (lambda f: _mha_header(f, (b"DimSize = 8 7 6", b"DimSize = 0 7 6"), data=False),
                        "bad_0000.mha: has size 0x7x6: the image holds no voxels; export it again"),
}


@pytest.mark.parametrize("kind", list(BAD_CASES))
def test_a_bad_case_is_named_and_the_good_one_predicted(kind: str, model: Path, tmp_path: Path) -> None:
    write, message = BAD_CASES[kind]
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(SOURCE, inputs / "good_0000.nii.gz")
    write(inputs)
    code, text = _predict(inputs, output, model)
    assert code == 2, text
    assert text.count("case(s) failed") == 1 and "1 of 2 case(s) failed" in text, text
    assert message in " ".join(text.split()), text
    assert sorted(p.name for p in output.iterdir()) == ["good.nii.gz", PREDICT_INFO]


def test_nrrd_inputs_in_cm_are_predicted_with_one_warning(model: Path, tmp_path: Path) -> None:
    """NRRD inputs whose spacing is in cm (space units, which ITK ignores) were predicted as mm in silence; they still
    are (as nnU-Net predicts them), with one warning for the run naming the files."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("a", "b"):
        path = inputs / f"{case}_0000.nrrd"
        sitk.WriteImage(sitk.ReadImage(str(SOURCE)), str(path), False)
        header, _, data = path.read_bytes().partition(b"\n\n")
        path.write_bytes(header + b'\nspace units: "cm" "cm" "cm"\n\n' + data)
    code, text = _predict(inputs, output, model)
    assert code == 0, text
    assert [line for line in text.splitlines() if line.startswith("WARNING")] == [
        f"WARNING 2 NRRD file(s) give their spacing in cm (their header's space units): {inputs / 'a_0000.nrrd'}, "
        f"{inputs / 'b_0000.nrrd'}; they are read as mm, as SimpleITK and nnU-Net read them; to use their true size, "
        'rewrite the spacing in mm (space directions or spacings, and space units "mm")']
    assert read_image(output / "a.nii.gz")[1].spacing == pytest.approx(read_image(SOURCE)[1].spacing)


def test_nifti_inputs_read_by_their_qform_are_predicted_with_one_warning(model: Path, tmp_path: Path) -> None:
    """A NIfTI whose sheared sform ITK ignores (it reads the qform, as nnU-Net does) was predicted in silence, though
    verify and fingerprint warn of it; predict now prints the same warning once for the run, naming the files."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("a", "b", "plain"):
        shutil.copy(SOURCE, inputs / f"{case}_0000.nii.gz")
    for case in ("a", "b"):
        _shear_sform(inputs / f"{case}_0000.nii.gz")
    code, text = _predict(inputs, output, model)
    assert code == 0, text
    assert [line for line in text.splitlines() if line.startswith("WARNING")] == [
        f"WARNING 2 NIfTI file(s) hold an sform (srow_x/y/z) that places them elsewhere than the qform ITK reads them "
        f"by (a sheared sform, or one whose sform_code is not 1): {inputs / 'a_0000.nii.gz'}, {inputs / 'b_0000.nii.gz'}; "
        "they are read by the qform, as SimpleITK and nnU-Net read them, while nibabel and most viewers show the sform; "
        "if the sform is the true placement, export them again with qform and sform equal (resampled where it is "
        "sheared)"]
    assert sorted(p.name for p in output.iterdir()) == ["a.nii.gz", "b.nii.gz", "plain.nii.gz", PREDICT_INFO]


def test_one_file_finds_its_case_channels_of_another_format(model: Path, tmp_path: Path) -> None:
    """``-i bad_0000.nii.gz`` left ``bad_0001.nrrd`` beside it out and predicted the case from one channel, where
    ``-i`` of the folder found both: the single file now finds the case's channels of any ending, as the folder does."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SOURCE, inputs / "bad_0000.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(SOURCE)), str(inputs / "bad_0001.nrrd"))
    for index, given in enumerate((inputs / "bad_0000.nii.gz", inputs)):
        code, text = _predict(given, tmp_path / f"out{index}", model)
        assert code == 2 and "case bad: has channel(s) 0000, 0001, the model expects 1 (0000: MRI)" in " ".join(text.split()), text
        assert not (tmp_path / f"out{index}" / "bad.nii.gz").exists()


@pytest.mark.parametrize("given", ["scan.nii.gz", "scan_0001.nrrd"])
def test_one_file_without_a_channel_suffix_is_channel_0000_as_in_its_folder(given: str, tmp_path: Path) -> None:
    """``-i scan.nii.gz`` was a case of one channel, and ``-i scan_0001.nrrd`` left scan.nii.gz out, where the folder
    holding them gave case scan both channels."""
    for name in ("scan.nii.gz", "scan_0001.nrrd", "scan2_0000.nii.gz", "scanner.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (case,) = discover_cases(tmp_path / given)
    expected = {0: tmp_path / "scan.nii.gz", 1: tmp_path / "scan_0001.nrrd"}
    assert case.case_id == "scan" and case.channels == expected
    assert next(c for c in discover_cases(tmp_path) if c.case_id == "scan").channels == expected


def test_an_input_with_a_trailing_space_is_shown_quoted(tmp_path: Path) -> None:
    """``-i "in "`` was refused as 'in : input not found', the space unseen; the path is now quoted, and the folder
    without the space named."""
    (tmp_path / "in").mkdir()
    with pytest.raises(InferenceError, match=re.escape(f"'{tmp_path}/in ': input not found; {tmp_path}/in does: remove "
                                                       "the white space from -i; give a folder of images")):
        discover_cases(tmp_path / "in ")


@pytest.mark.parametrize("name", ["patient 01", "müller", "患者_7", "a b c (copy)"])
def test_case_names_with_spaces_and_non_ascii_just_work(name: str, model: Path, tmp_path: Path) -> None:
    inputs, output = tmp_path / f"in {name}", tmp_path / f"out {name}"
    inputs.mkdir()
    shutil.copy(SOURCE, inputs / f"{name}_0000.nii.gz")
    code, text = _predict(inputs, output, model)
    assert code == 0, text
    labels, _ = read_image(output / f"{name}.nii.gz")
    assert labels.shape == read_image(SOURCE)[0].shape


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("empty folder", "in: no images found; expected <case>_0000<ending> files (.nii.gz, .nii,"),
        ("only notes", "in: no images found (not images: README.txt, labels.json); expected <case>_0000<ending>"),
        ("a cut-short DICOM file", "in: 1.dcm cannot be read as DICOM (truncated or corrupt copy?)"),
        ("a dataset folder", "in: is a dataset folder (dataset.json, imagesTr); give the folder of the images to "
                             "predict, e.g. -i "),
        ("output = input", "output folder equals the input folder; choose another output folder"),
        ("output inside input", "output folder lies inside the input folder"),
        ("output is a file", "afile: exists and is not a folder; give a folder (new or existing) for the outputs"),
        ("two files for one channel", "in: good.nii.gz and good_0000.nii.gz are both channel 0000 of case good (a name "
                                      "without _XXXX is channel 0000; one case has one file per channel); rename or remove one"),
    ],
)
def test_whole_run_refusals_write_nothing(layout: str, message: str, model: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    if layout == "only notes":
        (inputs / "README.txt").write_text("cases follow")
        (inputs / "labels.json").write_text("{}")
    elif layout == "a cut-short DICOM file":  # was 'no images found (not images: 1.dcm)'
        whole = (DICOM / "Study1" / "13_HCropVolume" / "1.dcm").read_bytes()
        (inputs / "1.dcm").write_bytes(whole[: len(whole) // 2])
    elif layout == "a dataset folder":  # imagesTr and labelsTr failed as two folders holding no DICOM series
        (inputs / "dataset.json").write_text("{}")
        for folder in ("imagesTr", "labelsTr"):
            (inputs / folder).mkdir()
            shutil.copy(SOURCE, inputs / folder / "good_0000.nii.gz")
    elif layout.startswith("output"):
        shutil.copy(SOURCE, inputs / "good_0000.nii.gz")
    elif layout == "two files for one channel":  # one would silently not be predicted
        shutil.copy(SOURCE, inputs / "good_0000.nii.gz")
        shutil.copy(SOURCE, inputs / "good.nii.gz")
    (tmp_path / "afile").write_text("keep")
    output = {"output = input": inputs, "output inside input": inputs / "predictions", "output is a file": tmp_path / "afile"}.get(
        layout, tmp_path / "out")
    before = sorted(p.name for p in inputs.rglob("*"))
    code, text = _predict(inputs, output, model)
    assert code == 2 and message in " ".join(text.split()), text
    assert sorted(p.name for p in inputs.rglob("*")) == before
    assert not (tmp_path / "out").exists() and (tmp_path / "afile").read_text() == "keep"


def test_a_run_that_predicts_no_case_leaves_no_run_record(model: Path, tmp_path: Path) -> None:
    """Every case refused (here: two channels for a one-channel model): predict_info.json stayed behind in a
    folder holding no prediction, and a rerun with another model was refused as mixing two models' outputs."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for channel in ("0000", "0001"):
        shutil.copy(SOURCE, inputs / f"bad_{channel}.nii.gz")
    code, text = _predict(inputs, output, model)
    assert code == 2 and "1 of 1 case(s) failed" in text and "no case was predicted" in text, text
    assert not any(output.iterdir())
    assert _predict(inputs, output, model)[0] == 2 and not any(output.iterdir())
    # A record of an earlier run that wrote cases stays.
    shutil.copy(SOURCE, inputs / "good_0000.nii.gz")
    assert _predict(inputs, output, model)[0] == 2
    (inputs / "good_0000.nii.gz").unlink()
    assert _predict(inputs, output, model)[0] == 2
    assert sorted(p.name for p in output.iterdir()) == ["good.nii.gz", PREDICT_INFO]
    # A --num-parts part without cases writes nothing either (its record could outlive a sibling part's files).
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(tmp_path / "part"), "-m", str(model),
                                 "--num-parts", "2", "--part-id", "1"])
    assert result.exit_code == 0 and "0 case(s) predicted" in result.output and not any((tmp_path / "part").iterdir())


def test_a_read_only_output_folder_is_refused_before_any_case(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing folder that cannot be written (a read-only mount, another user's folder) passed
    ``mkdir(exist_ok=True)``: every case was predicted, then refused, each naming a temporary file."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(SOURCE, inputs / "good_0000.nii.gz")
    assert _predict(inputs, output, model)[0] == 0
    refuse_writes_in(output, monkeypatch)
    monkeypatch.setattr("autoseg.inference.batch.predict_array", lambda *args, **kwargs: pytest.fail("a case was predicted"))
    code, text = _predict(inputs, output, model)
    assert code == 2 and f"{output}: Read-only file system; the file system is read-only; choose a writable folder" in text, text
    # --continue over a finished folder writes nothing: no error
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta",
                                 "--mixed-precision", "off", "--continue"])
    assert result.exit_code == 0 and "1 skipped" in result.output, result.output


def test_continue_into_a_read_only_folder_refuses_up_front_a_case_to_predict_again(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every output there, --continue skipped the writable check; a case whose label map was off its image's
    grid was then predicted in full and refused at the run record (naming predict_info.json, not the folder)."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("kept", "moved"):
        shutil.copy(SOURCE, inputs / f"{case}_0000.nii.gz")
    assert _predict(inputs, output, model)[0] == 0
    image = sitk.ReadImage(str(inputs / "moved_0000.nii.gz"))
    image.SetSpacing((2.0, 1.0, 1.0))
    sitk.WriteImage(image, str(inputs / "moved_0000.nii.gz"))
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    refuse_writes_in(output, monkeypatch)
    monkeypatch.setattr("autoseg.inference.batch.predict_array", lambda *args, **kwargs: pytest.fail("a case was predicted"))
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta",
                                 "--mixed-precision", "off", "--continue"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"error: {output}: Read-only file system; the file system is read-only; choose a writable folder" in result.output
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


def test_a_file_whose_ending_itk_does_not_read_as_spelled_is_refused_without_itk_noise(
    model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Choosing its output's ending (and --continue's grid check) probed a ``.Nii`` input's header with ITK, which
    printed '** mixed case extension '.Nii' is not valid' four times before the case was refused by name."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(SOURCE, inputs / "good_0000.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(SOURCE)), str(inputs / "odd_0000.nii"))
    (inputs / "odd_0000.nii").rename(inputs / "odd_0000.Nii")
    code, text = _predict(inputs, tmp_path / "out", model)
    assert code == 2 and "ITK, the image reader, does not read the ending '.Nii' in this case" in text, text
    assert (tmp_path / "out" / "good.nii.gz").is_file()
    assert "mixed case extension" not in "".join(capfd.readouterr())


def test_continue_predicts_again_an_empty_or_damaged_label_map(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--continue kept a label map emptied or cut short since it was written (an interrupted copy) as a finished case,
    which evaluate then refused; such a case is predicted again, with a note saying why."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for case in ("empty", "cut", "kept"):
        shutil.copy(SOURCE, inputs / f"{case}_0000.nii.gz")
    assert _predict(inputs, output, model)[0] == 0
    kept = (output / "kept.nii.gz").read_bytes()
    (output / "empty.nii.gz").write_bytes(b"")
    (output / "cut.nii.gz").write_bytes(kept[:100])
    capsys.readouterr()
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--no-tta",
                                 "--mixed-precision", "off", "--continue"])
    assert result.exit_code == 0 and "2 case(s) predicted, 1 skipped" in result.output, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: case cut: its label map {output / 'cut.nii.gz'} has a header ITK cannot read (damaged or cut short); "
        "predicting it again",
        f"note: case empty: its label map {output / 'empty.nii.gz'} is empty (0 bytes); predicting it again",
    ], result.output
    assert read_image(output / "empty.nii.gz")[0].shape == read_image(output / "cut.nii.gz")[0].shape
    assert (output / "kept.nii.gz").read_bytes() == kept
