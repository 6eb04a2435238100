"""``predict --statistics`` of a label map left from other images: refused, not measured with the image's spacing."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from autoseg.dataset.description import parse_description
from autoseg.dataset.imageio import Geometry, write_image
from autoseg.errors import InferenceError
from autoseg.evaluation.statistics import case_statistics, write_statistics

from test_statistics import CLASSES, GEOMETRY, images_of, synthetic_case


@pytest.mark.parametrize("label_geometry, difference", [
    (Geometry((1.0, 0.5, 1.5), (0.0, 0.0, 0.0), GEOMETRY.direction), r"spacing \(1, 0\.5, 1\.5\) vs \(2, 0\.5, 1\.5\)"),
    (Geometry(GEOMETRY.spacing, (0.0, 0.0, 30.0), GEOMETRY.direction), r"origin \(0, 0, 30\) vs \(0, 0, 0\) "),
])
def test_a_label_map_off_its_images_grid_is_refused_naming_both_files(tmp_path: Path, label_geometry, difference) -> None:
    """``predict --continue --statistics`` after the images' spacing (or origin) was corrected kept the earlier label
    map, whose liver of 9 voxels was reported as 13.5 mm3 (the image's 1.5 mm3 voxels, not its own 0.75 mm3) and
    whose intensities were read at other places; it is refused, and nothing is written."""
    labels, inputs, output = images_of(("a",), tmp_path)
    write_image(labels, label_geometry, output / "a.nii.gz")
    message = (rf"^{re.escape(str(output / 'a.nii.gz'))}: the label map is not on the grid of its image "
               rf"{re.escape(str(inputs / 'a_0000.nii.gz'))} \(label map vs image: {difference}.*\); it was predicted "
               r"from other images: predict case a again \(without --continue\)$")
    with pytest.raises(InferenceError, match=message):
        write_statistics(inputs, output, parse_description(CLASSES, Path("dataset.json")))
    assert sorted(p.name for p in output.iterdir()) == ["a.nii.gz"]


def test_a_label_map_of_another_shape_is_refused_naming_both_files(tmp_path: Path) -> None:
    """A label map left from images of another shape was refused as 'labels of shape ... do not match the input's',
    naming neither file."""
    labels, inputs, output = images_of(("a",), tmp_path)
    write_image(labels[:3], GEOMETRY, output / "a.nii.gz")
    with pytest.raises(InferenceError, match=rf"^{re.escape(str(output / 'a.nii.gz'))}: the label map is not on the grid "
                                             rf"of its image .*a_0000\.nii\.gz \(label map vs image: shape \(3, 5, 6\) vs "
                                             r"\(4, 5, 6\)\); it was predicted from other images: predict case a again"):
        write_statistics(inputs, output, parse_description(CLASSES, Path("dataset.json")))


def test_a_refused_case_leaves_no_statistics_of_the_others(tmp_path: Path) -> None:
    """The cases before a refused one had their statistics written, without a statistics.csv: a partial output."""
    labels, inputs, output = images_of(("a", "b"), tmp_path)
    write_image(labels, GEOMETRY, output / "a.nii.gz")
    write_image(labels[:3], GEOMETRY, output / "b.nii.gz")
    with pytest.raises(InferenceError, match=r"b\.nii\.gz: the label map is not on the grid of its image "):
        write_statistics(inputs, output, parse_description(CLASSES, Path("dataset.json")))
    assert sorted(p.name for p in output.iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_the_statistics_say_a_2d_images_sizes_are_areas() -> None:
    """A 2D image's volume_mm3 are areas in mm^2, which nothing in the statistics said; size_unit says it."""
    labels, data = synthetic_case()
    description = parse_description(CLASSES, Path("dataset.json"))
    png = Geometry((999.0, 0.5, 1.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    flat = case_statistics(labels[:1], data[:, :1], png, description)
    assert flat["size_unit"] == "mm^2" and flat["voxel_volume_mm3"] == 0.75
    assert flat["structures"]["liver"]["volume_mm3"] == 4 * 0.75
    assert case_statistics(labels, data, GEOMETRY, description)["size_unit"] == "mm^3"


def test_statistics_csv_gives_the_unit_of_each_rows_sizes(tmp_path: Path) -> None:
    """statistics.csv listed a 2D image's areas under volume_mm3 with nothing saying so; its size_unit column does."""
    labels, data = synthetic_case()
    png = Geometry((999.0, 0.5, 1.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir(), output.mkdir()
    for case, array, geometry, label_map in (("flat", data[:, :1], png, labels[:1]), ("vol", data, GEOMETRY, labels)):
        for channel in (0, 1):
            write_image(array[channel], geometry, inputs / f"{case}_000{channel}.nii.gz")
        write_image(label_map, geometry, output / f"{case}.nii.gz")
    csv_path = write_statistics(inputs, output, parse_description(CLASSES, Path("dataset.json")))
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0])[:6] == ["case", "structure", "voxels", "volume_mm3", "size_unit", "components"]
    assert [(r["case"], r["structure"], r["volume_mm3"], r["size_unit"]) for r in rows if r["structure"] == "liver"] == [
        ("flat", "liver", "3.0", "mm^2"), ("vol", "liver", "13.5", "mm^3")]
