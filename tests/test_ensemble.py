"""Ensembling saved probabilities: the mean, label maps for classes and regions, refused inputs."""

from __future__ import annotations

import errno
import json
import re
import shutil

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import EvaluationError
from autoseg.evaluation.ensemble import ensemble_folders, probabilities_to_labels
from autoseg.utils.probability_files import probability_paths, write_probability_files

from test_atomic import refuse_writes_in

LABELS = {"background": 0, "a": 1, "b": 2}
GEOMETRY = Geometry(spacing=(3.0, 0.5, 0.7), origin=(1.0, 2.0, 3.0), direction=tuple(np.eye(3).ravel()))
SHAPE = (2, 4, 5)


def _save(folder, case, probabilities, labels=LABELS, regions_class_order=None, geometry=GEOMETRY):
    """A prediction folder entry as ``autoseg predict --save-probabilities`` writes it (its own writer)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_probability_files(folder, case, probabilities, geometry, labels, regions_class_order)
    write_image(np.argmax(probabilities, axis=0).astype(np.uint8), geometry, folder / f"{case}.nii.gz")


def _two_folders_of_case_x(tmp_path):
    """Two prediction folders m0, m1 holding case ``x`` (random softmax, seed 0)."""
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "x", _softmax(rng))
    return dirs


def _softmax(rng, channels=3, shape=SHAPE):
    logits = rng.standard_normal((channels, *shape)) * 3
    e = np.exp(logits)
    return (e / e.sum(axis=0)).astype(np.float16)


def test_ensemble_is_the_mean_of_probabilities(tmp_path):
    rng = np.random.default_rng(0)
    inputs = {case: [_softmax(rng) for _ in range(3)] for case in ("x", "y")}
    dirs = [tmp_path / f"m{i}" for i in range(3)]
    for case, probs in inputs.items():
        for folder, p in zip(dirs, probs):
            _save(folder, case, p)
    assert ensemble_folders(dirs, tmp_path / "out", save_probabilities=True, num_workers=1) == ["x", "y"]
    for case, probs in inputs.items():
        mean = np.mean([p.astype(np.float32) for p in probs], axis=0)
        seg, geometry = read_image(tmp_path / "out" / f"{case}.nii.gz")
        assert np.array_equal(seg, np.argmax(mean, axis=0)) and seg.dtype == np.uint8
        assert np.allclose(geometry.spacing, GEOMETRY.spacing) and np.allclose(geometry.origin, GEOMETRY.origin)
        with np.load(tmp_path / "out" / f"{case}.npz", allow_pickle=False) as saved:
            np.testing.assert_array_equal(saved["probabilities"], mean.astype(np.float16))
        assert json.loads((tmp_path / "out" / f"{case}.json").read_text())["shape"] == [3, *SHAPE]


def test_regions_are_thresholded_in_regions_class_order():
    labels = {"background": 0, "whole": [1, 2], "core": [2]}
    probs = np.array([[0.9, 0.9, 0.2, 0.6], [0.7, 0.4, 0.9, 0.5]])[:, None, None, :]
    seg = probabilities_to_labels(probs, labels, [1, 2])
    # channel 0 (whole) writes 1 above 0.5, then channel 1 (core) overwrites with 2 above 0.5
    assert seg.ravel().tolist() == [2, 1, 2, 1]


def test_class_channels_map_to_label_values_without_ignore():
    labels = {"background": 0, "a": 1, "ignore": 2}
    probs = np.array([[0.6, 0.1], [0.4, 0.9]])[:, None, None, :]
    assert probabilities_to_labels(probs, labels, None).ravel().tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"3 probability channels for 2 labels \(background included\)"):
        probabilities_to_labels(np.zeros((3, 1, 1, 2)), labels, None)


def test_mismatched_shapes_are_refused_naming_the_case(tmp_path):
    rng = np.random.default_rng(1)
    _save(tmp_path / "m0", "x", _softmax(rng))
    _save(tmp_path / "m1", "x", _softmax(rng, shape=(2, 4, 6)))
    with pytest.raises(EvaluationError, match=r"^\S*m1/x\.json: shape \[3, 2, 4, 6\] differs from .*m0/x\.json \[3, 2, 4, 5\] for case x"):
        ensemble_folders([tmp_path / "m0", tmp_path / "m1"], tmp_path / "out", num_workers=1)


def test_mismatched_labels_are_refused_naming_the_case(tmp_path):
    rng = np.random.default_rng(2)
    _save(tmp_path / "m0", "x", _softmax(rng))
    _save(tmp_path / "m1", "x", _softmax(rng), labels={"background": 0, "a": 1, "c": 2})
    with pytest.raises(EvaluationError, match=r"m1/x\.json: labels .* differs from .*m0/x\.json .* for case x; ensemble only predictions of the same images and labels"):
        ensemble_folders([tmp_path / "m0", tmp_path / "m1"], tmp_path / "out", num_workers=1)


def test_probabilities_not_matching_the_sidecar_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    _save(tmp_path / "m0", "x", _softmax(rng))
    _save(tmp_path / "m1", "x", _softmax(rng))
    np.savez_compressed(tmp_path / "m1" / "x.npz", probabilities=_softmax(rng, channels=4))
    with pytest.raises(EvaluationError, match=r"m1/x\.npz: probabilities of case x have shape \[4, 2, 4, 5\], expected \[3, 2, 4, 5\] \(the sidecar.s\); re-run predict"):
        ensemble_folders([tmp_path / "m0", tmp_path / "m1"], tmp_path / "out", num_workers=1)


def test_missing_case_is_named_with_the_count_of_that_folder(tmp_path):
    """The count is of the cases that folder lacks: it read '2 case(s) missing in all', though m0 held both."""
    rng = np.random.default_rng(4)
    for case in ("x", "y", "z"):
        _save(tmp_path / "m0", case, _softmax(rng))
    _save(tmp_path / "m1", "x", _softmax(rng))
    with pytest.raises(EvaluationError) as info:
        ensemble_folders([tmp_path / "m0", tmp_path / "m1"], tmp_path / "out", num_workers=1)
    assert str(info.value) == (
        f"{tmp_path / 'm1' / 'y.npz'}: probabilities of case y missing (present in {tmp_path / 'm0'}); {tmp_path / 'm1'} "
        "lacks 2 case(s) that other folders hold; every folder must hold the same cases"
    )


def test_one_folder_is_not_an_ensemble(tmp_path):
    with pytest.raises(EvaluationError, match="ensemble needs at least two prediction folders, got 1"):
        ensemble_folders([tmp_path], tmp_path / "out")


def _two_models(tmp_path):
    rng = np.random.default_rng(5)
    for folder in ("m0", "m1"):
        _save(tmp_path / folder, "x", _softmax(rng))
    return tmp_path / "m0", tmp_path / "m1"


def test_output_folder_that_is_an_input_is_refused_and_the_input_kept(tmp_path):
    m0, m1 = _two_models(tmp_path)
    before = {p.name: p.read_bytes() for p in m0.iterdir()}
    with pytest.raises(EvaluationError, match=r"m0: output folder equals the input folder; choose another output folder"):
        ensemble_folders([m0, m1], m0, save_probabilities=True, num_workers=1)
    assert {p.name: p.read_bytes() for p in m0.iterdir()} == before


def test_a_folder_given_twice_is_refused(tmp_path):
    m0, m1 = _two_models(tmp_path)
    with pytest.raises(EvaluationError, match=r"m0: given twice as an input folder \(it would count double in the average\)"):
        ensemble_folders([m0, m1, tmp_path / "." / "m0"], tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    m0, m1 = _two_models(tmp_path)
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(EvaluationError, match=r"afile: exists and is not a folder; give a folder"):
        ensemble_folders([m0, m1], tmp_path / "afile", num_workers=1)
    assert (tmp_path / "afile").read_text() == "keep"


def test_unreadable_probabilities_name_the_file_and_the_fix(tmp_path):
    m0, m1 = _two_models(tmp_path)
    data = (m1 / "x.npz").read_bytes()
    (m1 / "x.npz").write_bytes(data[: len(data) // 2])  # a truncated copy
    with pytest.raises(EvaluationError, match=r"m1/x\.npz: probabilities of case x cannot be read \(BadZipFile: .*\); re-run predict with --save-probabilities"):
        ensemble_folders([m0, m1], tmp_path / "out", num_workers=1)


@pytest.mark.parametrize("geometry", [{}, {"spacing": "x", "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}, None])
@pytest.mark.parametrize("which", ["m0", "m1"])
def test_a_malformed_sidecar_geometry_names_the_file(tmp_path, which, geometry):
    """An edited sidecar failed as a bare KeyError: 'spacing' naming no file."""
    _two_models(tmp_path)
    sidecar = tmp_path / which / "x.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "geometry": geometry}))
    with pytest.raises(EvaluationError, match=rf"^\S*{which}/x\.json: geometry of case x is malformed \(.*\); re-run predict"):
        ensemble_folders([tmp_path / "m0", tmp_path / "m1"], tmp_path / "out", num_workers=1)


def test_one_path_instead_of_a_list_is_named(tmp_path):
    """A path string was read character by character ('/: given twice as an input folder')."""
    _save(tmp_path / "m0", "x", _softmax(np.random.default_rng(0)))
    for one in (str(tmp_path / "m0"), tmp_path / "m0"):
        with pytest.raises(EvaluationError, match=r"m0: give a list of at least two prediction folders to ensemble, not one path"):
            ensemble_folders(one, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()


def test_an_upper_case_file_ending_is_kept(tmp_path):
    """Label maps named ``.NII.GZ`` (a dataset's file_ending may spell it so) give ``.NII.GZ`` ensembles."""
    dirs = _two_folders_of_case_x(tmp_path)
    for folder in dirs:
        (folder / "x.nii.gz").rename(folder / "x.NII.GZ")
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["x.NII.GZ"]
    assert read_image(tmp_path / "out" / "x.NII.GZ")[0].shape == SHAPE


@pytest.mark.parametrize("ending", ["nii.gz", ".jpg", ".nii.gzz"])
def test_an_explicit_file_ending_that_is_no_image_ending_is_refused_before_any_case(tmp_path, ending):
    dirs = _two_folders_of_case_x(tmp_path)
    with pytest.raises(EvaluationError, match=rf"--file-ending '{ending}': not an image file ending; give one of .*leading dot"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=ending)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ending", [".Nii.gz", ".MHA"])
def test_an_explicit_file_ending_itk_cannot_read_back_is_refused_before_any_case(tmp_path, ending):
    """``--file-ending .Nii.gz`` failed in every case ('ITK ... cannot read the ending') and left a marked empty folder."""
    dirs = _two_folders_of_case_x(tmp_path)
    with pytest.raises(EvaluationError, match=rf"--file-ending '{re.escape(ending)}': ITK, the image reader, cannot read "
                                              rf"this spelling back; give '{re.escape(ending.lower())}'"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=ending)
    assert not (tmp_path / "out").exists()


def test_an_explicit_file_ending_is_used_as_spelled(tmp_path):
    dirs = _two_folders_of_case_x(tmp_path)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=".NRRD")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["x.NRRD"]


def test_a_folder_of_label_maps_autoseg_did_not_write_is_not_overwritten(tmp_path):
    """``-o`` on the references (or a dataset's labelsTr) replaced the label maps of the same names without a
    word; a rerun into ensemble's own output folder still replaces its outputs."""
    dirs = _two_folders_of_case_x(tmp_path)
    references = tmp_path / "labelsTr"
    write_image(np.zeros(SHAPE, np.uint8), GEOMETRY, references / "x.nii.gz")
    before = (references / "x.nii.gz").read_bytes()
    with pytest.raises(EvaluationError, match=r"labelsTr: holds 1 file\(s\) not written by autoseg ensemble \(x\.nii\.gz; "
                                              r".*autoseg ensemble would put its own among them, replacing 1 of the same "
                                              r"name\(s\), and evaluate would score the mix\. Choose an empty or new output folder"):
        ensemble_folders(dirs, references, num_workers=1)
    assert (references / "x.nii.gz").read_bytes() == before
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)  # its own folder: rerun allowed


def test_probabilities_autoseg_did_not_write_are_not_overwritten(tmp_path):
    """A folder holding another tool's x.npz (no label maps): --save-probabilities would replace it; a README does
    not block."""
    dirs = _two_folders_of_case_x(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "x.npz").write_bytes(b"their probabilities")
    (theirs / "README.md").write_text("mine")
    with pytest.raises(EvaluationError, match=r"theirs: holds 1 file\(s\) not written by autoseg ensemble \(x\.npz; .*replacing 1"):
        ensemble_folders(dirs, theirs, save_probabilities=True, num_workers=1)
    assert (theirs / "x.npz").read_bytes() == b"their probabilities"
    assert ensemble_folders(dirs, theirs, num_workers=1) == ["x"]  # without probabilities no name is taken



def test_a_read_only_output_folder_is_refused_before_any_case(tmp_path, monkeypatch):
    """A folder ensembled into before and now read-only passed the output checks (its marker written): every
    case was averaged and then refused, each naming its own temporary file."""
    dirs = _two_folders_of_case_x(tmp_path)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    refuse_writes_in(tmp_path / "out", monkeypatch)
    monkeypatch.setattr("autoseg.evaluation.ensemble.ensemble_case", lambda *args: pytest.fail("a case was ensembled"))
    with pytest.raises(OSError) as raised:
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert raised.value.errno == errno.EROFS and raised.value.filename == str(tmp_path / "out")

SHEARED = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0.2873, 0.0, 0.0, 0.9578, 0.0, 0.0, 0.0, 1.0))  # x sheared along y: no rotation
GEOMETRY_2D = Geometry(spacing=(999.0, 0.5, 0.25), origin=(10.0, 20.0), direction=(1.0, 0.0, 0.0, 1.0))
PNG_GEOMETRY = Geometry(spacing=(999.0, 1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))  # as PNGs read


@pytest.mark.parametrize(("ending", "geometry", "lost"), [
    (".png", GEOMETRY_2D, r"spacing \(999, 0.5, 0.25\) vs \(999, 1, 1\); origin \(10, 20\) vs \(0, 0\)"),
    (".png", GEOMETRY, "3D vs 2D"),
    (".tif", GEOMETRY, r"origin \(1, 2, 3\) vs \(0, 0, 0\)"),  # a 3D TIFF keeps the spacing only
])
def test_a_picture_ending_that_would_drop_the_geometry_is_refused_before_any_case(tmp_path, ending, geometry, lost):
    """``--file-ending .png`` over 2D NIfTI predictions of 0.5 x 0.25 mm pixels wrote PNGs read back as 1 mm pixels
    at the origin, in silence (3D predictions failed case by case, and so did a 3D TIFF of a shifted volume)."""
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "x", _softmax(rng, shape=(1, 4, 5)), geometry=geometry)
    with pytest.raises(EvaluationError, match=rf"--file-ending {ending}: cannot hold the voxel spacing, origin or direction "
                                              rf"of case x \(case vs file: {lost}.*\); give --file-ending .nii.gz"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=ending)
    assert not (tmp_path / "out").exists()


def test_a_3d_tiff_ending_is_written_for_upright_volumes_at_the_origin(tmp_path):
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    upright = Geometry(spacing=(3.0, 0.5, 0.7), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
    for folder in dirs:
        _save(folder, "x", _softmax(rng), geometry=upright)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=".tif")
    seg, geometry = read_image(tmp_path / "out" / "x.tif")
    assert seg.shape == SHAPE and np.allclose(geometry.spacing, upright.spacing)


def test_each_case_keeps_the_ending_predict_gave_it(tmp_path):
    """predict writes a sheared case as .nrrd (NIfTI holds rotations only) beside .nii.gz cases; ensemble wrote every
    case in the first case's ending, the sheared one as NIfTI with its direction turned into a rotation."""
    sheared = SHEARED
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "a_plain", _softmax(rng))
        write_probability_files(folder, "sheared", _softmax(rng), sheared, LABELS, None)
        write_image(np.zeros(SHAPE, np.uint8), sheared, folder / "sheared.nrrd")
    assert ensemble_folders(dirs, tmp_path / "out", num_workers=1) == ["a_plain", "sheared"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["a_plain.nii.gz", "sheared.nrrd"]
    assert np.allclose(read_image(tmp_path / "out" / "sheared.nrrd")[1].direction, sheared.direction, atol=1e-3)


@pytest.mark.parametrize("ending", [".nii.gz", ".NII.GZ", ".nii"])
def test_a_nifti_ending_for_a_sheared_case_is_refused_before_any_case(tmp_path, ending):
    """NIfTI stores rotations only: ``--file-ending .nii.gz`` wrote a sheared case with its direction turned into a
    rotation, in silence; it is refused as predict avoids it (predict writes such a case as .nrrd)."""
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "a_plain", _softmax(rng))
        write_probability_files(folder, "sheared", _softmax(rng), SHEARED, LABELS, None)
    with pytest.raises(EvaluationError, match=rf"--file-ending {re.escape(ending)}: cannot hold .* of case sheared "
                                              r"\(case vs file: direction .* is sheared, not a rotation.*\); give "
                                              r"--file-ending \.nrrd or \.mha, which keep them, or leave it out"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=ending)
    assert not (tmp_path / "out").exists()


def test_a_png_ending_is_written_for_predictions_of_pngs(tmp_path):
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "x", _softmax(rng, shape=(1, 4, 5)), geometry=PNG_GEOMETRY)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=".png")
    assert read_image(tmp_path / "out" / "x.png")[0].shape == (1, 4, 5)


def _ensemble_inputs(tmp_path, names, cases, seed):
    """Prediction folders ``names`` under ``tmp_path`` holding ``cases`` (random softmax from ``seed``)."""
    rng = np.random.default_rng(seed)
    for name in names:
        for case in cases:
            _save(tmp_path / name, case, _softmax(rng))
    return [tmp_path / name for name in names]


def _folder_bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_ensemble_of_other_inputs_into_a_filled_folder_is_refused(tmp_path):
    """A+B over 6 cases into OUT, then C+D over 2 cases into OUT left 2 new label maps beside 4 stale ones,
    and evaluate scored the mix; so did A+B again after A was predicted anew."""
    first = _ensemble_inputs(tmp_path, ["a", "b"], [f"case{i}" for i in range(6)], seed=0)
    ensemble_folders(first, tmp_path / "out", num_workers=1)
    before = _folder_bytes(tmp_path / "out")
    other = _ensemble_inputs(tmp_path, ["c", "d"], ["case0", "case1"], seed=1)
    with pytest.raises(EvaluationError, match=r"out: holds the outputs of autoseg ensemble over .*/a, .*/b, not over "
                                              r".*/c, .*/d \(\.autoseg_outputs\.json\); the new outputs would stand beside "
                                              r"stale ones\. Choose another output folder, or delete this one"):
        ensemble_folders(other, tmp_path / "out", num_workers=1)
    _ensemble_inputs(tmp_path, ["a"], [f"case{i}" for i in range(6)], seed=2)  # a predicted anew
    with pytest.raises(EvaluationError, match=r"out: holds the outputs of autoseg ensemble over .*/a, .*/b before some of "
                                              r"their files changed or were removed"):
        ensemble_folders(first, tmp_path / "out", num_workers=1)
    assert _folder_bytes(tmp_path / "out") == before


def test_the_refusal_of_an_ensemble_sharing_a_folder_with_the_earlier_one_names_each_folder_once(tmp_path):
    """A+B into OUT, then A+C into OUT was refused as 'over .../a, .../b, not over .../a, .../c': A named twice, as if
    the new run did not read it either; only the folders that differ are set against each other now."""
    a, b, c = _ensemble_inputs(tmp_path, ["a", "b", "c"], ["case0"], seed=0)
    ensemble_folders([a, b], tmp_path / "out", num_workers=1)
    with pytest.raises(EvaluationError) as refused:
        ensemble_folders([a, c], tmp_path / "out", num_workers=1)
    assert f"holds the outputs of autoseg ensemble over {a}, {b}, not over {c} (" in str(refused.value)
    ensemble_folders([a, b, c], tmp_path / "out3", num_workers=1)
    with pytest.raises(EvaluationError) as refused:
        ensemble_folders([a, b], tmp_path / "out3", num_workers=1)
    assert f"ensemble over {a}, {b} and also {c}, which this run does not read (" in str(refused.value)


@pytest.mark.parametrize("name", ["case1.nii.gz", "case1.npz"])
def test_a_folder_where_an_ensemble_output_goes_is_refused_before_any_case(tmp_path, name):
    """A folder named as one case's output (case1.nii.gz, or its probabilities) in the output folder: every other
    case was written, then that one failed with a bare IsADirectoryError."""
    inputs = _ensemble_inputs(tmp_path, ["a", "b"], ["case0", "case1"], seed=0)
    (tmp_path / "out" / name).mkdir(parents=True)
    with pytest.raises(EvaluationError, match=rf"out/{name}: is a folder where autoseg ensemble writes a file; move "
                                              "or rename that folder, or give -o another folder"):
        ensemble_folders(inputs, tmp_path / "out", num_workers=1, save_probabilities=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]


def test_an_ensemble_rerun_over_its_folders_with_cases_added_extends_its_folder(tmp_path):
    """A+B over 2 cases into OUT, then the same A+B with 2 more cases predicted into them: refused as another run's
    folder, though the new outputs are the same kind over a superset. A case removed from the inputs is still
    refused (its output would stand stale)."""
    dirs = _ensemble_inputs(tmp_path, ["a", "b"], ["case0", "case1"], seed=0)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    kept = (tmp_path / "out" / "case0.nii.gz").read_bytes()
    _ensemble_inputs(tmp_path, ["a", "b"], ["case2", "case3"], seed=1)
    assert ensemble_folders(dirs, tmp_path / "out", num_workers=1) == ["case0", "case1", "case2", "case3"]
    assert (tmp_path / "out" / "case0.nii.gz").read_bytes() == kept
    for folder in dirs:
        for path in [*probability_paths(folder, "case3"), folder / "case3.nii.gz"]:
            path.unlink()
    with pytest.raises(EvaluationError, match=r"before some of their files changed or were removed"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)


def test_an_ensemble_into_a_folder_of_predict_is_refused(tmp_path):
    dirs = _two_folders_of_case_x(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predict_info.json").write_text("{}")
    with pytest.raises(EvaluationError, match=r"out: holds the label maps of an autoseg predict run \(predict_info\.json\); "
                                              r"autoseg ensemble would mix its own with them\. Choose another output folder"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predict_info.json"]


def test_the_same_ensemble_rerun_after_a_kill_resumes(tmp_path):
    dirs = _ensemble_inputs(tmp_path, ["b", "a"], ["x", "y"], seed=3)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    expected = _folder_bytes(tmp_path / "out")
    (tmp_path / "out" / "y.nii.gz").unlink()  # the case a killed run did not reach
    assert ensemble_folders(dirs[::-1], tmp_path / "out", num_workers=1) == ["x", "y"]  # -i in another order: the same
    assert _folder_bytes(tmp_path / "out") == expected


def test_a_file_given_for_an_input_folder_is_named_as_a_file(tmp_path):
    m0, m1 = _two_models(tmp_path)
    with pytest.raises(EvaluationError, match=r"m0/x\.npz: is a file, not a folder; give the folder that holds the predictions "
                                              r"and their saved probabilities"):
        ensemble_folders([m0 / "x.npz", m1], tmp_path / "out", num_workers=1)


def test_a_symbolic_link_loop_given_for_a_folder_is_named_as_such(tmp_path):
    """``-i loop1`` (loop1 -> loop2 -> loop1) raised RuntimeError('Symlink loop') from Path.resolve, an internal error;
    ``-o loop1`` said loop1 points to 'loop2, which does not exist'."""
    m0, m1 = _two_models(tmp_path)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(EvaluationError, match=r"loop1: a symbolic link loop \(.*\), which leads to no folder; point the link at "
                                              r"the folder that holds the predictions .*, or give another input folder \(-i/--input\)$"):
        ensemble_folders([tmp_path / "loop1", m1], tmp_path / "out", num_workers=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "loop1").symlink_to("loop1")  # a link to itself
    with pytest.raises(EvaluationError, match=r"out/loop1: a symbolic link loop .*; point the link at a folder, or give another "
                                              r"folder for the outputs$"):
        ensemble_folders([m0, m1], tmp_path / "out" / "loop1" / "run", num_workers=1)


def test_predict_into_an_ensembles_folder_is_refused(tmp_path):
    """predict of other cases into an ensemble's folder put its label maps beside the ensemble's, under a
    predict_info.json that then described them all."""
    from autoseg.errors import InferenceError
    from autoseg.inference.batch import check_predict_record

    ensemble_folders(_two_folders_of_case_x(tmp_path), tmp_path / "out", num_workers=1)
    with pytest.raises(InferenceError, match=r"out: holds the outputs of autoseg ensemble \(\.autoseg_outputs\.json\); "
                                             r"autoseg predict would mix its own with them\. Choose another output folder"):
        check_predict_record(tmp_path / "out", {"model_folder": "m"}, [tmp_path / "out" / "other.nii.gz"])


def test_a_case_id_with_pattern_characters_keeps_its_file_ending(tmp_path):
    """The label file ending of case ``scan[1]`` was looked for with ``scan[1].*`` as a pattern: no file matched and
    the ensemble was refused ('cannot tell the label file ending')."""
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "scan[1]", _softmax(rng))
    assert ensemble_folders(dirs, tmp_path / "out", num_workers=1) == ["scan[1]"]
    assert read_image(tmp_path / "out" / "scan[1].nii.gz")[0].shape == SHAPE


def test_case_whose_probabilities_all_folders_lack_is_refused_not_dropped(tmp_path):
    """Both folders hold label maps of x and y but probabilities of x only: y was left out of the ensemble without a
    word (the output held x alone); it is refused, naming the missing file, before the output folder is made."""
    rng = np.random.default_rng(0)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    for folder in dirs:
        _save(folder, "x", _softmax(rng))
        _save(folder, "y", _softmax(rng))
        for path in probability_paths(folder, "y"):
            path.unlink()
    expected = re.escape(f"{dirs[0] / 'y.npz'}: probabilities of case y not found beside its label map (1 case(s) of ")
    with pytest.raises(EvaluationError, match=expected + ".*re-run predict with --save-probabilities"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit", [{"geometry": Geometry((2.0, 2.0, 2.0), GEOMETRY.origin, GEOMETRY.direction).to_dict()},
                                  {"labels": {"background": 0, "a": 1, "c": 2}}])
def test_a_case_whose_folders_disagree_is_refused_before_any_case_is_written(tmp_path, edit):
    """Case y's sidecars disagree (geometry, labels): x and z were ensembled and written, y failed, and the output
    folder held a partial ensemble; every case's sidecars are checked before the output folder is made."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y", "z"], seed=4)
    sidecar = probability_paths(dirs[1], "y").sidecar
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **edit}))
    with pytest.raises(EvaluationError, match=rf"^{re.escape(str(sidecar))}: \w+ .*differs from {re.escape(str(dirs[0]))}/y\.json"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=2)
    assert not (tmp_path / "out").exists()


def _models_with_dataset_json(tmp_path, descriptions):
    """Cross-validation folders ``model<i>/crossval_folds_0`` of case ``x``, each model folder holding the dataset.json
    ``descriptions[i]`` (as find-best ensembles them)."""
    rng = np.random.default_rng(5)
    dirs = []
    for i, description in enumerate(descriptions):
        folder = tmp_path / f"model{i}" / "crossval_folds_0"
        _save(folder, "x", _softmax(rng))
        (folder.parent / "dataset.json").write_text(json.dumps(description))
        dirs.append(folder)
    return dirs


DATASET = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz", "name": "D"}


def test_the_ensemble_writes_the_dataset_json_of_its_inputs(tmp_path):
    """The output held no dataset.json (nnU-Net copies the first input's), so postprocess determine on it, with
    references that have none beside them, was refused for want of -d; now it finds the one the ensemble wrote."""
    from cli_helpers import autoseg

    dirs = _models_with_dataset_json(tmp_path, [DATASET, {**DATASET, "name": "other name, same labels"}])
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == DATASET
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(tmp_path / "out" / "x.nii.gz", refs)
    autoseg("postprocess", "determine", "-p", tmp_path / "out", "-r", refs, "-np", 1)
    assert json.loads((tmp_path / "out" / "postprocessing.json").read_text())["file_ending"] == ".nii.gz"


def test_inputs_whose_dataset_json_differ_in_file_ending_only_are_ensembled_with_the_firsts(tmp_path, capsys):
    """Inputs whose dataset.json differ in file_ending only were refused, though each case keeps its own ending: the
    first's is copied."""
    dirs = _models_with_dataset_json(tmp_path, [DATASET, {**DATASET, "file_ending": ".nrrd"}])
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == DATASET
    assert (tmp_path / "out" / "x.nii.gz").is_file()
    assert "note:" not in capsys.readouterr().err


def test_a_dataset_json_that_is_not_the_predictions_one_is_skipped_with_a_note(tmp_path, capsys):
    """The probabilities' labels are the authority: a dataset.json naming other classes refused the ensemble, which
    needs none; it is skipped with a note, another input's that agrees with them is copied, and none when none does."""
    other = {**DATASET, "labels": {"background": 0, "a": 1, "b": 2, "c": 3}}
    dirs = _models_with_dataset_json(tmp_path, [other, DATASET])
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == DATASET
    assert capsys.readouterr().err == (
        f"note: {dirs[0].parent}/dataset.json: labels {other['labels']!r} differs from {LABELS!r} of the probabilities "
        f"{dirs[0]}/x.json; not copied to the ensemble's output (ensemble uses the labels the probabilities were "
        "predicted with)\n")
    (dirs[1].parent / "dataset.json").write_text(json.dumps(other))
    ensemble_folders(dirs, tmp_path / "out2", num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out2").iterdir() if not p.name.startswith(".")) == ["x.nii.gz"]
    assert capsys.readouterr().err.count("note: ") == 2


@pytest.mark.parametrize("content", [
    {**DATASET, "labels": {"background": 0, "liver": 1}},  # another dataset's
    {"name": "Task01", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "b"}, "numTraining": 1},
])
def test_a_dataset_json_above_prediction_folders_is_not_theirs(tmp_path, capsys, content):
    """Two predict outputs in a folder holding another dataset's (or an nnU-Net v1) dataset.json were refused since the
    ensemble looked for one in any input's parent; only a crossval_folds_* folder's parent (its model folder) is theirs."""
    rng = np.random.default_rng(8)
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    dirs = [tmp_path / "predA", tmp_path / "predB"]
    for folder in dirs:
        _save(folder, "x", _softmax(rng))
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["x.nii.gz"]
    assert capsys.readouterr().err == ""


def test_a_predict_runs_model_dataset_json_comes_before_one_above_its_output(tmp_path):
    """Predictions of test images lie anywhere: the dataset.json of the model their predict_info.json names is theirs,
    not one of another dataset in the folder above them, which was taken first and refused as not theirs."""
    rng = np.random.default_rng(6)
    model = tmp_path / "model"
    model.mkdir()
    (model / "dataset.json").write_text(json.dumps(DATASET))
    (tmp_path / "dataset.json").write_text(json.dumps({**DATASET, "labels": {"background": 0, "other": 1}}))
    dirs = [tmp_path / "pred_a", tmp_path / "pred_b"]
    for folder in dirs:
        _save(folder, "x", _softmax(rng))
        (folder / "predict_info.json").write_text(json.dumps({"model_folder": str(model)}))
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == DATASET


def test_an_unreadable_dataset_json_of_an_input_is_skipped_with_a_note(tmp_path, capsys):
    """An input's dataset.json that cannot be read refused the ensemble, which needs none: it is noted and skipped."""
    dirs = _models_with_dataset_json(tmp_path, [DATASET, DATASET])
    (dirs[0].parent / "dataset.json").write_text('{"labels": ')
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == DATASET
    err = capsys.readouterr().err
    assert re.fullmatch(rf"note: {re.escape(str(dirs[0].parent))}/dataset\.json: .*; not copied to the ensemble's output "
                        r"\(ensemble uses the labels the probabilities were predicted with\)\n", err), err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_case_that_fails_is_named_and_no_case_is_written(tmp_path, workers):
    """A case whose probabilities cannot be read fails the ensemble naming it, before any case is written: it failed
    after the other cases' label maps were written, a partial ensemble."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y", "z"], seed=7)
    data = (dirs[1] / "y.npz").read_bytes()
    (dirs[1] / "y.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(EvaluationError, match=r"^1 of 3 cases could not be ensembled: y: .*m1/y\.npz: probabilities of case y "
                                              r"cannot be read .*; no label map was written$"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=workers)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", [0, 1])
def test_probabilities_holding_nan_or_infinity_are_refused_naming_the_file_and_the_count(tmp_path, bad, which):
    """NaN probabilities (a diverged model's) were averaged and their argmax written as labels without a word."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=3)
    probabilities = _softmax(np.random.default_rng(4))
    probabilities[1, 0, :2, :3] = bad
    write_probability_files(dirs[which], "y", probabilities, GEOMETRY, LABELS, None)
    with pytest.raises(EvaluationError, match=rf"^1 of 2 cases could not be ensembled: y: .*m{which}/y\.npz: probabilities of case "
                                              r"y hold 6 NaN or infinite value\(s\) of 120; re-run predict with "
                                              r"--save-probabilities for this case; no label map was written$"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()  # case x, before y, was written: a partial ensemble


def test_an_ensemble_whose_every_case_fails_writes_no_dataset_json(tmp_path):
    """The dataset.json was written before the cases: an ensemble whose every case failed left it alone in the output
    folder, a partial output; it is written once a case is, and the rerun after the fix writes it."""
    dirs = _models_with_dataset_json(tmp_path, [DATASET, DATASET])
    good = (dirs[1] / "x.npz").read_bytes()
    (dirs[1] / "x.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(EvaluationError, match=r"^1 of 1 cases could not be ensembled: x: .*; no label map was written$"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()
    (dirs[1] / "x.npz").write_bytes(good)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["dataset.json", "x.nii.gz"]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == DATASET


@pytest.mark.parametrize("edit, problem", [
    ({"spacing": [0.0, 0.5, 0.7]}, r"spacing \[0\.0, 0\.5, 0\.7\] is not positive and finite"),
    ({"spacing": [3.0, -0.5, 0.7]}, r"spacing \[3\.0, -0\.5, 0\.7\] is not positive and finite"),
    ({"spacing": [3.0, float("nan"), 0.7]}, r"spacing \[3\.0, nan, 0\.7\] is not positive and finite"),
    ({"origin": [1.0, float("inf"), 3.0]}, r"origin \[1\.0, inf, 3\.0\] or direction \[.*\] holds a value that is not finite"),
    ({"spacing": [1.0, 1.0]}, r"spacing \[1\.0, 1\.0\], origin \[.*\] and direction of 9 values for an array of 3 "
                              r"spatial axes; give 3 spacings in array order \(z, y, x; 999 on the slice axis of a 2D "
                              r"image\) and an ITK origin and direction of 2 or 3 axes \(4 or 9 values\)"),
    ({"direction": [1.0, 0.0, 0.0, 1.0]}, r"spacing \[.*\], origin \[.*\] and direction of 4 values for an array of 3 "
                                          r"spatial axes; give 3 spacings .*"),
    ({"origin": [0.0, 0.0], "direction": [1.0, 0.0, 0.0, 1.0]},
     r"origin \[0\.0, 0\.0\] and direction of a 2D image for an array of 2 slices; give a 3D origin \(3 values\) "
     r"and direction \(9 values\)"),
    ({"direction": [0.0] * 9}, r"direction \[0\.0(, 0\.0){8}\] is singular \(determinant 0\): its axes do not span "
                               r"the space, so it is no orientation"),
])
def test_a_sidecar_geometry_that_cannot_be_written_is_refused_before_any_case(tmp_path, edit, problem):
    """A spacing of 0 in both folders' sidecars (edited by hand or another tool) failed its case with ITK's bare
    'Exception thrown in SimpleITK Image_SetSpacing' after the other cases' label maps were written."""
    dirs = _ensemble_inputs(tmp_path, ["m0", "m1"], ["x", "y"], seed=2)
    for folder in dirs:
        sidecar = folder / "y.json"
        content = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**content, "geometry": {**content["geometry"], **edit}}))
    with pytest.raises(EvaluationError, match=rf"^\S*m0/y\.json: geometry of case y is malformed \({problem}\); re-run "
                                              r"predict with --save-probabilities for this case$"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    assert not (tmp_path / "out").exists()


def _cut_in_half(path):
    """``path`` truncated to half its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_the_output_folders_refusals_come_before_any_probabilities_are_read(tmp_path, monkeypatch):
    """``-o`` holding another tool's label maps (or this ensemble's of another ending) was refused only after every
    .npz was read: a damaged one was named instead, and a large ensemble read all its probabilities first."""
    import autoseg.evaluation.ensemble as ensemble

    dirs = _two_folders_of_case_x(tmp_path)
    ensemble_folders(dirs, tmp_path / "out", num_workers=1)
    read = []
    averaged = ensemble.ensemble_case  # counts the cases whose probabilities are read
    monkeypatch.setattr(ensemble, "ensemble_case", lambda case, *args: read.append(case) or averaged(case, *args))
    with pytest.raises(EvaluationError, match=r"out/x\.nii\.gz: a label map of case x of another ending than this run's "
                                              r"\.nrrd; .* Give the ending it has \(--file-ending \.nii\.gz\)"):
        ensemble_folders(dirs, tmp_path / "out", num_workers=1, file_ending=".nrrd")
    assert read == []
    references = tmp_path / "labelsTr"
    write_image(np.zeros(SHAPE, np.uint8), GEOMETRY, references / "x.nii.gz")
    _cut_in_half(dirs[1] / "x.npz")
    with pytest.raises(EvaluationError, match=r"labelsTr: holds 1 file\(s\) not written by autoseg ensemble \(x\.nii\.gz"):
        ensemble_folders(dirs, references, num_workers=1)
    assert read == []
    with pytest.raises(EvaluationError, match=r"m1/x\.npz: probabilities of case x cannot be read"):
        ensemble_folders(dirs, tmp_path / "new", num_workers=1)
    assert read == ["x"] and not (tmp_path / "new").exists()
