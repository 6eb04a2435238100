"""`autoseg verify` (and fingerprint) on broken datasets: the exact line, exit code 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.cli import app
from conftest import FLOAT_LABEL_CASE, PLAIN_CASE, SHARED_DATA, UINT8_IMAGE_CASE, drive_crop, make_drive_subset

runner = CliRunner()


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def edit_image(path: Path, change: Callable[[sitk.Image], sitk.Image]) -> None:
    sitk.WriteImage(change(sitk.ReadImage(str(path))), str(path))


def set_array(path: Path, make: Callable[[np.ndarray], np.ndarray]) -> None:
    image = sitk.ReadImage(str(path))
    new = sitk.GetImageFromArray(make(sitk.GetArrayFromImage(image)))
    new.SetSpacing(image.GetSpacing())
    new.SetOrigin(image.GetOrigin())
    new.SetDirection(image.GetDirection())
    sitk.WriteImage(new, str(path))


def with_spacing(spacing: tuple[float, ...]) -> Callable[[sitk.Image], sitk.Image]:
    def change(image: sitk.Image) -> sitk.Image:
        image.SetSpacing(spacing)
        return image

    return change


def add_second_channel(dataset: Path) -> None:
    description = json.loads((dataset / "dataset.json").read_text())
    description["channel_names"] = {"0": "MRI", "1": "MRI2"}
    (dataset / "dataset.json").write_text(json.dumps(description))
    for image in sorted((dataset / "imagesTr").glob("*_0000.nii.gz")):
        shutil.copy(image, str(image).replace("_0000", "_0001"))


def label(dataset: Path, case: str) -> Path:
    return dataset / "labelsTr" / f"{case}.nii.gz"


def image(dataset: Path, case: str, channel: int = 0) -> Path:
    return dataset / "imagesTr" / f"{case}_{channel:04d}.nii.gz"


def _missing_channel(d: Path) -> str:
    add_second_channel(d)
    image(d, PLAIN_CASE, 1).unlink()
    return f"{image(d, PLAIN_CASE, 1)}: missing channel 1 (MRI2) of case {PLAIN_CASE}"


def _channel_geometry(d: Path) -> str:
    add_second_channel(d)
    edit_image(image(d, PLAIN_CASE, 1), with_spacing((1.0, 1.0, 2.0)))
    return f"{image(d, PLAIN_CASE, 1)}: geometry differs from {PLAIN_CASE}_0000.nii.gz: spacing (2, 1, 1) vs (1, 1, 1)"


def _missing_label(d: Path) -> str:
    label(d, PLAIN_CASE).unlink()
    return f"{label(d, PLAIN_CASE)}: missing label of case {PLAIN_CASE}"


def _label_without_image(d: Path) -> str:
    image(d, PLAIN_CASE).unlink()
    return f"{label(d, PLAIN_CASE)}: label without images (no imagesTr/{PLAIN_CASE}_0000.nii.gz)"


def _no_channel_suffix(d: Path) -> str:
    image(d, PLAIN_CASE).rename(d / "imagesTr" / f"{PLAIN_CASE}.nii.gz")
    return f"{d / 'imagesTr' / (PLAIN_CASE + '.nii.gz')}: name lacks the 4-digit channel suffix; rename to {PLAIN_CASE}_0000.nii.gz"


def _label_copied_into_images(d: Path) -> str:
    """The fix said 'rename to <case>_0000.nii.gz', the name of the case's own image beside it."""
    shutil.copy(label(d, PLAIN_CASE), d / "imagesTr" / f"{PLAIN_CASE}.nii.gz")
    return (f"{d / 'imagesTr' / (PLAIN_CASE + '.nii.gz')}: name lacks the 4-digit channel suffix, and {PLAIN_CASE}_0000.nii.gz "
            "is already there (a label copied into imagesTr?); move it to labelsTr or remove it")


def _empty_case_id(d: Path) -> str:
    image(d, PLAIN_CASE).rename(d / "imagesTr" / "_0000.nii.gz")  # was told to become _0000_0000.nii.gz
    return (f"{d / 'imagesTr' / '_0000.nii.gz'}: the case id before _0000 is empty; name it <case>_0000.nii.gz "
            "(for example case1_0000.nii.gz)")


def _label_without_case_id(d: Path) -> str:
    label(d, PLAIN_CASE).rename(d / "labelsTr" / "_0000.nii.gz")  # was told only that imagesTr/_0000_0000 is missing
    return (f"{d / 'labelsTr' / '_0000.nii.gz'}: label without images; its case id is empty: name it <case>.nii.gz, "
            "its images <case>_0000.nii.gz")


def _num_training(d: Path) -> str:
    description = json.loads((d / "dataset.json").read_text())
    description["numTraining"] = 7
    (d / "dataset.json").write_text(json.dumps(description))
    return f"{d / 'dataset.json'}: numTraining is 7 but 4 training case(s) were found in imagesTr/labelsTr; set numTraining to 4"


def _num_training_of_listed_cases(d: Path) -> str:
    """With an explicit "dataset" case list, the count was said to be 'found in imagesTr/labelsTr'."""
    description = json.loads((d / "dataset.json").read_text())
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (d / "imagesTr").glob("*_0000.nii.gz"))[:2]
    description["dataset"] = {c: {"images": [f"imagesTr/{c}_0000.nii.gz"], "label": f"labelsTr/{c}.nii.gz"} for c in cases}
    (d / "dataset.json").write_text(json.dumps(description))
    return (f"{d / 'dataset.json'}: numTraining is 4 but 2 training case(s) are listed in dataset.json's \"dataset\"; "
            "set numTraining to 2")


def _label_spacing(d: Path) -> str:
    edit_image(label(d, PLAIN_CASE), with_spacing((1.0, 1.5, 1.0)))
    return f"{label(d, PLAIN_CASE)}: geometry differs from image {PLAIN_CASE}_0000.nii.gz: spacing (1, 1.5, 1) vs (1, 1, 1)"


def _label_origin(d: Path) -> str:
    def move(img: sitk.Image) -> sitk.Image:
        img.SetOrigin((5.0, 0.0, 0.0))
        return img

    edit_image(label(d, PLAIN_CASE), move)
    return f"{label(d, PLAIN_CASE)}: geometry differs from image {PLAIN_CASE}_0000.nii.gz: origin (5, 0, 0) vs"


def _one_slice_3d_label_of_a_2d_image(d: Path) -> str:
    """A 2D slice saved beside its label sliced as a one-slice volume: reported as three puzzling mismatches
    ('spacing (1, 1, 1) vs (999, 1, 1); direction ...; origin ...')."""
    sitk.WriteImage(sitk.ReadImage(str(image(d, PLAIN_CASE)))[:, :, 10], str(image(d, PLAIN_CASE)))
    sitk.WriteImage(sitk.ReadImage(str(label(d, PLAIN_CASE)))[:, :, 10:11], str(label(d, PLAIN_CASE)))
    return (f"{label(d, PLAIN_CASE)}: geometry differs from image {PLAIN_CASE}_0000.nii.gz: 3D vs 2D (no slice axis): "
            "save both as 2D or both as 3D")


def _both_at(origin: tuple[float, float, float], d: Path) -> None:
    """Image and label of the plain case moved to ``origin`` (a CT table position, say)."""
    for path in (image(d, PLAIN_CASE), label(d, PLAIN_CASE)):
        edit_image(path, lambda img: (img.SetOrigin(origin), img)[1])


def _label_shifted_far_from_zero(d: Path) -> str:
    # a voxel off at -1500 mm: a tolerance relative to the coordinate (1e-3: 1.5 mm) let it pass.
    _both_at((-1500.0, -1500.0, -1500.0), d)
    edit_image(label(d, PLAIN_CASE), lambda img: (img.SetOrigin((-1501.0, -1500.0, -1500.0)), img)[1])
    return (f"{label(d, PLAIN_CASE)}: geometry differs from image {PLAIN_CASE}_0000.nii.gz: origin (-1501, -1500, -1500) "
            "vs (-1500, -1500, -1500) (they may differ by 0.1 mm, 0.1 of a voxel)")


def _near_integer_label(d: Path) -> str:
    set_array(label(d, PLAIN_CASE), lambda a: np.where(a == 2, np.float32(1.0000001), a).astype(np.float32))
    return f"{label(d, PLAIN_CASE)}: label values must be integers; found non-integer values such as 1.0000001;"


def _label_size(d: Path) -> str:
    set_array(label(d, PLAIN_CASE), lambda a: np.ascontiguousarray(a[:-1]))
    return f"{label(d, PLAIN_CASE)}: size (36, 52, 37) differs from image {PLAIN_CASE}_0000.nii.gz (36, 52, 38)"


def _mask_0_255(d: Path) -> str:
    set_array(label(d, PLAIN_CASE), lambda a: ((a > 0) * 255).astype(np.uint8))
    return f"{label(d, PLAIN_CASE)}: label values 255 are not declared in dataset.json labels (declared: 0, 1, 2) (a 0/255 mask: divide the label by 255 so the object is 1)"


def _undeclared_label(d: Path) -> str:
    set_array(label(d, PLAIN_CASE), lambda a: np.where(a == 2, 5, a).astype(a.dtype))
    return f"{label(d, PLAIN_CASE)}: label values 5 are not declared in dataset.json labels (declared: 0, 1, 2); fix the label file or declare the classes"


def _only_ignore_label(d: Path) -> str:
    description = json.loads((d / "dataset.json").read_text())
    description["labels"]["ignore"] = 3
    (d / "dataset.json").write_text(json.dumps(description))
    set_array(label(d, PLAIN_CASE), lambda a: np.full_like(a, 3))
    return f"{label(d, PLAIN_CASE)}: holds only the ignore label 3: nothing to learn; annotate it or leave it out"


def _fractional_label(d: Path) -> str:
    set_array(label(d, PLAIN_CASE), lambda a: np.where(a == 2, 1.5, a).astype(np.float32))
    return f"{label(d, PLAIN_CASE)}: label values must be integers; found non-integer values such as 1.5"


def _nan_label(d: Path) -> str:
    """ITK reads a NIfTI label's NaN as 0: the voxels passed as background (an NRRD's NaN was refused)."""
    set_array(label(d, PLAIN_CASE), lambda a: np.where(np.arange(a.size).reshape(a.shape) < 2, np.nan, a).astype(np.float32))
    return (f"{label(d, PLAIN_CASE)}: label holds 2 NaN and 0 Inf voxel(s) (NIfTI readers turn NaN into 0, background); "
            "set them to a declared class and save the label as integers")


def _nan_image(d: Path) -> str:
    def poke(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        a[0, 0, :3] = np.nan
        a[0, 1, 0] = np.inf
        return a

    set_array(image(d, PLAIN_CASE), poke)
    return f"{image(d, PLAIN_CASE)}: 3 NaN and 1 Inf voxel(s)"


def _nan_image_with_intercept(d: Path) -> str:
    """ITK reads a NaN voxel as the header's scl_inter (here 10), not 0: verify looked for zeros only."""
    import gzip
    import struct

    set_array(image(d, PLAIN_CASE), lambda a: np.where(np.arange(a.size).reshape(a.shape) < 2, np.nan, a + 1.0).astype(np.float32))
    data = bytearray(gzip.decompress(image(d, PLAIN_CASE).read_bytes()))
    struct.pack_into("<ff", data, 112, 1.0, 10.0)  # scl_slope, scl_inter
    image(d, PLAIN_CASE).write_bytes(gzip.compress(bytes(data)))
    return f"{image(d, PLAIN_CASE)}: 2 NaN and 0 Inf voxel(s)"


def _beyond_float32_image(d: Path) -> str:
    """A float64 image past float32's range read as Inf: fingerprint wrote mean inf, std nan, unchecked."""
    def scale(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        a[0, 0, :2] = [1e300, -1e40]
        return a

    set_array(image(d, PLAIN_CASE), scale)
    return f"{image(d, PLAIN_CASE)}: 2 voxel(s) with magnitude up to 1e+300, beyond float32's 3.4e+38"


def _four_d(d: Path) -> str:
    sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkFloat32), str(image(d, PLAIN_CASE)))
    return f"{image(d, PLAIN_CASE)}: is 4D; autoseg reads 2D or 3D images"


def _truncated(d: Path) -> str:
    data = image(d, PLAIN_CASE).read_bytes()
    image(d, PLAIN_CASE).write_bytes(data[: len(data) // 3])
    return f"{image(d, PLAIN_CASE)}: file is truncated"


def _case_clash(d: Path) -> str:
    upper = PLAIN_CASE.upper()
    shutil.copy(image(d, PLAIN_CASE), image(d, upper))
    shutil.copy(label(d, PLAIN_CASE), label(d, upper))
    description = json.loads((d / "dataset.json").read_text())
    description["numTraining"] = 5
    (d / "dataset.json").write_text(json.dumps(description))
    return f"case id '{PLAIN_CASE}' clashes with '{upper}'"


def _bad_json(d: Path) -> str:
    (d / "dataset.json").write_text('{"labels": {"background": 0,}')
    return f"{d / 'dataset.json'}: is not valid JSON"


def _missing_key(d: Path) -> str:
    description = json.loads((d / "dataset.json").read_text())
    del description["file_ending"]
    (d / "dataset.json").write_text(json.dumps(description))
    return f"{d / 'dataset.json'}: missing key 'file_ending'; add e.g. \"file_ending\": \".nii.gz\""


def _file_ending_of_no_file(d: Path) -> str:
    """Every file ends in .nii.gz, dataset.json says .nii: the fix is file_ending (was: rename each of the
    eight files, and 'set numTraining to 0')."""
    description = json.loads((d / "dataset.json").read_text())
    (d / "dataset.json").write_text(json.dumps(description | {"file_ending": ".nii"}))
    return f"{d / 'dataset.json'}: file_ending is '.nii' but every image in imagesTr ends in '.nii.gz'; set file_ending to '.nii.gz'"


def _no_cases(d: Path) -> str:
    """Empty imagesTr and labelsTr: 'no problems found' with exit 0 (fingerprint then refused the dataset),
    or with numTraining set, the advice 'set numTraining to 0'."""
    for path in [*(d / "imagesTr").iterdir(), *(d / "labelsTr").iterdir()]:
        path.unlink()
    return f"{d}: no training cases found; put images in imagesTr/<case>_0000.nii.gz and labels in labelsTr/<case>.nii.gz"


def _non_consecutive_labels(d: Path) -> str:
    description = json.loads((d / "dataset.json").read_text())
    description["labels"] = {"background": 0, "Anterior": 1, "Posterior": 3}
    (d / "dataset.json").write_text(json.dumps(description))
    return f"{d / 'dataset.json'}: label values must be consecutive integers 0..2, got [0, 1, 3]"


BREAKAGES = {f.__name__[1:]: f for f in [
    _missing_channel, _channel_geometry, _missing_label, _label_without_image, _no_channel_suffix, _label_copied_into_images, _empty_case_id, _label_without_case_id,
    _num_training, _num_training_of_listed_cases, _label_spacing, _label_origin, _label_size, _mask_0_255, _undeclared_label,
    _only_ignore_label, _fractional_label, _nan_label, _nan_image, _nan_image_with_intercept, _four_d, _truncated, _case_clash, _bad_json, _missing_key,
    _non_consecutive_labels, _label_shifted_far_from_zero, _near_integer_label, _beyond_float32_image,
    _file_ending_of_no_file, _no_cases, _one_slice_3d_label_of_a_2d_image,
]}


def test_clean_dataset_verifies(small_dataset: Path, roots: dict[str, Path]) -> None:
    result = runner.invoke(app, ["verify", "Dataset999"])
    assert result.exit_code == 0, result.output
    assert "Dataset999_Test: 4 case(s) checked, no problems found" in result.output


def assert_verify_and_fingerprint_refuse(dataset: Path, expected: str, roots: dict[str, Path]) -> None:
    """verify reports ``expected`` as an ERROR line, fingerprint lists it and writes no fingerprint.json."""
    result = runner.invoke(app, ["verify", str(dataset), "-np", "1"])
    assert result.exit_code == 2 and f"ERROR {expected}" in result.output.splitlines(), result.output
    result = runner.invoke(app, ["fingerprint", str(dataset), "-np", "1"])
    assert result.exit_code == 2 and f"  {expected}" in result.output.splitlines(), result.output
    assert not list(roots["preprocessed"].rglob("fingerprint.json"))


def test_a_2d_case_among_3d_cases_is_refused_by_verify_and_fingerprint(small_dataset: Path, roots: dict[str, Path]) -> None:
    """One slice saved as a 2D NIfTI among 3D volumes was read with the 2D slice spacing of 999 mm: it verified and
    fingerprinted, and preprocessing stretched it over 500 slices of the 3D target spacing."""
    image = sorted((small_dataset / "imagesTr").glob("*_0000.nii.gz"))[0]
    label = small_dataset / "labelsTr" / image.name.replace("_0000", "")
    for path in (image, label):
        edit_image(path, lambda volume: volume[:, :, volume.GetSize()[2] // 2])
    expected = (f"{image}: 2D image(s) (one slice, no slice thickness) among 3 3D case(s); save each as a 3D volume of "
                "one slice with its slice thickness (as the other cases' files are), or remove it")
    assert_verify_and_fingerprint_refuse(small_dataset, expected, roots)
    for other in sorted((small_dataset / "imagesTr").glob("*_0000.nii.gz"))[1:]:  # one-slice 3D files: a 2D dataset
        for path in (other, small_dataset / "labelsTr" / other.name.replace("_0000", "")):
            edit_image(path, lambda volume: volume[:, :, :1])
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 0, result.output


def test_a_volume_with_a_huge_spacing_is_not_called_a_2d_image(small_dataset: Path, roots: dict[str, Path]) -> None:
    """A volume of 36 slices whose header is in microns (1000 mm voxels) was refused as '2D image(s) (one slice, no
    slice thickness)': the slice count was never looked at. It verifies; plan names its header's voxel size."""
    for path in (image(small_dataset, PLAIN_CASE), label(small_dataset, PLAIN_CASE)):
        edit_image(path, with_spacing((1000.0, 1000.0, 1000.0)))
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 0 and "2D image" not in result.output, result.output


def test_a_voxel_size_no_image_has_is_refused_before_its_volumes_overflow(small_dataset: Path, roots: dict[str, Path]) -> None:
    """1e200 mm voxels (a MetaImage header holds doubles) verified; fingerprint.json got Infinity for the case's
    class volumes and structure thickness, and plan stopped with an internal OverflowError."""
    for folder in (small_dataset / "imagesTr", small_dataset / "labelsTr"):
        for path in sorted(folder.glob("*.nii.gz")):
            sitk.WriteImage(sitk.ReadImage(str(path)), str(folder / path.name.replace(".nii.gz", ".mha")))
            path.unlink()
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps(description | {"file_ending": ".mha"}))
    huge = small_dataset / "imagesTr" / f"{PLAIN_CASE}_0000.mha"
    for path in (huge, small_dataset / "labelsTr" / f"{PLAIN_CASE}.mha"):
        edit_image(path, with_spacing((1e200, 1e200, 1e200)))
    expected = (f"{huge}: voxel spacing (1e+200, 1e+200, 1e+200) mm is beyond 100000 mm, no real voxel size (a header "
                "in other units?); fix the header's voxel size")
    assert_verify_and_fingerprint_refuse(small_dataset, expected, roots)


def test_images_named_as_their_labels_are_named_as_lacking_the_channel_suffix(
    small_dataset: Path, roots: dict[str, Path]
) -> None:
    """Case ids ending in four digits (case_0001), images saved without _0000: each image was read as channel 1, 3,
    ... of a case 'case', and verify advised removing every image as an undeclared channel and renaming every
    (correctly named) label."""
    names = []
    for number, image_file in enumerate(sorted((small_dataset / "imagesTr").iterdir()), start=1):
        case = image_file.name[: -len("_0000.nii.gz")]
        image_file.rename(small_dataset / "imagesTr" / f"case_{number:04d}.nii.gz")
        (small_dataset / "labelsTr" / f"{case}.nii.gz").rename(small_dataset / "labelsTr" / f"case_{number:04d}.nii.gz")
        names.append(f"case_{number:04d}")
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("ERROR")]
    assert problems == [f"ERROR {small_dataset / 'imagesTr' / name}.nii.gz: name lacks the 4-digit channel suffix; rename "
                        f"to {name}_0000.nii.gz" for name in names], result.output


def test_a_file_saved_with_another_image_ending_is_named_with_its_fix(small_dataset: Path, roots: dict[str, Path]) -> None:
    """An uncompressed .nii label (or image) in a .nii.gz dataset was 'file ending is not .nii.gz; rename or remove
    it', and its case also a 'missing label' (a 'label without images'): the file is there, only uncompressed."""
    uncompressed_label, uncompressed_image = label(small_dataset, PLAIN_CASE), image(small_dataset, FLOAT_LABEL_CASE)
    for path in (uncompressed_label, uncompressed_image):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path)[: -len(".gz")])
        path.unlink()
    nrrd = label(small_dataset, UINT8_IMAGE_CASE).with_name(f"{UINT8_IMAGE_CASE}.nrrd")
    sitk.WriteImage(sitk.ReadImage(str(label(small_dataset, UINT8_IMAGE_CASE))), str(nrrd))
    label(small_dataset, UINT8_IMAGE_CASE).unlink()
    misnamed = image(small_dataset, "hippocampus_006").with_suffix("")  # compressed, named .nii: a rename fixes it
    image(small_dataset, "hippocampus_006").rename(misnamed)
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2, result.output
    fix = "or set file_ending to '.nii' with every image and label uncompressed"
    assert [line for line in result.output.splitlines() if line.startswith("ERROR")] == [
        f"ERROR {image(small_dataset, FLOAT_LABEL_CASE)}"[: -len(".gz")] + f": is an uncompressed NIfTI ('.nii') but "
        f"dataset.json's file_ending is '.nii.gz'; compress it (gzip {FLOAT_LABEL_CASE}_0000.nii makes "
        f"{FLOAT_LABEL_CASE}_0000.nii.gz), {fix}",
        f"ERROR {misnamed}: is a gzip-compressed NIfTI named '.nii' but dataset.json's file_ending is '.nii.gz'; "
        "rename it to hippocampus_006_0000.nii.gz",
        f"ERROR {nrrd}: ends in '.nrrd' but dataset.json's file_ending is '.nii.gz' (all images and labels share one); "
        f"save it as {UINT8_IMAGE_CASE}.nii.gz, or set file_ending to '.nrrd' with every file saved so",
        f"ERROR {label(small_dataset, PLAIN_CASE)}"[: -len(".gz")] + f": is an uncompressed NIfTI ('.nii') but "
        f"dataset.json's file_ending is '.nii.gz'; compress it (gzip {PLAIN_CASE}.nii makes {PLAIN_CASE}.nii.gz), {fix}",
    ], result.output


def test_a_second_copy_of_a_file_with_another_ending_is_named_as_such(small_dataset: Path, roots: dict[str, Path]) -> None:
    """hippocampus_004.nii beside hippocampus_004.nii.gz was told to be compressed (gzip makes .nii.gz: the other one)."""
    copy = label(small_dataset, PLAIN_CASE).with_suffix("")
    sitk.WriteImage(sitk.ReadImage(str(label(small_dataset, PLAIN_CASE))), str(copy))
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.startswith("ERROR")] == [
        f"ERROR {copy}: a second copy of {PLAIN_CASE}.nii.gz beside it, saved as '.nii'; remove one of the two"]


def test_a_listed_case_id_that_is_no_plain_file_name_is_refused(small_dataset: Path, roots: dict[str, Path]) -> None:
    """Case ids of dataset.json's "dataset" list name every stage's files: '../../x' wrote preprocessed data outside
    the preprocessed folder and 'sub/a' made subfolders; both verified clean."""
    description = json.loads((small_dataset / "dataset.json").read_text())
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in (small_dataset / "imagesTr").glob("*_0000.nii.gz"))
    ids = ["../../escaped", "sub/a", "ok", ".hidden"]
    description["dataset"] = {new: {"images": [f"imagesTr/{old}_0000.nii.gz"], "label": f"labelsTr/{old}.nii.gz"}
                              for new, old in zip(ids, cases)}
    (small_dataset / "dataset.json").write_text(json.dumps(description))
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2, result.output
    for bad in ("../../escaped", "sub/a", ".hidden"):
        assert (f"{small_dataset / 'dataset.json'}: case id {bad!r} in \"dataset\" is not a plain file name (each stage "
                "names the case's files after it)") in result.output
    assert "'ok'" not in result.output
    result = runner.invoke(app, ["preprocess", str(small_dataset), "-np", "1"])
    assert result.exit_code != 0 and "is not a plain file name" in result.output
    assert not (roots["preprocessed"].parent / "escaped.json").exists()


def test_zero_workers_verify_in_this_process(
    small_dataset: Path, roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-np 0` ("0 or 1: all in this process", the option's help) started a pool of one worker per core."""
    import autoseg.dataset.verify as verify

    from cli_helpers import workers_asked

    asked = workers_asked(monkeypatch, verify)
    result = runner.invoke(app, ["verify", "Dataset999", "-np", "0"])
    assert result.exit_code == 0, result.output
    assert asked == [0]


def as_3d_tiff_dataset(dataset: Path) -> None:
    """The dataset in nnU-Net v2's Tiff3DIO layout: <case>_0000.tif / <case>.tif pages along z, the spacing
    in a <case>.json beside them (image and label folders each)."""
    import tifffile

    for folder in (dataset / "imagesTr", dataset / "labelsTr"):
        for path in sorted(folder.glob("*.nii.gz")):
            image = sitk.ReadImage(str(path))
            stem = path.name[: -len(".nii.gz")]
            tifffile.imwrite(folder / f"{stem}.tif", sitk.GetArrayFromImage(image), photometric="minisblack")
            spacing = list(reversed(image.GetSpacing()))
            (folder / f"{stem.removesuffix('_0000')}.json").write_text(json.dumps({"spacing": spacing}))
            path.unlink()
    description = json.loads((dataset / "dataset.json").read_text())
    (dataset / "dataset.json").write_text(json.dumps(description | {"file_ending": ".tif"}))


def test_a_3d_tiff_dataset_verifies_and_fingerprints_with_its_spacing(small_dataset: Path, roots: dict[str, Path]) -> None:
    """The spacing sidecars are part of the format, not files with a wrong ending."""
    from autoseg.fingerprint.extract import extract_fingerprint

    as_3d_tiff_dataset(small_dataset)
    result = runner.invoke(app, ["verify", "Dataset999"])
    assert result.exit_code == 0, result.output
    assert "Dataset999_Test: 4 case(s) checked, no problems found" in result.output
    spacings = extract_fingerprint("Dataset999", num_workers=1)["spacings"]
    assert len(spacings) == 4 and all(s == [1.0, 1.0, 1.0] for s in spacings)


@pytest.mark.parametrize("missing", ["labelsTr", "imagesTr"])
def test_a_one_page_3d_tiff_without_its_spacing_file_is_named_as_such(
    missing: str, small_dataset: Path, roots: dict[str, Path]
) -> None:
    """A one-page TIFF without its <case>.json is read as a 2D image: beside its 3D partner it was reported as
    '2D (no slice axis) vs 3D' geometry, naming neither the missing spacing file nor the fix."""
    import tifffile

    as_3d_tiff_dataset(small_dataset)
    files = [small_dataset / "imagesTr" / f"{PLAIN_CASE}_0000.tif", small_dataset / "labelsTr" / f"{PLAIN_CASE}.tif"]
    for path in files:
        tifffile.imwrite(path, tifffile.imread(path)[10], photometric="minisblack")
    (small_dataset / missing / f"{PLAIN_CASE}.json").unlink()
    flat, volume = files if missing == "imagesTr" else files[::-1]
    result = runner.invoke(app, ["verify", "Dataset999"])
    assert result.exit_code == 2
    assert (f"ERROR {flat}: a one-page TIFF without its spacing file, so read as a 2D image, while {volume.name} is "
            f'a 3D volume; add {small_dataset / missing / PLAIN_CASE}.json holding {{"spacing": [z, y, x]}} in mm '
            f"(the spacing of {volume.name}: [1.0, 1.0, 1.0])") in result.output
    assert "geometry differs" not in result.output


@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
def test_a_detached_header_dataset_verifies_with_its_data_files(
    ending: str, small_dataset: Path, roots: dict[str, Path]
) -> None:
    """MetaImage .mhd and NRRD .nhdr keep their voxels in a .raw file beside the header: those data files
    are part of the format (were each reported as 'file ending is not .mhd')."""
    from autoseg.fingerprint.extract import extract_fingerprint

    for folder in (small_dataset / "imagesTr", small_dataset / "labelsTr"):
        for path in sorted(folder.glob("*.nii.gz")):
            sitk.WriteImage(sitk.ReadImage(str(path)), str(folder / path.name.replace(".nii.gz", ending)))
            path.unlink()
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps(description | {"file_ending": ending}))
    assert len(list((small_dataset / "labelsTr").glob("*.raw*"))) == 4
    result = runner.invoke(app, ["verify", "Dataset999"])
    assert result.exit_code == 0, result.output
    assert "Dataset999_Test: 4 case(s) checked, no problems found" in result.output
    assert extract_fingerprint("Dataset999", num_workers=1)["num_cases"] == 4


def test_python_entry_points_take_a_dataset_name_or_path_as_the_others_do(small_dataset: Path, roots: dict[str, Path]) -> None:
    """verify_dataset('Dataset999') raised AttributeError ('str' object has no attribute 'raw_dir'), while
    plan_dataset, preprocess_dataset and train_fold take a name or path."""
    from autoseg.dataset.verify import require_valid, verify_dataset
    from autoseg.fingerprint.extract import extract_fingerprint
    from autoseg.fingerprint.file import fingerprint_path, load_fingerprint
    from autoseg.paths import resolve_dataset

    location = resolve_dataset("Dataset999")
    for spec in ("Dataset999", 999, small_dataset, str(small_dataset), location):
        assert verify_dataset(spec, num_workers=1).ok and resolve_dataset(spec) == location
    require_valid(small_dataset, num_workers=1)
    assert extract_fingerprint(str(small_dataset), num_workers=1) == load_fingerprint("Dataset999")
    assert fingerprint_path(999) == fingerprint_path(location)


# fingerprint shares verify's checks (one read per case); a few breakages show it refuses too.
CASES = [("verify", b) for b in sorted(BREAKAGES)] + [
    ("fingerprint", b) for b in ("label_spacing", "nan_image", "nan_label", "missing_label", "bad_json", "mask_0_255", "beyond_float32_image",
                                 "only_ignore_label")
]


@pytest.mark.parametrize(("command", "breakage"), CASES)
def test_broken_dataset_reports_exact_line(
    breakage: str, command: str, small_dataset: Path, roots: dict[str, Path]
) -> None:
    expected = BREAKAGES[breakage](small_dataset)
    before = tree_digest(small_dataset)
    result = runner.invoke(app, [command, str(small_dataset), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert tree_digest(small_dataset) == before  # the user's data is never modified
    assert list(roots["preprocessed"].rglob("*")) == []  # nothing written


def test_all_problems_reported_at_once(small_dataset: Path, roots: dict[str, Path]) -> None:
    label(small_dataset, FLOAT_LABEL_CASE).unlink()
    expected = [f"{label(small_dataset, FLOAT_LABEL_CASE)}: missing label", _nan_image(small_dataset)]
    set_array(label(small_dataset, UINT8_IMAGE_CASE), lambda a: np.where(a == 2, 7, a).astype(a.dtype))
    result = runner.invoke(app, ["verify", str(small_dataset)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 3
    for line in expected:
        assert any(line in e for e in errors)
    assert any("label values 7" in e for e in errors)


def test_a_blank_image_channel_is_warned_about_by_case_and_channel(small_dataset: Path, roots: dict[str, Path]) -> None:
    """An all-zero image beside its label passed verify without a word (as in nnU-Net): accepted, with a warning."""
    add_second_channel(small_dataset)
    set_array(image(small_dataset, PLAIN_CASE, 1), np.zeros_like)
    before = tree_digest(small_dataset)
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("WARNING ")]
    assert warnings == [f"WARNING {image(small_dataset, PLAIN_CASE, 1)}: case {PLAIN_CASE}, channel 1: every voxel holds 0 "
                        "(a blank image: failed export or conversion?); check the file, or remove the case if it has no image"]
    assert "4 case(s) checked, no problems found (1 warning(s))" in result.output
    assert tree_digest(small_dataset) == before


def _assert_one_warning_of_verify_and_fingerprint(dataset: Path, warning: str) -> None:
    """verify and fingerprint of ``dataset`` both pass, each printing ``warning`` as its only WARNING line."""
    for command in ("verify", "fingerprint"):
        result = runner.invoke(app, [command, str(dataset), "-np", "1"])
        assert result.exit_code == 0, result.output
        assert [line for line in result.output.splitlines() if line.startswith("WARNING")] == [warning], command


def test_nrrd_spacing_in_cm_is_one_warning_of_verify_and_fingerprint(small_dataset: Path, roots: dict[str, Path]) -> None:
    """A NRRD dataset whose headers give the spacing in cm (space units, which ITK ignores) was read as mm in silence;
    it still is (as nnU-Net reads it), with one warning a command naming the files, not one a file."""
    description = json.loads((small_dataset / "dataset.json").read_text())
    (small_dataset / "dataset.json").write_text(json.dumps({**description, "file_ending": ".nrrd"}))
    in_cm = []
    for path in sorted(small_dataset.glob("*Tr/*.nii.gz")):
        nrrd = path.with_name(path.name[: -len(".nii.gz")] + ".nrrd")
        sitk.WriteImage(sitk.ReadImage(str(path)), str(nrrd))
        path.unlink()
        if PLAIN_CASE in nrrd.name:
            header, _, data = nrrd.read_bytes().partition(b"\n\n")
            nrrd.write_bytes(header + b'\nspace units: "cm" "cm" "cm"\n\n' + data)
            in_cm.append(nrrd)
    warning = (f"WARNING 2 NRRD file(s) give their spacing in cm (their header's space units): {in_cm[0]}, {in_cm[1]}; "
               "they are read as mm, as SimpleITK and nnU-Net read them; to use their true size, rewrite the spacing in "
               'mm (space directions or spacings, and space units "mm")')
    _assert_one_warning_of_verify_and_fingerprint(small_dataset, warning)


def test_origins_rounded_by_headers_far_from_zero_are_accepted(small_dataset: Path, roots: dict[str, Path]) -> None:
    _both_at((-1500.0, -1500.0, -1500.0), small_dataset)  # 0.01 mm apart: float32 rounding, not a shift
    edit_image(label(small_dataset, PLAIN_CASE), lambda img: (img.SetOrigin((-1500.01, -1500.0, -1499.99)), img)[1])
    result = runner.invoke(app, ["verify", str(small_dataset)])
    assert result.exit_code == 0, result.output


def test_float_labels_with_integer_values_are_accepted(small_dataset: Path, roots: dict[str, Path]) -> None:
    assert sitk.ReadImage(str(label(small_dataset, FLOAT_LABEL_CASE))).GetPixelIDTypeAsString() == "32-bit float"
    assert runner.invoke(app, ["verify", str(small_dataset)]).exit_code == 0


# ------------------------------------------------------------------ 2D natural images: nnU-Net's layout


DRIVE_CASES = ["drive_21", "drive_22", "drive_23"]
CASE = "drive_22"


@pytest.fixture
def drive_dataset(roots: dict[str, Path]) -> Path:
    """Three 64x64 crops of real DRIVE cases: one RGB ``<case>_0000.png`` each, channel_names R, G, B."""
    return make_drive_subset(roots["raw"], DRIVE_CASES)


def png(path: Path, pixels: np.ndarray) -> Path:
    from skimage import io as skio

    skio.imsave(path, pixels, check_contrast=False)
    return path


def rgb(dataset: Path, case: str = CASE, channel: int = 0) -> Path:
    return dataset / "imagesTr" / f"{case}_{channel:04d}.png"


def mask(dataset: Path, case: str = CASE) -> Path:
    return dataset / "labelsTr" / f"{case}.png"


def declare_channels(dataset: Path, names: list[str]) -> None:
    description = json.loads((dataset / "dataset.json").read_text())
    description["channel_names"] = {str(i): name for i, name in enumerate(names)}
    (dataset / "dataset.json").write_text(json.dumps(description))


def split_into_grey_files(dataset: Path, channels: list[int]) -> None:
    """Replace the case's RGB file by one grey file per listed channel (nnU-Net joins them in order)."""
    image_rgb, _ = drive_crop(CASE)
    rgb(dataset).unlink()
    for c in channels:
        png(rgb(dataset, channel=c), image_rgb[..., c])


def _rgb_declared_as_one_channel(d: Path) -> str:
    declare_channels(d, ["fundus"])
    return (
        f"{rgb(d)}: found 3 channel(s) (RGB), dataset.json channel_names declares 1; save the image as grey "
        "(one channel), or declare 3 channels in channel_names"
    )


def _grey_image_in_rgb_dataset(d: Path) -> str:
    png(rgb(d), drive_crop(CASE)[0][..., 1])
    return f"{rgb(d)}: found 1 channel(s) (grey), dataset.json channel_names declares 3; give the case 3 channels"


def _rgba_with_two_declared(d: Path) -> str:
    image_rgb, _ = drive_crop(CASE)
    png(rgb(d), np.concatenate([image_rgb, np.full((*image_rgb.shape[:2], 1), 255, np.uint8)], axis=-1))
    declare_channels(d, ["R", "G"])
    return f"{rgb(d)}: found 4 channel(s) (RGBA), dataset.json channel_names declares 2; save the case with 2 channel(s)"


def _split_channel_missing(d: Path) -> str:
    split_into_grey_files(d, [0, 1])
    return f"{rgb(d)} (+ 1 more file(s) of the case): found 2 channel(s) (grey, grey), dataset.json channel_names declares 3"


def _split_channel_gap(d: Path) -> str:
    split_into_grey_files(d, [0, 2])
    return f"{rgb(d, channel=1)}: missing channel 1 (G) of case {CASE}"


def _rgb_mask(d: Path) -> str:
    png(mask(d), np.stack([drive_crop(CASE)[1] * 255] * 3, axis=-1).astype(np.uint8))
    return (
        f"{mask(d)}: is a colour image (RGB, 3 channels) where one value per pixel is expected; save label maps as grey "
        "PNGs whose pixel values are the class numbers (0 background, 1, 2, ...) (its colour channels are equal: "
        "converting it to grey keeps the values)"
    )


def _png_mask_0_255(d: Path) -> str:
    png(mask(d), (drive_crop(CASE)[1] * 255).astype(np.uint8))
    return f"{mask(d)}: label values 255 are not declared in dataset.json labels (declared: 0, 1) (a 0/255 mask: divide the label by 255 so the object is 1)"


def _mask_size(d: Path) -> str:
    png(mask(d), np.ascontiguousarray(drive_crop(CASE)[1][:, :60]))
    return f"{mask(d)}: size (60, 64, 1) differs from image {CASE}_0000.png (64, 64, 1); the label must be on the image's grid"


def _sixteen_bit_rgb_to_0_1(d: Path) -> str:
    """rgb_to_0_1 divides by 255: a 16-bit channel passed verify and plan, and preprocessing refused the case
    without naming its file."""
    split_into_grey_files(d, [0, 1, 2])
    png(rgb(d, channel=1), drive_crop(CASE)[0][..., 1].astype(np.uint16) * 257)
    declare_channels(d, ["rgb_to_0_1"] * 3)
    return f"{rgb(d, channel=1)}: channel 1: a channel named rgb_to_0_1 holds values "


NATURAL_BREAKAGES = {f.__name__[1:]: f for f in [
    _rgb_declared_as_one_channel, _grey_image_in_rgb_dataset, _rgba_with_two_declared, _split_channel_missing,
    _split_channel_gap, _rgb_mask, _png_mask_0_255, _mask_size, _sixteen_bit_rgb_to_0_1,
]}


@pytest.mark.parametrize("breakage", sorted(NATURAL_BREAKAGES))
def test_broken_natural_image_dataset_reports_exact_line(breakage: str, drive_dataset: Path, roots: dict[str, Path]) -> None:
    expected = NATURAL_BREAKAGES[breakage](drive_dataset)
    before = tree_digest(drive_dataset)
    result = runner.invoke(app, ["verify", str(drive_dataset), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert tree_digest(drive_dataset) == before


def _rgba_images(d: Path) -> None:
    for case in DRIVE_CASES:
        image_rgb, _ = drive_crop(case)
        alpha = np.full((*image_rgb.shape[:2], 1), 255, np.uint8)
        png(rgb(d, case), np.concatenate([image_rgb, alpha], axis=-1))


def _rgba_with_alpha_declared(d: Path) -> None:
    _rgba_images(d)
    declare_channels(d, ["R", "G", "B", "A"])


def _split_grey_files(d: Path) -> None:
    split_into_grey_files(d, [0, 1, 2])


@pytest.mark.parametrize("variant", [None, _rgba_images, _rgba_with_alpha_declared, _split_grey_files])
def test_natural_image_layouts_nnunet_reads_verify_clean(variant, drive_dataset: Path, roots: dict[str, Path]) -> None:
    """One RGB file, RGBA with alpha dropped (3 declared) or kept (4 declared), or one grey file per channel."""
    if variant is not None:
        variant(drive_dataset)
    result = runner.invoke(app, ["verify", str(drive_dataset), "-np", "1"])
    assert result.exit_code == 0, result.output
    assert "Dataset996_DriveCrop: 3 case(s) checked, no problems found" in result.output


def test_fingerprint_of_rgb_dataset_has_one_entry_per_colour(drive_dataset: Path, roots: dict[str, Path]) -> None:
    """R, G, B statistics are those of the vessel pixels of each colour plane."""
    result = runner.invoke(app, ["fingerprint", str(drive_dataset), "-np", "1"])
    assert result.exit_code == 0, result.output
    fingerprint = json.loads((roots["preprocessed"] / "Dataset996_DriveCrop" / "fingerprint.json").read_text())
    assert fingerprint["spacings"] == [[999.0, 1.0, 1.0]] * 3
    assert fingerprint["shapes_after_crop"] == [[1, 64, 64]] * 3
    stats = fingerprint["foreground_intensity_properties_per_channel"]
    assert sorted(stats) == ["0", "1", "2"]
    pixels = [drive_crop(case) for case in DRIVE_CASES]
    for c in range(3):
        vessel = np.concatenate([image[..., c][m > 0] for image, m in pixels])
        assert stats[str(c)]["max"] == vessel.max() and stats[str(c)]["min"] == vessel.min()


@pytest.mark.parametrize("name", ["Dataset906_DRIVE", "Dataset907_EMMembrane", "Dataset905_BraTS2015Mini"])
def test_shared_datasets_verify_clean(name: str) -> None:
    """The shared RGB, grey and two-channel region datasets, read unchanged as nnU-Net v2 reads them."""
    result = runner.invoke(app, ["verify", str(SHARED_DATA / name), "-np", "1"])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output


def test_jpeg_dataset_is_refused_once_with_the_reason(drive_dataset: Path, roots: dict[str, Path]) -> None:
    """JPEG is lossy (nnU-Net has no reader for it): one line at dataset.json, not one per file."""
    description = json.loads((drive_dataset / "dataset.json").read_text())
    (drive_dataset / "dataset.json").write_text(json.dumps(description | {"file_ending": ".jpg"}))
    for folder in ("imagesTr", "labelsTr"):
        for path in (drive_dataset / folder).iterdir():
            path.rename(path.with_suffix(".jpg"))
    result = runner.invoke(app, ["verify", str(drive_dataset), "-np", "1"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("ERROR ")] == [
        f"ERROR {drive_dataset / 'dataset.json'}: file_ending '.jpg' is not a supported image type; JPEG compression "
        "is lossy and alters pixel values (label maps would change; nnU-Net refuses it too); save images and labels as .png"
    ]


@pytest.mark.parametrize("slope, found", [(1.5, "label values must be integers; found non-integer values such as 1.5"),
                                          (2.0, "label values 4 are not declared in dataset.json labels (declared: 0, 1, 2)")])
def test_a_label_whose_header_scales_its_values_is_named_as_such(slope: float, found: str, small_dataset: Path) -> None:
    """A label of 0, 1, 2 saved with scl_slope 1.5 reads as 0, 1.5, 3 (ITK and nnU-Net apply it): verify said to
    resample it with nearest neighbour, or (slope 2) to declare class 4, never that the header scales it."""
    import gzip
    import struct

    path = label(small_dataset, PLAIN_CASE)
    header = bytearray(gzip.decompress(path.read_bytes()))
    header[112:116] = struct.pack("<f", slope)  # scl_slope
    path.write_bytes(gzip.compress(bytes(header)))
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2
    assert f"ERROR {path}: {found}; its header scales the stored values (scl_slope {slope:g}, scl_inter 0), as every NIfTI " \
           "reader applies them; save the label with scl_slope 1 and scl_inter 0\n" in result.output, result.output


def test_a_file_name_that_is_not_utf8_is_reported_not_an_abort(small_dataset: Path, roots: dict[str, Path]) -> None:
    """SimpleITK aborted the process (exit 134, no message) when handed a Latin-1 file name. Its case counts
    towards numTraining (it was left out: 'set numTraining to 3', wrong once the files are renamed)."""
    for folder, ending in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        source = small_dataset / folder / f"{PLAIN_CASE}{ending}"
        os.rename(os.fsencode(source), os.fsencode(small_dataset / folder) + b"/caf\xe9" + ending.encode())
    before = {os.fsencode(p): p.read_bytes() for p in small_dataset.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2, result.output
    assert f"ERROR {small_dataset}/imagesTr/caf\\xe9_0000.nii.gz: name is not valid UTF-8" in result.output
    assert f"ERROR {small_dataset}/labelsTr/caf\\xe9.nii.gz: name is not valid UTF-8" in result.output
    assert "numTraining" not in result.output and result.output.count("ERROR ") == 2
    result = runner.invoke(app, ["fingerprint", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2 and "name is not valid UTF-8" in result.output, result.output
    assert {os.fsencode(p): p.read_bytes() for p in small_dataset.rglob("*") if p.is_file()} == before


def test_verify_lowers_more_processes_than_four_per_core(small_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-np had no upper bound: -np 100000 started one process per case; beyond 4 per core it is lowered, with a note
    (refusing it stopped nnU-Net's habitual -np 8 on a one-core machine)."""
    from autoseg.utils import progress

    started = []
    real_pool = progress.ProcessPoolExecutor
    monkeypatch.setattr(progress, "available_cores", lambda: 2)
    monkeypatch.setattr(progress, "ProcessPoolExecutor",
                        lambda max_workers, **kw: started.append(max_workers) or real_pool(max_workers, **kw))
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "9"])
    assert result.exit_code == 0, result.output
    assert "note: -np 9 is more than 4 worker processes per core of this machine; 8 are used" in result.output
    assert progress.stage_workers(100000, ValueError) == 8 and all(n <= 8 for n in started)


def _shear_sform(path: Path, codes: tuple[int, int] = (1, 1), shear: float = 0.5, z_shift: float = 0.0) -> None:
    """Keep the qform of the NIfTI ``path``; give it an sform (``codes``: qform_code, sform_code) sheared by
    ``shear`` (x along y) and moved by ``z_shift`` mm."""
    import gzip
    import struct

    header = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<hh", header, 252, *codes)
    rows = list(struct.unpack_from("<12f", header, 280))
    rows[1] += shear
    rows[11] += z_shift
    struct.pack_into("<12f", header, 280, *rows)
    path.write_bytes(gzip.compress(bytes(header)))


def test_an_ignored_sform_is_one_warning_of_verify_and_fingerprint(small_dataset: Path, roots: dict[str, Path]) -> None:
    """A NIfTI whose sform was sheared but whose qform was valid was read (by ITK, as nnU-Net reads it) through the
    qform in silence; it still is, with one warning a command naming the files."""
    sheared, moved = image(small_dataset, PLAIN_CASE), label(small_dataset, "hippocampus_006")
    _shear_sform(sheared)
    _shear_sform(moved, codes=(1, 2), shear=0.0, z_shift=5.0)  # an aligned sform (code 2) ITK passes over
    _shear_sform(image(small_dataset, "hippocampus_006"), shear=1e-7)  # float32 rounding: no warning
    warning = (f"WARNING 2 NIfTI file(s) hold an sform (srow_x/y/z) that places them elsewhere than the qform ITK reads "
               f"them by (a sheared sform, or one whose sform_code is not 1): {sheared}, {moved}; they are read by the "
               "qform, as SimpleITK and nnU-Net read them, while nibabel and most viewers show the sform; if the sform "
               "is the true placement, export them again with qform and sform equal (resampled where it is sheared)")
    _assert_one_warning_of_verify_and_fingerprint(small_dataset, warning)


def test_a_label_named_in_another_unicode_form_is_named_as_such(small_dataset: Path, roots: dict[str, Path]) -> None:
    """A label named 'café' with e + a combining accent (NFD) beside images named with é (NFC) was reported as a
    missing label and a label without images, each naming a file that was plainly there, and numTraining as wrong."""
    import unicodedata

    composed = unicodedata.normalize("NFC", "café_001")
    image(small_dataset, PLAIN_CASE).rename(image(small_dataset, PLAIN_CASE).with_name(f"{composed}_0000.nii.gz"))
    decomposed = label(small_dataset, PLAIN_CASE).with_name(unicodedata.normalize("NFD", f"{composed}.nii.gz"))
    label(small_dataset, PLAIN_CASE).rename(decomposed)
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("ERROR")] == [
        f"ERROR {decomposed}: its name spells the case id {composed!r} with other Unicode characters than the images of "
        f"case {composed} do (decomposed (NFD) vs composed (NFC): alike on screen, other names on disk), so they do not "
        "match; rename the label or the images so both use the same (composed, NFC) characters"]


def test_a_single_voxel_case_is_named_as_such(small_dataset: Path, roots: dict[str, Path]) -> None:
    """A case cut down to one voxel was warned about as 'every voxel holds 87 (a blank image...)'."""
    for path in (image(small_dataset, PLAIN_CASE), label(small_dataset, PLAIN_CASE)):
        edit_image(path, lambda img: img[10:11, 10:11, 10:11])
    result = runner.invoke(app, ["verify", str(small_dataset), "-np", "1"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if line.startswith("WARNING")] == [
        f"WARNING {image(small_dataset, PLAIN_CASE)}: case {PLAIN_CASE}: the image is a single voxel, too small to hold "
        "a scan (a failed export or crop?); check the file, or remove the case"]
