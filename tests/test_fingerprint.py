"""Fingerprint numbers on real cases against values computed by hand in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.errors import FingerprintError
from autoseg.fingerprint.axis_order import axis_order_warning
from autoseg.fingerprint.cropping import OUTSIDE_NONZERO, bounding_box, crop_to_nonzero
from autoseg.fingerprint.extract import extract_fingerprint
from autoseg.fingerprint.file import load_fingerprint
from autoseg.fingerprint.summary import format_fingerprint
from autoseg.paths import resolve_dataset

runner = CliRunner()


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_crop_to_nonzero_by_hand() -> None:
    data = np.zeros((1, 5, 6, 7), np.float32)
    data[0, 1:4, 2:5, 3:6] = 1.0
    data[0, 2, 3, 4] = 0.0  # a hole inside: filled, stays inside the mask
    seg = np.zeros((1, 5, 6, 7), np.uint8)
    seg[0, 2, 2, 3] = 2
    cropped, seg_c, bbox, mask = crop_to_nonzero(data, seg)
    assert bbox == [[1, 4], [2, 5], [3, 6]] and cropped.shape == (1, 3, 3, 3)
    assert mask.all()  # hole filled
    assert seg_c.dtype == np.int16 and seg_c[0, 1, 0, 0] == 2 and (seg_c != OUTSIDE_NONZERO).all()
    data[0, 1, 2, 3] = 0.0  # a corner outside the mask now (not a hole)
    _, seg_c, _, _ = crop_to_nonzero(data, seg)
    assert seg_c[0, 0, 0, 0] == OUTSIDE_NONZERO
    assert bounding_box(np.zeros((2, 3), bool)) == [[0, 2], [0, 3]]


def test_holes_of_a_2d_image_are_filled_in_plane() -> None:
    """A 2D image (C, 1, y, x) lies wholly on its slice axis' border: counting that axis left every hole
    open, so zero pixels inside the image (EM membranes) fell outside the mask, as they do not in 3D."""
    data = np.zeros((1, 1, 6, 7), np.float32)
    data[0, 0, 1:5, 1:6] = 1.0
    data[0, 0, 2, 3] = 0.0  # inside: a hole, as scipy fills it in the plane
    seg = np.zeros((1, 1, 6, 7), np.uint8)
    _, seg_c, bbox, mask = crop_to_nonzero(data, seg)
    assert bbox == [[0, 1], [1, 5], [1, 6]]
    assert (mask[0] == ndimage.binary_fill_holes(data[0, 0] != 0)[1:5, 1:6]).all() and mask.all()
    assert (seg_c != OUTSIDE_NONZERO).all()


def test_fingerprint_numbers_match_hand_computation(small_dataset: Path, roots: dict[str, Path]) -> None:
    fp = extract_fingerprint(resolve_dataset("Dataset999"), num_workers=2)
    assert fp["case_ids"] == ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
    written = json.loads((roots["preprocessed"] / "Dataset999_Test" / "fingerprint.json").read_text())
    assert written == json.loads(json.dumps(fp))
    all_fg = []
    for i, case in enumerate(fp["case_ids"]):
        image = _read(small_dataset / "imagesTr" / f"{case}_0000.nii.gz")
        label = _read(small_dataset / "labelsTr" / f"{case}.nii.gz").astype(int)
        mask = ndimage.binary_fill_holes(image != 0)
        idx = np.argwhere(mask)
        shape_after = (idx.max(0) - idx.min(0) + 1).tolist()
        assert fp["shapes_before_crop"][i] == list(image.shape)
        assert fp["shapes_after_crop"][i] == shape_after
        assert fp["relative_size_after_crop"][i] == pytest.approx(np.prod(shape_after) / image.size)
        assert fp["spacings"][i] == [1.0, 1.0, 1.0]
        for cls in (1, 2):
            assert fp["class_voxel_counts"][str(cls)][i] == int((label == cls).sum())
            assert fp["class_volumes_mm3"][str(cls)][i] == pytest.approx((label == cls).sum() * 1.0)
            name = {1: "Anterior", 2: "Posterior"}[cls]
            inside = np.pad(label == cls, 1)
            distance = ndimage.distance_transform_edt(inside)  # spacing 1 mm
            assert fp["structure_thickness_mm"][name][i] == pytest.approx(2 * distance[inside].mean())
            # the centroid in the label file's array order (what the mirroring rule compares)
            assert fp["class_centroids"][str(cls)][i] == pytest.approx(np.argwhere(label == cls).mean(axis=0).tolist())
        all_fg.append(image[label > 0].astype(np.float64))
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    pooled = np.concatenate(all_fg)
    # Samples are drawn with replacement, equally many per case: min and max are exact when every
    # voxel is drawn at least once (2.5M draws from a few thousand voxels), the rest are close.
    assert stats["min"] == pytest.approx(pooled.min()) and stats["max"] == pytest.approx(pooled.max())
    per_case_means = np.mean([fg.mean() for fg in all_fg])
    assert stats["mean"] == pytest.approx(per_case_means, rel=1e-2)
    assert fp["median_spacing"] == [1.0, 1.0, 1.0] and fp["anisotropy_ratio"] == 1.0 and not fp["is_2d"]
    assert fp["median_structure_thickness_mm"] == {k: pytest.approx(np.median(v)) for k, v in fp["structure_thickness_mm"].items()}


def test_fingerprint_is_deterministic_across_worker_counts(small_dataset: Path, roots: dict[str, Path]) -> None:
    location = resolve_dataset("Dataset999")
    one = extract_fingerprint(location, num_workers=1)
    two = extract_fingerprint(location, num_workers=2)
    assert json.dumps(one) == json.dumps(two)


def test_zero_workers_run_in_this_process(
    small_dataset: Path, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-np 0` ("0 or 1: all in this process", the option's help) started a pool of one worker per core."""
    import autoseg.fingerprint.extract as extract

    from cli_helpers import workers_asked

    asked = workers_asked(monkeypatch, extract)
    result = runner.invoke(app, ["fingerprint", "999", "-np", "0"])
    assert result.exit_code == 0, result.output
    assert asked == [0]


def test_fingerprint_cli_writes_file_and_summary(small_dataset: Path, roots: dict[str, Path]) -> None:
    result = runner.invoke(app, ["fingerprint", "999"])
    assert result.exit_code == 0, result.output
    assert "Dataset999_Test: 4 cases" in result.output and "median volume" in result.output
    assert (roots["preprocessed"] / "Dataset999_Test" / "fingerprint.json").is_file()


def test_labels_without_any_class_are_refused_before_ct_statistics_turn_nan(
    small_dataset: Path, roots: dict[str, Path]
) -> None:
    """Background-only labels left no foreground intensities: a CT channel's clip, mean and std were NaN and
    every preprocessed voxel NaN, without a word."""
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps(description | {"channel_names": {"0": "CT"}}))
    for path in (small_dataset / "labelsTr").glob("*.nii.gz"):
        label = sitk.ReadImage(str(path))
        empty = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(label)))
        empty.CopyInformation(label)
        sitk.WriteImage(empty, str(path))
    result = runner.invoke(app, ["fingerprint", "999", "-np", "1"])
    assert result.exit_code == 2
    assert "labelsTr: no label map holds any of the classes (1, 2), only background (or ignore)" in result.output
    assert not (roots["preprocessed"] / "Dataset999_Test" / "fingerprint.json").exists()


def test_ignore_voxels_are_not_sampled_as_foreground_intensities(roots: dict[str, Path]) -> None:
    """Was: sampled as ``seg > 0`` (nnU-Net v2), ignore included: with scribbles in a sea of ignore, a CT
    channel's clip and z-score came from the whole image, not from the annotated structure."""
    dataset = roots["raw"] / "Dataset998_Scribbles"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    image = np.arange(1, 6 * 6 * 6 + 1, dtype=np.float32).reshape(6, 6, 6)  # nonzero: nothing is cropped
    label = np.full((6, 6, 6), 2, np.uint8)  # ignore everywhere but a scribble of 4 voxels
    label[3, 2, 1:5] = 1
    label[0, 0, 0] = 0
    for array, path in ((image, dataset / "imagesTr" / "scribble_000_0000.nii.gz"), (label, dataset / "labelsTr" / "scribble_000.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    description = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "vessel": 1, "ignore": 2},
                   "numTraining": 1, "file_ending": ".nii.gz"}
    (dataset / "dataset.json").write_text(json.dumps(description))
    fingerprint = extract_fingerprint(resolve_dataset("Dataset998"), num_workers=0)
    stats = fingerprint["foreground_intensity_properties_per_channel"]["0"]
    scribble = image[label == 1]  # 122, 123, 124, 125: every one drawn among the 1e7 samples
    assert (stats["min"], stats["max"]) == (scribble.min(), scribble.max()) == (122.0, 125.0)
    assert stats["mean"] == pytest.approx(123.5, abs=0.01) and stats["std"] == pytest.approx(scribble.std(), abs=0.01)
    # Ignored voxels are not outside the scribble either (it measured 2.0 mm, a line): the nearest outside is the
    # image border beyond x = 1, 2, 3, 4 at 2, 3, 3, 2 mm (z and y: 3 mm; the background voxel: over 3.6 mm).
    assert fingerprint["structure_thickness_mm"] == {"vessel": [pytest.approx(2 * 2.5)]}


def test_a_case_that_runs_out_of_memory_is_named(
    small_dataset: Path, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case failing without a file in its message (out of memory, a killed worker) was listed only as
    "out of memory; retry with fewer workers", without saying which case."""
    import autoseg.fingerprint.extract as extract

    real = extract.check_case

    def check_case(case, *args, **kwargs):  # type: ignore[no-untyped-def]
        if case.case_id == "hippocampus_006":
            raise MemoryError()
        return real(case, *args, **kwargs)

    monkeypatch.setattr(extract, "check_case", check_case)
    result = runner.invoke(app, ["fingerprint", "999", "-np", "1"])
    assert result.exit_code == 2
    assert "  case hippocampus_006: out of memory; retry with fewer workers" in result.output
    assert not (roots["preprocessed"] / "Dataset999_Test" / "fingerprint.json").exists()


def test_a_fingerprint_of_an_edited_dataset_json_is_stale(small_dataset: Path, roots: dict[str, Path]) -> None:
    """dataset.json edited after fingerprinting (here a channel renamed CT): plan followed the old fingerprint's
    channel names and z-scored a CT channel without a word; now it fingerprints again, load_fingerprint refuses."""
    from autoseg.planning.planner import plan_dataset

    extract_fingerprint("Dataset999", num_workers=1)
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps(description | {"channel_names": {"0": "CT"}}))
    with pytest.raises(FingerprintError, match=r"computed from an earlier .*dataset\.json \(edited since.*re-run `autoseg fingerprint Dataset999_Test`"):
        load_fingerprint("Dataset999")
    plans, _ = plan_dataset("Dataset999", gpu_memory_gb=8, configs=["2d"], num_workers=1)
    assert plans["configurations"]["2d"]["normalization"][0]["scheme"] == "ct"
    assert load_fingerprint("Dataset999")["channel_names"] == {"0": "CT"}


def test_load_fingerprint_errors(small_dataset: Path, roots: dict[str, Path]) -> None:
    location = resolve_dataset("Dataset999")
    with pytest.raises(FingerprintError, match=r"fingerprint\.json: not found; run `autoseg fingerprint Dataset999_Test` first"):
        load_fingerprint(location)
    path = roots["preprocessed"] / "Dataset999_Test" / "fingerprint.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(FingerprintError, match="is not valid JSON"):
        load_fingerprint(location)
    path.write_text(json.dumps({"version": 1}))
    with pytest.raises(FingerprintError, match="missing spacings, shapes_after_crop"):
        load_fingerprint(location)


def test_summary_names_region_datasets_label_values_by_their_regions() -> None:
    """BraTS-style labels: values 1-4 have no names of their own; the summary says which regions hold each."""
    fingerprint = {
        "dataset_name": "Dataset905_BraTS2015Mini", "num_cases": 1, "channel_names": {"0": "FLAIR", "1": "T1c"},
        "median_spacing": [1.0, 1.0, 1.0], "anisotropy_ratio": 1.0, "median_shape_after_crop": [4, 4, 4],
        "median_relative_size_after_crop": 1.0, "foreground_intensity_properties_per_channel": {},
        "labels": {"background": 0, "whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": [4]},
        "class_volumes_mm3": {"2": [10.0], "4": [3.0]},
    }
    lines = format_fingerprint(fingerprint).splitlines()
    assert lines[-2] == "  class 2 (in whole_tumor): median volume 10.0 mm^3"
    assert lines[-1] == "  class 4 (in whole_tumor, tumor_core, enhancing_tumor): median volume 3.0 mm^3"


def test_summary_gives_2d_images_classes_an_area() -> None:
    """A PNG dataset's 'volumes' count the placeholder slice spacing as 1 mm: they were printed as mm^3."""
    fingerprint = {
        "dataset_name": "Dataset906_DRIVE", "num_cases": 1, "channel_names": {"0": "R", "1": "G", "2": "B"},
        "median_spacing": [999.0, 1.0, 1.0], "anisotropy_ratio": 1.0, "median_shape_after_crop": [1, 584, 565],
        "median_relative_size_after_crop": 1.0, "foreground_intensity_properties_per_channel": {},
        "labels": {"background": 0, "vessel": 1}, "class_volumes_mm3": {"1": [30000.0]},
    }
    assert format_fingerprint(fingerprint).splitlines()[-1] == "  class 1 (vessel): median area 30000.0 mm^2"


def test_summary_shows_tiny_and_huge_volumes_in_significant_digits() -> None:
    """A stack of 1e-4 mm voxels printed 'median volume 0.0 mm^3' for classes present in every case."""
    fingerprint = {
        "dataset_name": "Dataset999_Test", "num_cases": 2, "channel_names": {"0": "EM"},
        "median_spacing": [1e-4, 1e-4, 1e-4], "anisotropy_ratio": 1.0, "median_shape_after_crop": [4, 4, 4],
        "median_relative_size_after_crop": 1.0, "foreground_intensity_properties_per_channel": {},
        "labels": {"background": 0, "a": 1, "b": 2}, "class_volumes_mm3": {"1": [1.691e-9, 1.7e-9], "2": [2e12, 2e12]},
    }
    assert format_fingerprint(fingerprint).splitlines()[-2:] == [
        "  class 1 (a): median volume 1.7e-09 mm^3",
        "  class 2 (b): median volume 2e+12 mm^3",
    ]


def test_summary_says_how_many_cases_hold_a_class_missing_from_some() -> None:
    """'median volume 0.0 mm^3' alone hid a class in one case only, or in none at all."""
    fingerprint = {
        "dataset_name": "Dataset999_Test", "num_cases": 4, "channel_names": {"0": "MRI"},
        "median_spacing": [1.0, 1.0, 1.0], "anisotropy_ratio": 1.0, "median_shape_after_crop": [4, 4, 4],
        "median_relative_size_after_crop": 1.0, "foreground_intensity_properties_per_channel": {},
        "labels": {"background": 0, "a": 1, "b": 2, "c": 3, "d": 4},
        "class_volumes_mm3": {"1": [5.0] * 4, "2": [0.0, 3.0, 0.0, 4.0], "3": [0.0, 0.0, 7.0, 0.0], "4": [0.0] * 4},
    }
    assert format_fingerprint(fingerprint).splitlines()[-4:] == [
        "  class 1 (a): median volume 5.0 mm^3",
        "  class 2 (b): median volume 1.5 mm^3, in 2 of 4 cases",
        "  class 3 (c): median volume 0.0 mm^3, in 1 of 4 cases: the fold validating that case cannot learn it",
        "  class 4 (d): median volume 0.0 mm^3, in no case: no model can learn it (check the labels, or remove the class "
        "from dataset.json and renumber those after it)",
    ]


def test_summary_learns_a_region_label_missing_from_cases_through_its_region() -> None:
    """BraTS-style label 1, in no case while its regions are in every case through labels 2 and 4, was said to be
    in no case: 'no model can learn it'; a region in one case only still gets the warning."""
    fingerprint = {
        "dataset_name": "Dataset905_BraTS2015Mini", "num_cases": 3, "channel_names": {"0": "FLAIR"},
        "median_spacing": [1.0, 1.0, 1.0], "anisotropy_ratio": 1.0, "median_shape_after_crop": [4, 4, 4],
        "median_relative_size_after_crop": 1.0, "foreground_intensity_properties_per_channel": {},
        "labels": {"background": 0, "whole_tumor": [1, 2, 3, 4], "tumor_core": [1, 3, 4], "enhancing_tumor": [4]},
        "class_volumes_mm3": {"1": [0.0] * 3, "2": [5.0] * 3, "3": [0.0, 2.0, 0.0], "4": [3.0, 0.0, 0.0]},
    }
    assert format_fingerprint(fingerprint).splitlines()[-4:] == [
        "  class 1 (in whole_tumor, tumor_core): median volume 0.0 mm^3, in no case (each region holding it is in at "
        "least 2 of 3 cases)",
        "  class 2 (in whole_tumor): median volume 5.0 mm^3",
        "  class 3 (in whole_tumor, tumor_core): median volume 0.0 mm^3, in 1 of 3 cases (each region holding it is in "
        "at least 2 of 3 cases)",
        "  class 4 (in whole_tumor, tumor_core, enhancing_tumor): median volume 0.0 mm^3, in 1 of 3 cases: the fold "
        "validating that case cannot learn it",
    ]


def test_cases_stored_in_another_axis_order_are_named(small_dataset: Path, roots: dict[str, Path]) -> None:
    """Three cases of (3, 1, 1) mm and one with the axes stored the other way round, (1, 1, 3) mm, mixed in the median
    spacing without a word; like nnU-Net, nothing is reoriented, but the fingerprint names the case stored in the
    other order (the one against three, whatever the case order)."""
    files = sorted([*(small_dataset / "imagesTr").iterdir(), *(small_dataset / "labelsTr").iterdir()])
    odd_cases = sorted({path.name.split("_0000")[0].removesuffix(".nii.gz") for path in files})[:1]
    for path in files:
        odd = path.name.startswith(tuple(odd_cases))
        image = sitk.GetImageFromArray(_read(path).transpose(2, 1, 0).copy() if odd else _read(path))
        image.SetSpacing((3.0, 1.0, 1.0) if odd else (1.0, 1.0, 3.0))  # x, y, z: array spacing (1, 1, 3) or (3, 1, 1)
        sitk.WriteImage(image, str(path))
    result = runner.invoke(app, ["fingerprint", "999", "-np", "1"])
    assert result.exit_code == 0, result.output
    assert (f"WARNING 1 case(s) have their coarsest spacing on another array axis than the 3 of 4 that have it on axis 0: "
            f"{odd_cases[0]} (1, 1, 3) mm; their axes are stored in another order, and the median spacing (3, 1, 1) mm "
            "mixes the orders. autoseg, like nnU-Net, does not reorient images: rewrite those cases (images and labels) "
            "in the other cases' axis order") in " ".join(result.output.split())
    assert axis_order_warning(["a", "b"], [(3.0, 1.0, 1.0), (1.2, 1.0, 1.0)], (2.1, 1.0, 1.0)) is None  # near-isotropic b
    verified = runner.invoke(app, ["verify", "999", "-np", "1"])  # verify passed it without a word
    assert verified.exit_code == 0 and verified.output.count("have their coarsest spacing on another array axis") == 1
    assert f"{odd_cases[0]} (1, 1, 3) mm;" in " ".join(verified.output.split())


@pytest.mark.parametrize("order", ["abcd", "cdab", "cadb"])
def test_axis_orders_split_evenly_name_both_groups(order: str) -> None:
    """Two cases against two: which half was called 'another axis' depended on the case order (Counter.most_common);
    a tie now says so and names both groups, in any case order."""
    spacing = {"a": (3.0, 1.0, 1.0), "b": (3.0, 1.0, 1.0), "c": (1.0, 1.0, 3.0), "d": (1.0, 1.0, 3.0)}
    warning = axis_order_warning(list(order), [spacing[c] for c in order], (2.0, 1.0, 2.0))
    first, second = [c for c in order if c in "ab"], [c for c in order if c in "cd"]
    assert warning == (
        f"the 4 cases with a coarsest spacing axis are split evenly between array axes: axis 0 in 2 case(s) "
        f"({first[0]} (3, 1, 1) mm, {first[1]} (3, 1, 1) mm) and axis 2 in 2 case(s) ({second[0]} (1, 1, 3) mm, "
        f"{second[1]} (1, 1, 3) mm); their axes are stored in different orders, and the median spacing (2, 1, 2) mm "
        "mixes the orders. autoseg, like nnU-Net, does not reorient images: rewrite one group's cases (images and "
        "labels) in the other's axis order, then fingerprint again")
