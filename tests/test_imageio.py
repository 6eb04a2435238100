"""Readers and writers keep geometry for every format; bad files give one clear error."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset.imageio import Geometry, read_case_images, read_image, write_image
from autoseg.errors import DatasetError
from conftest import HIPPOCAMPUS, SHARED_DATA

GEOMETRY = Geometry(
    spacing=(3.0, 0.7, 0.8),
    origin=(10.5, -20.25, 3.0),
    direction=tuple(np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float).ravel()),
)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_sitk_formats_round_trip_values_and_geometry(tmp_path: Path, ending: str, dtype: type) -> None:
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 200).astype(dtype)
    path = tmp_path / f"img{ending}"
    write_image(array, GEOMETRY, path)
    back, geometry = read_image(path)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == dtype
    np.testing.assert_allclose(geometry.spacing, GEOMETRY.spacing, rtol=1e-6)
    np.testing.assert_allclose(geometry.origin, GEOMETRY.origin, rtol=1e-6)
    np.testing.assert_allclose(geometry.direction, GEOMETRY.direction, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_natural_2d_images_read_as_one_slice(tmp_path: Path, ending: str) -> None:
    array = np.arange(30, dtype=np.uint8).reshape(1, 5, 6)
    geometry = Geometry((999.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    write_image(array, geometry, tmp_path / f"a{ending}")
    back, read_geometry = read_image(tmp_path / f"a{ending}")
    np.testing.assert_array_equal(back, array)
    assert read_geometry.spacing == (999.0, 1.0, 1.0) and read_geometry.is_2d


def test_2d_nifti_round_trip_keeps_2d_geometry(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.int16).reshape(3, 4))
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((1.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    array, geometry = read_image(tmp_path / "in.nii.gz")
    assert array.shape == (1, 3, 4) and geometry.spacing == (999.0, 0.25, 0.5)
    write_image(array, geometry, tmp_path / "out.nii.gz")
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetDimension() == 2 and out.GetSpacing() == (0.5, 0.25) and out.GetOrigin() == (1.0, 2.0)


def test_dicom_series_folder_reads_as_one_image() -> None:
    folder = SHARED_DATA / "dicom_examples" / "Study1" / "13_HCropVolume"
    array, geometry = read_image(folder)
    assert array.shape == (32, 51, 35) and array.dtype == np.int16
    assert geometry.spacing == (1.0, 1.0, 1.0)


def test_real_nifti_geometry_matches_simpleitk() -> None:
    path = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
    array, geometry = read_image(path)
    reference = sitk.ReadImage(str(path))
    assert array.shape == reference.GetSize()[::-1]
    assert geometry.origin == reference.GetOrigin() and geometry.direction == reference.GetDirection()


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_reported_with_its_name(tmp_path: Path, ending: str) -> None:
    # ITK zero-fills truncated NIfTI files silently; autoseg must not.
    full = tmp_path / f"full{ending}"
    array, geometry = read_image(HIPPOCAMPUS / "imagesTr" / "hippocampus_004_0000.nii.gz")
    write_image(array, geometry, full)
    source = full.read_bytes()
    path = tmp_path / f"cut_0000{ending}"
    path.write_bytes(source[: len(source) // 2])
    with pytest.raises(DatasetError, match=r"cut_0000" + ending.replace(".", r"\.") + ": (file is truncated|cannot be read)"):
        read_image(path)


def test_not_an_image_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x_0000.nii.gz"
    path.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(DatasetError, match="x_0000.nii.gz: cannot be read"):
        read_image(path)


def test_unsupported_ending_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.jpg2").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"a\.jpg2: unsupported file type"):
        read_image(tmp_path / "a.jpg2")
    with pytest.raises(DatasetError, match=r"nope\.nii\.gz: file not found"):
        read_image(tmp_path / "nope.nii.gz")


def test_4d_and_vector_images_rejected(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([3, 3, 3, 2], sitk.sitkFloat32), str(tmp_path / "four.nii.gz"))
    with pytest.raises(DatasetError, match=r"four\.nii\.gz: is 4D"):
        read_image(tmp_path / "four.nii.gz")
    sitk.WriteImage(sitk.Image([3, 3, 3], sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(DatasetError, match=r"rgb\.nrrd: has 3 components per voxel"):
        read_image(tmp_path / "rgb.nrrd")


def test_folder_without_dicom_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no DICOM series"):
        read_image(tmp_path)


def test_case_channels_must_share_grid(tmp_path: Path) -> None:
    write_image(np.zeros((2, 3, 4), np.float32), GEOMETRY, tmp_path / "c_0000.nii.gz")
    write_image(np.zeros((2, 3, 5), np.float32), GEOMETRY, tmp_path / "c_0001.nii.gz")
    with pytest.raises(DatasetError, match=r"c_0001\.nii\.gz: shape \(2, 3, 5\) differs"):
        read_case_images([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    write_image(np.ones((2, 3, 4), np.float32), GEOMETRY, tmp_path / "c_0001.nii.gz")
    data, _ = read_case_images([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    assert data.shape == (2, 2, 3, 4) and data.dtype == np.float32 and data[1].min() == 1


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_image(np.zeros((2, 3), np.uint8), GEOMETRY, tmp_path / "bad.nii.gz")
    assert list(tmp_path.iterdir()) == []
