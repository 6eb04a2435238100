"""A float NIfTI's voxels are decompressed once: read_image keeps the NaN and Inf counts the NaN check needs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset import imageio
from autoseg.dataset.imageio import nifti_nonfinite_counts, read_image


def _write(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    if array.ndim == 3:
        image.SetSpacing((0.7, 0.8, 2.5))
        image.SetOrigin((-10.0, 4.5, 33.0))
        image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path))
    return path


def _no_decompression(*_: object, **__: object) -> None:
    raise AssertionError("the voxels were decompressed a second time")


@pytest.mark.parametrize(("name", "dtype", "shape"), [
    ("label.nii.gz", np.float32, (5, 6, 7)), ("label.nii", np.float64, (5, 6, 7)), ("slice.nii.gz", np.float32, (6, 7)),
])
def test_a_float_nifti_is_read_as_itk_reads_it_and_its_nan_counted_once(
        name: str, dtype: type, shape: tuple[int, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NaN check after a read decompressed every float NIfTI (labels always: a NaN reads as their 0) again."""
    values = np.arange(np.prod(shape), dtype=dtype).reshape(shape) % 3
    values.flat[[4, 9]] = np.nan
    values.flat[11] = np.inf
    values.flat[12] = -np.inf
    path = _write(tmp_path / name, values)
    itk = sitk.ReadImage(str(path))
    array, geometry = read_image(path)
    expected = sitk.GetArrayFromImage(itk)
    assert array.dtype == expected.dtype and np.array_equal(array, expected.reshape(array.shape))
    assert array.flat[4] == 0 and array.flat[11] == 0  # as ITK reads them
    assert geometry.origin == itk.GetOrigin() and geometry.direction == itk.GetDirection()
    assert geometry.spacing[-2:] == tuple(reversed(itk.GetSpacing()))[-2:]
    monkeypatch.setattr(gzip, "open", _no_decompression)
    monkeypatch.setattr(imageio.zlib, "decompress", _no_decompression)
    assert nifti_nonfinite_counts(path, array) == (2, 2)


def test_a_float_nifti_rewritten_after_its_read_is_counted_again(tmp_path: Path) -> None:
    """The kept counts belong to the file as read: a file written over since is read from its bytes."""
    values = np.zeros((4, 5, 6), np.float32)
    path = _write(tmp_path / "label.nii.gz", values)
    read_image(path)
    assert nifti_nonfinite_counts(path) == (0, 0)
    values = np.zeros((4, 5, 7), np.float32)  # another size: the file differs whatever its timestamp's resolution
    values[1, 2, 3] = np.nan
    _write(tmp_path / "label.nii.gz", values)
    assert nifti_nonfinite_counts(path) == (1, 0)


def test_a_scaled_float_nifti_is_left_to_itk(tmp_path: Path) -> None:
    """ITK applies scl_slope and scl_inter (a NaN reads as scl_inter): such files are not read from the bytes."""
    path = _write(tmp_path / "scaled.nii", np.array([[[1.0, np.nan, 3.0]]], np.float32))
    data = bytearray(path.read_bytes())
    data[112:120] = np.array([2.0, 10.0], "<f4").tobytes()  # scl_slope, scl_inter
    path.write_bytes(bytes(data))
    array, _ = read_image(path)
    assert array.ravel().tolist() == [12.0, 10.0, 16.0]
    assert nifti_nonfinite_counts(path, array) == (1, 0)
