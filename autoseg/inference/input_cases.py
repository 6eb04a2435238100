"""The cases ``autoseg predict`` finds in its input: a folder of ``<case>_XXXX<ending>`` files and DICOM series
subfolders, one image file (with its channel siblings), or one DICOM series folder; each case's channel files in the
model's order. Split from ``batch`` (which predicts them), where these names are still imported from."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import SimpleITK as sitk

from autoseg.dataset.cases import CHANNEL_SUFFIX, channel_file_gaps
from autoseg.dataset.description import channel_list
from autoseg.dataset.imageio import NATURAL_2D_ENDINGS, SUPPORTED_ENDINGS, damaged_dicom_refusal, image_ending
from autoseg.errors import InferenceError
from autoseg.paths import shown_path, trimmed_path_note

# Images autoseg does not read, met in input folders (photographs, Analyze 7.5, FreeSurfer, arrays): noted when skipped.
UNREAD_IMAGE_ENDINGS = (".jpg", ".jpeg", ".gif", ".webp", ".jp2", ".hdr", ".img", ".mgh", ".mgz", ".vtk", ".npy")


@dataclass
class InputCase:
    """One case to predict: its channel files (or DICOM folders) by channel index."""

    case_id: str
    channels: dict[int, Path] = field(default_factory=dict)

    @property
    def ending(self) -> str:
        return image_ending(next(iter(self.channels.values())))


def _is_dicom_folder(folder: Path) -> bool:
    """A folder without image files or subfolders, in which GDCM finds a series, is read as one DICOM series."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries or any(p.is_dir() or image_ending(p) for p in entries):
        return False
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return False


def _holds_dicom_files(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM file, readable or damaged (``damaged_dicom_refusal`` names those): a subfolder
    of notes beside the case files was predicted as a DICOM series and failed, ITK printing HDF5 diagnostics."""
    files = (p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    return any(_is_dicom_file(p) for p in files) or damaged_dicom_refusal(folder) is not None


def _is_dicom_file(path: Path) -> bool:
    """Whether GDCM reads file ``path`` (DICOM files often have no ending, so it is asked, not the name)."""
    return sitk.ImageFileReader().GetImageIOFromFileName(str(path)) == "GDCMImageIO"


def _refuse_loose_dicom_files(folder: Path) -> None:
    """Refuse DICOM files lying in a folder read as cases (beside image files or series subfolders).

    Files of other types are ignored there, so a series beside a thumbnail ``preview.png`` or beside case
    files was silently left out (or the thumbnail predicted in its place).
    """
    loose = [p.name for p in sorted(folder.iterdir())
             if not p.name.startswith(".") and p.is_file() and not image_ending(p) and _is_dicom_file(p)]
    if loose:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p.is_dir() or image_ending(p)))
        raise InferenceError(
            f"{folder}: holds {len(loose)} DICOM file(s) ({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}) "
            f"beside {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}; a DICOM series is read as a folder "
            "of its own: move its files into a subfolder (one per series), or remove the other files"
        )


def _add(cases: dict[str, InputCase], path: Path, stem: str) -> None:
    """File (or DICOM folder) ``path`` as its case's channel; two inputs for one channel are refused."""
    match = CHANNEL_SUFFIX.match(stem)
    case_id, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
    channels = cases.setdefault(case_id, InputCase(case_id)).channels
    if channel in channels:
        raise InferenceError(
            f"{path.parent}: {channels[channel].name} and {path.name} are both channel {channel:04d} of case "
            f"{case_id} (a name without _XXXX is channel 0000; one case has one file per channel); rename or remove one"
        )
    channels[channel] = path


def _channel_siblings(path: Path, case_id: str) -> list[tuple[Path, str]]:
    """The files and DICOM series subfolders beside ``path`` (``path`` included) that its folder gives case
    ``case_id``, each with its name without the image ending: ``<case_id>_XXXX`` and ``<case_id>`` (channel 0000)
    with any image ending, in any case, or as a subfolder holding DICOM files.

    Names are compared, not globbed: a name holding ``[``, ``*`` or ``?`` (``scan[1]_0000.nii.gz``) found
    nothing, or other cases' files, as a glob pattern, and ``CT_0000.NII.GZ`` was looked for as ``.nii.gz``.
    Only ``path``'s own ending and suffixed names were looked for once: ``-i case_0000.nii.gz`` left
    ``case_0001.nrrd`` out, and ``-i scan.nii.gz`` left ``scan_0001.nii.gz`` out, without a word, where ``-i`` of
    the folder read both; it also left out a DICOM series subfolder ``case_0001``, which the folder reads.
    """
    siblings = []
    for entry in sorted(path.parent.iterdir()):
        folder = entry.is_dir() and not entry.name.startswith(".")  # skipped by the folder mode too
        # Not only regular files: a link to a missing file is a channel there too, refused by name when read.
        ending = "" if entry.is_dir() else image_ending(entry)
        if not (folder or ending):
            continue
        stem = entry.name[: -len(ending)] if ending else entry.name
        match = CHANNEL_SUFFIX.match(stem)
        if (match["case"] if match else stem) == case_id and (ending or _holds_dicom_files(entry)):
            siblings.append((entry, stem))
    return siblings


def discover_cases(input_path: str | Path, quiet: bool = False) -> list[InputCase]:
    """Cases in a folder (``<case>_XXXX<ending>`` files, DICOM series subfolders), one file, or one DICOM folder.

    Names without a ``_XXXX`` channel suffix are single-channel cases. Files of other types (notes,
    JSON) are ignored, images of a format autoseg does not read and subfolders without DICOM files with a
    note; ``quiet`` leaves the notes out, for a discovery the command has noted already (predict --statistics
    discovers the input three times, and said each note three times). Sorted by case id.
    """
    path = Path(input_path)
    if not path.exists():
        raise InferenceError(f"{shown_path(path)}: input not found{trimmed_path_note(path, '-i')}; give a folder of "
                             "images, an image file or a DICOM folder")
    if path.is_dir() and (path / "dataset.json").is_file() and (path / "imagesTr").is_dir():
        # Its imagesTr and labelsTr were taken for two DICOM series folders and failed as such.
        suggestion = path / ("imagesTs" if (path / "imagesTs").is_dir() else "imagesTr")
        raise InferenceError(f"{path}: is a dataset folder (dataset.json, imagesTr); give the folder of the images to "
                             f"predict, e.g. -i {suggestion}")
    cases: dict[str, InputCase] = {}
    if not path.is_dir():  # a file, or a named pipe or device: refused by name when read, as in a folder
        ending = image_ending(path)
        if not ending:
            if path.is_file() and _is_dicom_file(path):  # asked of a regular file only: reading a pipe blocks
                # One slice of a series: DICOM is read by folder (_is_dicom_folder).
                raise InferenceError(f"{path}: a DICOM file; give the folder of its series (-i {path.parent}), which "
                                     "is read as one image")
            raise InferenceError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_ENDINGS)}")
        stem = path.name[: -len(ending)]
        match = CHANNEL_SUFFIX.match(stem)
        for sibling, sibling_stem in _channel_siblings(path, match["case"] if match else stem):
            _add(cases, sibling, sibling_stem)
    elif _is_dicom_folder(path):
        # The folder's own name, also for `-i .` or `-i ..` (whose name, '' or '..', named the output '.nii.gz'); a
        # symbolic link keeps its own name (abspath, unlike resolve, follows no links).
        _add(cases, path, Path(os.path.abspath(path)).name)
    else:
        _add_folder_cases(cases, path, quiet)
    if not cases:
        if path.is_dir() and (problem := damaged_dicom_refusal(path)):  # was 'no images found (not images: 1.dcm)'
            raise InferenceError(problem)
        ignored = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))[:5] if path.is_dir() else []
        raise InferenceError(
            f"{path}: no images found{' (not images: ' + ', '.join(ignored) + ')' if ignored else ''}; expected "
            f"<case>_0000<ending> files ({', '.join(SUPPORTED_ENDINGS)}) or DICOM series folders"
        )
    return [cases[k] for k in sorted(cases)]


def _add_folder_cases(cases: dict[str, InputCase], path: Path, quiet: bool) -> None:
    """``discover_cases`` of a folder of case files and DICOM series subfolders, into ``cases``; other subfolders and
    images of formats autoseg does not read are noted (unless ``quiet``), or named when the folder holds no case."""
    _refuse_loose_dicom_files(path)
    not_series, other_formats = [], []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not _holds_dicom_files(entry):
            not_series.append(entry.name)
        elif entry.is_dir():
            _add(cases, entry, entry.name)
        elif (ending := image_ending(entry)):
            _add(cases, entry, entry.name[: -len(ending)])
        elif entry.suffix.lower() in UNREAD_IMAGE_ENDINGS:
            other_formats.append(entry.name)
    with_images = _holding_images(path, not_series)
    if not cases and with_images:
        raise InferenceError(f"{path}: no images found in it, but its subfolder(s) {', '.join(with_images)} hold "
                             f"images, which predict does not look into; give that folder, e.g. -i {path / with_images[0]}")
    if cases and not_series and not quiet:
        images = (f"; {', '.join(with_images)} hold(s) images: predict them with -i {path / with_images[0]}"
                  if with_images else "")
        print(f"note: {path}: skipped subfolder(s) {', '.join(not_series)}: no DICOM files in them (a DICOM series "
              f"is read from a folder of its slice files){images}", file=sys.stderr)
    if cases and other_formats and not quiet:
        _note_other_formats(path, other_formats)


def _holding_images(folder: Path, subfolders: Sequence[str]) -> list[str]:
    """Those of ``subfolders`` holding image files: ``-i`` given the parent of the image folder (a dataset's
    ``imagesTs`` inside it) was refused as holding 'not images: imagesTs', the folder of the very images wanted.
    ``imagesTs`` comes first, the test images predict is for (``-i`` of a dataset folder is pointed there too), and
    ``labels*`` folders are left out: their label maps are no images to predict (``-i .../imagesTr`` was suggested
    first, as the first alphabetically, and ``labelsTr`` offered beside it)."""
    def holds_images(subfolder: Path) -> bool:
        try:
            return any(image_ending(entry) and entry.is_file() for entry in subfolder.iterdir())
        except OSError:  # unreadable: no images predict could read either
            return False

    found = [name for name in subfolders if not name.lower().startswith("labels") and holds_images(folder / name)]
    return sorted(found, key=lambda name: name != "imagesTs")


def _note_other_formats(folder: Path, names: Sequence[str]) -> None:
    """Say which images of a format autoseg does not read (a JPEG, an Analyze .hdr/.img pair) were left out: the run
    reported its other cases as all there was, and such a case went missing without a word."""
    shown = ", ".join(names[:5]) + (f" (+ {len(names) - 5} more)" if len(names) > 5 else "")
    print(f"note: {folder}: skipped {shown}: images in a format autoseg does not read; to predict them, convert them "
          f"to one of {', '.join(SUPPORTED_ENDINGS)}", file=sys.stderr)


def channel_files(case: InputCase, channel_names: Mapping[str, str]) -> list[Path]:
    """The case's files in channel order; ``InferenceError`` naming the model's channels (``channel_names``)
    when channel files are missing or extra.

    A colour 2D image file holds several channels (``channel_file_gaps``); their count is checked when read.
    """
    num_channels = len(channel_names)
    missing, extra = channel_file_gaps(case.channels, num_channels, case.ending)
    if missing or extra:
        found = ", ".join(f"{c:04d}" for c in sorted(case.channels))
        last = f" ... {case.case_id}_{num_channels - 1:04d}{case.ending}" if num_channels > 1 else ""
        colour = " (an RGB image holds 3 of them)" if case.ending in NATURAL_2D_ENDINGS and num_channels > 1 else ""
        raise InferenceError(
            f"case {case.case_id}: has channel(s) {found}, the model expects {num_channels} "
            f"({channel_list(channel_names)}); give one file per channel{colour}: {case.case_id}_0000{case.ending}{last}"
        )
    return [case.channels[c] for c in sorted(case.channels)]
