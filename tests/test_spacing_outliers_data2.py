"""A case whose spacing is far off the dataset's median (other units, a wrong header) is named by verify and
fingerprint: it was accepted in silence and resampled 1000-fold."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset.cases import training_cases
from autoseg.dataset.description import load_description
from autoseg.fingerprint.spacing_outliers import SHOWN_CASES, spacing_outlier_warnings
from conftest import SHARED_DATA

runner = CliRunner()
THRESHOLD = "(named from 5x off, either way)"
CHECK = "check its header (write the spacing in mm), then fingerprint again"


def test_a_case_in_other_units_is_named_by_verify_and_fingerprint(small_dataset: Path, roots: dict[str, Path]) -> None:
    """Spacing 10 mm among cases of 1 mm: verify and fingerprint passed it without a word, and preprocessing
    resampled it to 1000 times its voxels."""
    odd = sorted(path.name for path in (small_dataset / "labelsTr").iterdir())[0].removesuffix(".nii.gz")
    for path in [small_dataset / "imagesTr" / f"{odd}_0000.nii.gz", small_dataset / "labelsTr" / f"{odd}.nii.gz"]:
        image = sitk.ReadImage(str(path))
        image.SetSpacing((10.0, 10.0, 10.0))
        sitk.WriteImage(image, str(path))
    line = (f"WARNING case {odd}: spacing (10, 10, 10) mm is 10x the dataset's median (1, 1, 1) mm along axes 0, 1, 2 "
            f"{THRESHOLD}; likely cause: its header gives the spacing in other units than the others (cm and mm "
            f"differ 10x); it is resampled to the median spacing (1,000 times its voxels): {CHECK}")
    verified = runner.invoke(app, ["verify", "999", "-np", "1"])
    assert verified.exit_code == 0, verified.output
    assert [text for text in verified.output.splitlines() if text.startswith("WARNING")] == [line]
    assert "no problems found (1 warning(s))" in verified.output
    fingerprinted = runner.invoke(app, ["fingerprint", "999", "-np", "1"])
    assert fingerprinted.exit_code == 0, fingerprinted.output
    assert [text for text in fingerprinted.output.splitlines() if text.startswith("WARNING")] == [line]
    assert (roots["preprocessed"] / "Dataset999_Test" / "fingerprint.json").is_file()


def test_each_odd_case_gets_one_line_with_its_likely_cause() -> None:
    spacings = {"a": (3.0, 1.0, 1.0), "b": (0.3, 0.1, 0.1), "c": (3.0, 1.0, 0.15), "d": (3.0, 1.0, 1.0),
                "e": (1.0, 1.0, 3.0), "f": (3.0, 7.0, 1.0)}  # e, f: axes stored in another order (the axis-order warning)
    lines = spacing_outlier_warnings(list(spacings), list(spacings.values()), (3.0, 1.0, 1.0))
    assert lines == [
        f"case b: spacing (0.3, 0.1, 0.1) mm is 1/10 of the dataset's median (3, 1, 1) mm along axes 0, 1, 2 {THRESHOLD}; "
        "likely cause: its header gives the spacing in other units than the others (cm and mm differ 10x); it is "
        f"resampled to the median spacing (1/1,000 of its voxels): {CHECK}",
        f"case c: spacing (3, 1, 0.15) mm is 1/6.67 of the dataset's median (3, 1, 1) mm along axis 2 {THRESHOLD}; "
        "likely cause: a wrong spacing in its header (or a scan unlike the others); it is resampled to the median "
        f"spacing (1/6.67 of its voxels): {CHECK}",
    ]


def test_slice_thicknesses_within_5x_and_datasets_of_two_cases_pass() -> None:
    """A dataset may mix slice thicknesses (ACDC: 5 to 10 mm); of two cases 10x apart neither is the odd one."""
    spacings = [(5.0, 1.5, 1.5), (10.0, 1.3, 1.3), (6.5, 0.7, 0.7), (24.0, 1.5, 1.5)]
    assert spacing_outlier_warnings(["a", "b", "c", "d"], spacings, (8.25, 1.4, 1.4)) == []
    assert spacing_outlier_warnings(["a", "b"], [(1.0, 1.0, 1.0), (10.0, 10.0, 10.0)], (5.5, 5.5, 5.5)) == []


def test_a_case_refused_for_its_spacing_gets_no_warning_too(small_dataset: Path) -> None:
    """Spacing 1e38 mm was refused and then also warned about, as '99,999,996,802,856,924,...x the median'."""
    odd = sorted(path.name for path in (small_dataset / "labelsTr").iterdir())[0].removesuffix(".nii.gz")
    for path in [small_dataset / "imagesTr" / f"{odd}_0000.nii.gz", small_dataset / "labelsTr" / f"{odd}.nii.gz"]:
        image = sitk.ReadImage(str(path))
        image.SetSpacing((1.0, 1.0, 1e38))
        sitk.WriteImage(image, str(path))
    verified = runner.invoke(app, ["verify", "999", "-np", "1"])
    assert verified.exit_code == 2 and "is beyond 100000 mm" in verified.output
    assert "WARNING" not in verified.output, verified.output
    line = spacing_outlier_warnings(["a", "b", "c"], [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1e7)], (1.0, 1.0, 1.0))
    assert line[0].startswith("case c: spacing (1, 1, 1e+07) mm is 1e+07x the dataset's median (1, 1, 1) mm")


def test_many_odd_cases_are_counted_after_the_first_lines() -> None:
    ids = [f"case{i:02d}" for i in range(30)]
    spacings = [(10.0, 10.0, 10.0) if i < SHOWN_CASES + 3 else (1.0, 1.0, 1.0) for i in range(30)]
    lines = spacing_outlier_warnings(ids, spacings, (1.0, 1.0, 1.0))
    assert len(lines) == SHOWN_CASES + 1 and lines[0].startswith("case case00: spacing (10, 10, 10) mm is 10x")
    assert lines[-1] == ("3 more case(s) have a spacing 5x or more off the median (1, 1, 1) mm along some axis; check "
                         "their headers the same way")


@pytest.mark.parametrize("dataset", ["Dataset004_Hippocampus", "Dataset027_ACDC", "Dataset905_BraTS2015Mini"])
def test_the_shared_datasets_give_no_warning(dataset: str) -> None:
    """ACDC mixes slice thicknesses of 5 to 10 mm: a warning there would be noise."""
    folder = SHARED_DATA / dataset
    reader = sitk.ImageFileReader()
    spacings = []
    for case in training_cases(folder, load_description(folder)):
        reader.SetFileName(str(case.images[0]))
        reader.ReadImageInformation()
        spacings.append(tuple(reversed(reader.GetSpacing())))
    median = [sorted(values)[len(values) // 2] for values in zip(*spacings)]
    assert len(spacings) > 3 and spacing_outlier_warnings([str(i) for i in range(len(spacings))], spacings, median) == []
