"""``preprocess_dataset``: store layout, ground truth copy, resume after a kill, failures, raw data untouched."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from preprocessing_helpers import make_configuration, make_plans

from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import PreprocessingError
from autoseg.planning.plans import write_plans
from autoseg.preprocessing import list_cases, load_case, preprocess_dataset, restore_label
from autoseg.preprocessing import store
from autoseg.preprocessing.runner import (
    TIMING_SUFFIX, DiskFullError, copy_ground_truth, drop_ground_truth_not_in, timing_path,
)
from autoseg.utils.atomic import HOST_TAG

DATASET = "Dataset999_Test"
IDENTIFIER = "autosegPlans_3d_fullres"


def _write_plans(roots: dict[str, Path], normalization: list[dict] | None = None) -> dict:
    fullres = make_configuration((1.0, 1.0, 1.0), normalization=normalization)
    cascade = {**fullres, "previous_stage": "3d_lowres"}
    lowres = make_configuration((2.0, 2.0, 2.0), normalization=normalization, data_identifier="autosegPlans_3d_lowres")
    lowres["next_stage"] = "3d_cascade_fullres"
    plans = make_plans({"3d_fullres": fullres, "3d_lowres": lowres, "3d_cascade_fullres": cascade})
    write_plans(plans, roots["preprocessed"] / DATASET / "autosegPlans.json", overwrite=True)
    return plans


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_dataset_is_stored_with_gt_and_exact_inverse(roots: dict[str, Path], small_dataset: Path) -> None:
    plans = _write_plans(roots)
    raw_before = _tree_hashes(small_dataset)
    report = preprocess_dataset(DATASET, ["3d_fullres", "3d_cascade_fullres"], num_workers=1)
    assert _tree_hashes(small_dataset) == raw_before  # raw data never modified
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    cases = sorted(p.name[: -len(".nii.gz")] for p in (small_dataset / "labelsTr").iterdir())
    assert [o.configurations for o in report.outputs] == [["3d_fullres", "3d_cascade_fullres"]]  # stored once
    assert report.outputs[0].processed == cases and list_cases(out) == cases
    gt = roots["preprocessed"] / DATASET / "gt_segmentations"
    for case in cases:
        assert (gt / f"{case}.nii.gz").read_bytes() == (small_dataset / "labelsTr" / f"{case}.nii.gz").read_bytes()
        data, seg, props = load_case(out, case, mmap=False)
        assert data.dtype == np.float32 and seg.dtype == np.int16 and data.shape[1:] == seg.shape[1:]
        label, _ = read_image(small_dataset / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(restore_label(seg, props, plans, "3d_fullres"), label)
        assert props["case_id"] == case and set(props["class_locations"]) == {"1", "2"}
        z, y, x = props["class_locations"]["2"][0]
        assert seg[0, z, y, x] == 2
    assert report.gt_copied == 4 and "4 preprocessed, 0 already done, 0 failed" in report.summary()


def test_a_3d_tiff_label_is_copied_with_its_spacing_sidecar(tmp_path: Path) -> None:
    """Evaluation reads gt_segmentations/<case>.tif as a volume only with its <case>.json (nnU-Net's Tiff3DIO)."""
    (tmp_path / "raw").mkdir()
    label, sidecar = tmp_path / "raw" / "c.tif", tmp_path / "raw" / "c.json"
    label.write_bytes(b"tiff bytes")
    sidecar.write_text('{"spacing": [2, 1, 1]}')
    target = tmp_path / "gt" / "c.tif"
    assert copy_ground_truth(label, target) and not copy_ground_truth(label, target)
    assert (tmp_path / "gt" / "c.json").read_text() == sidecar.read_text()
    sidecar.write_text('{"spacing": [3, 1, 1]}')
    assert copy_ground_truth(label, target) and (tmp_path / "gt" / "c.json").read_text() == sidecar.read_text()


def test_a_detached_header_label_is_copied_with_its_data_file(tmp_path: Path) -> None:
    """Evaluation reads gt_segmentations/<case>.mhd only with the .raw its header names (was: header alone)."""
    import SimpleITK as sitk

    (tmp_path / "raw").mkdir()
    label = tmp_path / "raw" / "c.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3), str(label))
    target = tmp_path / "gt" / "c.mhd"
    assert copy_ground_truth(label, target) and not copy_ground_truth(label, target)
    np.testing.assert_array_equal(read_image(target)[0], read_image(label)[0])


def test_detached_header_labels_of_the_same_name_keep_their_own_data_files(tmp_path: Path) -> None:
    """Cases listed from folders of their own (p1/seg.mhd, p2/seg.mhd) all wrote gt_segmentations/seg.raw, each
    over the last: every ground truth but the last read another case's voxels. Each data file is now named
    after its case, and the header's copy names it."""
    import SimpleITK as sitk

    labels = []
    for index, patient in enumerate(("p1", "p2")):
        (tmp_path / patient).mkdir()
        labels.append(tmp_path / patient / "seg.mhd")
        sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 3, 4 + index), index + 1, np.uint8)), str(labels[-1]))
    targets = [tmp_path / "gt" / "case_a.mhd", tmp_path / "gt" / "case_b.mhd"]
    for label, target in zip(labels, targets):
        assert copy_ground_truth(label, target)
    for label, target in zip(labels, targets):
        np.testing.assert_array_equal(read_image(target)[0], read_image(label)[0])
        assert not copy_ground_truth(label, target)  # identical copies: unchanged
    assert sorted(p.name for p in (tmp_path / "gt").iterdir()) == ["case_a.mhd", "case_a.raw", "case_b.mhd", "case_b.raw"]


def test_editing_a_detached_headers_data_file_redoes_the_case(tmp_path: Path) -> None:
    """Was: only the .mhd was hashed, so a .raw edited after preprocessing kept its stale stored copy."""
    import os

    import SimpleITK as sitk

    from autoseg.dataset.cases import Case
    from autoseg.preprocessing.runner import input_fingerprint

    image, label = tmp_path / "c_0000.mhd", tmp_path / "c.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)), str(image))
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) % 3), str(label))
    plans = make_plans({"3d_fullres": make_configuration((1.0, 1.0, 1.0))})
    case = Case("c", [image], label)
    before = input_fingerprint(case, plans, plans["configurations"]["3d_fullres"])
    for header in (image, label):
        data = tmp_path / f"{header.stem}.raw"
        stat = data.stat()
        data.write_bytes(data.read_bytes()[::-1])  # same size; the mtime put back too: the bytes must tell
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert input_fingerprint(case, plans, plans["configurations"]["3d_fullres"]) != before, header.name
        before = input_fingerprint(case, plans, plans["configurations"]["3d_fullres"])


def test_editing_a_3d_tiff_images_spacing_file_redoes_the_case(tmp_path: Path) -> None:
    """A channel file <case>_0000.tif takes its spacing from <case>.json, which was not hashed (only the label's
    <case>.json beside it in labelsTr): an image spacing edited after preprocessing left the case 'already done'."""
    import tifffile

    from autoseg.dataset.cases import Case
    from autoseg.preprocessing.runner import input_fingerprint

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    image, label = tmp_path / "imagesTr" / "c_0000.tif", tmp_path / "labelsTr" / "c.tif"
    tifffile.imwrite(image, np.zeros((3, 4, 5), np.float32), photometric="minisblack")
    tifffile.imwrite(label, np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder / "c.json").write_text('{"spacing": [2.0, 1.0, 1.0]}')
    plans = make_plans({"3d_fullres": make_configuration((1.0, 1.0, 1.0))})
    case = Case("c", [image], label)
    before = input_fingerprint(case, plans, plans["configurations"]["3d_fullres"])
    (tmp_path / "imagesTr" / "c.json").write_text('{"spacing": [3.0, 1.0, 1.0]}')
    assert input_fingerprint(case, plans, plans["configurations"]["3d_fullres"]) != before


def test_plans_labels_that_are_not_dataset_jsons_are_refused_before_any_case(roots: dict[str, Path], small_dataset: Path) -> None:
    """Was: a hand-edited list of labels failed every case with an internal AttributeError and removed the
    copies stored before; a class added to dataset.json after planning was preprocessed without its locations."""
    from autoseg.errors import PlanError

    plans = _write_plans(roots)
    preprocess_dataset(DATASET, "3d_fullres", num_workers=1)
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    stored = _tree_hashes(out)
    plans_file = roots["preprocessed"] / DATASET / "autosegPlans.json"
    plans_file.write_text(json.dumps({**plans, "labels": [0, 1, 2]}))
    with pytest.raises(PlanError, match=r"autosegPlans.json: labels \[0, 1, 2\] must map names to label values"):
        preprocess_dataset(DATASET, "3d_fullres", num_workers=1)
    plans_file.write_text(json.dumps(plans))
    description = json.loads((small_dataset / "dataset.json").read_text())
    description["labels"]["Extra"] = 3
    (small_dataset / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(PlanError, match=r"dataset.json: labels are .*'Extra': 3\}, but .*autosegPlans.json was planned with "
                                        r"\{'background': 0, 'Anterior': 1, 'Posterior': 2\}; dataset.json changed after planning"):
        preprocess_dataset(DATASET, "3d_fullres", num_workers=1)
    assert _tree_hashes(out) == stored


def test_cases_x_and_x_seg_are_refused_before_any_is_stored(roots: dict[str, Path], small_dataset: Path) -> None:
    """x_seg's stored image and x's stored label map are both x_seg.b2nd: the one preprocessed last replaced the
    other, reported as '5 preprocessed, 0 failed', and training read an image as a label map (or refused it)."""
    _write_plans(roots)
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        (small_dataset / folder / f"hippocampus_006{suffix}").rename(small_dataset / folder / f"hippocampus_001_seg{suffix}")
    with pytest.raises(PreprocessingError, match=r"Dataset999_Test: cases hippocampus_001 and hippocampus_001_seg cannot "
                                                 r"both be preprocessed: the stored image of hippocampus_001_seg and the "
                                                 r"stored label map of hippocampus_001 are both hippocampus_001_seg\.b2nd; "
                                                 r"rename the files of case hippocampus_001_seg \(e\.g\. to hippocampus_001-seg\)"):
        preprocess_dataset(DATASET, "3d_fullres", num_workers=1)
    assert not (roots["preprocessed"] / DATASET / IDENTIFIER).exists()
    assert store.clashing_case_ids(["a", "a_seg_seg", "b_seg"]) is None


def test_one_configuration_given_as_a_string_is_one_name(roots: dict[str, Path], small_dataset: Path) -> None:
    """Python callers write configurations="3d_fullres" (was read letter by letter: "configuration '3' ...")."""
    _write_plans(roots)
    report = preprocess_dataset(DATASET, "3d_fullres", num_workers=1)
    assert [out.configurations for out in report.outputs] == [["3d_fullres"]]


def test_resume_after_kill_redoes_only_the_incomplete_case(roots: dict[str, Path], small_dataset: Path) -> None:
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    killed = "hippocampus_003"
    # A run killed while writing this case: arrays and a temporary file, but no properties JSON.
    (out / f"{killed}.json").unlink()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".{killed}.b2nd.{HOST_TAG}-{int(finished.stdout)}-{'a' * 16}.tmp.b2nd"  # its writer is gone
    stale.write_bytes(b"partial")
    # ... or killed while writing the timing record, which sits beside the store, not in it
    stale_timing = out.parent / f".{out.name}{TIMING_SUFFIX}.{HOST_TAG}-{int(finished.stdout)}-{'b' * 16}.tmp.json"
    stale_timing.write_bytes(b'{"sec')
    before = _mtimes(out)
    gt_before = _mtimes(roots["preprocessed"] / DATASET / "gt_segmentations")
    report = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert report.outputs[0].processed == [killed] and len(report.outputs[0].skipped) == 3
    after = _mtimes(out)
    assert not stale.exists() and not stale_timing.exists() and killed in list_cases(out)
    for name, mtime in before.items():
        if name.startswith("."):
            continue
        assert (after[name] != mtime) == name.startswith(killed), name
    assert _mtimes(roots["preprocessed"] / DATASET / "gt_segmentations") == gt_before  # identical: not rewritten
    assert report.gt_unchanged == 4


def test_an_empty_file_left_by_a_power_loss_is_redone(roots: dict[str, Path], small_dataset: Path) -> None:
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    (out / "hippocampus_004_seg.b2nd").write_bytes(b"")  # renamed into place, data never flushed
    report = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert report.outputs[0].processed == ["hippocampus_004"] and len(report.outputs[0].skipped) == 3
    _, seg, _ = load_case(out, "hippocampus_004", mmap=False)
    assert seg.shape[0] == 1 and seg.max() == 2


def test_changed_plan_redoes_every_case(roots: dict[str, Path], small_dataset: Path) -> None:
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    _write_plans(roots, normalization=[{"scheme": "none", "use_mask": False, "clip": None, "mean": None, "std": None}])
    report = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert len(report.outputs[0].processed) == 4 and report.outputs[0].skipped == []
    data, _, _ = load_case(roots["preprocessed"] / DATASET / IDENTIFIER, "hippocampus_004", mmap=False)
    image, _ = read_image(small_dataset / "imagesTr" / "hippocampus_004_0000.nii.gz")
    assert data.max() == pytest.approx(float(image.max()))  # no normalization now


def test_a_configuration_given_twice_is_preprocessed_and_reported_once(roots: dict[str, Path], small_dataset: Path) -> None:
    _write_plans(roots)
    report = preprocess_dataset(DATASET, ["3d_fullres", "3d_fullres"], num_workers=1)
    assert [out.configurations for out in report.outputs] == [["3d_fullres"]]


def test_unreadable_case_is_named_while_the_others_complete(roots: dict[str, Path], small_dataset: Path) -> None:
    _write_plans(roots)
    broken = small_dataset / "imagesTr" / "hippocampus_006_0000.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated file
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, ["3d_fullres"], num_workers=2)
    message = str(info.value)
    assert message.startswith("1 case(s) failed to preprocess: hippocampus_006 (autosegPlans_3d_fullres): ")
    assert f"{broken}: " in message and "re-run `autoseg preprocess`" in message
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    assert list_cases(out) == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    assert info.value.report.outputs[0].failed[0].key == "hippocampus_006"


@pytest.mark.parametrize("full", [
    lambda folder, case_id: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / f"{case_id}.b2nd")),
    # blosc2 and SimpleITK report it as a RuntimeError: runner's own guard knew OSError only (ce543fb)
    lambda folder, case_id: RuntimeError("blosc2: could not write a chunk: No space left on device"),
], ids=["oserror", "runtimeerror"])
def test_a_full_disk_stops_at_the_first_case_it_hits(roots: dict[str, Path], small_dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch, full: Any) -> None:
    """A full disk failed every later case too, then the timing record, and the error named only
    ``..._preprocess_timing.json``: now one line names the store, the full disk and how to resume."""
    _write_plans(roots)
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    save_case, tried = store.save_case, []

    def save_until_full(folder: Path, case_id: str, *args: object, **kwargs: object) -> None:
        tried.append(case_id)
        if len(tried) > 1:
            raise full(folder, case_id)
        save_case(folder, case_id, *args, **kwargs)

    monkeypatch.setattr(store, "save_case", save_until_full)
    with pytest.raises(DiskFullError, match=rf"^{re.escape(str(out))}: the disk is full \(case \w+ could not be written\); free space there "
                                                 r"and re-run `autoseg preprocess`: the cases stored so far are kept and skipped$") as info:
        preprocess_dataset(DATASET, "3d_fullres", num_workers=1)
    assert len(tried) == 2 and tried[1] in str(info.value)  # stopped at the case that hit it: no later case tried
    assert list_cases(out) == tried[:1] and not timing_path(out).exists()
    monkeypatch.setattr(store, "save_case", save_case)  # space freed
    assert preprocess_dataset(DATASET, "3d_fullres", num_workers=1).outputs[0].skipped == tried[:1]


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda labels, geometry: (((labels > 0) * 255).astype(np.uint8), geometry),
     "label values 255 are not declared in dataset.json labels (declared: 0, 1, 2)"),
    (lambda labels, geometry: (labels, Geometry(geometry.spacing, (5.0, 0.0, 0.0), geometry.direction)),
     "geometry differs from image hippocampus_006_0000.nii.gz: origin (5, 0, 0) vs"),
], ids=["0_255_mask", "shifted_origin"])
def test_a_label_edited_after_planning_is_checked_as_verify_does(
    roots: dict[str, Path], small_dataset: Path, edit, problem: str
) -> None:
    """A case added (or a label edited) after verify and plan, its mask saved as 0/255 or off its image's
    grid: stored and trained on without a word; preprocessing now refuses it as verify does."""
    _write_plans(roots)
    edited = small_dataset / "labelsTr" / "hippocampus_006.nii.gz"
    write_image(*edit(*read_image(edited)), edited)
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert f"hippocampus_006 (autosegPlans_3d_fullres): {edited}: {problem}" in str(info.value)
    assert list_cases(roots["preprocessed"] / DATASET / IDENTIFIER) == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]


def test_a_case_that_fails_now_keeps_no_copy_stored_from_earlier_inputs(roots: dict[str, Path], small_dataset: Path) -> None:
    """A label edited after a successful preprocess (a 0/255 mask): the rerun refused it, but the case stored
    from the earlier label stayed in the store, and training used it without a word."""
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    assert "hippocampus_006" in list_cases(out)
    edited = small_dataset / "labelsTr" / "hippocampus_006.nii.gz"
    labels, geometry = read_image(edited)
    write_image(((labels > 0) * 255).astype(np.uint8), geometry, edited)
    with pytest.raises(PreprocessingError, match=r"Their copies stored from earlier inputs were removed \(hippocampus_006\), "
                                                 r"so training cannot use them\.$") as info:
        preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert info.value.report.outputs[0].removed == ["hippocampus_006"]
    assert list_cases(out) == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    assert not any(p.name.startswith("hippocampus_006") for p in out.iterdir())


def test_sparse_annotations_lost_at_a_coarser_spacing_are_refused_or_named(roots: dict[str, Path]) -> None:
    """Scribbles a voxel thick in a sea of ignore, planned at 2 mm for 1 mm annotations: resampling let the
    ignore label win every voxel and training ran with loss 0 without a word."""
    labels = {"background": 0, "vessel": 1, "wall": 2, "ignore": 3}
    raw = roots["raw"] / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 3,
                                                  "file_ending": ".nii.gz"}))
    line, kept = np.full((16, 16, 16), 3, np.uint8), np.full((16, 16, 16), 3, np.uint8)
    line[8, 8, 4:12] = 1  # 8 voxels a voxel thick: no 2 mm voxel keeps them
    kept[8:10, 8:10, 8:10] = 1  # one 2 mm voxel (8 mm3) kept of 8 + 16 = 24 mm3 annotated
    kept[4, 2, :] = 2
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    nothing = np.full((16, 16, 16), 3, np.uint8)  # the ignore label everywhere (refused before resampling)
    for case, label in (("scribble_000", line), ("scribble_001", kept), ("scribble_002", nothing)):
        write_image(np.random.default_rng(0).normal(100, 10, (16, 16, 16)).astype(np.float32), geometry, raw / "imagesTr" / f"{case}_0000.nii.gz")
        write_image(label, geometry, raw / "labelsTr" / f"{case}.nii.gz")
    plans = {**make_plans({"3d_fullres": make_configuration((2.0, 2.0, 2.0))}, labels=labels), "ignore_label": 3}
    write_plans(plans, roots["preprocessed"] / DATASET / "autosegPlans.json", overwrite=True)
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, num_workers=1)
    assert str(info.value).startswith(
        f"2 case(s) failed to preprocess: scribble_000 ({IDENTIFIER}): {raw / 'labelsTr' / 'scribble_000.nii.gz'}: resampled "
        "from 1x1x1 mm to the planned 2x2x2 mm, its 8 annotated voxel(s) all became the ignore label 3: the annotation is "
        "thinner than a voxel at that spacing; plan so that the configuration keeps the annotation's spacing")
    assert (f"scribble_002 ({IDENTIFIER}): {raw / 'labelsTr' / 'scribble_002.nii.gz'}: holds only the ignore label 3: "
            "nothing to learn; annotate it or leave it out") in str(info.value)
    assert list_cases(roots["preprocessed"] / DATASET / IDENTIFIER) == ["scribble_001"]
    stored = load_case(roots["preprocessed"] / DATASET / IDENTIFIER, "scribble_001", mmap=False)[1]
    assert stored.shape == (1, 8, 8, 8) and np.count_nonzero(stored != 3) == 1 and stored[0, 4, 4, 4] == 1
    assert info.value.report.outputs[0].thinned == {"scribble_001": pytest.approx(8 / 24)}
    warning = "these cases keep less than half of their annotated (non-ignore) volume: scribble_001 33%"
    assert warning in info.value.report.summary() and warning in str(info.value)  # the CLI prints the error alone


def test_background_cropped_with_an_image_zero_border_is_not_named_as_lost(roots: dict[str, Path]) -> None:
    """An image with a zero border (skull-stripped) and sparse annotations, planned at its own 1 mm: the
    background cropped away with the border counted as annotation lost to resampling ('keep 2%')."""
    labels = {"background": 0, "vessel": 1, "ignore": 2}
    raw = roots["raw"] / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 1,
                                                  "file_ending": ".nii.gz"}))
    image = np.zeros((16, 16, 16), np.float32)
    image[4:12, 4:12, 4:12] = np.random.default_rng(0).normal(100, 10, (8, 8, 8))
    label = np.zeros((16, 16, 16), np.uint8)  # background outside the image's nonzero box
    label[4:12, 4:12, 4:12] = 2
    label[6:10, 6:10, 6:10] = 1  # the 64 voxels annotated inside it
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_image(image, geometry, raw / "imagesTr" / "stripped_000_0000.nii.gz")
    write_image(label, geometry, raw / "labelsTr" / "stripped_000.nii.gz")
    plans = {**make_plans({"3d_fullres": make_configuration((1.0, 1.0, 1.0))}, labels=labels), "ignore_label": 2}
    write_plans(plans, roots["preprocessed"] / DATASET / "autosegPlans.json", overwrite=True)
    report = preprocess_dataset(DATASET, num_workers=1)
    assert report.outputs[0].thinned == {} and "keep less than half" not in report.summary()
    stored = load_case(roots["preprocessed"] / DATASET / IDENTIFIER, "stripped_000", mmap=False)[1]
    assert stored.shape == (1, 8, 8, 8) and np.count_nonzero(stored == 1) == 64


def test_a_nifti_image_with_nan_written_after_planning_is_refused(roots: dict[str, Path], small_dataset: Path) -> None:
    """ITK reads a NIfTI's NaN as 0, so the array alone passed it (predict and verify read the file's bytes):
    preprocessing finds it the same way."""
    import SimpleITK as sitk

    _write_plans(roots)
    path = small_dataset / "imagesTr" / "hippocampus_006_0000.nii.gz"
    image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    image[3, 4, 5] = float("nan")
    sitk.WriteImage(image, str(path))
    assert np.isfinite(read_image(path)[0]).all()  # what the reader alone sees
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert f"hippocampus_006 (autosegPlans_3d_fullres): {path}: 1 NaN and 0 Inf voxel(s); replace them" in str(info.value)


def test_an_image_with_nan_written_after_planning_is_refused(roots: dict[str, Path], small_dataset: Path) -> None:
    """One NaN voxel (NRRD keeps it; ITK turns a NIfTI's into 0) made the z-score mean NaN and the whole stored
    case NaN, trained on without a word; preprocessing refuses it as verify does."""
    import SimpleITK as sitk

    for path in sorted(small_dataset.rglob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        if path.name == "hippocampus_006_0000.nii.gz":
            image = sitk.Cast(image, sitk.sitkFloat32)
            image[3, 4, 5] = float("nan")
        sitk.WriteImage(image, str(path).replace(".nii.gz", ".nrrd"))
        path.unlink()
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps(description | {"file_ending": ".nrrd"}))
    _write_plans(roots)
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    broken = small_dataset / "imagesTr" / "hippocampus_006_0000.nrrd"
    assert f"hippocampus_006 (autosegPlans_3d_fullres): {broken}: 1 NaN and 0 Inf voxel(s); replace them" in str(info.value)


def test_lowres_configuration_is_resampled(roots: dict[str, Path], small_dataset: Path) -> None:
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_lowres"], num_workers=1)
    data, seg, props = load_case(roots["preprocessed"] / DATASET / "autosegPlans_3d_lowres", "hippocampus_001")
    assert props["target_spacing"] == [2.0, 2.0, 2.0]
    assert list(data.shape[1:]) == [round(s / 2) for s in props["shape_after_crop"]] == list(seg.shape[1:])


def test_a_case_taken_out_of_the_dataset_leaves_the_store_and_the_ground_truth(roots: dict[str, Path], small_dataset: Path) -> None:
    """A case removed from imagesTr/labelsTr after preprocessing stayed in the store, and training (which takes every
    stored case) trained on it; nnU-Net deletes its output folder before preprocessing. Its ground truth went too."""
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    for path in [small_dataset / "imagesTr" / "hippocampus_006_0000.nii.gz", small_dataset / "labelsTr" / "hippocampus_006.nii.gz"]:
        path.unlink()
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps({**description, "numTraining": 3}))
    report = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    out = roots["preprocessed"] / DATASET / IDENTIFIER
    assert list_cases(out) == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    assert not any(p.name.startswith("hippocampus_006") for p in out.iterdir())
    gt = roots["preprocessed"] / DATASET / "gt_segmentations"
    assert sorted(p.name for p in gt.iterdir()) == ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz", "hippocampus_004.nii.gz"]
    assert report.outputs[0].dropped == ["hippocampus_006"] and report.outputs[0].skipped == list_cases(out)
    assert "3 already done, 0 failed; removed, no longer in the dataset: hippocampus_006" in report.summary()


def test_a_case_taken_out_leaves_the_stores_of_configurations_not_preprocessed_now(
    roots: dict[str, Path], small_dataset: Path
) -> None:
    """preprocess 3d_fullres and 3d_lowres, a case taken out, then preprocess -c 3d_fullres: the 3d_lowres store still
    held the case and training 3d_lowres used it; the dropped ground truth was not named in the summary."""
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_fullres", "3d_lowres"], num_workers=1)
    for path in [small_dataset / "imagesTr" / "hippocampus_006_0000.nii.gz", small_dataset / "labelsTr" / "hippocampus_006.nii.gz"]:
        path.unlink()
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps({**description, "numTraining": 3}))
    report = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    lowres = roots["preprocessed"] / DATASET / "autosegPlans_3d_lowres"
    assert list_cases(lowres) == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    assert not any(p.name.startswith("hippocampus_006") for p in lowres.iterdir())
    assert report.dropped_elsewhere == {"autosegPlans_3d_lowres": ["hippocampus_006"]}
    assert report.gt_dropped == ["hippocampus_006.nii.gz"]
    summary = report.summary().splitlines()
    assert ("autosegPlans_3d_lowres (not preprocessed in this run): removed, no longer in the dataset: hippocampus_006"
            in summary)
    assert summary[-1].startswith("ground truth: 0 copied, 3 unchanged; removed, of no case of the dataset (or of "
                                  "another file ending): hippocampus_006.nii.gz; ")


def test_a_dataset_converted_to_another_file_ending_keeps_one_ground_truth_per_case(
    roots: dict[str, Path], small_dataset: Path
) -> None:
    """Converted from .nii.gz to .nrrd after preprocessing, every case kept its .nii.gz ground truth beside the new
    .nrrd, two references of one case for evaluate; only the dataset's own ending stays."""
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    for path in [*small_dataset.glob("*/*.nii.gz")]:
        write_image(*read_image(path), path.with_name(path.name.replace(".nii.gz", ".nrrd")))
        path.unlink()
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps({**description, "file_ending": ".nrrd"}))
    preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    gt = roots["preprocessed"] / DATASET / "gt_segmentations"
    cases = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
    assert sorted(p.name for p in gt.iterdir()) == [f"{case}.nrrd" for case in cases]


def test_dropping_stale_ground_truth_leaves_a_concurrent_run_s_temporary(tmp_path: Path) -> None:
    """Two preprocess runs at once: one deleted the other's half-copied ground truth (a hidden temporary with a
    label's ending) as a file of no case, and the other failed on its rename (CI, test_concurrency)."""
    live = tmp_path / f".hippocampus_015.nii.gz.{HOST_TAG}-{os.getpid()}-{'0' * 16}.tmp.nii.gz"
    live.write_bytes(b"half written")
    (tmp_path / "hippocampus_015.nii.gz").write_bytes(b"kept")
    (tmp_path / "gone.nii.gz").write_bytes(b"stale")
    assert drop_ground_truth_not_in(tmp_path, {"hippocampus_015.nii.gz"}) == ["gone.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "hippocampus_015.nii.gz"])


def test_a_case_that_fails_gets_no_ground_truth_and_loses_its_earlier_one(roots: dict[str, Path], small_dataset: Path) -> None:
    """A case that failed to preprocess still had its label copied into gt_segmentations (counted as copied), so
    evaluate and report compared against a reference of a case with no stored data; its copy from an earlier
    successful run stayed too."""
    _write_plans(roots)
    gt = roots["preprocessed"] / DATASET / "gt_segmentations"
    broken = small_dataset / "imagesTr" / "hippocampus_006_0000.nii.gz"
    intact = broken.read_bytes()
    broken.write_bytes(intact[:200])  # truncated file
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert sorted(p.name for p in gt.iterdir()) == ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz", "hippocampus_004.nii.gz"]
    report = info.value.report
    assert report.gt_copied == 3 and report.gt_failed == ["hippocampus_006"]
    assert "ground truth: 3 copied, 0 unchanged; not copied, failed to preprocess: hippocampus_006; " in report.summary()
    broken.write_bytes(intact)
    preprocess_dataset(DATASET, ["3d_fullres", "3d_lowres"], num_workers=1)
    assert (gt / "hippocampus_006.nii.gz").is_file()
    broken.write_bytes(intact[:200])  # fails in 3d_fullres and 3d_lowres: no store holds it any more
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, ["3d_fullres", "3d_lowres"], num_workers=1)
    assert not (gt / "hippocampus_006.nii.gz").exists() and info.value.report.gt_dropped == ["hippocampus_006.nii.gz"]


def test_a_failed_case_keeps_its_ground_truth_while_another_store_holds_it(roots: dict[str, Path], small_dataset: Path) -> None:
    """Failed in the store preprocessed now but still held by one of an earlier run: that store's reference stays."""
    _write_plans(roots)
    preprocess_dataset(DATASET, ["3d_lowres"], num_workers=1)
    gt = roots["preprocessed"] / DATASET / "gt_segmentations" / "hippocampus_006.nii.gz"
    reference = gt.read_bytes()
    broken = small_dataset / "imagesTr" / "hippocampus_006_0000.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(PreprocessingError) as info:
        preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)
    assert gt.read_bytes() == reference and info.value.report.gt_failed == ["hippocampus_006"]
    assert info.value.report.gt_dropped == []


def test_the_timing_record_covers_the_whole_command(roots: dict[str, Path], small_dataset: Path) -> None:
    """The plan prices preprocessing with the command's start-up (PREPROCESS_STARTUP_SECONDS), but the record
    `autoseg train` subtracts from the plan's budget timed the process pool only: training got about 5 s more than
    priced. Each store's record is now the whole command (from ``started``) less the other stores' own time."""
    import time

    _write_plans(roots)
    started = time.time() - 1000.0  # the command started (interpreter, imports) well before this call
    report = preprocess_dataset(DATASET, ["3d_fullres", "3d_lowres"], num_workers=1, started=started)
    fullres, lowres = report.outputs
    recorded = {out.data_identifier: json.loads(timing_path(out.output_dir).read_text())["seconds"]
                for out in report.outputs}
    assert min(recorded.values()) >= 1000.0
    # both are the same whole command, each less the other store's time
    assert recorded[fullres.data_identifier] + lowres.seconds == pytest.approx(
        recorded[lowres.data_identifier] + fullres.seconds, rel=1e-9)
    assert store.remove_case(fullres.output_dir, fullres.processed[0])  # one case to prepare again
    alone = preprocess_dataset(DATASET, ["3d_fullres"], num_workers=1)  # started: this call
    record = json.loads(timing_path(alone.outputs[0].output_dir).read_text())
    assert record["seconds"] == pytest.approx(alone.seconds, rel=1e-9) and record["cases"] == 1
