"""Case discovery in nnU-Net v2's raw layout: ``imagesTr/<case>_<XXXX><ending>``, ``labelsTr/<case><ending>``."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from autoseg.dataset.description import DatasetDescription
from autoseg.dataset.imageio import (
    NATURAL_2D_ENDINGS,
    SUPPORTED_ENDINGS,
    TIFF_ENDINGS,
    detached_data_files,
    image_ending,
    is_gzip,
    spelled_ending,
)
from autoseg.errors import DatasetError
from autoseg.paths import undecodable_path_problem

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
ALIKE_ON_SCREEN = "alike on screen, other names on disk"  # why names in two Unicode forms are told apart


@dataclass
class Case:
    """One case: its channel image files (in channel order) and its label file, if any."""

    case_id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class CaseScan:
    """Result of scanning a dataset folder: the cases and every naming problem found."""

    cases: list[Case] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    num_declared_cases: int = 0  # case ids found (with or without problems), for numTraining
    # names (without ending) of images reported for their file name alone (another supported ending, bytes that are
    # not UTF-8): each is reported once as such, and counted as a case
    reported_stems: set[str] = field(default_factory=set)


def _files_by_stem(folder: Path, ending: str, problems: list[str], reported_stems: set[str]) -> dict[str, Path]:
    """``{name without ending: path}`` of a folder's visible files; others are reported in ``problems``, and
    the names of images with another supported ending or a name that is not UTF-8 also added to ``reported_stems``."""
    files = {}
    paths = sorted(folder.iterdir())
    # the voxels of a detached header (.mhd, .nhdr) lie in the data file it names (.raw, .zraw), read with it
    data_files = {name for path in paths if path.name.endswith(ending) for name in detached_data_files(path)}
    for path in paths:
        if path.name.startswith(".") or path.name in data_files:
            continue
        if (problem := undecodable_path_problem(path)) is not None:
            problems.append(problem)
            if path.name.endswith(ending):  # a case, once renamed: numTraining's count was one short of it
                reported_stems.add(path.name[: -len(ending)])
            continue
        if ending.lower() in TIFF_ENDINGS and path.name.endswith(".json"):
            continue  # a 3D TIFF's spacing sidecar (nnU-Net's Tiff3DIO), read with its image
        if not path.name.endswith(ending):
            if found := spelled_ending(path):
                reported_stems.add(path.name[: -len(found)])
                problems.append(_other_ending_file_problem(path, found, ending))
            else:
                problems.append(f"{path}: file ending is not {ending!r} (dataset.json file_ending); rename or remove it")
            continue
        files[path.name[: -len(ending)]] = path
    return files


def _other_ending_file_problem(path: Path, found: str, ending: str) -> str:
    """The problem of an image saved with another supported ending than ``file_ending``, with its fix: an
    uncompressed ``.nii`` in a ``.nii.gz`` dataset was reported as a wrong ending, and its case as a missing
    label (or a label without images), never saying that the file is there, only not compressed. A NIfTI's
    content is looked at: one already compressed as the dataset's ending says needs renaming only."""
    stem = path.name[: -len(found)]
    if (path.parent / f"{stem}{ending}").exists():  # the advice to compress or save it would overwrite that one
        return f"{path}: a second copy of {stem}{ending} beside it, saved as {found!r}; remove one of the two"
    declared = f"dataset.json's file_ending is {ending!r}"
    generic = (f"{path}: ends in {found!r} but {declared} (all images and labels share one); save it as "
               f"{stem}{ending}, or set file_ending to {found!r} with every file saved so")
    if {found.lower(), ending.lower()} != {".nii", ".nii.gz"}:
        return generic
    try:
        compressed = is_gzip(path)
    except OSError:  # a folder or an unreadable file: its name is all there is to go by
        return generic
    if compressed == (ending.lower() == ".nii.gz"):
        kind = "a gzip-compressed" if compressed else "an uncompressed"
        return f"{path}: is {kind} NIfTI named {found!r} but {declared}; rename it to {stem}{ending}"
    if compressed:
        return (f"{path}: is a compressed NIfTI ({found!r}) but {declared}; decompress it (gunzip {path.name} makes "
                f"{stem}{ending}), or set file_ending to {found!r} with every image and label compressed")
    return (f"{path}: is an uncompressed NIfTI ({found!r}) but {declared}; compress it (gzip {path.name} makes "
            f"{stem}{ending}), or set file_ending to {found!r} with every image and label uncompressed")


LOSSY_ENDINGS = (".jpg", ".jpeg")


def file_ending_problem(dataset_dir: Path, desc: DatasetDescription) -> str | None:
    """The one problem of a ``file_ending`` no reader supports, or that no image has (None otherwise)."""
    ending = desc.file_ending.lower()
    if image_ending(f"x{ending}") == ending:
        return _other_ending_problem(dataset_dir, desc)
    why = (
        "JPEG compression is lossy and alters pixel values (label maps would change; nnU-Net refuses it too); "
        "save images and labels as .png" if ending in LOSSY_ENDINGS else f"use one of {', '.join(SUPPORTED_ENDINGS)}"
    )
    return f"{dataset_dir / 'dataset.json'}: file_ending {desc.file_ending!r} is not a supported image type; {why}"


def _other_ending_problem(dataset_dir: Path, desc: DatasetDescription) -> str | None:
    """A ``file_ending`` that no file in imagesTr has, all of them sharing another supported one: the fix is
    file_ending (was: every file listed to be renamed, and numTraining to be set to 0 cases)."""
    images = dataset_dir / "imagesTr"
    if desc.cases is not None or not images.is_dir():
        return None
    files = [p for p in images.iterdir() if not p.name.startswith(".") and p.is_file()]
    if not files or any(p.name.endswith(desc.file_ending) for p in files):
        return None
    spelled = {spelled_ending(p) for p in files} - {""}
    if len(spelled) != 1:
        return None
    found = spelled.pop()
    return (f"{dataset_dir / 'dataset.json'}: file_ending is {desc.file_ending!r} but every image in imagesTr ends in "
            f"{found!r}; set file_ending to {found!r}")


def scan_images(folder: Path, desc: DatasetDescription, unsuffixed: frozenset[str] = frozenset()) -> CaseScan:
    """Group ``folder``'s files into cases by the ``_XXXX`` channel suffix; report every naming problem.

    ``unsuffixed``: names (without ending) of images known to lack the suffix although they end in four digits
    (``unsuffixed_images``), reported as such instead of as channels of another case."""
    scan = CaseScan()
    if not folder.is_dir():
        scan.problems.append(f"{folder}: folder not found; put the images in {folder.name}/<case>_0000{desc.file_ending}")
        return scan
    channels: dict[str, dict[int, Path]] = {}
    for stem, path in _files_by_stem(folder, desc.file_ending, scan.problems, scan.reported_stems).items():
        match = None if stem in unsuffixed else CHANNEL_SUFFIX.match(stem)
        if match is None:
            scan.problems.append(f"{path}: {_unsuffixed_name_problem(folder, stem, desc.file_ending)}")
            continue
        channel = int(match["channel"])
        channels.setdefault(match["case"], {})[channel] = path
    _report_mixed_forms(channels, scan)
    for case_id, files in sorted(channels.items()):
        missing, extra = channel_file_gaps(files, desc.num_channels, desc.file_ending)
        for c in missing:
            if f"{case_id}_{c:04d}" in scan.reported_stems:
                continue  # reported for its name (another ending, not UTF-8)
            scan.problems.append(f"{folder / f'{case_id}_{c:04d}{desc.file_ending}'}: missing channel {c} ({desc.channel_names[str(c)]}) of case {case_id}")
        for c in extra:
            scan.problems.append(f"{files[c]}: channel {c} is not declared in dataset.json channel_names; remove it or declare the channel")
        if not missing:
            scan.cases.append(Case(case_id, [files[c] for c in sorted(files) if c < desc.num_channels]))
    return scan


def _report_mixed_forms(channels: dict[str, dict[int, Path]], scan: CaseScan) -> None:
    """Report, and take out of ``channels``, each case whose channel files spell its id in several Unicode forms
    ('café_0000' composed, 'café_0001' with a combining accent): read as one case per spelling, each was reported as
    missing the other's channels, naming files that were there. Their names join ``scan.reported_stems`` (a case,
    once renamed: counted for numTraining, its label not reported as one without images)."""
    spellings: dict[str, list[str]] = {}
    for case_id in channels:
        spellings.setdefault(_composed(case_id), []).append(case_id)
    for case_ids in (sorted(ids) for ids in spellings.values() if len(ids) > 1):
        files = {f"{case_id}_{c:04d}": path for case_id in case_ids for c, path in channels.pop(case_id).items()}
        scan.reported_stems.update(files)
        twice = len({stem[-4:] for stem in files}) < len(files)  # one channel in two spellings: duplicates
        scan.problems.append(_mixed_forms_problem(sorted(files.values()), twice))


def _lacks_case_id(stem: str) -> bool:
    """Whether a file name (without ending) is a channel suffix alone, ``_0000``: a case id left out."""
    return re.fullmatch(r"_\d{4}", stem) is not None


def _unsuffixed_name_problem(folder: Path, stem: str, ending: str) -> str:
    """What is wrong with an image name ``stem`` in ``folder`` that holds no case id before a channel suffix, and
    its fix: ``_0000.nii.gz`` (the case id left out) was told to become ``_0000_0000.nii.gz``, and a label copied
    into imagesTr beside its case's image was told to take that image's name (the rename overwrites it)."""
    if _lacks_case_id(stem):
        return f"the case id before {stem} is empty; name it <case>{stem}{ending} (for example case1{stem}{ending})"
    if (folder / f"{stem}_0000{ending}").exists():
        return (f"name lacks the 4-digit channel suffix, and {stem}_0000{ending} is already there (a label copied into "
                f"{folder.name}?); move it to labelsTr or remove it")
    return f"name lacks the 4-digit channel suffix; rename to {stem}_0000{ending}"


def unsuffixed_images(images: Path, label_stems: set[str], ending: str) -> frozenset[str]:
    """Names (without ending) of images in ``images`` named exactly as a label while the case their last four digits
    would make has no label: ``imagesTr/case_0001.nii.gz`` beside ``labelsTr/case_0001.nii.gz`` is case_0001's image
    without its ``_0000``. Read as channel 1 of a case 'case', a dataset of such names was refused with advice to
    remove every image as an undeclared channel and to rename every label."""
    return frozenset(stem for stem in label_stems if (match := CHANNEL_SUFFIX.match(stem)) is not None
                     and match["case"] not in label_stems and (images / f"{stem}{ending}").is_file())


def channel_file_gaps(files: Iterable[int], num_channels: int, ending: str) -> tuple[list[int], list[int]]:
    """(missing, extra) channel file indices of a case with channel files ``files``.

    A 2D natural image file may hold several channels (one RGB PNG holds R, G, B, as nnU-Net reads
    it), so such a case needs files _0000.._000k without gaps and at most one per channel; the channel
    count is checked when the files are read. Any other file holds one channel: one file per channel.
    """
    present = set(files)
    if ending.lower() in NATURAL_2D_ENDINGS:
        needed = range(min(num_channels, max(present, default=0) + 1))
    else:
        needed = range(num_channels)
    return [c for c in needed if c not in present], sorted(c for c in present if c >= num_channels)


def scan_training_cases(dataset_dir: Path, desc: DatasetDescription) -> CaseScan:
    """All training cases with labels; naming problems (unmatched images/labels) are collected."""
    if (problem := file_ending_problem(dataset_dir, desc)) is not None:
        return CaseScan(problems=[problem])
    if desc.cases is not None:
        return _explicit_cases(dataset_dir, desc)
    labels_dir = dataset_dir / "labelsTr"
    label_problems: list[str] = []
    label_files: dict[str, Path] = {}
    reported_labels: set[str] = set()
    if not labels_dir.is_dir():
        label_problems.append(f"{labels_dir}: folder not found; put one label file per case in labelsTr/<case>{desc.file_ending}")
    else:
        label_files = _files_by_stem(labels_dir, desc.file_ending, label_problems, reported_labels)
    unsuffixed = unsuffixed_images(dataset_dir / "imagesTr", set(label_files), desc.file_ending)
    scan = scan_images(dataset_dir / "imagesTr", desc, unsuffixed)
    scan.problems.extend(label_problems)
    image_ids = {c.case_id for c in scan.cases}
    reported_images = {m["case"] for stem in scan.reported_stems if (m := CHANNEL_SUFFIX.match(stem))}
    with_images = image_ids | reported_images
    twins = _unicode_twins(with_images - set(label_files), set(label_files) - with_images)
    named = image_ids | set(label_files) | reported_images | reported_labels
    scan.num_declared_cases = len({_composed(case_id) for case_id in named})  # a case in two forms once
    for case in scan.cases:
        case.label = label_files.get(case.case_id)
        if case.label is None and labels_dir.is_dir() and case.case_id not in reported_labels | set(twins.values()):
            scan.problems.append(f"{labels_dir / (case.case_id + desc.file_ending)}: missing label of case {case.case_id}")
    for stem, path in label_files.items():
        if stem in unsuffixed:  # its image, named as the label, is reported as lacking the channel suffix
            continue
        if stem in twins:
            scan.problems.append(_unicode_twin_problem(path, twins[stem]))
            continue
        if stem not in with_images and not (dataset_dir / "imagesTr" / f"{stem}_0000{desc.file_ending}").exists():
            if _lacks_case_id(stem):  # was told only that imagesTr/_0000_0000 is missing
                scan.problems.append(f"{path}: label without images; its case id is empty: name it <case>"
                                     f"{desc.file_ending}, its images <case>_0000{desc.file_ending}")
                continue
            hint = " (labels have no channel suffix; rename it without _XXXX)" if CHANNEL_SUFFIX.match(stem) else ""
            scan.problems.append(f"{path}: label without images (no imagesTr/{stem}_0000{desc.file_ending}){hint}")
    scan.cases = [c for c in scan.cases if c.label is not None]
    return scan


def _unicode_twins(image_ids: set[str], label_stems: set[str]) -> dict[str, str]:
    """{label name: case id of the images} of labels named as a case's images only once both are in one Unicode
    form (NFC): 'café' typed on one system (é one character) and copied from another (e + a combining accent) look
    alike but are other names, and were reported as a missing label and a label without images, both naming the
    file that was plainly there (and counted twice for numTraining)."""
    by_form = {_composed(case_id): case_id for case_id in image_ids}
    return {stem: by_form[form] for stem in label_stems if (form := _composed(stem)) in by_form}


def _composed(name: str) -> str:
    """``name`` in the composed Unicode form (NFC) by which two spellings of one name are found alike."""
    return unicodedata.normalize("NFC", name)


def _unicode_twin_problem(label: Path, case_id: str) -> str:
    """The one line for a label named as case ``case_id``'s images in another Unicode form (``_unicode_twins``)."""
    return (f"{label}: its name spells the case id {case_id!r} with other Unicode characters than the images of "
            f"case {case_id} do ({_unicode_form(label.name)} vs {_unicode_form(case_id)}: {ALIKE_ON_SCREEN}), so "
            "they do not match; rename the label or the images so both use the same (composed, NFC) characters")


def _mixed_forms_problem(paths: list[Path], twice: bool) -> str:
    """The one line for a case whose channel files spell its id in several Unicode forms (``_report_mixed_forms``);
    ``twice``: some channel has a file in each form (copies: one is to go, not renamed over the other)."""
    spelled = ", ".join(f"{path.name} {_unicode_form(path.name)}" for path in paths)
    read_as, fix = (("with a channel given twice", "keep one file per channel, named in the composed (NFC) form")
                    if twice else ("each missing channels", "rename them so all use the same (composed, NFC) characters"))
    return (f"{paths[0]}: the channel files of one case spell its case id in different Unicode forms ({spelled}: "
            f"{ALIKE_ON_SCREEN}), so they were read as separate cases {read_as}; {fix}")


def _unicode_form(name: str) -> str:
    """How ``name`` writes its accented letters: composed (é one character, NFC) or decomposed (e and an accent)."""
    return "composed (NFC)" if unicodedata.is_normalized("NFC", name) else "decomposed (NFD)"


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case's files, else None. Every stage names files after the case id
    (``<id>.b2nd``, ``<id>.nii.gz``): an id from dataset.json's "dataset" list such as ``../../x`` wrote preprocessed
    data outside the preprocessed folder, and ``sub/a`` made subfolders. Ids found in imagesTr are file names."""
    if not case_id or case_id in (".", "..") or case_id.startswith(".") or any(c in case_id for c in "/\\\0"):
        return ("is not a plain file name (each stage names the case's files after it); use letters, digits, '_', '-' "
                "and '.', not starting with '.'")
    return None


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one case entry of dataset.json's "dataset", else None: the line said only that it
    needs 'images' (list) and 'label', not which was missing or of what type."""
    if not isinstance(entry, dict):
        return f"it is a {type(entry).__name__}, not an object"
    missing = [key for key in ("images", "label") if key not in entry]
    if missing:
        return f"it has no {' and no '.join(repr(key) for key in missing)}"
    images = entry["images"]
    if not isinstance(images, list):  # a path string was iterated letter by letter ('lists 20 images')
        return f"'images' is a {type(images).__name__}, not a list of paths"
    if not all(isinstance(p, str) and p for p in [*images, entry["label"]]):
        return "each path must be a non-empty string"
    return None


def _explicit_cases(dataset_dir: Path, desc: DatasetDescription) -> CaseScan:
    assert desc.cases is not None
    scan = CaseScan(num_declared_cases=len(desc.cases))
    for case_id, entry in sorted(desc.cases.items()):
        if (problem := case_id_problem(case_id)) is not None:
            scan.problems.append(f"{dataset_dir / 'dataset.json'}: case id {case_id!r} in \"dataset\" {problem}")
            continue
        if (problem := _entry_problem(entry)) is not None:
            example = (f'{{"images": ["imagesTr/{case_id}_0000{desc.file_ending}"], '
                       f'"label": "labelsTr/{case_id}{desc.file_ending}"}}')
            scan.problems.append(f"{dataset_dir / 'dataset.json'}: entry 'dataset.{case_id}' needs 'images' (list) and "
                                 f"'label': {problem}; write e.g. {example}")
            continue
        images, label = [dataset_dir / p for p in entry["images"]], dataset_dir / entry["label"]
        if any(channel_file_gaps(range(len(images)), desc.num_channels, desc.file_ending)):
            scan.problems.append(f"{dataset_dir / 'dataset.json'}: case {case_id} lists {len(images)} images, channel_names has {desc.num_channels}")
            continue
        lost = [p for p in [*images, label] if not p.exists()]
        for p in lost:
            scan.problems.append(f"{p}: file listed for case {case_id} in dataset.json does not exist")
        if not lost:
            scan.cases.append(Case(case_id, images, label))
    return scan


def training_cases(dataset_dir: Path, desc: DatasetDescription) -> list[Case]:
    """Training cases for later stages; raises with all naming problems (run `autoseg verify`)."""
    scan = scan_training_cases(dataset_dir, desc)
    if scan.problems:
        raise DatasetError(
            f"{dataset_dir}: {len(scan.problems)} naming problem(s), first: {scan.problems[0]}; run "
            "`autoseg verify` for the full list"
        )
    if not scan.cases:
        raise DatasetError(f"{dataset_dir}: no training cases found in imagesTr/labelsTr")
    return scan.cases
