"""Where raw datasets, preprocessed data and results live, and how a dataset and a model folder are named.

Roots come from ``AUTOSEG_RAW`` / ``AUTOSEG_PREPROCESSED`` / ``AUTOSEG_RESULTS``, then nnU-Net's
``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` (so nnU-Net users switch with nothing to
change), then folders under ``./autoseg_data``. No stage needs an environment variable.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from autoseg.errors import DatasetError

DEFAULT_BASE = "autoseg_data"
_ROOTS = {
    "raw": ("AUTOSEG_RAW", "nnUNet_raw"),
    "preprocessed": ("AUTOSEG_PREPROCESSED", "nnUNet_preprocessed"),
    "results": ("AUTOSEG_RESULTS", "nnUNet_results"),
}
_announced: set[str] = set()
DATASET_NAME = re.compile(r"^Dataset(\d{3})_(.+)$")
MODEL_FOLDER_NAME = "<network>__<plans>__<configuration>"


def expand_home(text: str, where: str) -> Path:
    """``text`` as a path with a leading ``~`` or ``~user`` expanded; ``where`` names its source for the error.

    ``Path.expanduser`` raises RuntimeError for an unknown user (``~nosuchuser/raw``), which reached the
    user as an 'internal error ... this is a bug in autoseg'."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        user = text[1:].split("/", 1)[0].split(os.sep, 1)[0]
        whose = f"user {user!r}" if user else "this user (HOME is not set)"
        raise DatasetError(f"{where} {text!r}: the home folder of {whose} is unknown; give the path without '~'") from None


def undecodable_path_problem(path: Path) -> str | None:
    """The problem of a path whose bytes are not UTF-8 (``caf\\xe9_0000.nii.gz`` from a Latin-1 system), else None.

    SimpleITK cannot take such a name: given one it aborts the whole process (``terminate called ...
    std::logic_error``, exit 134) with no word of which file; blosc2 raises UnicodeEncodeError. The path is shown
    with its odd bytes escaped (printing them raw would fail too), and the fix names the folder to rename when the
    odd bytes are in a folder's name, not the file's."""
    if _is_utf8(path):
        return None
    first_odd = next(p for p in reversed([path, *path.parents]) if not _is_utf8(p))
    what = "it" if first_odd == path else f"the folder {printable_path(first_odd)}"
    return f"{printable_path(path)}: name is not valid UTF-8 (bytes shown as \\x..); rename {what} with UTF-8 (or ASCII) characters"


def _is_utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str | Path) -> str:
    """``path`` (or a case id taken from a file name) printable as UTF-8: its undecodable bytes written as
    ``\\xff``, as the path is shown in the same message."""
    return printable_text(os.fspath(path))


def shown_path(path: str | Path) -> str:
    """``path`` for a message: printable (``printable_path``) and in quotes when a part of it begins or ends with
    white space, which unquoted cannot be seen (``AUTOSEG_RAW="raw "`` was shown as ``raw root raw  (which does
    not exist)``)."""
    text = printable_path(path)
    return f"'{text}'" if any(part != part.strip() for part in Path(text).parts) else text


_SURROGATE = re.compile("[\ud800-\udfff]")


def printable_text(text: str) -> str:
    """``text`` (a message naming paths, or one) printable as UTF-8: an undecodable byte of a file name
    (surrogate escape ``\\udcff``) written as ``\\xff``, any other lone surrogate (``"\\ud800"`` from a JSON
    escape) as ``\\ud800``. ``os.fsencode`` raises UnicodeEncodeError on the latter, and printing either to a
    strict UTF-8 output fails."""
    return _SURROGATE.sub(_escaped_surrogate, text)


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate (an undecodable file name byte, or half of a UTF-16 pair), which no
    UTF-8 output or file takes."""
    return _SURROGATE.search(text) is not None


def _escaped_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _root(kind: str) -> Path:
    """The root folder of ``kind``; one named with bytes that are not UTF-8 is refused here, once: every file
    below it was refused alone (verify asked to rename each image), or, for the preprocessed root, every case
    failed with blosc2's internal UnicodeEncodeError after fingerprint and plan had written there."""
    var = next((v for v in _ROOTS[kind] if os.environ.get(v)), None)
    path = expand_home(os.environ[var], var) if var else Path.cwd() / DEFAULT_BASE / kind
    if (problem := undecodable_path_problem(path)) is not None:  # the current folder's too, when no variable is set
        raise DatasetError(f"{var or _ROOTS[kind][0]}: {problem}, or set {var or _ROOTS[kind][0]} to another folder")
    if var is None and kind not in _announced:
        _announced.add(kind)
        print(f"autoseg: {_unset_root_note(kind)}; using {shown_path(path)}", file=sys.stderr)
    return path


def _unset_root_note(kind: str) -> str:
    """Why no variable gives ``kind``'s root: ``AUTOSEG_RAW=""`` was reported as 'not set', which sent users
    looking for a missing export instead of an empty value."""
    empty = next((v for v in _ROOTS[kind] if os.environ.get(v) == ""), None)
    return f"{empty} is empty" if empty else f"{_ROOTS[kind][0]} is not set"


def raw_root() -> Path:
    return _root("raw")


def preprocessed_root() -> Path:
    return _root("preprocessed")


def results_root() -> Path:
    return _root("results")


@dataclass(frozen=True)
class DatasetLocation:
    """A resolved dataset: its name (``Dataset004_Hippocampus``) and raw folder."""

    name: str
    raw_dir: Path

    @property
    def preprocessed_dir(self) -> Path:
        return preprocessed_root() / self.name

    @property
    def results_dir(self) -> Path:
        return results_root() / self.name


# What the Python API takes for a dataset: a name, an id, a folder path or a resolved location.
DatasetSpec = Union[DatasetLocation, str, int, os.PathLike[str]]


def resolve_dataset(spec: DatasetSpec) -> DatasetLocation:
    """Resolve ``Dataset004``, ``4``, ``Dataset004_Hippocampus`` or a folder path to a dataset.

    A folder path (anything that exists and holds ``dataset.json``) is used as is; its folder name is
    the dataset name. Names are looked up in the raw root. A ``DatasetLocation`` is returned as it is, so
    every Python entry point takes a spec or a resolved location alike.
    """
    if isinstance(spec, DatasetLocation):
        return spec
    location = _find_dataset(spec)
    if (problem := undecodable_path_problem(location.raw_dir)) is not None:
        raise DatasetError(problem)  # named once, not as a problem of each file in it
    return location


def _find_dataset(spec: str | int | os.PathLike[str]) -> DatasetLocation:
    text = str(spec)
    candidate = expand_home(text, "dataset")
    if candidate.is_dir() and (candidate / "dataset.json").is_file():
        return DatasetLocation(candidate.resolve().name, candidate.resolve())
    if candidate.is_dir() and (os.sep in text or parse_dataset_id(text) is None):
        raise DatasetError(_no_description_problem(candidate))
    dataset_id = parse_dataset_id(text)
    root = raw_root()
    if dataset_id is None:
        raise DatasetError(
            f"'{text}' is neither a dataset folder nor a dataset name; use Dataset004, 4, "
            "Dataset004_Hippocampus or a path to the folder holding dataset.json"
        )
    matches = dataset_folders(root, text)
    if not matches and (problem := _short_id_problem(root, text)) is not None:
        raise DatasetError(problem)
    if not matches:
        raise DatasetError(
            f"dataset '{text}' not found in the raw root {shown_path(root)}{_missing_root_note(root)}{_same_id_note(root, text)}; "
            "set AUTOSEG_RAW (or "
            "nnUNet_raw) to the folder holding DatasetXXX_Name folders, or pass the dataset folder's path"
        )
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise DatasetError(f"dataset id {dataset_id:03d} is ambiguous in {shown_path(root)}: {names}; give the full name")
    return DatasetLocation(matches[0].name, matches[0])


def _no_description_problem(folder: Path) -> str:
    """Why ``folder`` is no dataset folder. ``verify Dataset004_X/imagesTr`` (or ``.`` from inside imagesTr) was
    told only that the folder has no dataset.json (or that '.' is no dataset name) when its parent is the dataset."""
    parent = Path(os.path.abspath(folder)).parent
    if (parent / "dataset.json").is_file():
        return (f"{shown_path(folder)}: folder has no dataset.json, but its parent {shown_path(parent)} has one; "
                "give that dataset folder (the one holding imagesTr/, labelsTr/ and dataset.json)")
    return f"{shown_path(folder)}: folder has no dataset.json; is it the dataset folder (with imagesTr/, labelsTr/)?"


def _same_id_note(root: Path, name: str) -> str:
    """The folders of ``root`` with the id of a full dataset name found under none (a renamed dataset or a typo:
    ``Dataset004_Hipocampus`` was told only that it is not there)."""
    others = dataset_folders(root, f"Dataset{parse_dataset_id(name):03d}") if DATASET_NAME.match(name) else []
    return f" (it holds {', '.join(p.name for p in others)} with that id)" if others else ""


def _short_id_problem(root: Path, name: str) -> str | None:
    """Why folder ``name`` of ``root`` is no dataset name when its id has fewer than 3 digits, else None:
    ``Dataset06_DRIVE`` was said not to be in the raw root that holds it."""
    short_id = re.match(r"^Dataset(\d{1,2})_(.+)$", name)
    if short_id is None or not (root / name).is_dir():
        return None
    return (f"{shown_path(root / name)}: a dataset folder's name has a 3-digit id (DatasetXXX_Name); rename it "
            f"Dataset{int(short_id[1]):03d}_{short_id[2]}")


def _missing_root_note(root: Path) -> str:
    """Why a root holds no dataset when it is no folder: ``AUTOSEG_RAW`` naming a file, or a folder that does not
    exist (a typo), was told only that the dataset is not in it; so was one naming a dataset folder itself."""
    if (root / "dataset.json").is_file():
        return f" (itself a dataset folder, holding dataset.json: the raw root is its parent, {shown_path(root.parent)})"
    if root.is_dir():
        return ""
    if root.exists():
        return " (a file, not a folder)"
    return f" (which does not exist{trimmed_path_note(root, 'the variable')})"


def trimmed_path_note(path: Path, source: str) -> str:
    """``; raw does: remove the white space from SOURCE`` when ``path`` does not exist but does without the white
    space at its parts' edges (a space pasted at the end of AUTOSEG_RAW or of ``-i``), else ``""``. A path of white
    space alone trims to the current folder, which exists: ``-i " "`` was told '. does: remove the white space'."""
    trimmed = Path(*(part.strip() for part in Path(str(path).strip()).parts))
    if trimmed == path or trimmed == Path(".") or not trimmed.exists():
        return ""
    return f"; {shown_path(trimmed)} does: remove the white space from {source}"


def dataset_folders(root: Path, text: str) -> list[Path]:
    """The folders of ``root`` (raw, preprocessed or results) named for dataset ``text`` (``4``,
    ``Dataset004`` or ``Dataset004_Name``): several when an id is ambiguous, none for another text."""
    dataset_id = parse_dataset_id(text)
    if dataset_id is None or not root.is_dir():
        return []
    found = sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    return [p for p in found if p.name == text] if DATASET_NAME.match(text) else found


def parse_dataset_id(text: str) -> int | None:
    """The id of ``4``, ``Dataset004`` or ``Dataset004_Name``; ``None`` for anything else."""
    if text.isdecimal():  # not isdigit: a superscript "¹" passes it and int() refuses it
        return int(text)
    match = re.match(r"^Dataset(\d{1,3})(?:_.+)?$", text)
    return int(match.group(1)) if match else None


def model_folder_parts(name: str) -> tuple[str, str, str] | None:
    """``<network>__<plans>__<configuration>`` -> its three parts; ``None`` for another name."""
    parts = name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def check_model_folder_name(name: str, where: str, error: Callable[[str], Exception], fix: str) -> tuple[str, str, str]:
    """The parts of a model folder's name, else ``error`` at ``where`` with ``fix``. predict reads the
    configuration (and a cascade's low-resolution sibling) from the name, so loading, export-model and
    import-model share this one rule."""
    parts = model_folder_parts(name)
    if parts is None:
        raise error(f"{where}: model folders are named {MODEL_FOLDER_NAME}; {fix}")
    return parts
