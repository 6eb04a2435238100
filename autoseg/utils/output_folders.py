"""Checks on a user's output folder (or output file) before anything is written into it.

Commands that read folders of label maps and write label maps (predict, ensemble, postprocess apply)
must never write into a folder they read: the outputs would replace the inputs, or be read as inputs
by the next run. And an output path that names an existing file cannot become a folder; refusing it up
front gives the user the path and the fix instead of an ``mkdir`` error.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

# A hidden file that marks a folder as written by ensemble / postprocess apply (predict's own record,
# predict_info.json, marks its folders): files of the output names in a folder without either are not ours.
OUTPUT_MARKER = ".autoseg_outputs.json"
PREDICT_RECORD = "predict_info.json"  # inference/batch.py's PREDICT_INFO


def symlink_loop(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that is a symbolic link leading round in a loop (``ln -s b a;
    ln -s a b``), else None: such a path is neither there nor missing, and was reported as a link to a folder
    "which does not exist" (the other link of the loop) or as "not found"."""
    for candidate in reversed((path, *path.parents)):
        if candidate.is_symlink():
            try:
                os.stat(candidate)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return candidate
    return None


def describe_symlink_loop(path: Path, loop: Path) -> str:
    """The words an error message about ``path`` starts with, ``loop`` being its ``symlink_loop``."""
    link = "a symbolic link loop" if loop == path else f"{loop} is a symbolic link loop"
    return f"{path}: {link} ({loop} -> {loop.readlink()} -> ... -> {loop}), which leads to no folder"


def _refuse_file_among(*folders: Path, error: type[Exception]) -> None:
    """Raise ``error`` naming the first of ``folders`` (the output folder or folders it would be made in)
    that is an existing file (``-o notes.txt/run1`` failed in mkdir as an internal error) or a symbolic
    link to nothing (mkdir fails on it too)."""
    for path in folders:
        if symlink_loop(path) == path:
            raise error(f"{describe_symlink_loop(path, path)}; point the link at a folder, or give another folder for the outputs")
        if path.exists() and not path.is_dir():
            raise error(f"{path}: exists and is not a folder; give a folder (new or existing) for the outputs")
        if path.is_symlink() and not path.exists():  # mkdir: FileExistsError, after predict had computed a case
            raise error(f"{path}: a symbolic link to {path.readlink()}, which does not exist; create that folder, "
                        "or give another folder for the outputs")


def check_output_folder(
    output: Path, error: type[Exception], inputs: Sequence[Path] = (), reads_subfolders: bool = False
) -> None:
    """Raise ``error`` if ``output`` is (or lies below) an existing file or is one of the ``inputs`` folders, or, when the
    command reads an input folder's subfolders too (predict: DICOM series), lies inside one.

    ``inputs`` are what the command reads: folders, or single files (then only their own folder is
    refused as the output).
    """
    _refuse_file_among(output, *output.parents, error=error)
    target = output.resolve()
    for given in inputs:
        folder = (given if given.is_dir() else given.parent).resolve()
        if target == folder:
            raise error(f"{output}: output folder equals the input folder; choose another output folder")
        if reads_subfolders and given.is_dir() and target.is_relative_to(folder):
            raise error(
                f"{output}: output folder lies inside the input folder {given} (its files would be read as "
                "inputs next time); choose a folder outside it"
            )


def check_output_file(output: Path, error: type[Exception]) -> None:
    """Raise ``error`` if ``output``, a file to write (a zip, a report, a decision), is an existing folder,
    or a folder it would be written in is an existing file (``-o notes.txt/report.html`` failed in mkdir
    as an internal error)."""
    if output.is_dir():
        raise error(f"{output}: is a folder; give a file name to write (a new file, or one to replace)")
    _refuse_file_among(*output.parents, error=error)


def refuse_outputs_not_ours(
    output: Path, outputs: Sequence[Path], writer: str, record: str, replacing: str, error: type[Exception]
) -> None:
    """Raise ``error`` if ``output``, which lacks ``writer``'s ``record``, already holds some of ``outputs``:
    files another tool (or the user) put there, which ``replacing`` would overwrite; or if another autoseg command
    marked it (predict into an ensemble's folder put its label maps beside the ensemble's, under its own record)."""
    other = _read_record(output / OUTPUT_MARKER)
    if other is not None and _holds_visible_files(output):
        raise error(
            f"{output}: holds the outputs of {other.get('written_by')} ({OUTPUT_MARKER}); {replacing} would put its own "
            "among them. Choose another output folder, or delete this one to replace them"
        )
    existing = [path.name for path in outputs if path.exists()]
    if existing:
        more = f" and {len(existing) - 1} more of its output names" if len(existing) > 1 else ""
        raise error(
            f"{output}: holds {existing[0]}{more}, not written by {writer} (the folder has no {record}); {replacing} "
            "would replace them. Choose another output folder, or delete those files to replace them"
        )


def claim_output_files(
    output: Path, outputs: Sequence[Path], command: str, error: type[Exception], inputs: Sequence[Mapping[str, Any]],
) -> None:
    """Refuse an output folder that holds some of ``outputs`` but was not written by autoseg (``-o`` on a
    dataset's labelsTr or the references replaced them without a word); otherwise mark it as autoseg's.

    The mark records ``inputs`` (what the outputs are made of: each a ``folder`` and its content's identity),
    and a folder holding another run's outputs is refused (``_refuse_another_run``); a rerun over the same
    inputs (a killed run resumed) is let through."""
    from autoseg.utils.atomic import atomic_write_json, folder_lock, require_writable

    if not any((output / marker).exists() for marker in (OUTPUT_MARKER, PREDICT_RECORD)):
        refuse_outputs_not_ours(output, outputs, "autoseg", OUTPUT_MARKER, f"autoseg {command}", error)
    output.mkdir(parents=True, exist_ok=True)
    require_writable(output)  # a read-only folder already marked: refused before any case, not in each
    record = {"written_by": f"autoseg {command}", "inputs": list(inputs)}
    with folder_lock(output):  # two runs at once: one of them is refused, not both let through
        previous = _read_record(output / OUTPUT_MARKER)
        _refuse_another_run(output, previous, record, error)
        if previous != record:
            atomic_write_json(output / OUTPUT_MARKER, record)


def _holds_visible_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but hidden files (the mark, a lock, killed writers' temporaries): a
    folder emptied with ``rm OUT/*`` keeps its hidden mark, and was refused as holding another run's outputs."""
    return any(not entry.name.startswith(".") for entry in folder.iterdir())


def _read_record(path: Path) -> dict[str, Any] | None:
    """The output folder's mark, or None when there is none (or a killed writer's unreadable one)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _refuse_another_run(
    output: Path, previous: Mapping[str, Any] | None, record: Mapping[str, Any], error: type[Exception]
) -> None:
    """Raise ``error`` if ``output`` holds a predict run's label maps or those of ``record``'s command over other
    inputs (other folders, or the same folders with other contents): the new outputs would stand beside stale
    ones of the cases the new inputs lack, and ``evaluate`` would score the mix. A mark written before inputs
    were recorded is compared without them, as predict compares its older records."""
    command = record["written_by"]
    if (output / PREDICT_RECORD).exists():
        raise error(
            f"{output}: holds the label maps of an autoseg predict run ({PREDICT_RECORD}); {command} would mix its "
            "own with them. Choose another output folder, or delete this one to replace them"
        )
    if previous is None or not _holds_visible_files(output):
        return  # emptied (``rm OUT/*`` leaves the hidden mark): no outputs to mix with
    if previous.get("written_by") == command and "inputs" not in previous:
        return
    if previous.get("written_by") != command:
        raise error(
            f"{output}: holds the outputs of {previous.get('written_by')} ({OUTPUT_MARKER}); {command} would mix its "
            "own with them. Choose another output folder, or delete this one to replace them"
        )
    if previous["inputs"] != record["inputs"]:
        raise error(
            f"{output}: holds the outputs of {command} {_other_inputs(previous['inputs'], record['inputs'])} "
            f"({OUTPUT_MARKER}); the new outputs would stand beside stale ones. Choose another output folder, or "
            "delete this one to replace them"
        )


def files_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the names and contents of ``paths`` (in the order given; missing files are skipped): the
    identity of an input folder's content that an output folder's mark records."""
    digest = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            continue  # refused for its case by the command's own reading, naming it
        digest.update(path.name.encode())
        with path.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


def _other_inputs(before: Any, now: Sequence[Mapping[str, Any]]) -> str:
    """How the inputs a folder's outputs were made of differ from ``now``: other folders, or the same ones
    whose contents (or, for postprocess apply, whose steps: ``steps_sha256``) changed since."""
    entries = [entry for entry in before if isinstance(entry, Mapping)] if isinstance(before, list) else []
    folders_before = [str(entry.get("folder")) for entry in entries]
    folders_now = [str(entry["folder"]) for entry in now]
    if folders_before != folders_now:
        return f"over {', '.join(folders_before) or 'other inputs'}, not over {', '.join(folders_now)}"
    if any(old.get("steps_sha256") != new.get("steps_sha256") for old, new in zip(entries, now)):
        return f"over {', '.join(folders_now)} with other postprocessing steps"
    return f"over {', '.join(folders_now)} before their contents changed"
