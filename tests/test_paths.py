"""Dataset naming forms and root resolution."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Optional

import pytest

from autoseg import paths
from autoseg.errors import DatasetError


@pytest.mark.parametrize("spec", ["Dataset999", "999", "Dataset999_Test", "Dataset0999"])
def test_dataset_naming_forms(spec: str, small_dataset: Path) -> None:
    if spec == "Dataset0999":
        with pytest.raises(DatasetError, match="neither a dataset folder nor a dataset name"):
            paths.resolve_dataset(spec)
        return
    location = paths.resolve_dataset(spec)
    assert location.name == "Dataset999_Test" and location.raw_dir == small_dataset


def test_folder_path_is_used_as_is(small_dataset: Path, tmp_path: Path) -> None:
    location = paths.resolve_dataset(str(small_dataset))
    assert location.raw_dir == small_dataset.resolve() and location.name == "Dataset999_Test"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="folder has no dataset.json"):
        paths.resolve_dataset(str(tmp_path / "empty"))


@pytest.mark.parametrize("sub", ["imagesTr", "labelsTr"])
def test_a_subfolder_of_a_dataset_names_its_parent(sub: str, small_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`autoseg verify Dataset004_X/imagesTr` (or `.` from inside it) was told only that the folder has no
    dataset.json, or that '.' is no dataset name; the error now names the parent holding dataset.json."""
    fix = f"folder has no dataset.json, but its parent {small_dataset} has one; give that dataset folder"
    # anchored: unanchored, the last two also passed on a message naming the folder by its absolute path
    with pytest.raises(DatasetError, match="^" + re.escape(f"{small_dataset / sub}: {fix}")):
        paths.resolve_dataset(str(small_dataset / sub))
    monkeypatch.chdir(small_dataset / sub)
    with pytest.raises(DatasetError, match="^" + re.escape(f".: {fix}")):
        paths.resolve_dataset(".")
    monkeypatch.chdir(small_dataset)
    with pytest.raises(DatasetError, match="^" + re.escape(f"{sub}: {fix}")):
        paths.resolve_dataset(sub)


@pytest.mark.parametrize(("make", "note"), [(Path.touch, "(a file, not a folder)"), (None, "(which does not exist)")])
def test_a_raw_root_that_is_no_folder_is_named_as_such(make: Optional[Callable[[Path], None]], note: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTOSEG_RAW naming a file (or a mistyped folder) was told only that the dataset is not in it."""
    root = tmp_path / "raw"
    if make is not None:
        make(root)
    monkeypatch.setenv("AUTOSEG_RAW", str(root))
    with pytest.raises(DatasetError, match=re.escape(f"dataset '4' not found in the raw root {root} {note}; set AUTOSEG_RAW")):
        paths.resolve_dataset("4")


@pytest.mark.parametrize("value", ["{root} ", " {root}"])
def test_white_space_around_the_raw_root_is_shown(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTOSEG_RAW="raw " was shown as 'raw root raw  (which does not exist)': the space could not be seen."""
    root = tmp_path / "raw"
    root.mkdir()
    monkeypatch.setenv("AUTOSEG_RAW", value.format(root=root))
    with pytest.raises(DatasetError, match=re.escape(f"dataset '4' not found in the raw root '{value.format(root=root)}' "
                                                     f"(which does not exist; {root} does: remove the white space")):
        paths.resolve_dataset("4")
    (tmp_path / "raw ").mkdir()
    monkeypatch.setenv("AUTOSEG_RAW", f"{root} ")
    with pytest.raises(DatasetError, match=re.escape(f"not found in the raw root '{root} '; set AUTOSEG_RAW")):
        paths.resolve_dataset("4")
    assert paths.shown_path(root) == str(root) and paths.shown_path(tmp_path / " a" / "b") == f"'{tmp_path}/ a/b'"


def test_a_raw_root_that_is_a_dataset_folder_names_its_parent(small_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTOSEG_RAW set to the dataset folder itself (a common slip) was told only that the dataset is not in it."""
    monkeypatch.setenv("AUTOSEG_RAW", str(small_dataset))
    with pytest.raises(DatasetError, match=re.escape(f"raw root {small_dataset} (itself a dataset folder, holding "
                                                     f"dataset.json: the raw root is its parent, {small_dataset.parent})")):
        paths.resolve_dataset("999")


def test_a_misspelt_dataset_name_names_the_folder_of_its_id(small_dataset: Path, roots: dict[str, Path]) -> None:
    """Dataset999_Tset (a typo or a renamed dataset) was told only that it is not in the raw root."""
    with pytest.raises(DatasetError, match=re.escape(f"not found in the raw root {roots['raw']} (it holds "
                                                     "Dataset999_Test with that id); set AUTOSEG_RAW")):
        paths.resolve_dataset("Dataset999_Tset")


def test_a_dataset_folder_with_a_short_id_is_told_to_take_three_digits(roots: dict[str, Path]) -> None:
    """Dataset06_DRIVE, a folder of the raw root, was said not to be found in it."""
    (roots["raw"] / "Dataset06_DRIVE").mkdir()
    with pytest.raises(DatasetError, match=re.escape(f"{roots['raw'] / 'Dataset06_DRIVE'}: a dataset folder's name has "
                                                     "a 3-digit id (DatasetXXX_Name); rename it Dataset006_DRIVE")):
        paths.resolve_dataset("Dataset06_DRIVE")


def test_unknown_and_ambiguous_names(small_dataset: Path, roots: dict[str, Path]) -> None:
    with pytest.raises(DatasetError, match="dataset 'Dataset123' not found in the raw root"):
        paths.resolve_dataset("Dataset123")
    (roots["raw"] / "Dataset999_Other").mkdir()
    with pytest.raises(DatasetError, match="dataset id 999 is ambiguous"):
        paths.resolve_dataset("999")
    assert paths.resolve_dataset("Dataset999_Test").raw_dir == small_dataset


def test_a_superscript_digit_is_no_dataset_id(small_dataset: Path) -> None:
    """'¹' passes str.isdigit() but not int(): `autoseg verify ¹` ended in an internal ValueError."""
    assert paths.parse_dataset_id("\u00b9") is None and paths.parse_dataset_id("Dataset004") == 4
    with pytest.raises(DatasetError, match="is neither a dataset folder nor a dataset name"):
        paths.resolve_dataset("\u00b9")


def test_root_precedence_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("AUTOSEG_RESULTS", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_announced", set())
    assert paths.results_root() == tmp_path / "autoseg_data" / "results"
    assert paths.results_root() == tmp_path / "autoseg_data" / "results"
    assert capsys.readouterr().err.count("AUTOSEG_RESULTS is not set") == 1  # printed once
    monkeypatch.setattr(paths, "_announced", set())
    monkeypatch.setenv("AUTOSEG_RESULTS", "")  # empty is not unset: say which it is
    assert paths.results_root() == tmp_path / "autoseg_data" / "results"
    assert "AUTOSEG_RESULTS is empty; using" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nn"))
    assert paths.results_root() == tmp_path / "nn"
    monkeypatch.setenv("AUTOSEG_RESULTS", str(tmp_path / "auto"))
    assert paths.results_root() == tmp_path / "auto"


def test_a_tilde_of_an_unknown_user_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``Path.expanduser`` raised RuntimeError ('internal error') for ``~nosuchuser``."""
    monkeypatch.setenv("AUTOSEG_RAW", "~no_such_user_autoseg/raw")
    with pytest.raises(DatasetError, match=r"AUTOSEG_RAW '~no_such_user_autoseg/raw': the home folder of user "
                                           r"'no_such_user_autoseg' is unknown; give the path without '~'"):
        paths.raw_root()
    with pytest.raises(DatasetError, match=r"dataset '~no_such_user_autoseg/x': the home folder"):
        paths.resolve_dataset("~no_such_user_autoseg/x")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AUTOSEG_RAW", "~/raw")
    assert paths.raw_root() == tmp_path / "raw"


def test_a_root_or_dataset_folder_not_named_in_utf8_is_refused_once(
    small_dataset: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A preprocessed root named in Latin-1 (``pre\\xff``) let fingerprint and plan write there, then failed every case
    of preprocess with blosc2's internal UnicodeEncodeError; a dataset folder so named had each of its files refused,
    with the advice to rename the file. Each is refused once now, naming the folder to rename."""
    odd_root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/pre\xff"))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(odd_root))
    with pytest.raises(DatasetError) as refused:
        paths.preprocessed_root()
    assert str(refused.value) == (f"AUTOSEG_PREPROCESSED: {tmp_path}/pre\\xff: name is not valid UTF-8 (bytes shown as "
                                  "\\x..); rename it with UTF-8 (or ASCII) characters, or set AUTOSEG_PREPROCESSED to "
                                  "another folder")
    odd_root.mkdir()  # the current folder gives the roots when no variable is set
    monkeypatch.chdir(odd_root)
    for var in ("AUTOSEG_RESULTS", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DatasetError, match=r"AUTOSEG_RESULTS: .*/pre\\xff/autoseg_data/results: name is not valid UTF-8 "
                                           r".*; rename the folder .*/pre\\xff with UTF-8 \(or ASCII\) characters"):
        paths.results_root()
    odd_dataset = Path(os.fsdecode(os.fsencode(small_dataset) + b"\xe9"))
    small_dataset.rename(odd_dataset)
    with pytest.raises(DatasetError, match=r"Dataset999_Test\\xe9: name is not valid UTF-8 .*; rename it with UTF-8"):
        paths.resolve_dataset("999")
    assert paths.undecodable_path_problem(odd_dataset / "imagesTr" / "a.nii.gz") == (
        f"{small_dataset}\\xe9/imagesTr/a.nii.gz: name is not valid UTF-8 (bytes shown as \\x..); rename the folder "
        f"{small_dataset}\\xe9 with UTF-8 (or ASCII) characters")


@pytest.mark.parametrize("value", [" ", "  \t", "./ "])
def test_a_path_of_white_space_alone_gets_no_trim_note(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict -i " " said "' ': input not found; . does: remove the white space" (" ".strip() is the current folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    assert paths.trimmed_path_note(Path(value), "-i") == ""
    assert paths.trimmed_path_note(Path("raw "), "-i") == "; raw does: remove the white space from -i"
