"""Readers and writers keep geometry for every format; bad files give one clear error."""

from __future__ import annotations


import gzip
import json
import logging
import math
import os
import re
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset.imageio import (
    Geometry, read_case_images, read_image, read_image_channels, space_units_warning, write_image,
)
from autoseg.errors import DatasetError
from conftest import DRIVE, DRIVE_CROP, HIPPOCAMPUS, SHARED_DATA, drive_crop

SHEARED = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0.2873, 0.0, 0.0, 0.9578, 0.0, 0.0, 0.0, 1.0))  # x sheared along y: no rotation
GEOMETRY = Geometry(
    spacing=(3.0, 0.7, 0.8),
    origin=(10.5, -20.25, 3.0),
    direction=tuple(np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]], float).ravel()),
)
UPRIGHT = Geometry(GEOMETRY.spacing, GEOMETRY.origin, tuple(np.eye(3).ravel()))  # GIPL stores no direction


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


@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
def test_a_detached_header_is_written_with_its_data_file_under_its_final_name(tmp_path: Path, ending: str) -> None:
    """ITK names the data file (.raw) after the header it writes: written through a temporary header name,
    the header pointed at a hidden temporary .raw that stale-temporary cleanup deletes."""
    from autoseg.utils.atomic import remove_stale_temporaries

    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 200).astype(np.int16)
    path = tmp_path / f"img{ending}"
    write_image(array, GEOMETRY, path)
    write_image(array + 1, GEOMETRY, path)  # overwriting replaces both files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "img.raw"])
    assert "img.raw" in path.read_text(errors="replace")
    remove_stale_temporaries(tmp_path)
    back, geometry = read_image(path)
    np.testing.assert_array_equal(back, array + 1)
    np.testing.assert_allclose(geometry.origin, GEOMETRY.origin, rtol=1e-6)


@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
def test_a_detached_header_that_fills_the_disk_is_reported_as_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """ITK's RuntimeError ('File cannot be written: <staging folder>/img.mhd ... No space left on device') reached
    the user as an internal error naming a hidden staging folder."""
    import autoseg.dataset.imageio as imageio

    def full(image: sitk.Image, name: str, *args: object, **kwargs: object) -> None:
        Path(name).write_bytes(b"partial")
        raise RuntimeError(f"ITK ERROR: File cannot be written: {name}\nReason: No space left on device")

    monkeypatch.setattr(imageio.sitk, "WriteImage", full)
    with pytest.raises(OSError) as info:
        write_image(np.ones((2, 3, 4), np.int16), GEOMETRY, tmp_path / f"img{ending}")
    assert info.value.errno == 28 and info.value.filename == str(tmp_path / f"img{ending}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("header", "line", "expected"), [
    ("c.mhd", "ElementDataFile = c.zraw", ["c.zraw"]), ("c.mhd", "ElementDataFile = LOCAL", []),
    ("c.nhdr", "data file: ./c.raw.gz", ["c.raw.gz"]), ("c.nhdr", "datafile: c.raw", ["c.raw"]),
    ("c.nhdr", "data file: sub/c.raw", []), ("c.nii", "ElementDataFile = c.raw", []),
])
def test_a_detached_headers_data_files_are_the_ones_beside_it_that_it_names(
    tmp_path: Path, header: str, line: str, expected: list[str]
) -> None:
    """3D Slicer writes 'data file: ./c.raw.gz', which verify reported as a file with the wrong ending."""
    from autoseg.dataset.imageio import detached_data_files

    (tmp_path / header).write_text(f"NDims = 3\n{line}\n")
    assert detached_data_files(tmp_path / header) == expected


@pytest.mark.parametrize("ending", [".mhd", ".nhdr"])
def test_a_detached_header_without_its_data_file_names_the_data_file(
    tmp_path: Path, ending: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Copied without its .raw, a .mhd was 'cannot be read (truncated or corrupt file?): Reason: No such file or
    directory', naming neither the missing file nor the fix; ITK's own 'MetaImage: Read: Cannot open data file'
    on stderr came before autoseg's line."""
    path = tmp_path / f"img{ending}"
    write_image(np.ones((2, 3, 4), np.int16), GEOMETRY, path)
    (tmp_path / "img.raw").unlink()
    capfd.readouterr()
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: its data file img.raw (named in the header) is not beside it; copy the "
                               "header and its data file together")
    assert capfd.readouterr().err == ""


def test_a_nifti_with_a_sheared_orientation_is_named_as_such(tmp_path: Path) -> None:
    """ITK refuses a sheared sform; the refusal said 'truncated or corrupt file?' and gave no fix."""
    import struct

    path = tmp_path / "img.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.int16)), str(path))
    header = bytearray(path.read_bytes())
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1
    struct.pack_into("<12f", header, 280, 1, 0.5, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)  # srow_x/y/z: x sheared along y
    path.write_bytes(bytes(header))
    with pytest.raises(DatasetError, match=r"img\.nii: its orientation \(the header's sform/qform matrix\) is sheared or "
                                           r"degenerate, not a rotation, which ITK cannot read; resample the image"):
        read_image(path)


@pytest.mark.parametrize("name", ["img.mha", "img.raw"])
def test_a_cut_short_metaimage_is_not_called_missing(tmp_path: Path, name: str) -> None:
    """MetaImage's short read left errno at ENOENT: an existing, cut-short file was reported with 'Reason: No such
    file or directory'."""
    write_image(np.ones((2, 3, 4), np.int16), GEOMETRY, tmp_path / ("img.mha" if name == "img.mha" else "img.mhd"))
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[:-10])
    # a raw data file shorter than the header claims is measured before ITK reads it (and named)
    measured = r"its header claims 24 voxel values \(48 bytes\), but the data in img\.raw holds 38 bytes"
    with pytest.raises(DatasetError, match=r"cannot be read \(truncated or corrupt file\?\): the header or its voxel "
                                           r"data is damaged or cut short$" if name == "img.mha" else measured):
        read_image(tmp_path / ("img.mha" if name == "img.mha" else "img.mhd"))


@pytest.mark.parametrize("ending", [".png", ".tif"])
def test_natural_2d_images_read_as_one_slice(tmp_path: Path, ending: str) -> None:
    array = np.arange(30, dtype=np.uint8).reshape(1, 5, 6)
    geometry = Geometry((999.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    write_image(array, geometry, tmp_path / f"a{ending}")
    back, read_geometry = read_image(tmp_path / f"a{ending}")
    np.testing.assert_array_equal(back, array)
    assert read_geometry.spacing == (999.0, 1.0, 1.0) and read_geometry.is_2d


@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 64, 3), (1, 64, 4), (1, 4, 64)])
def test_a_2d_label_map_3_or_4_pixels_wide_or_high_is_written_as_one_grey_tiff_page(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    """tifffile guessed RGB(A) samples from a side of 3 or 4: the write failed with ValueError ('not enough samples
    for PHOTOMETRIC.RGB') or the label map read back as a colour image."""
    array = (np.arange(math.prod(shape)) % 3).reshape(shape).astype(np.uint8)
    geometry = Geometry((999.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    write_image(array, geometry, tmp_path / "a.tif")
    back, read_geometry = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(back, array)
    assert read_geometry.is_2d


def test_a_damaged_tiff_is_refused_in_one_line_without_tifffile_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TIFF whose width and length tags were damaged to 50000 was refused, but tifffile logged 'incorrect
    StripByteCounts count (1 != 10000)' and more to stderr, several times, beside the refusal."""
    import struct

    import tifffile

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.ones((5, 6), np.uint8), photometric="minisblack")
    with tifffile.TiffFile(path) as tiff:
        offsets = [(tiff.pages[0].tags[name].valueoffset, int(tiff.pages[0].tags[name].dtype))
                   for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for offset, kind in offsets:
        struct.pack_into("<H" if kind == 3 else "<I", data, offset, 50000)
    path.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetError, match=r"big\.tif: cannot be read"):
        read_image(path)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tifffile")] == []


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


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 12345\n"


@pytest.mark.parametrize("name", ["a_0000.nii.gz", "a_0000.nrrd", "a_0000.png", "a_0000.tif"])
@pytest.mark.parametrize(("content", "message"), [
    (LFS_POINTER, r"is a Git LFS pointer, not the image \(a repository cloned without its large files\?\); fetch the "
                  r"image \(git lfs pull\), then run the command again"),
    (b"/annex/objects/SHA256E-s26214--0a4b8d7c.nii.gz\n", r"is a git-annex pointer, not the image .*\(git annex get, or "
                                                          r"datalad get\)"),
    (b"", r"file is empty \(0 bytes; an interrupted copy or export\?\); copy or export it again"),
])
def test_a_file_holding_no_image_says_what_it_is(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    """A repository cloned without its large files leaves pointers in the images' place: they were 'cannot be read
    (truncated or corrupt file?): Unable to determine ImageIO reader'; an empty PNG said the same (empty NIfTI files
    were named as empty)."""
    (tmp_path / name).write_bytes(content)
    for read in (read_image, read_image_channels):
        with pytest.raises(DatasetError, match=rf"{re.escape(str(tmp_path / name))}: {message}"):
            read(tmp_path / name)


def test_dicom_series_folder_reads_as_one_image() -> None:
    folder = SHARED_DATA / "dicom_examples" / "Study1" / "13_HCropVolume"
    array, geometry = read_image(folder)
    assert array.shape == (32, 51, 35) and array.dtype == np.int16
    assert geometry.spacing == (1.0, 1.0, 1.0)


def _dicom_series(folder: Path, positions: list[tuple[float, float, float]], tags: dict[str, str] | None = None,
                  slice_tags: dict[int, dict[str, str]] | None = None) -> Path:
    """Axial int16 DICOM slices (4x5 voxels of 0.5 mm, slice i holding i) at ``positions`` (x, y, z), named 1.dcm,
    2.dcm, ..., with extra ``tags`` (and ``slice_tags`` for slice i)."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    for i, position in enumerate(positions):
        image = sitk.GetImageFromArray(np.full((4, 5), i, np.int16))
        image.SetSpacing((0.5, 0.5))
        for tag, value in {"0020|000d": "1.2.3", "0020|000e": "1.2.3.4", "0008|0018": f"1.2.3.4.{i + 1}",
                           "0020|0013": str(i + 1), "0020|0032": "\\".join(map(str, position)),
                           "0020|0037": "1\\0\\0\\0\\1\\0", **(tags or {}),
                           **(slice_tags or {}).get(i, {})}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{i + 1}.dcm"))
        writer.Execute(image)
    return folder


# series -> what the refusal says (ITK read each silently: spacing the mean step, or the tilt dropped)
BAD_DICOM_SERIES = {
    "missing slice": ([(0, 0, z) for z in (0, 2, 4, 8, 10, 12)], r"series: DICOM slice spacing is uneven \(4 mm between "
                      r"3.dcm and 4.dcm, 2.4 mm on average: missing slices\?\); give the complete series"),
    "uneven thickness": ([(0, 0, z) for z in (0, 1, 2, 4, 6, 8)], r"series: DICOM slice spacing is uneven"),
    "duplicated position": ([(0, 0, z) for z in (0, 2, 4, 4, 6, 8)], r"series: DICOM files 3.dcm and 4.dcm lie at "
                            r"the same slice position \(a repeated acquisition or duplicated files\?\)"),
    "gantry tilt": ([(0, 0.5 * z, z) for z in (0, 2, 4, 6, 8, 10)], r"series: DICOM slices are sheared \(gantry tilt of "
                    r"26.6 degrees: each slice is shifted in-plane\), which a direction matrix cannot hold"),
}


def test_dicom_slices_of_another_pixel_spacing_are_refused(tmp_path: Path) -> None:
    """A slice of 0.6 mm pixels among 0.5 mm ones (another field of view under the same series UID) was read in the
    first slice's spacing, stacked on a grid it does not lie on, without a word."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(4)])
    data = (folder / "3.dcm").read_bytes()
    assert data.count(b".5\\.5 ") == 1  # PixelSpacing as GDCM writes it
    (folder / "3.dcm").write_bytes(data.replace(b".5\\.5 ", b".6\\.6 "))
    with pytest.raises(DatasetError, match=r"series: DICOM slices differ in pixel spacing \(1\.dcm \(0\.5, 0\.5\) mm, "
                                           r"3\.dcm \(0\.6, 0\.6\) mm; 1 of 4 files differ from the first\); put each "
                                           r"acquisition in its own folder"):
        read_image(folder)


@pytest.mark.parametrize("kind", BAD_DICOM_SERIES)
def test_dicom_series_off_an_even_grid_is_refused(tmp_path: Path, kind: str) -> None:
    positions, message = BAD_DICOM_SERIES[kind]
    with pytest.raises(DatasetError, match=message):
        read_image(_dicom_series(tmp_path / "series", positions))


def test_dicom_slice_orientations_compare_within_tolerance(tmp_path: Path) -> None:
    """Orientation cosines that differ in the 5th decimal are one orientation; a slice tilted by 10 degrees is not."""
    positions = [(0, 0, z) for z in range(4)]
    read_image(_dicom_series(tmp_path / "noise", positions, slice_tags={1: {"0020|0037": "0.99996\\0\\0\\0\\1\\0"},
                                                                          2: {"0020|0037": "0.99994\\0\\0\\0\\1\\0"}}))
    tilted = {2: {"0020|0037": "1\\0\\0\\0\\0.98481\\0.17365"}}
    with pytest.raises(DatasetError, match=r"tilted: DICOM slices differ in orientation \(ImageOrientationPatient\)"):
        read_image(_dicom_series(tmp_path / "tilted", positions, slice_tags=tilted))


def _with_orientation(folder: Path, orientation: str) -> Path:
    """``folder``'s slices with ImageOrientationPatient set to ``orientation``, which ITK's writer refuses to write
    unless the two directions are perpendicular (implicit VR, as ``_dicom_series`` writes: tag, length, value)."""
    tag, written = b"\x20\x00\x37\x00", b"1\\0\\0\\0\\1\\0 "
    value = orientation.encode() + b" " * (len(orientation) % 2)
    for file in folder.iterdir():
        data = file.read_bytes()
        assert data.count(tag + struct.pack("<I", len(written)) + written) == 1
        file.write_bytes(data.replace(tag + struct.pack("<I", len(written)) + written, tag + struct.pack("<I", len(value)) + value))
    return folder


@pytest.mark.parametrize(("orientation", "problem"), [
    ("1\\0\\0\\0.05\\0.99875\\0", "row and column directions 2.87 degrees off perpendicular"),
    ("0\\0\\0\\0\\1\\0", "a zero row or column direction"),
])
def test_dicom_orientation_of_skewed_directions_is_refused(tmp_path: Path, orientation: str, problem: str) -> None:
    """GDCM reads row and column cosines that are not perpendicular as the identity direction: such a series was
    predicted and written as an unrotated image without a word. Cosines off by rounding (and not of unit length) are
    read as GDCM orthonormalises them."""
    positions = [(0, 0, z) for z in range(3)]
    with pytest.raises(DatasetError, match=rf"skewed: 1\.dcm's ImageOrientationPatient \({re.escape(orientation)}\) has "
                                           rf"{problem}, which ITK reads as an unrotated image; correct the tag"):
        read_image(_with_orientation(_dicom_series(tmp_path / "skewed", positions), orientation))
    rounded = "0.87\\0.5\\0\\-0.5\\0.87\\0"  # a 30 degree rotation written with two decimals
    _, geometry = read_image(_with_orientation(_dicom_series(tmp_path / "rounded", positions), rounded))
    assert np.allclose(geometry.direction, (0.867, -0.498, 0, 0.498, 0.867, 0, 0, 0, 1), atol=1e-3)


def test_dicom_slices_without_a_pixel_spacing_are_refused(tmp_path: Path) -> None:
    """Slices written from arrays without PixelSpacing (nor a radiograph's or secondary capture's spacing) were read
    as 1 x 1 mm pixels without a word, as an unset NIfTI voxel size is refused for."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(3)])
    # GDCM writes the spacing as PixelSpacing or as NominalScannedPixelSpacing: renamed to a neighbouring tag
    renamed = {b"\x28\x00\x30\x00": b"\x28\x00\x31\x00", b"\x18\x00\x10\x20": b"\x18\x00\x12\x20"}
    for file in folder.iterdir():
        data = file.read_bytes()
        assert sum(data.count(tag) for tag in renamed) == 1
        for tag, other in renamed.items():
            data = data.replace(tag, other)
        file.write_bytes(data)
    with pytest.raises(DatasetError, match=r"series: 1\.dcm gives no pixel spacing \(PixelSpacing, 0028,0030\), which "
                                           r"ITK would read as 1 mm; write the slices' true pixel spacing"):
        read_image(folder)


@pytest.mark.parametrize(("tag", "slices", "message"), [
    (b"\x20\x00\x32\x00", ["2.dcm"], r"1 of 3 DICOM slices \(2\.dcm\) give no ImagePositionPatient \(0020,0032\), which "
                                      r"ITK would replace by slices 1 mm apart"),
    (b"\x20\x00\x37\x00", ["1.dcm", "2.dcm", "3.dcm"], r"3 of 3 DICOM slices \(1\.dcm, 2\.dcm, 3\.dcm\) give no "
                                                      r"ImageOrientationPatient \(0020,0037\), which ITK would replace by an "
                                                      r"upright orientation"),
])
def test_dicom_slices_that_do_not_say_where_they_lie_are_refused(
    tmp_path: Path, tag: bytes, slices: list[str], message: str
) -> None:
    """Slices written from arrays without ImagePositionPatient were stacked 1 mm apart whatever their thickness, and
    without ImageOrientationPatient upright, in silence."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, 2.5 * z) for z in range(3)])
    for name in slices:
        data = (folder / name).read_bytes()
        assert data.count(tag) == 1
        (folder / name).write_bytes(data.replace(tag, tag[:2] + bytes([tag[2] + 1]) + tag[3:]))  # the next tag
    with pytest.raises(DatasetError, match=rf"series: {message}; write each slice's position and orientation"):
        read_image(folder)


def test_one_dicom_slice_without_a_pixel_spacing_is_refused(tmp_path: Path) -> None:
    """A folder of one slice (one .dcm case) without PixelSpacing was read as 1 x 1 mm pixels without a word, while
    a series of such slices was refused."""
    folder = _dicom_series(tmp_path / "one", [(0, 0, 0)])
    file = folder / "1.dcm"
    file.write_bytes(file.read_bytes().replace(b"\x28\x00\x30\x00", b"\x28\x00\x31\x00")
                     .replace(b"\x18\x00\x10\x20", b"\x18\x00\x12\x20"))
    with pytest.raises(DatasetError, match=r"one: 1\.dcm gives no pixel spacing \(PixelSpacing, 0028,0030\), which ITK "
                                           r"would read as 1 mm"):
        read_image(folder)
    _, geometry = read_image(_dicom_series(tmp_path / "kept", [(0, 0, 0)]))
    assert geometry.spacing[1:] == pytest.approx((0.5, 0.5))


def test_a_multi_frame_dicom_file_without_a_pixel_spacing_is_refused(tmp_path: Path) -> None:
    """A multi-frame file keeps its PixelSpacing in a functional group, which ITK's tags do not show; without one
    it was read as 1 x 1 x 1 mm voxels in silence."""
    volume = sitk.GetImageFromArray(np.full((3, 4, 5), 7, np.uint16))
    volume.SetSpacing((0.5, 0.6, 2.0))
    for name in ("kept", "lacking"):
        (tmp_path / name).mkdir()
        sitk.WriteImage(volume, str(tmp_path / name / "1.dcm"))
    assert read_image(tmp_path / "kept")[1].spacing == pytest.approx((2.0, 0.6, 0.5))
    file = tmp_path / "lacking" / "1.dcm"
    assert file.read_bytes().count(b"\x28\x00\x30\x00") == 1  # in the functional group
    file.write_bytes(file.read_bytes().replace(b"\x28\x00\x30\x00", b"\x28\x00\x31\x00"))
    with pytest.raises(DatasetError, match=r"lacking: 1\.dcm gives no pixel spacing \(PixelSpacing, 0028,0030\)"):
        read_image(tmp_path / "lacking")


def nrrd_in_units(path: Path, unit: str) -> Path:
    """A NRRD of 0.1 x 0.2 x 0.3 voxels whose header gives ``unit`` as its space units (ITK writes none)."""
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image.SetSpacing((0.1, 0.2, 0.3))
    sitk.WriteImage(image, str(path), False)
    header, _, data = path.read_bytes().partition(b"\n\n")
    path.write_bytes(header + f'\nspace units: "{unit}" "{unit}" "{unit}"\n\n'.encode() + data)
    return path


def test_nrrd_space_units_other_than_mm_are_read_as_mm_with_one_warning(tmp_path: Path) -> None:
    """ITK ignores NRRD's space units: a spacing given in cm or microns was read as mm in silence. It is still read
    as mm (as SimpleITK, so nnU-Net, reads it), with one warning naming the files and their units."""
    files = [nrrd_in_units(tmp_path / "cm.nrrd", "cm"), nrrd_in_units(tmp_path / "um.nrrd", "microns"),
             nrrd_in_units(tmp_path / "mm.nrrd", "mm"), nrrd_in_units(tmp_path / "MM.nrrd", "Millimeters")]
    assert read_image(files[0])[1].spacing == pytest.approx((0.3, 0.2, 0.1))
    assert space_units_warning(files) == (
        f"2 NRRD file(s) give their spacing in cm, microns (their header's space units): {files[0]}, {files[1]}; they "
        "are read as mm, as SimpleITK and nnU-Net read them; to use their true size, rewrite the spacing in mm (space "
        'directions or spacings, and space units "mm")')
    assert space_units_warning(files[2:] + [tmp_path / "missing.nrrd", HIPPOCAMPUS]) is None


def test_folder_of_two_dicom_series_says_which_files_are_which(tmp_path: Path) -> None:
    """The refusal named only the two SeriesInstanceUIDs, not which of the folder's files to move."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(3)])
    other = _dicom_series(tmp_path / "other", [(0, 0, z) for z in range(2)], {"0020|000e": "1.2.3.5"})
    for file in other.iterdir():
        file.rename(folder / f"localizer_{file.name}")
    with pytest.raises(DatasetError, match=r"series: holds 2 DICOM series \(1\.2\.3\.4: 3 file\(s\), 1\.dcm \.\.\.; "
                                           r"1\.2\.3\.5: 2 file\(s\), localizer_1\.dcm \.\.\.\); put one series per folder"):
        read_image(folder)


def test_dicom_series_with_an_unreadable_slice_names_it(tmp_path: Path) -> None:
    """GDCM leaves an unreadable slice without file ending out of the series; the gap is refused and the file
    named (a truncated DICOM slice is named as such before: test_dicom_slice_cut_short_...)."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(6)])
    (folder / "IM3").write_bytes(b"\x00" * 128 + b"DIC?" + (folder / "3.dcm").read_bytes()[132:])
    (folder / "3.dcm").unlink()
    (folder / "notes.txt").write_text("not a slice")
    with pytest.raises(DatasetError, match=r"series: DICOM slice spacing is uneven \(2 mm between 2\.dcm and 4\.dcm, "
                                           r"1\.25 mm on average: missing slices\? not read as DICOM: IM3\); give"):
        read_image(folder)


@pytest.mark.skipif(os.name != "posix" or sys.platform == "darwin", reason="file names of any bytes (Linux)")
def test_a_dicom_file_whose_name_is_not_utf8_is_named_not_an_abort(tmp_path: Path) -> None:
    """GDCM's folder scan aborted the whole process (exit 134, 'terminate called ... std::logic_error') on a slice
    named in Latin-1; it runs in a child process here so that an abort fails the test instead of ending it."""
    import subprocess

    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(3)])
    os.rename(folder / "3.dcm", os.fsencode(folder) + b"/caf\xe9.dcm")
    code = ("from autoseg.dataset.imageio import read_image\nfrom autoseg.errors import DatasetError\n"
            f"try:\n    read_image({str(folder)!r})\nexcept DatasetError as exc:\n    print(exc)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (f"{folder}/caf\\xe9.dcm: name is not valid UTF-8 (bytes shown as \\x..); rename it "
                                  "with UTF-8 (or ASCII) characters")


@pytest.mark.parametrize("patched", ["1.dcm", "32.dcm"])
def test_a_dicom_slice_claiming_more_pixels_than_its_file_holds_is_refused_before_gdcm_reads_it(
    tmp_path: Path, patched: str
) -> None:
    """GDCM zero-fills what a slice lacks: one whose Rows and Columns read 50000 (a damaged header) was read, in 29 s
    and 5 GB, as a 50000 x 50000 image of zeros, without an error (alone, or the series refused as uneven sizes)."""
    import shutil
    import struct

    source = SHARED_DATA / "dicom_examples" / "Study1" / "13_HCropVolume"
    folder = tmp_path / "series"
    if patched == "1.dcm":
        folder.mkdir()
        shutil.copy(source / patched, folder / patched)
    else:
        shutil.copytree(source, folder)
    data = bytearray((folder / patched).read_bytes())
    for tag in (b"\x28\x00\x10\x00US", b"\x28\x00\x11\x00US"):  # Rows, Columns (explicit VR little endian)
        struct.pack_into("<H", data, data.index(tag) + 8, 50000)
    (folder / patched).write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"series: {patched}: its header claims 50000x50000 pixels of 16 bits "
                                           r"\(5000000000 bytes\), more than the file's \d+ bytes \(a damaged header or a "
                                           r"truncated copy\?\); copy the series again, or remove the file"):
        read_image(folder)


def _dicom_element(group: int, element: int, vr: bytes | None, value: bytes) -> bytes:
    """One little-endian data element: explicit VR (``vr``) or implicit (``None``), its value padded to even length."""
    import struct

    value += (b"\x00" if vr in (None, b"UI", b"OB", b"US") else b" ") * (len(value) % 2)
    if vr is None:
        return struct.pack("<HHI", group, element, len(value)) + value
    if vr == b"OB":
        return struct.pack("<HH", group, element) + vr + struct.pack("<HI", 0, len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _dicom_slice(rows: int, columns: int, pixel_data: bytes, vr: Callable[[bytes], bytes | None], z: int = 0,
                 frames: int | None = None) -> bytes:
    """A 16-bit MR slice's data set, 0.5 mm pixels at slice position ``z`` (``vr``: each element's VR, or None)."""
    import struct

    sop = b"1.2.840.10008.5.1.4.1.1.4"
    elements = [(0x0008, 0x0016, b"UI", sop), (0x0008, 0x0018, b"UI", b"1.2.3.4.%d" % z), (0x0008, 0x0060, b"CS", b"MR"),
                (0x0020, 0x000D, b"UI", b"1.2.3"), (0x0020, 0x000E, b"UI", b"1.2.3.1"), (0x0020, 0x0013, b"IS", b"%d" % (z + 1)),
                (0x0020, 0x0032, b"DS", b"0\\0\\%d" % z), (0x0020, 0x0037, b"DS", b"1\\0\\0\\0\\1\\0"),
                (0x0028, 0x0002, b"US", struct.pack("<H", 1)), (0x0028, 0x0004, b"CS", b"MONOCHROME2"),
                *([(0x0028, 0x0008, b"IS", b"%d" % frames)] if frames else []),
                (0x0028, 0x0010, b"US", struct.pack("<H", rows)), (0x0028, 0x0011, b"US", struct.pack("<H", columns)),
                (0x0028, 0x0030, b"DS", b"0.5\\0.5"), *[(0x0028, tag, b"US", struct.pack("<H", value))
                                                     for tag, value in ((0x0100, 16), (0x0101, 16), (0x0102, 15), (0x0103, 0))]]
    return b"".join(_dicom_element(g, e, vr(v), value) for g, e, v, value in elements) + pixel_data


def _rle_part10_slice(pixels: np.ndarray, rows: int, frames: int | None = None) -> bytes:
    """A Part-10 RLE Lossless file of ``pixels`` (uint16) whose header claims ``rows`` x ``rows`` pixels: PackBits
    literal runs of 128 bytes, most significant bytes' segment first (PS3.5 G)."""
    import struct

    raw = pixels.astype("<u2").tobytes()
    segments = [b"".join(bytes([len(s[i:i + 128]) - 1]) + s[i:i + 128] for i in range(0, len(s), 128)) for s in (raw[1::2], raw[0::2])]
    fragment = struct.pack("<16I", 2, 64, 64 + len(segments[0]), *[0] * 13) + b"".join(segments)
    items = (struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)) + fragment
             + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    pixel_data = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB" + struct.pack("<HI", 0, 0xFFFFFFFF) + items
    meta = b"".join(_dicom_element(2, e, vr, v) for e, vr, v in ((1, b"OB", b"\x00\x01"), (2, b"UI", b"1.2.840.10008.5.1.4.1.1.4"),
                                                                  (3, b"UI", b"1.2.3.4.0"), (0x10, b"UI", b"1.2.840.10008.1.2.5")))
    header = b"\x00" * 128 + b"DICM" + _dicom_element(2, 0, b"UL", struct.pack("<I", len(meta))) + meta
    return header + _dicom_slice(rows, rows, pixel_data, lambda vr: vr, frames=frames)


def test_dicom_files_without_the_preamble_are_read_and_measured_against_their_claims(tmp_path: Path) -> None:
    """Implicit VR data sets without the Part-10 preamble and file meta (old scanners' exports): the Part-10 check
    skipped them, so one claiming 50000 x 50000 pixels was read alone as a zero-filled image (GDCM allocates the
    claim), and in a series refused only as a slice of another size."""
    import struct

    folder = tmp_path / "series"
    folder.mkdir()
    pixels = np.arange(48, dtype=np.uint16).reshape(6, 8)
    for z in range(3):
        pixel_data = _dicom_element(0x7FE0, 0x0010, None, (pixels + z).tobytes())
        (folder / f"IM{z:04d}").write_bytes(_dicom_slice(6, 8, pixel_data, lambda vr: None, z))
    array, geometry = read_image(folder)
    assert np.array_equal(array, pixels[None] + np.arange(3)[:, None, None]) and geometry.spacing == pytest.approx((1, 0.5, 0.5))
    damaged = bytearray((folder / "IM0001").read_bytes())
    for tag in (0x0010, 0x0011):  # Rows, Columns
        struct.pack_into("<H", damaged, damaged.index(struct.pack("<HHI", 0x0028, tag, 2)) + 8, 50000)
    (folder / "IM0001").write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match=r"series: IM0001: its header claims 50000x50000 pixels of 16 bits \(5000000000 bytes\), "
                                           r"more than the file's \d+ bytes \(a damaged header or a truncated copy\?\)"):
        read_image(folder)


@pytest.mark.parametrize(("rows", "frames", "problem"), [
    (50000, None, r"its header claims 50000x50000 pixels of 16 bits \(5000000000 bytes\), more than RLE's \d+ compressed "
                  r"bytes can decode to \(at most 64x\)"),
    (32, 3, r"its header claims 3 frames, its encapsulated pixel data holds 1 fragment\(s\)"),
])
def test_an_encapsulated_dicom_claiming_what_its_fragments_cannot_hold_is_refused(tmp_path: Path, rows: int, frames: int | None,
                                                                                  problem: str) -> None:
    """RLE segments carry no size: GDCM allocated the claimed image (5 GB for 50000 x 50000) before its codec failed;
    a frame has a fragment of its own, so fewer fragments than frames is damage. Compressed bytes bound nothing else
    (a JPEG stream carries its own size)."""
    folder = tmp_path / "series"
    folder.mkdir()
    pixels = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32)
    (folder / "1.dcm").write_bytes(_rle_part10_slice(pixels, 32))
    assert np.array_equal(read_image(folder)[0][0], pixels)
    (folder / "1.dcm").write_bytes(_rle_part10_slice(pixels, rows, frames))
    with pytest.raises(DatasetError, match=rf"series: 1.dcm: {problem} \(a damaged header or a truncated copy\?\); copy the series"):
        read_image(folder)


def test_short_dicom_series_with_rounded_in_plane_positions_is_no_tilt(tmp_path: Path) -> None:
    """Two slices 1 mm apart whose positions are 0.05 mm off in-plane (rounding) lean 2.9 degrees but drift a tenth
    of a 0.5 mm pixel: they were refused as a gantry tilt."""
    array, geometry = read_image(_dicom_series(tmp_path / "series", [(0, 0, 0), (0.05, 0, 1)]))
    assert array.shape == (2, 4, 5) and geometry.spacing == pytest.approx((1.0, 0.5, 0.5), abs=0.01)


@pytest.mark.parametrize("size", [0, 200])
def test_dicom_series_with_a_truncated_last_slice_is_refused(tmp_path: Path, size: int) -> None:
    """GDCM left the unreadable last slice out: the series was read one slice short without a word."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(4)])
    (folder / "4.dcm").write_bytes((folder / "4.dcm").read_bytes()[:size])
    with pytest.raises(DatasetError, match=r"series: 4\.dcm cannot be read as DICOM \(truncated or corrupt copy\?\); "
                                           r"copy the series again, or remove the file\(s\)"):
        read_image(folder)


def test_dicom_object_without_pixels_beside_a_series_is_left_out(tmp_path: Path) -> None:
    """An RTSTRUCT or SR file (DICOM, no Pixel Data, a SOP class of its own: here Raw Data Storage) in the series
    folder is no slice and no truncated copy."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(3)])
    data = (folder / "3.dcm").read_bytes().replace(b"1.2.840.10008.5.1.4.1.1.7\x00", b"1.2.840.10008.5.1.4.1.1.66")
    (folder / "rtstruct.dcm").write_bytes(data[: data.index(b"\xe0\x7f\x10\x00")])
    (folder / "DICOMDIR").write_bytes(data[: data.index(b"\xe0\x7f\x10\x00")])
    assert read_image(folder)[0].shape == (3, 4, 5)


def test_a_dicom_file_of_endlessly_nested_sequences_beside_a_series_is_named_as_damaged(tmp_path: Path) -> None:
    """The element walk recursed into each undefined-length sequence: 5000 nested ones ended in RecursionError,
    an internal error."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(3)])
    data = (folder / "1.dcm").read_bytes()
    start = 144 + int.from_bytes(data[140:144], "little")  # after the file meta group (its length at byte 140)
    nested = (b"\x40\x00\x30\xa7\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 5000
    (folder / "odd.dcm").write_bytes(data[:start] + nested)
    with pytest.raises(DatasetError, match=r"series: odd\.dcm cannot be read as DICOM \(truncated or corrupt copy\?\)"):
        read_image(folder)


@pytest.mark.parametrize("tag", [b"\x28\x00\x10\x00", b"\x02\x00\x10\x00"])  # Rows, TransferSyntaxUID
def test_a_dicom_slice_with_a_damaged_tag_at_an_end_of_the_series_is_named(tmp_path: Path, tag: bytes) -> None:
    """One flipped bit in a tag GDCM needs made it leave the last slice out, whole as the file still looked: the
    series was read one slice short without a word."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(4)])
    data = bytearray((folder / "4.dcm").read_bytes())
    data[data.index(tag) + 2] ^= 0x04
    (folder / "4.dcm").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"series: 4\.dcm cannot be read as DICOM \(truncated or corrupt copy\?\)"):
        read_image(folder)


@pytest.mark.parametrize("slice_number", [1, 4])
@pytest.mark.parametrize("name", ["{}.dcm", "IM{}", "1.2.3.4.{}"])
@pytest.mark.parametrize("cut", ["empty", "preamble", "header", "before pixels", "pixels"])
def test_dicom_slice_cut_short_at_either_end_of_the_series_is_named(
    tmp_path: Path, slice_number: int, name: str, cut: str
) -> None:
    """GDCM leaves a slice it cannot parse out of the series, so one cut short at the first or last position left
    no gap: it was missed when cut after its Modality element (taken for an object without pixels) and whenever
    its name had no ending or a UID's ('IM4', '1.2.3.4.4')."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(4)])
    data = (folder / f"{slice_number}.dcm").read_bytes()
    size = {"empty": 0, "preamble": 100, "header": data.index(b"\x08\x00\x60\x00") + 30,
            "before pixels": data.index(b"\xe0\x7f\x10\x00"), "pixels": len(data) - 8}[cut]
    (folder / f"{slice_number}.dcm").unlink()
    damaged = name.format(slice_number)
    (folder / damaged).write_bytes(data[:size])
    with pytest.raises(DatasetError, match=rf"series: {re.escape(damaged)} cannot be read as DICOM \(truncated or corrupt "
                                           r"copy\?\); copy the series again, or remove the file\(s\)"):
        read_image(folder)


def test_dicom_series_with_rounded_positions_reads_in_order(tmp_path: Path) -> None:
    """Positions rounded to 0.1 mm at a 0.625 mm step stray from the grid but are one even series; files named
    against their order are sorted by position."""
    positions = [(0, 0, round(-100 + 0.625 * z, 1)) for z in (5, 4, 3, 2, 1, 0)]
    array, geometry = read_image(_dicom_series(tmp_path / "series", positions))
    assert list(array[:, 0, 0]) == [5, 4, 3, 2, 1, 0]
    assert geometry.spacing == pytest.approx((0.625, 0.5, 0.5), abs=0.01)
    assert geometry.origin == pytest.approx((0, 0, -100))


def test_dicom_slices_with_their_own_rescale_slope_keep_fractional_values(tmp_path: Path) -> None:
    """Slices rescaled by 0.5 after one rescaled by 2 (per-slice slopes, as PET has) were cast to the first slice's
    integer type: 3 * 0.5 - 1 read as 0 instead of 0.5."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(4)], {"0028|1053": "2", "0028|1052": "-1"})
    for file in ("2.dcm", "3.dcm", "4.dcm"):  # GDCM writes only integer slopes: patch the stored value (implicit VR)
        data = (folder / file).read_bytes()
        (folder / file).write_bytes(data.replace(b"\x28\x00\x53\x10\x02\x00\x00\x002 ", b"\x28\x00\x53\x10\x02\x00\x00\x00.5"))
    array, _ = read_image(folder)
    expected = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{i}.dcm")))[0, 0, 0] for i in range(1, 5)]
    assert expected[2] % 1 == 0.5  # the patched slopes took effect
    np.testing.assert_array_equal(array[:, 0, 0], expected)


def test_two_multi_frame_dicom_files_of_one_series_are_refused_as_volumes(tmp_path: Path) -> None:
    """They were stacked into 4D and refused with advice for 4D NIfTI files ('split into channels')."""
    (tmp_path / "series").mkdir()
    for i in range(2):
        volume = sitk.GetImageFromArray(np.full((3, 4, 5), i, np.uint16))
        volume.SetMetaData("0020|000e", "1.2.99")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(tmp_path / "series" / f"{i}.dcm"))
        writer.Execute(volume)
    with pytest.raises(DatasetError, match=r"series: holds 2 multi-frame DICOM file\(s\) \(0\.dcm, 1\.dcm\) among 2 "
                                           r"files of one series; each multi-frame file is a volume"):
        read_image(tmp_path / "series")


def test_dicom_slices_of_another_size_are_named(tmp_path: Path) -> None:
    """A slice of another size in the series gave ITK's 'Size mismatch!' with an object address."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(3)])
    small = sitk.GetImageFromArray(np.zeros((2, 3), np.int16))
    for tag, value in {"0020|000d": "1.2.3", "0020|000e": "1.2.3.4", "0020|0032": "0\\0\\3",
                       "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
        small.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "9.dcm"))
    writer.Execute(small)
    with pytest.raises(DatasetError, match=r"series: DICOM slices differ in size \(1\.dcm is 5x4, 9\.dcm 3x2; 1 of 4 "
                                           r"files differ from the first\); put each acquisition in its own folder"):
        read_image(folder)


@pytest.mark.parametrize("slices", [1, 3])
def test_colour_dicom_is_named_as_a_screenshot_not_a_scan(tmp_path: Path, slices: int) -> None:
    """An RGB DICOM (SamplesPerPixel 3) got the message for vector images ('has 3 components per voxel ... save
    each channel as its own _XXXX file'), naming no file."""
    folder = _dicom_series(tmp_path / "series", [(0, 0, z) for z in range(slices)])
    for file in folder.iterdir():  # the same slice, in colour
        grey = sitk.ReadImage(str(file))
        colour = sitk.Compose(*[sitk.Cast(grey, sitk.sitkUInt8)] * 3)
        for key in grey.GetMetaDataKeys():
            if key.startswith("0020|"):
                colour.SetMetaData(key, grey.GetMetaData(key))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(file))
        writer.Execute(colour)
    more = r" \(\+ 2 more file\(s\) of the series\)" if slices > 1 else ""
    with pytest.raises(DatasetError, match=rf"series: 1\.dcm{more} is a colour DICOM \(3 samples per pixel\): a "
                                           r"secondary capture or screenshot .*, not a scan; give the folder of the scan"):
        read_image(folder)


@pytest.mark.parametrize("keep", [300, 0.5])
def test_a_lone_multi_frame_dicom_file_cut_short_is_named(tmp_path: Path, keep: float) -> None:
    """A folder whose one (multi-frame) file was cut short was 'a folder but holds no DICOM series'."""
    (tmp_path / "series").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint16)), str(tmp_path / "series" / "volume.dcm"))
    data = (tmp_path / "series" / "volume.dcm").read_bytes()
    (tmp_path / "series" / "volume.dcm").write_bytes(data[: int(keep if keep > 1 else len(data) * keep)])
    with pytest.raises(DatasetError, match=r"series: volume\.dcm cannot be read as DICOM \(truncated or corrupt copy\?\)"):
        read_image(tmp_path / "series")


def test_multi_frame_dicom_file_reads_as_3d(tmp_path: Path) -> None:
    """One multi-frame file was read by ImageSeriesReader as a 4D image and refused as 'is 4D'."""
    volume = sitk.GetImageFromArray(np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5))
    volume.SetSpacing((0.5, 0.5, 2.0))
    (tmp_path / "series").mkdir()
    sitk.WriteImage(volume, str(tmp_path / "series" / "volume.dcm"))
    array, geometry = read_image(tmp_path / "series")
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(volume))
    assert geometry.spacing == (2.0, 0.5, 0.5)


def test_real_nifti_geometry_matches_simpleitk() -> None:
    path = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"
    array, geometry = read_image(path)
    reference = sitk.ReadImage(str(path))
    assert array.shape == reference.GetSize()[::-1]
    assert geometry.origin == reference.GetOrigin() and geometry.direction == reference.GetDirection()


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".gipl", ".gipl.gz"])
def test_truncated_file_is_reported_with_its_name(tmp_path: Path, ending: str) -> None:
    # ITK zero-fills truncated NIfTI files silently; autoseg must not.
    full = tmp_path / f"full{ending}"
    array, geometry = read_image(HIPPOCAMPUS / "imagesTr" / "hippocampus_004_0000.nii.gz")
    write_image(array, UPRIGHT if ".gipl" in ending else geometry, full)
    source = full.read_bytes()
    path = tmp_path / f"cut_0000{ending}"
    path.write_bytes(source[: len(source) // 2])
    with pytest.raises(DatasetError, match=r"cut_0000" + ending.replace(".", r"\.") + ": (file is truncated|cannot be read)"):
        read_image(path)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_a_nifti_holding_fewer_voxels_than_its_header_claims_is_refused_before_itk_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A whole gzip stream whose NIfTI holds fewer bytes than its header needs (cut before it was compressed, or a
    header claiming 1000^3 voxels) was read as a zero-filled volume; and ITK allocated the claimed size before the
    truncation was looked at (4 GB and 15 s for a 400-byte file)."""
    import struct

    import autoseg.dataset.imageio as imageio

    write_image(np.ones((4, 5, 6), np.int16), GEOMETRY, tmp_path / "img.nii")
    data = bytearray((tmp_path / "img.nii").read_bytes())
    struct.pack_into("<4h", data, 40, 3, 1000, 1000, 1000)  # dim[0..3]
    path = tmp_path / f"claims{ending}"
    path.write_bytes(gzip.compress(bytes(data)) if ending == ".nii.gz" else bytes(data))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("ITK read a truncated file")

    monkeypatch.setattr(imageio.sitk, "ReadImage", never)
    with pytest.raises(DatasetError, match=r"claims\.nii(\.gz)?: file is truncated \(its voxel data ends early\)"):
        read_image(path)


@pytest.mark.parametrize(("name", "header", "data"), [
    ("claims.nrrd", "NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nencoding: raw\nendian: little\n\n",
     bytes(400)),
    ("claims.nrrd", "NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nencoding: gzip\n\n",
     gzip.compress(bytes(400), mtime=0)),  # mtime: xdist workers must collect the same test ids
    ("claims.nrrd", "NRRD0004\ntype: short\ndimension: 3\nsizes: 1000 1000 1000\nencoding: ascii\n\n", b"1 2 3\n"),
    ("claims.nhdr", "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1000 1000 1000\nencoding: raw\ndata file: claims.raw\n",
     b""),
    ("claims.mha", "ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_FLOAT\n"
     "ElementDataFile = LOCAL\n", bytes(400)),
    ("claims.mha", "ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_SHORT\n"
     "CompressedData = True\nElementDataFile = LOCAL\n", zlib.compress(bytes(400))),
    ("claims.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_UCHAR\n"
     "ElementDataFile = claims.raw\n", b""),
], ids=["nrrd-raw", "nrrd-gzip", "nrrd-ascii", "nhdr-detached", "mha-raw", "mha-zlib", "mhd-detached"])
def test_a_nrrd_or_metaimage_claiming_more_voxels_than_its_data_holds_is_refused_before_itk_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, header: str, data: bytes
) -> None:
    """ITK allocated what the header claims before reading a voxel: a 500-byte .nrrd claiming 1000^3 floats took
    4 GB and 3 s to fail as 'fread got only 100 4-sized things', a larger claim could exhaust the memory."""
    import autoseg.dataset.imageio as imageio

    path = tmp_path / name
    if name.endswith((".nhdr", ".mhd")):
        path.write_text(header)
        (tmp_path / "claims.raw").write_bytes(bytes(1000))
    else:
        path.write_bytes(header.encode() + data)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("ITK read a file that cannot hold its voxels")

    monkeypatch.setattr(imageio.sitk, "ReadImage", never)
    with pytest.raises(DatasetError, match=rf"{re.escape(name)}: its header claims 1000000000 voxel values \(\d+ bytes\), "
                                           r"but the data in claims\.(nrrd|nhdr|mha|mhd|raw) (holds|can hold at most) \d+ "
                                           r"bytes .*copy or export it again"):
        read_image(path)


def test_a_bzip2_nrrd_is_refused_before_itk_allocates_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ITK's NrrdIO reads no bzip2: it allocated the claimed image (4 GB for 1000^3 floats) and only then said
    'Sorry, bzip2 encoding not available in NrrdIO'."""
    import bz2

    import autoseg.dataset.imageio as imageio

    path = tmp_path / "bz.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nendian: little\nencoding: bzip2\n\n"
                     + bz2.compress(bytes(400)))
    monkeypatch.setattr(imageio.sitk, "ReadImage", lambda *args, **kwargs: pytest.fail("ITK read a bzip2 NRRD"))
    with pytest.raises(DatasetError, match=r"bz\.nrrd: its voxel data is bzip2-compressed, which ITK, the image reader, "
                                           r"cannot read; save it again with gzip \(or raw\) encoding"):
        read_image(path)


@pytest.mark.parametrize(("name", "header"), [
    ("odd.nrrd", b"NRRD0004\ntype: float\ndimension: 3\nsizes: 1\xb2 2 2\nencoding: raw\n\n"),
    ("odd.mha", b"NDims = 3\nDimSize = 2 2 2\nElementNumberOfChannels = \xb9\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"),
])
def test_a_header_size_in_superscript_digits_is_refused_as_unreadable(tmp_path: Path, name: str, header: bytes) -> None:
    """'1\xb2' (1 and a superscript two, in Latin-1) passes str.isdigit() but not int(): the claimed-size check ended in
    an internal ValueError."""
    (tmp_path / name).write_bytes(header + bytes(100))
    with pytest.raises(DatasetError, match=re.escape(name)):
        read_image(tmp_path / name)


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".nhdr", ".mhd"])
def test_a_nrrd_or_metaimage_compressed_a_thousandfold_is_read(tmp_path: Path, ending: str) -> None:
    """The check of claimed sizes must pass real files: a label map of zeros compresses about 1020-fold, close to
    deflate's limit of 1032 that bounds a compressed data block (and detached headers name a .raw.gz/.zraw file)."""
    array = np.zeros((100, 512, 512), np.uint8)
    array[50, 100, 100] = 2
    path = tmp_path / f"zeros{ending}"
    image = sitk.GetImageFromArray(array)
    sitk.WriteImage(image, str(path), useCompression=True, compressionLevel=9)
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) < array.nbytes / 900
    np.testing.assert_array_equal(read_image(path)[0], array)


@pytest.mark.parametrize(("name", "shape", "dtype", "expected"), [
    ("wide.nii.gz", (1, 2, 40000), np.uint8, r"1x2x40000 voxels cannot be written as \.nii\.gz, which holds at most 32767 "
                                             r"voxels a side; use \.nrrd or \.mha"),
    ("wide.nii", (40000, 2, 1), np.uint8, r"cannot be written as \.nii, which holds at most 32767"),
    ("wide.gipl", (1, 2, 70000), np.uint8, r"cannot be written as \.gipl, which holds at most 65535"),
    ("labels.gipl", (2, 3, 4), np.int32, r"int32 voxels cannot be written as \.gipl \(GIPL holds no 32- or 64-bit "
                                         r"integers\); use \.nii\.gz, \.nrrd or \.mha"),
    ("labels.gipl.gz", (2, 3, 4), np.uint32, r"uint32 voxels cannot be written as \.gipl\.gz"),
    ("labels.gipl", (2, 3, 4), np.int64, r"int64 voxels cannot be written"),
    # GIPL stores no direction, a 3D TIFF only spacing: written upright at the origin, read back elsewhere
    ("rotated.gipl", (2, 3, 4), np.uint8, r"\.gipl cannot hold this image's geometry \(direction \(0, 1, 0, 1, 0, 0, 0, 0, "
                                          r"-1\) vs \(1, 0, 0, 0, 1, 0, 0, 0, 1\) as written\); use \.nii\.gz, \.nrrd or \.mha"),
    ("shifted.tif", (2, 3, 4), np.uint8, r"\.tif cannot hold this image's geometry \(direction .*; origin \(10\.5, "
                                         r"-20\.25, 3\) vs \(0, 0, 0\)"),
    ("sheared.gipl", (2, 3, 4), np.uint8, r"\.gipl cannot hold this image's geometry \(direction \(1, 0\.2873, .* as "
                                          r"written\); use \.nrrd or \.mha, which keep it"),  # not .nii.gz: no shear
    # NIfTI stores rotations only: ITK wrote a sheared direction as its nearest rotation
    ("sheared.nii.gz", (2, 3, 4), np.uint8, r"\.nii\.gz cannot hold this image's geometry \(direction \(1, 0\.2873, 0, 0, "
                                            r"0\.9578, 0, 0, 0, 1\) is sheared, not a rotation, which NIfTI cannot store "
                                            r"as written\); use \.nrrd or \.mha"),
])
def test_an_image_its_format_cannot_hold_is_refused_with_the_format_to_use(
    tmp_path: Path, name: str, shape: tuple[int, ...], dtype: type, expected: str
) -> None:
    """ITK's NIfTI writer failed with 'Dimension(0) = 40000 is greater than maximum possible dimension 32767' and its
    GIPL writer with 'Pixel Type Unknown' (internal errors, after the result was computed); a GIPL side over 65535
    was written wrapped (70000 read back as 4464)."""
    from autoseg.dataset.imageio import unwritable_problem

    path = tmp_path / name
    geometry = GEOMETRY if name.startswith(("rotated", "shifted")) else SHEARED if name.startswith("sheared") \
        else Geometry.default(shape)
    assert unwritable_problem(path, shape, dtype, geometry) is not None
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ": .*" + expected):
        write_image(np.zeros(shape, dtype), geometry, path)
    assert list(tmp_path.iterdir()) == []
    assert unwritable_problem(tmp_path / "ok.nrrd", shape, dtype, geometry) is None


@pytest.mark.parametrize("name", ["x.MHA", "x.MHD", "x.Nii.gz", "x.GIPL", "x.Gipl.gz"])
def test_an_ending_itk_cannot_read_back_is_not_written(tmp_path: Path, name: str) -> None:
    """A .MHA (or .Nii.gz, .GIPL) was written that ITK could not read back, and a .MHD header came out as x.mhd with
    x.raw, nothing at the path asked for, reported as written."""
    with pytest.raises(DatasetError, match=rf"{re.escape(name)}: ITK, the image reader, cannot read the ending "
                                           rf"'{re.escape(name[1:])}' in this case; write '{re.escape(name[1:].lower())}'"):
        write_image(np.ones((2, 3, 4), np.uint8), GEOMETRY, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.NII.GZ", "x.NII", "x.NRRD", "x.Nrrd", "x.NHDR"])
def test_an_upper_case_ending_itk_reads_is_written_and_read_back(tmp_path: Path, name: str) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_image(array, GEOMETRY, tmp_path / name)
    np.testing.assert_array_equal(read_image(tmp_path / name)[0], array)


def test_a_nifti_gz_claiming_4_gib_more_than_it_holds_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gzip's trailer holds the size modulo 4 GiB: a header alone claiming 2048x1024x1024 int16 voxels (4 GiB + 352
    bytes) matched it and was read as 4 GiB of zeros (30 s, 8 GB of memory), without an error."""
    import struct

    import autoseg.dataset.imageio as imageio

    write_image(np.ones((1, 1, 1), np.int16), GEOMETRY, tmp_path / "one.nii")
    data = bytearray((tmp_path / "one.nii").read_bytes()[:352])
    struct.pack_into("<4h", data, 40, 3, 2048, 1024, 1024)
    path = tmp_path / "claims.nii.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    monkeypatch.setattr(imageio.sitk, "ReadImage", lambda *args, **kwargs: pytest.fail("ITK read a truncated file"))
    with pytest.raises(DatasetError, match=r"claims\.nii\.gz: file is truncated \(its voxel data ends early\)"):
        read_image(path)


@pytest.mark.parametrize("flipped", [-2, -6])
def test_a_nifti_gz_with_a_damaged_gzip_trailer_is_refused(tmp_path: Path, flipped: int) -> None:
    """A flipped bit in the trailer's length made the truncation check's decompression raise zlib.error ('incorrect
    length check'): an internal error."""
    write_image(np.arange(8 * 16 * 16, dtype=np.int16).reshape(8, 16, 16), GEOMETRY, tmp_path / "img.nii.gz")
    data = bytearray((tmp_path / "img.nii.gz").read_bytes())
    data[flipped] ^= 0x10
    (tmp_path / "img.nii.gz").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"img\.nii\.gz: (its gzip compression is damaged|cannot be read)"):
        read_image(tmp_path / "img.nii.gz")


def test_a_nifti_gzipped_in_several_members_is_whole(tmp_path: Path) -> None:
    """bgzip and concatenated gzip files hold several members; the trailer's size is the last member's."""
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 200).astype(np.int16)
    write_image(array, GEOMETRY, tmp_path / "img.nii")
    data = (tmp_path / "img.nii").read_bytes()
    (tmp_path / "img.nii.gz").write_bytes(gzip.compress(data[:300]) + gzip.compress(data[300:]) + gzip.compress(b""))
    back, _ = read_image(tmp_path / "img.nii.gz")
    np.testing.assert_array_equal(back, array)


def test_an_uncompressed_nifti_named_nii_gz_is_read_as_itk_reads_it(tmp_path: Path) -> None:
    """A .nii renamed to .nii.gz to match file_ending: ITK and nnU-Net read it, autoseg refused it as
    'file is truncated' (its gzip check failed on plain bytes)."""
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 200).astype(np.float32)
    write_image(array, GEOMETRY, tmp_path / "img.nii")
    (tmp_path / "img.nii").rename(tmp_path / "img.nii.gz")
    back, _ = read_image(tmp_path / "img.nii.gz")
    np.testing.assert_array_equal(back, array)
    from autoseg.dataset.imageio import nifti_nonfinite_counts

    assert nifti_nonfinite_counts(tmp_path / "img.nii.gz") == (0, 0)


def test_a_compressed_nifti_named_nii_is_named_with_the_fix(tmp_path: Path) -> None:
    """ITK cannot read it ('Unable to determine ImageIO reader'), reported as 'truncated or corrupt file?'."""
    write_image(np.zeros((2, 3, 4), np.uint8), GEOMETRY, tmp_path / "img.nii.gz")
    (tmp_path / "img.nii.gz").rename(tmp_path / "img.nii")
    with pytest.raises(DatasetError, match=r"img\.nii: is gzip-compressed but named \.nii, which ITK cannot read; "
                       r"rename it to img\.nii\.gz"):
        read_image(tmp_path / "img.nii")


def test_not_an_image_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x_0000.nii.gz"
    path.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(DatasetError, match="x_0000.nii.gz: cannot be read"):
        read_image(path)


def test_unsupported_ending_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.jpg2").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"a\.jpg2: unsupported file type"):
        read_image(tmp_path / "a.jpg2")
    # Also what a file deleted between a command's listing and its reading gives: say so, and what to do.
    with pytest.raises(DatasetError, match=r"nope\.nii\.gz: file not found \(a wrong path, or the file was moved or "
                                           r"deleted after it was listed\); check the path, and run the command again"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "linked.nii.gz").symlink_to(tmp_path / "moved" / "a.nii.gz")  # listed by ls, its target gone
    with pytest.raises(DatasetError, match=r"linked\.nii\.gz: is a symbolic link to .*moved/a\.nii\.gz, which does not exist "
                                           r"\(moved or deleted\?\); restore its target, or replace the link with the file"):
        read_image(tmp_path / "linked.nii.gz")
    os.mkfifo(tmp_path / "pipe.nii.gz")  # was 'file is empty (0 bytes; an interrupted copy or export?)'
    with pytest.raises(DatasetError, match=r"pipe\.nii\.gz: is not a regular file \(a named pipe, socket or device\); put the "
                                           r"image file there"):
        read_image(tmp_path / "pipe.nii.gz")


@pytest.mark.parametrize("spelled", [".MHA", ".Nii.gz", ".GIPL"])
def test_an_ending_itk_reads_in_no_such_case_is_named_with_the_fix(
        tmp_path: Path, spelled: str, capfd: pytest.CaptureFixture[str]) -> None:
    """ITK reads .NII.GZ but not .MHA or .Nii.gz: say so (was: 'cannot be read (truncated or corrupt file?)'), and
    before ITK is asked, which printed '** mixed case extension '.Nii.gz' is not valid' four times."""
    write_image(np.zeros((2, 3, 4), np.uint8), Geometry.default((2, 3, 4)), tmp_path / f"a{spelled.lower()}")
    (tmp_path / f"a{spelled.lower()}").rename(tmp_path / f"a{spelled}")
    capfd.readouterr()
    with pytest.raises(DatasetError, match=rf"a{spelled}: ITK, the image reader, does not read the ending '{spelled}' in "
                                          rf"this case; rename the files to end in '{spelled.lower()}'"):
        read_image(tmp_path / f"a{spelled}")
    assert capfd.readouterr().err == ""
    write_image(np.zeros((2, 3, 4), np.uint8), Geometry.default((2, 3, 4)), tmp_path / "b.NII.GZ")
    assert read_image(tmp_path / "b.NII.GZ")[0].shape == (2, 3, 4)


@pytest.mark.parametrize("ending", [".nii.gz", ".tif"])
def test_complex_images_are_refused(tmp_path: Path, ending: str) -> None:
    """A complex MR export lost its imaginary part with a mere warning (as an image) or failed with an internal
    TypeError (as a label, in verify)."""
    import tifffile

    values = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * (1 + 1j)).astype(np.complex64)
    path = tmp_path / f"c{ending}"
    if ending == ".tif":
        tifffile.imwrite(path, values[0])
    else:
        sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    with pytest.raises(DatasetError, match=r"c\.(nii\.gz|tif): holds complex values \(complex64\), autoseg reads real ones"):
        read_case_images([path], 1)


def test_4d_and_vector_images_rejected(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([3, 3, 3, 2], sitk.sitkFloat32), str(tmp_path / "four.nii.gz"))
    with pytest.raises(DatasetError, match=r"four\.nii\.gz: is 4D; autoseg reads 2D or 3D images. Split 4D series"):
        read_image(tmp_path / "four.nii.gz")
    # a 3D label with a leading axis of size 1 was told to split a 4D series into channels
    sitk.WriteImage(sitk.Image([1, 3, 3, 3], sitk.sitkUInt8), str(tmp_path / "extra.nii.gz"))
    with pytest.raises(DatasetError, match=r"extra\.nii\.gz: is 4D of size 1x3x3x3, with an axis of size 1; autoseg reads "
                                           r"2D or 3D images: save it without that axis$"):
        read_image(tmp_path / "extra.nii.gz")
    # a 2D slice of 4 channels was told to drop its axis of size 1, which gives a 4-slice volume
    sitk.WriteImage(sitk.Image([8, 8, 1, 4], sitk.sitkFloat32), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(DatasetError, match=r"slice\.nii\.gz: is 4D; autoseg reads 2D or 3D images. Split 4D series into "
                                           r"channels \(_0000, _0001, \.\.\.\)$"):
        read_image(tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.Image([3, 3, 3], sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(DatasetError, match=r"rgb\.nrrd: has 3 components per voxel"):
        read_image(tmp_path / "rgb.nrrd")


def test_folder_without_dicom_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"holds no DICOM series; give an image file or a DICOM folder$"):
        read_image(tmp_path)


def test_folder_of_series_folders_says_nested_folders_are_not_searched(tmp_path: Path) -> None:
    """patient/series as exported: the patient folder was refused with no word of the series folder inside."""
    _dicom_series(tmp_path / "patient" / "series", [(0, 0, z) for z in range(3)])
    with pytest.raises(DatasetError, match=r"patient: is a folder but holds no DICOM series; give an image file or a "
                                           r"DICOM folder \(the one holding the series' files: subfolders such as "
                                           r"series are not searched\)"):
        read_image(tmp_path / "patient")


def test_case_channels_must_share_grid(tmp_path: Path) -> None:
    write_image(np.zeros((2, 3, 4), np.float32), GEOMETRY, tmp_path / "c_0000.nii.gz")
    write_image(np.zeros((2, 3, 5), np.float32), GEOMETRY, tmp_path / "c_0001.nii.gz")
    with pytest.raises(DatasetError, match=r"c_0001\.nii\.gz: shape \(2, 3, 5\) differs"):
        read_case_images([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    shifted = Geometry(GEOMETRY.spacing, tuple(v + 5 for v in GEOMETRY.origin), GEOMETRY.direction)
    write_image(np.zeros((2, 3, 4), np.float32), shifted, tmp_path / "c_0001.nii.gz")
    with pytest.raises(DatasetError, match=r"c_0001\.nii\.gz: geometry differs from .*c_0000\.nii\.gz: origin .*; all "
                                           r"channels of a case must be on the same grid \(resample them onto one grid, "
                                           r"or fix the header\)$"):  # predict named no fix
        read_case_images([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    write_image(np.ones((2, 3, 4), np.float32), GEOMETRY, tmp_path / "c_0001.nii.gz")
    data, _ = read_case_images([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])
    assert data.shape == (2, 2, 3, 4) and data.dtype == np.float32 and data[1].min() == 1


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_image(np.zeros((2, 3), np.uint8), GEOMETRY, tmp_path / "bad.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".gipl", ".gipl.gz"])
@pytest.mark.parametrize("keep", [0.1, 0.6, 0.999])
def test_a_nifti_the_writer_cut_short_is_refused_as_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str, keep: float
) -> None:
    """ITK's NIfTI (and GIPL) writer ignores a failed write: when another writer freed space meanwhile, the disk
    was not left at 0 bytes free and a cut-short file was renamed into place and reported as written."""
    import autoseg.dataset.imageio as imageio

    write = imageio.sitk.WriteImage

    def cut_short(image: sitk.Image, name: str, *args: object, **kwargs: object) -> None:
        write(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: int(len(data) * keep)])

    target = tmp_path / f"case{ending}"
    target.write_bytes(b"old")
    monkeypatch.setattr(imageio.sitk, "WriteImage", cut_short)
    array = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    with pytest.raises(OSError) as info:
        write_image(array, UPRIGHT if ".gipl" in ending else GEOMETRY, target)
    assert info.value.errno == 28 and info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name] and target.read_bytes() == b"old"


# ------------------------------------------------------------------ 2D natural images (nnU-Net's NaturalImage2DIO)


def _png(path: Path, pixels: np.ndarray) -> Path:
    from skimage import io as skio

    skio.imsave(path, pixels, check_contrast=False)
    return path


def _colour_pixels(num_channels: int) -> np.ndarray:
    """(4, 5, C) uint8 with channel c holding 10*c + (pixel index), so every channel is recognisable."""
    return np.stack([np.arange(20).reshape(4, 5) + 10 * c for c in range(num_channels)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(("num_channels", "alpha"), [(3, False), (4, True), (2, True)])
def test_colour_png_gives_one_channel_per_colour(tmp_path: Path, num_channels: int, alpha: bool) -> None:
    pixels = _colour_pixels(num_channels)
    channels, geometry, has_alpha = read_image_channels(_png(tmp_path / "c_0000.png", pixels))
    assert channels.shape == (num_channels, 1, 4, 5) and has_alpha is alpha
    for c in range(num_channels):
        np.testing.assert_array_equal(channels[c, 0], pixels[..., c])
    assert geometry.spacing == (999.0, 1.0, 1.0) and geometry.is_2d


def test_grey_png_is_one_channel(tmp_path: Path) -> None:
    pixels = np.arange(20, dtype=np.uint8).reshape(4, 5)
    channels, _, has_alpha = read_image_channels(_png(tmp_path / "g_0000.png", pixels))
    assert channels.shape == (1, 1, 4, 5) and not has_alpha
    np.testing.assert_array_equal(channels[0, 0], pixels)


@pytest.mark.parametrize(("declared", "kept"), [(3, [0, 1, 2]), (4, [0, 1, 2, 3]), (None, [0, 1, 2, 3])])
def test_rgba_alpha_is_dropped_only_when_three_channels_are_declared(
    tmp_path: Path, declared: int | None, kept: list[int]
) -> None:
    pixels = _colour_pixels(4)
    data, geometry = read_case_images([_png(tmp_path / "c_0000.png", pixels)], declared)
    assert data.dtype == np.float32 and data.shape == (len(kept), 1, 4, 5)
    np.testing.assert_array_equal(data[:, 0], np.moveaxis(pixels[..., kept], -1, 0))


@pytest.mark.parametrize(("samples", "extrasamples", "alpha"), [(2, [0], False), (4, [0], False), (2, [2], True), (4, [1], True)])
def test_a_tiffs_extra_sample_is_alpha_only_when_its_tag_says_so(
    tmp_path: Path, samples: int, extrasamples: list[int], alpha: bool
) -> None:
    """A 2-sample TIFF (two stains) or RGB + near-infrared is data: its last channel was dropped as 'alpha' for
    a dataset declaring one (three) channels, without a word; TIFF marks real alpha in ExtraSamples."""
    import tifffile

    pixels = np.tile(_colour_pixels(samples), (8, 8, 1))  # 32 x 40: 4 rows are read as 4 colours
    path = tmp_path / "c_0000.tif"
    tifffile.imwrite(path, pixels, photometric="rgb" if samples == 4 else "minisblack", planarconfig="contig",
                     extrasamples=extrasamples)
    channels, _, has_alpha = read_image_channels(path)
    assert channels.shape == (samples, 1, 32, 40) and has_alpha is alpha
    if alpha:
        assert read_case_images([path], samples - 1)[0].shape[0] == samples - 1
    else:
        with pytest.raises(DatasetError, match=rf"found {samples} channel\(s\) \({samples} samples, none marked alpha\), "
                           rf"dataset.json channel_names declares {samples - 1}"):
            read_case_images([path], samples - 1)


@pytest.mark.parametrize(("samples", "planar"), [(2, "contig"), (3, "contig"), (3, "separate"), (4, "separate")])
def test_a_small_tiffs_samples_are_read_by_its_planar_configuration(tmp_path: Path, samples: int, planar: str) -> None:
    """scikit-image guessed the samples' axis from the shape: 4 x 5 pixels of 2 samples came back as 5 x 2 of 4."""
    import tifffile

    pixels = _colour_pixels(samples)  # 4 x 5 pixels
    path = tmp_path / "c_0000.tif"
    stored = pixels if planar == "contig" else np.moveaxis(pixels, -1, 0)
    tifffile.imwrite(path, stored, photometric="rgb" if samples >= 3 else "minisblack", planarconfig=planar,
                     extrasamples=[0] * (samples - 3 if samples >= 3 else samples - 1))
    channels, _, _ = read_image_channels(path)
    assert channels.shape == (samples, 1, 4, 5)
    np.testing.assert_array_equal(channels[:, 0], np.moveaxis(pixels, -1, 0))


def test_grey_files_of_one_case_join_in_channel_order(tmp_path: Path) -> None:
    """nnU-Net's layout also allows R, G, B as three grey files _0000, _0001, _0002."""
    pixels = _colour_pixels(3)
    paths = [_png(tmp_path / f"c_{c:04d}.png", pixels[..., c]) for c in range(3)]
    data, _ = read_case_images(paths, 3)
    np.testing.assert_array_equal(data[:, 0], np.moveaxis(pixels, -1, 0))


def test_real_drive_crop_reads_as_r_g_b() -> None:
    """A real DRIVE image: the three channels are PIL's R, G and B bands (an independent reader)."""
    from PIL import Image

    path = DRIVE / "imagesTr" / "drive_21_0000.png"
    data, geometry = read_case_images([path], 3)
    assert data.shape == (3, 1, 584, 565) and geometry.spacing == (999.0, 1.0, 1.0)
    with Image.open(path) as image:
        for c, band in enumerate("RGB"):
            np.testing.assert_array_equal(data[c, 0, DRIVE_CROP[0], DRIVE_CROP[1]], np.asarray(image.getchannel(band))[DRIVE_CROP])
    assert data[0].mean() > data[1].mean() > data[2].mean()  # a fundus is red, then green, then blue


@pytest.mark.parametrize(("pixels", "declared", "problem"), [
    (_colour_pixels(3), 1, "found 3 channel(s) (RGB), dataset.json channel_names declares 1; save the image as grey "
     "(one channel), or declare 3 channels in channel_names"),
    (np.stack([np.arange(20, dtype=np.uint8).reshape(4, 5)] * 3, axis=-1), 1,
     "found 3 channel(s) (RGB), dataset.json channel_names declares 1; save the image as grey (one channel) (its R, "
     "G and B are equal: a grey image stored as colour), or declare 3 channels in channel_names"),
    (np.zeros((4, 5), np.uint8), 3, "found 1 channel(s) (grey), dataset.json channel_names declares 3; give the case "
     "3 channels (one RGB file holds 3, a grey file 1; files _0000, _0001, ...), or declare 1 in channel_names"),
    (np.zeros((4, 5, 2), np.uint8), 3, "found 2 channel(s) (grey + alpha), dataset.json channel_names declares 3; give "
     "the case 3 channels (one RGB file holds 3, a grey file 1; files _0000, _0001, ...), or declare 2 (or 1, "
     "dropping alpha) in channel_names"),
], ids=["rgb_for_one", "grey_stored_as_rgb", "grey_for_three", "grey_alpha_for_three"])
def test_channel_count_mismatch_names_the_file_both_counts_and_the_fix(
    tmp_path: Path, pixels: np.ndarray, declared: int, problem: str
) -> None:
    path = _png(tmp_path / "c_0000.png", pixels)
    with pytest.raises(DatasetError) as info:
        read_case_images([path], declared)
    assert str(info.value) == f"{path}: {problem}"


def test_a_models_channel_count_names_its_channels_not_channel_names(tmp_path: Path) -> None:
    """predict reads a case for a trained model: the fix is to supply the model's channels, not to declare others."""
    path = _png(tmp_path / "c_0000.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(DatasetError) as info:
        read_case_images([path], 3, model_channels={"0": "R", "1": "G", "2": "B"})
    assert str(info.value) == (f"{path}: found 1 channel(s) (grey), the model expects 3 (0000: R, 0001: G, 0002: B); give "
                               "the case 3 channels (one RGB file holds 3, a grey file 1; files _0000, _0001, ...)")


def _multi_page_tiff(path: Path, pages: int) -> Path:
    """``pages`` grey pages in one TIFF (as microscopes and stack exports write them)."""
    from PIL import Image

    images = [Image.fromarray(np.full((4, 5), 10 * page, np.uint8)) for page in range(pages)]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


@pytest.mark.parametrize("pages", [2, 3, 4, 5])
def test_a_multi_page_tiff_is_named_by_its_pages_not_as_colours(tmp_path: Path, pages: int) -> None:
    """4 grey pages were read as RGBA (the fourth dropped as alpha where 3 channels are declared), 5 as a 3D TIFF."""
    path = _multi_page_tiff(tmp_path / "stack_0000.tif", pages)
    problem = (f"{path}: is a multi-page TIFF ({pages} pages) without its spacing; a 3D TIFF needs {tmp_path / 'stack.json'} "
               'holding {"spacing": [z, y, x]} in mm (nnU-Net\'s Tiff3DIO convention). Or save the volume as .nii.gz (or '
               ".nrrd/.mha), or each page as its own channel file (<case>_0000.tif, <case>_0001.tif, ...)")
    for read in (read_image, read_image_channels, lambda p: read_case_images([p], 3)):
        with pytest.raises(DatasetError) as info:
            read(path)
        assert str(info.value) == problem


def test_a_fiji_stack_is_told_that_its_imagej_spacing_is_not_read(tmp_path: Path) -> None:
    """A stack Fiji saved with its slice spacing in the ImageJ description was refused as 'without its spacing'."""
    import tifffile

    path = tmp_path / "stack_0000.tif"
    tifffile.imwrite(path, np.zeros((6, 4, 5), np.uint8), imagej=True, metadata={"spacing": 2.5, "unit": "micron"})
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: is a multi-page TIFF \(6 pages\) without its spacing "
                                           r"\(ImageJ's slice spacing in its description, 2\.5 micron, is not read\); a 3D "
                                           r"TIFF needs .*stack\.json holding"):
        read_image(path)


def test_a_spacing_file_without_spacing_is_named_as_such_not_as_missing(tmp_path: Path) -> None:
    """stack.json holding no "spacing" (another tool's metadata): the refusal said a 3D TIFF needs stack.json,
    a file that is there."""
    path = _multi_page_tiff(tmp_path / "stack_0000.tif", 5)
    (tmp_path / "stack.json").write_text(json.dumps({"unit": "mm"}))
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert (f'needs {tmp_path / "stack.json"} holding {{"spacing": [z, y, x]}} in mm (it exists, with no "spacing" in '
            "it) (nnU-Net's Tiff3DIO convention)") in str(info.value)


@pytest.mark.parametrize("compression", ["tiff_lzw", "jpeg"])
def test_lzw_and_jpeg_compressed_tiffs_are_read(tmp_path: Path, compression: str) -> None:
    """tifffile decodes LZW and JPEG only with the optional imagecodecs package: such a TIFF (common from
    microscopes and scanners) was refused as 'cannot be read as an image: ... requires the imagecodecs package'."""
    from PIL import Image

    grey = np.tile(np.arange(16) * (997 if compression == "tiff_lzw" else 4), (8, 1)).astype(
        np.uint16 if compression == "tiff_lzw" else np.uint8)  # 16 bits (LZW), a smooth ramp (lossy JPEG)
    colour = np.stack([np.full((8, 16), v, np.uint8) for v in (10, 120, 240)], axis=-1)
    Image.fromarray(grey).save(tmp_path / "c.tif", compression=compression)
    Image.fromarray(colour).save(tmp_path / "rgb_0000.tif", compression=compression)
    pages = [Image.fromarray(np.full((4, 5), 50 * i, np.uint8)) for i in range(3)]
    pages[0].save(tmp_path / "v.tif", save_all=True, append_images=pages[1:], compression=compression)
    (tmp_path / "v.json").write_text(json.dumps({"spacing": [2.0, 1.0, 1.0]}))
    atol = 0 if compression == "tiff_lzw" else 8  # JPEG is lossy
    array, _ = read_image(tmp_path / "c.tif")
    np.testing.assert_allclose(array[0], grey, atol=atol)
    channels, _, alpha = read_image_channels(tmp_path / "rgb_0000.tif")
    assert channels.shape == (3, 1, 8, 16) and not alpha
    np.testing.assert_allclose(channels[:, 0, 0, 0], [10, 120, 240], atol=atol)
    volume, geometry = read_image(tmp_path / "v.tif")
    assert volume.shape == (3, 4, 5) and geometry.spacing == (2.0, 1.0, 1.0)
    np.testing.assert_allclose(volume[:, 0, 0], [0, 50, 100], atol=atol)


def test_a_2d_tiff_with_a_thumbnail_page_is_one_image(tmp_path: Path) -> None:
    """A reduced-resolution page (NewSubfileType 1, a thumbnail as scanners add) made the image 'a multi-page TIFF
    (2 pages) without its spacing'; nnU-Net's reader reads the image."""
    import tifffile

    pixels = (np.arange(16 * 24).reshape(16, 24) % 251).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "c_0000.tif") as tiff:
        tiff.write(pixels, photometric="minisblack")
        tiff.write(pixels[::4, ::4], photometric="minisblack", subfiletype=1)
    array, geometry = read_image(tmp_path / "c_0000.tif")
    assert geometry.is_2d
    np.testing.assert_array_equal(array[0], pixels)


def test_a_3d_tiff_written_page_by_page_with_a_thumbnail_is_a_volume(tmp_path: Path) -> None:
    """Pages written one by one (tifffile's TiffWriter in a loop: one series per page) were read as their first
    page and refused as 'a 3D TIFF must hold grey pages (pages, y, x); it has shape (16, 24)'."""
    import tifffile

    volume = (np.arange(3 * 16 * 24).reshape(3, 16, 24) % 251).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "c_0000.tif") as tiff:
        for page in volume:
            tiff.write(page, photometric="minisblack")
        tiff.write(volume[0, ::4, ::4], photometric="minisblack", subfiletype=1)
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [2.5, 0.5, 0.5]}))
    array, geometry = read_image(tmp_path / "c_0000.tif")
    np.testing.assert_array_equal(array, volume)
    assert geometry.spacing == (2.5, 0.5, 0.5)
    # An ImageJ hyperstack's pages are z and channels interleaved: refused, not read as 6 slices.
    tifffile.imwrite(tmp_path / "c_0000.tif", np.zeros((3, 2, 16, 24), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(DatasetError, match=r"a 3D TIFF must hold grey pages \(pages, y, x\); it has shape \(3, 2, 16, 24\)"):
        read_image(tmp_path / "c_0000.tif")


def test_a_3d_tiff_with_nnunets_spacing_sidecar_is_a_volume(tmp_path: Path) -> None:
    """nnU-Net v2's Tiff3DIO: pages along z, spacing from <case>.json (for <case>_0000.tif and <case>.tif alike)."""
    import tifffile

    volume = np.arange(5 * 4 * 6, dtype=np.float32).reshape(5, 4, 6)
    for name in ("c_0000.tif", "c.tif"):
        tifffile.imwrite(tmp_path / name, volume)
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [3.0, 0.5, 0.75]}))
    for name in ("c_0000.tif", "c.tif"):
        array, geometry = read_image(tmp_path / name)
        assert np.array_equal(array, volume) and geometry.spacing == (3.0, 0.5, 0.75) and not geometry.is_2d
    data, geometry = read_case_images([tmp_path / "c_0000.tif"], 1)
    assert data.shape == (1, 5, 4, 6) and geometry.spacing == (3.0, 0.5, 0.75)
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [3.0, 0, 0.75]}))
    with pytest.raises(DatasetError, match=r'c.json: spacing of c.tif must be \{"spacing": \[z, y, x\]\}: three positive '
                                           r"numbers in mm \(got \[3.0, 0, 0.75\]\)"):
        read_image(tmp_path / "c.tif")


def test_a_3d_tiff_of_pages_of_several_sizes_is_named_as_such(tmp_path: Path) -> None:
    """Pages written one by one in two sizes (an unmarked overview) were refused with numpy's 'all input arrays must
    have the same shape'."""
    import tifffile

    with tifffile.TiffWriter(tmp_path / "c_0000.tif") as writer:
        writer.write(np.zeros((4, 5), np.uint8))
        writer.write(np.zeros((6, 7), np.uint8))
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [2.0, 0.5, 0.5]}))
    with pytest.raises(DatasetError, match=r"c_0000\.tif: its pages differ in size \(4x5, 6x7\), so they are no slices of one "
                                           r"volume; remove the other pages \(an overview or thumbnail\?\), or save"):
        read_image(tmp_path / "c_0000.tif")


def test_a_one_page_tiff_with_a_spacing_sidecar_is_a_one_slice_volume(tmp_path: Path) -> None:
    """A stack of one slice in a 3D TIFF dataset was read as a 2D image (spacing 999 x 1 x 1, its sidecar
    ignored), so preprocessing resampled its one slice to hundreds; a colour page is no volume."""
    import tifffile

    page = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6)
    tifffile.imwrite(tmp_path / "c_0000.tif", page)
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [2.0, 0.5, 0.5]}))
    array, geometry = read_image(tmp_path / "c_0000.tif")
    assert np.array_equal(array, page[None]) and geometry.spacing == (2.0, 0.5, 0.5) and not geometry.is_2d
    tifffile.imwrite(tmp_path / "c_0000.tif", np.zeros((4, 6, 3), np.uint8), photometric="rgb")
    with pytest.raises(DatasetError, match=r"a 3D TIFF must hold grey pages \(pages, y, x\); it has shape \(1, 4, 6, 3\)"):
        read_image(tmp_path / "c_0000.tif")
    # tifffile's default for a volume of 3 slices: one RGB page of 3 planes (was refused as 'shape (1, 3, 4, 6)')
    tifffile.imwrite(tmp_path / "c_0000.tif", np.zeros((3, 4, 6), np.uint16), photometric="rgb", planarconfig="separate")
    with pytest.raises(DatasetError, match=r"c_0000\.tif: holds one colour page of 3 planes, not 3 slices \(tifffile\.imwrite "
                                           r"stores a \(3, y, x\) array so unless told otherwise\); a volume: write it "
                                           r"again with tifffile\.imwrite\(\.\.\., photometric='minisblack'\)"):
        read_image(tmp_path / "c_0000.tif")


def test_a_written_3d_tiff_carries_its_spacing_and_ignores_a_probability_sidecar(tmp_path: Path) -> None:
    """Predictions of a 3D TIFF dataset are 3D TIFFs holding their spacing (a <case>.json beside them is
    the saved probabilities' sidecar, not a spacing file); one slice stays a volume."""
    for slices in (4, 1):
        labels = np.random.default_rng(0).integers(0, 3, (slices, 6, 3)).astype(np.uint8)  # x = 3: not RGB
        path = tmp_path / f"p{slices}.tif"
        write_image(labels, Geometry((2.5, 1.0, 0.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())), path)
        (tmp_path / f"p{slices}.json").write_text(json.dumps({"case_id": "p", "shape": [3, slices, 6, 3]}))
        array, geometry = read_image(path)
        assert np.array_equal(array, labels) and geometry.spacing == (2.5, 1.0, 0.5) and not geometry.is_2d


@pytest.mark.parametrize(("unit", "spacing_mm"), [("um", (0.002, 0.0005, 0.0005)), ("\u00b5m", (0.002, 0.0005, 0.0005)),
                                                  ("mm", (2.0, 0.5, 0.5)), ("cm", (20.0, 5.0, 5.0))])
def test_a_3d_tiffs_spacing_is_read_in_the_unit_its_description_names(
    tmp_path: Path, unit: str, spacing_mm: tuple[float, ...]
) -> None:
    """A volume written with tifffile's metadata={"spacing": [2, 0.5, 0.5], "unit": "um"} (a microscope's) was read
    as 2 x 0.5 x 0.5 mm, 1000 times too coarse, in silence; a unit of no length is refused."""
    import tifffile

    volume = np.zeros((4, 5, 6), np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", volume, metadata={"spacing": [2, 0.5, 0.5], "unit": unit}, photometric="minisblack")
    assert read_image(tmp_path / "v.tif")[1].spacing == pytest.approx(spacing_mm)
    tifffile.imwrite(tmp_path / "p.tif", volume, metadata={"spacing": [2, 0.5, 0.5], "unit": "pixel"}, photometric="minisblack")
    with pytest.raises(DatasetError, match=r"p\.tif: its description gives the spacing in 'pixel', no length unit autoseg "
                                           r"knows \(mm, .*\); write the spacing in mm"):
        read_image(tmp_path / "p.tif")


@pytest.mark.parametrize("metadata", [{"spacing": 0.5, "unit": "um"}, {"spacing": [1.0, 0.5, 0.5]}])
def test_a_2d_tiff_with_another_tools_spacing_metadata_stays_a_2d_image(tmp_path: Path, metadata: dict) -> None:
    """tifffile's metadata={"spacing": 0.5, "unit": "um"} on a 2D microscopy image was taken for autoseg's
    volume spacing: the image was refused ('spacing of c.tif must be [z, y, x]') or read as a volume."""
    import tifffile

    pixels = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40)
    tifffile.imwrite(tmp_path / "c.tif", pixels, metadata=metadata)
    array, geometry = read_image(tmp_path / "c.tif")
    assert np.array_equal(array[0], pixels) and geometry.is_2d and geometry.spacing == (999.0, 1.0, 1.0)


def test_colour_label_map_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = _png(tmp_path / "mask.png", _colour_pixels(3))
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert str(info.value) == (
        f"{path}: is a colour image (RGB, 3 channels) where one value per pixel is expected; save label maps "
        "as grey PNGs whose pixel values are the class numbers (0 background, 1, 2, ...)"
    )


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif"])
def test_palette_label_map_is_named_as_such(tmp_path: Path, ending: str) -> None:
    """In its own format: a palette BMP was called a 'palette PNG' to be saved 'as a grey PNG'."""
    from PIL import Image

    indices = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="L").convert("P")
    indices.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    indices.save(tmp_path / f"mask{ending}")
    kind = ending[1:].upper()
    with pytest.raises(DatasetError, match=rf"mask\{ending}: is a palette \(indexed-colour\) {kind}, read as RGB colours; "
                       rf"label maps need one class number per pixel: save the palette indices as a grey \{ending} "):
        read_image(tmp_path / f"mask{ending}")


def _png_16_bit(path: Path, samples: np.ndarray, colour_type: int) -> Path:
    """A 16-bit PNG of ``samples`` (y, x[, c]) written byte by byte (Pillow and scikit-image cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    header = struct.pack(">IIBBBBB", samples.shape[1], samples.shape[0], 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("colour_type", "kind", "channels"), [(2, "RGB", 3), (4, "grey + alpha", 2), (6, "RGBA", 4)])
def test_a_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path: Path, colour_type: int, kind: str, channels: int) -> None:
    """Pillow keeps the high byte of 16-bit colour samples: 3000 and 3001 both read as 11, grey + alpha as RGBA."""
    grey = (np.arange(20).reshape(4, 5) * 3000).astype(np.uint16)
    path = _png_16_bit(tmp_path / "c_0000.png", np.stack([grey + c for c in range(channels)], axis=-1), colour_type)
    with pytest.raises(DatasetError, match=rf"c_0000\.png: is a 16-bit {re.escape(kind)} PNG, whose samples the PNG decoder cuts to "
                                           r"8 bits; save it as a 16-bit TIFF"):
        read_image_channels(path)
    back, _ = read_image(_png_16_bit(tmp_path / "grey.png", grey, 0))  # 16-bit grey keeps its depth
    np.testing.assert_array_equal(back[0], grey)


def test_an_rgb_tiff_with_another_tools_pixel_size_stays_a_2d_colour_image(tmp_path: Path) -> None:
    """tifffile's metadata={"spacing": 0.5, "unit": "um"} on an RGB microscopy image (shape (y, x, 3), 3 long as a
    volume's) was refused as a volume: 'spacing of c.tif must be {"spacing": [z, y, x]} ... (got 0.5)'."""
    import tifffile

    pixels = np.random.default_rng(0).integers(0, 255, (32, 40, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", pixels, metadata={"spacing": 0.5, "unit": "um"})
    channels, geometry, alpha = read_image_channels(tmp_path / "c.tif")
    assert np.array_equal(np.moveaxis(channels[:, 0], 0, -1), pixels) and geometry.is_2d and not alpha


def test_a_palette_tiff_is_read_as_its_colours_as_a_palette_png_is(tmp_path: Path) -> None:
    """A palette TIFF was read as its indices (one grey channel), the same picture as PNG as RGB."""
    from PIL import Image

    indices = Image.fromarray((np.arange(20).reshape(4, 5) % 3).astype(np.uint8), mode="L").convert("P")
    indices.putpalette([0, 0, 0, 255, 0, 0, 10, 128, 255] + [0] * 759)
    indices.save(tmp_path / "c_0000.png")
    indices.save(tmp_path / "c_0000.tif")
    expected = np.moveaxis(np.array([[0, 0, 0], [255, 0, 0], [10, 128, 255]])[np.arange(20).reshape(4, 5) % 3], -1, 0)
    for name in ("c_0000.png", "c_0000.tif"):
        channels, _, alpha = read_image_channels(tmp_path / name)
        assert channels.shape == (3, 1, 4, 5) and not alpha
        np.testing.assert_array_equal(channels[:, 0], expected)
        # In a grey dataset (a grey image saved with a lookup table, as Fiji does) the refusal says why and what to do.
        with pytest.raises(DatasetError, match=r"found 3 channel\(s\) \(RGB\), dataset.json channel_names declares 1; save "
                                               r"the image as grey \(one channel\) \(it is a palette \(indexed-colour\) "
                                               r"image, read as its colours: if its indices are the intensities"):
            read_case_images([tmp_path / name], 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32])
def test_label_maps_round_trip_through_png(tmp_path: Path, dtype: type) -> None:
    """Predictions of PNG inputs are written as grey PNG label maps of the input's size."""
    _, mask = drive_crop("drive_22")
    labels = (mask[None] * np.array(2, dtype)).astype(dtype)
    geometry = read_image_channels(DRIVE / "imagesTr" / "drive_22_0000.png")[1]
    write_image(labels, geometry, tmp_path / "drive_22.png")
    back, back_geometry = read_image(tmp_path / "drive_22.png")
    assert back.dtype == np.uint8 and back.shape == (1, 64, 64) and back_geometry == geometry
    np.testing.assert_array_equal(back, labels)


def test_png_labels_above_255_are_written_as_16_bit(tmp_path: Path) -> None:
    labels = np.array([[[0, 300, 65535]]], np.int32)
    write_image(labels, Geometry((999.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), tmp_path / "l.png")
    back, _ = read_image(tmp_path / "l.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(ValueError, match="integer values in 0..65535"):
        write_image(-labels, Geometry.default((1, 1, 3)), tmp_path / "negative.png")


def test_bmp_labels_are_written_as_8_bit_and_labels_above_255_refused(tmp_path: Path) -> None:
    """A uint16 label map (an ensemble's labels above 255, or uint16 labels of small values) failed in Pillow with
    'cannot write mode I;16 as BMP', an internal error; BMP holds 8-bit values."""
    picture = Geometry((999.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    labels = np.array([[[0, 2, 255]]], np.uint16)
    write_image(labels, picture, tmp_path / "l.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "l.bmp")[0], labels)
    with pytest.raises(DatasetError, match=r"big\.bmp: label value 300 cannot be written as \.bmp, which holds 8-bit "
                                           r"values \(0\.\.255\); use \.png or \.tif"):
        write_image(labels + 45, picture, tmp_path / "big.bmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.bmp"]


@pytest.mark.parametrize("pixdim", [0.0, float("nan")])
@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_a_nifti_without_a_voxel_size_is_refused_not_read_as_1_mm(tmp_path: Path, pixdim: float, ending: str) -> None:
    """pixdim 0 (or NaN): ITK read that side as 1 mm without a word (whatever the sform says), and every stage
    planned, resampled and predicted at a voxel size made up."""
    import struct

    image = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    image.SetSpacing((2.0, 0.5, 3.0))
    path = tmp_path / f"c{ending}"
    sitk.WriteImage(image, str(tmp_path / "c.nii"))
    header = bytearray((tmp_path / "c.nii").read_bytes())
    header[84:88] = struct.pack("<f", pixdim)  # pixdim[2]: the y side
    for codes in ((1, 1), (1, 0), (0, 0)):  # (qform_code, sform_code)
        header[252:256] = struct.pack("<hh", *codes)
        data = bytes(header)
        path.write_bytes(gzip.compress(data) if ending == ".nii.gz" else data)
        with pytest.raises(DatasetError) as info:
            read_image(path)
        assert str(info.value) == (f"{path}: its header gives no voxel size (pixdim[2] = {pixdim:g}), which ITK would read "
                                   "as 1 mm; write the image's true voxel size into its header (export it again)")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nifti_placed_nowhere_is_refused_before_itk_prints_its_matrix(tmp_path: Path, value: float,
                                                                        capfd: pytest.CaptureFixture[str]) -> None:
    """A NaN origin passed verify, and ITK's reader printed its SVD's 4x4 matrix to stderr four times per read."""
    import struct

    image = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    sitk.WriteImage(image, str(tmp_path / "c.nii"))
    header = bytearray((tmp_path / "c.nii").read_bytes())
    header[268:272] = struct.pack("<f", value)  # qoffset_x
    header[292:296] = struct.pack("<f", value)  # srow_x[3]
    path = tmp_path / "placed.nii.gz"
    path.write_bytes(gzip.compress(bytes(header)))
    capfd.readouterr()
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: its header's position and orientation hold no number (qoffset_x = {value}, "
                               f"srow_x[3] = {value}), so the image has no place in space; export it again with a "
                               "finite origin and orientation")
    assert capfd.readouterr().err == ""
    header[252:256] = struct.pack("<hh", 1, 0)  # the sform unused: its NaN is not read
    header[268:272] = struct.pack("<f", 2.5)
    path.write_bytes(gzip.compress(bytes(header)))
    assert read_image(path)[1].origin[0] == -2.5


@pytest.mark.parametrize(("line", "ending"), [("Offset = nan 0 0", ".mha"), ("TransformMatrix = 1 0 0 0 1 0 0 0 inf", ".mhd")])
def test_a_metaimage_placed_nowhere_is_refused(tmp_path: Path, line: str, ending: str) -> None:
    """ITK read 'Offset = nan 0 0' as the origin (0, 0, 0) without a word, and verify passed the case."""
    image = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    image.SetOrigin((3.0, 4.0, 5.0))
    path = tmp_path / f"c{ending}"
    sitk.WriteImage(image, str(path))
    assert read_image(path)[1].origin == (3.0, 4.0, 5.0)
    key = line.split(" = ")[0]
    text = path.read_bytes().decode("latin-1")
    start = text.index(f"{key} = ")
    path.write_bytes((text[:start] + line + text[text.index("\n", start):]).encode("latin-1"))
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: its header's {key.lower()} '{line.split(' = ')[1]}' is not all finite numbers "
                               "(ITK would read another origin or direction without a word); export it again with a "
                               "finite origin and orientation")


def test_a_nifti_header_is_decompressed_once_per_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The truncation check and the voxel-size check each opened and decompressed a .nii.gz's header: the second
    cost 3-7% of reading a Hippocampus case. The header read for the first is passed to the second."""
    opened: list[str] = []
    gzip_open = gzip.open
    monkeypatch.setattr(gzip, "open", lambda path, *args, **kwargs: opened.append(path) or gzip_open(path, *args, **kwargs))
    image, _ = read_image(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz")
    assert len(opened) == 1 and image.shape == (35, 51, 35)


def test_a_nrrd_of_unknown_spacing_is_refused_not_read_as_1_mm(tmp_path: Path) -> None:
    """NRRD writes an unknown spacing as NaN ('spacings: nan 1 1'): ITK read it as 1 mm without a word. An axis of
    one voxel may leave it unknown."""
    voxels = np.arange(120, dtype=np.int16).tobytes()
    path = tmp_path / "c.nrrd"
    for sizes, spacings, refused in (("6 5 4", "nan 0.5 2", True), ("6 5 1", "0.7 0.5 nan", False)):
        path.write_bytes(f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nspacings: {spacings}\nencoding: raw\n"
                         f"endian: little\n\n".encode() + voxels[: 2 * math.prod(map(int, sizes.split()))])
        if not refused:
            assert read_image(path)[1].spacing[1:] == (0.5, 0.7)
            continue
        with pytest.raises(DatasetError) as info:
            read_image(path)
        assert str(info.value) == (f"{path}: its header gives no voxel size (spacings: {spacings}), which ITK would read "
                                   "as 1 mm; write the image's true voxel size into its header (export it again)")


@pytest.mark.parametrize(("origin", "spacing", "ending"), [((1e30, -5.0, 3.0), 1.0, ".nii.gz"),
                                                           ((0.0, -2e13, 0.0), 1.0, ".mha"),
                                                           ((3e12, 0.0, 0.0), 0.01, ".nrrd")])
def test_an_origin_too_far_for_float_positions_is_refused(tmp_path: Path, origin: tuple[float, ...], spacing: float,
                                                          ending: str) -> None:
    """An origin of 1e30 (a damaged header) passed verify, fingerprint, plan and preprocess without a word."""
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    image.SetOrigin(origin)
    image.SetSpacing((spacing,) * 3)
    path = tmp_path / f"far{ending}"
    sitk.WriteImage(image, str(path))
    read_origin = sitk.ReadImage(str(path)).GetOrigin()  # NIfTI keeps float32: 1e30 reads back as 1.0000000150e30
    step = float(np.spacing(max(abs(v) for v in read_origin)))
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: its origin ({', '.join(f'{v:.4g}' for v in read_origin)}) lies so far from 0 "
                               f"that positions there are exact to only {step:.3g} mm, coarser than a thousandth of its "
                               f"{spacing:g} mm voxel side (a damaged header?); export it again with the image's true "
                               "origin")


@pytest.mark.parametrize("ending", [".nii.gz", ".mha", ".nrrd"])
def test_a_damaged_voxel_size_is_named_with_the_origin_before_the_voxels_are_read(
        tmp_path: Path, ending: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A voxel side of 1e-12 mm at origin -100 was blamed on the origin alone ('export it again with the image's
    true origin'), after its voxels were read."""
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    image.SetOrigin((-100.0, 20.0, 5.0))
    image.SetSpacing((1e-12,) * 3)
    path = tmp_path / f"tiny{ending}"
    sitk.WriteImage(image, str(path))
    header = sitk.ReadImage(str(path))
    step, side = float(np.spacing(100.0)), min(header.GetSpacing())  # NIfTI keeps float32: 9.9999998e-13
    read: list[object] = []
    monkeypatch.setattr(sitk, "GetArrayFromImage", lambda *args: read.append(args))
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert str(info.value) == (f"{path}: its voxel side {side:g} mm is so small (a damaged header?) that positions at "
                               f"its origin (-100, 20, 5) are exact to only {step:.3g} mm, coarser than a thousandth "
                               "of a voxel; export it again with the image's true origin or voxel size")
    assert read == []


@pytest.mark.parametrize("origin", [(-250.5, 312.25, -1000.0), (0.0, 0.0, 0.0), (90000.0, -12345.678, 5e5)])
def test_real_world_origins_pass(tmp_path: Path, origin: tuple[float, ...]) -> None:
    """Scanner origins (hundreds of mm, negative too; microscopy stages further) are far inside the bound."""
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    image.SetOrigin(origin)
    image.SetSpacing((0.001, 0.5, 0.5))
    sitk.WriteImage(image, str(tmp_path / "near.mha"))
    assert read_image(tmp_path / "near.mha")[1].origin == origin


def test_a_pixel_size_sidecar_beside_a_2d_tiff_gets_the_fix(tmp_path: Path) -> None:
    """A 2D TIFF with {"spacing": [y, x]} beside it (a pixel size) was told only that three numbers were needed."""
    import tifffile

    tifffile.imwrite(tmp_path / "c_0000.tif", np.arange(24, dtype=np.uint8).reshape(4, 6))
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [0.5, 0.5]}))
    with pytest.raises(DatasetError) as info:
        read_image(tmp_path / "c_0000.tif")
    assert str(info.value) == (f'{tmp_path / "c.json"}: spacing of c_0000.tif must be {{"spacing": [z, y, x]}}: three '
                               "positive numbers in mm (got [0.5, 0.5]) (a 2D image's pixel size? give its slice "
                               "thickness too, [z, y, x], or remove the .json to read it as a 2D image of 1 per pixel)")
    (tmp_path / "c.json").unlink()
    array, geometry = read_image(tmp_path / "c_0000.tif")
    assert array.shape == (1, 4, 6) and geometry.is_2d
    tifffile.imwrite(tmp_path / "c_0000.tif", np.zeros((5, 4, 6), np.uint8), photometric="minisblack")  # a stack
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [0.5, 0.5]}))
    with pytest.raises(DatasetError) as info:
        read_image(tmp_path / "c_0000.tif")
    assert str(info.value) == (f'{tmp_path / "c.json"}: spacing of c_0000.tif must be {{"spacing": [z, y, x]}}: three '
                               "positive numbers in mm (got [0.5, 0.5])")
