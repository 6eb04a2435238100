"""Checks on a user's output folder (or output file) before anything is written into it.

Commands that read folders of label maps and write label maps (predict, ensemble, postprocess apply)
must never write into a folder they read: the outputs would replace the inputs, or be read as inputs
by the next run. And an output path that names an existing file cannot become a folder; refusing it up
front gives the user the path and the fix instead of an ``mkdir`` error.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from autoseg.dataset.imageio import image_ending
from autoseg.utils.file_identity import file_signature
from autoseg.utils.probability_files import SIDECAR_SUFFIX, is_probability_sidecar, probability_paths

# A hidden file that marks a folder as written by ensemble / postprocess apply (predict's own record,
# predict_info.json, marks its folders): in a folder without either, label maps of the outputs' ending and
# files of their names are not ours.
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
    _refuse_image_file_name(output, error)
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


def _refuse_image_file_name(output: Path, error: type[Exception]) -> None:
    """Raise ``error`` if ``output``, a folder still to make, is named as an image file (``-o case_seg.nii.gz``, as
    for one output file): a folder of that name was made, holding ``<case><ending>``, which a viewer or the next
    command then failed to open as the image its name promised."""
    ending = image_ending(output)
    if ending and not output.exists():
        raise error(
            f"{output}: is named as an image file ({ending}), but the outputs are written into a folder, one "
            f"<case><ending> file each; give a folder, e.g. {output.parent / output.name[: -len(ending)]}"
        )


def output_file(default_dir: Path, given: str | os.PathLike[str] | None, name: str) -> Path:
    """Where a command writes its one output file: ``given``, or ``name`` in ``default_dir`` (none given) or in a folder
    given with a trailing separator (``-o reports/`` wrote a file named ``reports``, as the path dropped the separator)."""
    if given is None:
        return default_dir / name
    text = os.fspath(given)
    return Path(text) / name if text.endswith(("/", os.sep)) else Path(text)


def check_output_file(output: Path, error: type[Exception], default_name: str | None = None) -> None:
    """Raise ``error`` if ``output``, a file to write (a zip, a report, a decision), is an existing folder,
    or a folder it would be written in is an existing file (``-o notes.txt/report.html`` failed in mkdir
    as an internal error). ``default_name``: the file a command whose ``-o`` takes a folder ending in a separator
    (``output_file``) writes there; the refusal offers that spelling, which ``-o FOLDER`` users were not told."""
    if output.is_dir():
        into = f", or {output}{os.sep} to write {default_name} in it" if default_name else ""
        raise error(f"{output}: is a folder; give a file name to write (a new file, or one to replace){into}")
    _refuse_file_among(*output.parents, error=error)
    refuse_probability_sidecar(output, error)


def refuse_image_name(output: Path, what: str, fix: str, error: type[Exception]) -> None:
    """Raise ``error`` if ``output``, a file to write that is no image (``what``: 'the report is HTML'), is named as one
    (``-o case_0000.nii.gz``): it replaced the user's scan, and a new one among label maps was read as one there."""
    if image_ending(output):
        raise error(f"{output}: {what}, not an image, and would be read as one there; {fix}")


def refuse_probability_sidecar(output: Path, error: type[Exception]) -> None:
    """Raise ``error`` if ``output``, a file to write, is the probabilities' sidecar of a case beside it: a case named
    ``summary`` (or ``postprocessing``) predicted with --save-probabilities has ``summary.json`` beside
    ``summary.npz``, which evaluate's summary (determine's decision) replaced, and the case could no longer be
    ensembled."""
    if is_probability_sidecar(output):
        case_id = output.name.removesuffix(SIDECAR_SUFFIX)
        probabilities = probability_paths(output.parent, case_id).probabilities
        raise error(
            f"{output}: is the probabilities' sidecar of case {case_id} ({probabilities.name} beside it), which this "
            "output would replace; write the output into another folder (-o), or rename that case's input files"
        )


def refuse_outputs_not_ours(
    output: Path, outputs: Sequence[Path], writer: str, record: str, error: type[Exception]
) -> None:
    """Raise ``error`` if ``output``, which lacks ``writer``'s ``record``, was marked by another autoseg command
    (predict into an ensemble's folder put its label maps beside the ensemble's, under its own record), or
    holds label maps of the ``outputs``' endings: another tool's predictions or the user's masks, which the
    outputs would replace (same names) or stand beside (other names; ``evaluate`` then scored the mix).
    Other files (a README, a plot) are no label maps of the outputs and do not count, unless the outputs (saved
    probabilities too) would replace them."""
    other = _read_record(output / OUTPUT_MARKER)
    if other is not None:
        _refuse_other_command(output, other, writer, error)
    foreign = _files_not_ours(output, outputs)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        replaced = sum(path.name in foreign for path in outputs)
        replacing = f", replacing {replaced} of the same name(s)" if replaced else ""
        raise error(
            f"{output}: holds {len(foreign)} file(s) not written by {writer} ({shown}; the folder has no "
            f"{record}); {writer} would put its own among them{replacing}, and evaluate would score the mix. "
            "Choose an empty or new output folder"
        )


def _files_not_ours(folder: Path, outputs: Sequence[Path]) -> list[str]:
    """The names of the files in ``folder`` (hidden ones aside) that ``outputs`` would replace, or that end as
    the label maps among them do."""
    if not folder.is_dir():
        return []
    endings = {image_ending(path) for path in outputs} - {""}
    names = {path.name for path in outputs}
    return sorted(
        entry.name for entry in folder.iterdir()
        if not entry.name.startswith(".") and (entry.name in names or image_ending(entry) in endings) and entry.is_file()
    )


def check_output_marker(
    output: Path, outputs: Sequence[Path], command: str, error: type[Exception], inputs: Sequence[Mapping[str, Any]],
) -> None:
    """Raise ``error`` where ``claim_output_files`` would refuse ``output`` (files not ours, or a mark,
    ``OUTPUT_MARKER``, of another command or other inputs), writing nothing (predict's own record is checked by
    ``inference.batch.check_predict_record``): a command whose checks
    of its inputs are costly (ensemble reads every .npz) runs this first, and an ``-o`` holding another tool's label
    maps was refused only after all of them were read. ``claim_output_files`` checks again under the folder's lock."""
    _refuse_files_not_ours(output, outputs, command, error)
    _refuse_another_run(output, _read_record(output / OUTPUT_MARKER), _claim_record(command, inputs), error)


def _refuse_files_not_ours(output: Path, outputs: Sequence[Path], command: str, error: type[Exception]) -> None:
    """Raise ``error`` if one of ``outputs`` is a folder, or ``output`` (unmarked) holds files they would replace."""
    refuse_folder_among(outputs, f"autoseg {command}", error)
    if not any((output / marker).exists() for marker in (OUTPUT_MARKER, PREDICT_RECORD)):
        refuse_outputs_not_ours(output, outputs, f"autoseg {command}", OUTPUT_MARKER, error)


def _claim_record(command: str, inputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The output folder's mark for ``command`` over ``inputs``."""
    return {"written_by": f"autoseg {command}", "inputs": list(inputs)}


def claim_output_files(
    output: Path, outputs: Sequence[Path], command: str, error: type[Exception], inputs: Sequence[Mapping[str, Any]],
) -> None:
    """Refuse an output folder that holds label maps of the ``outputs``' endings, or files of their names, not
    written by autoseg (``-o`` on a dataset's labelsTr or the references replaced them without a word, and
    another tool's predictions got ours beside them); otherwise mark it as autoseg's.

    The mark records ``inputs`` (what the outputs are made of: each an ``input_entry``), and a folder holding
    another run's outputs is refused (``_refuse_another_run``); a rerun over the same inputs (a killed run
    resumed), or over the same inputs with cases added, is let through."""
    from autoseg.utils.atomic import atomic_write_json, folder_lock, require_writable

    _refuse_files_not_ours(output, outputs, command, error)
    output.mkdir(parents=True, exist_ok=True)
    require_writable(output)  # a read-only folder already marked: refused before any case, not in each
    record = _claim_record(command, inputs)
    with folder_lock(output):  # two runs at once: one of them is refused, not both let through
        previous = _read_record(output / OUTPUT_MARKER)
        _refuse_another_run(output, previous, record, error)
        if previous != record:
            atomic_write_json(output / OUTPUT_MARKER, record)


def refuse_folder_among(outputs: Sequence[Path], writer: str, error: type[Exception]) -> None:
    """Raise ``error`` naming the first of ``outputs`` (files ``writer``, e.g. ``autoseg evaluate``, writes) that is a
    folder: checked before any work, as the write failed with a bare IsADirectoryError after every other output was
    written (a case's label map, a summary, a statistics file)."""
    folder = next((path for path in outputs if path.is_dir()), None)
    if folder is not None:
        raise error(f"{folder}: is a folder where {writer} writes a file; move or rename that folder, or give -o "
                    "another folder")


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


def predicting_model_folder(pred_dir: Path) -> Path | None:
    """The model folder the ``predict_info.json`` of ``pred_dir`` names, if it is still a folder: where
    ``evaluate`` finds the dataset.json of predictions of a test folder that has none beside it (the ignore
    label was scored as a class). Records written before predict stored the absolute path hold it as typed,
    relative to where predict ran, and are taken from the current folder."""
    record = _read_record(pred_dir / PREDICT_RECORD)
    folder = record.get("model_folder") if record is not None else None
    if not isinstance(folder, str) or not folder:
        return None
    return Path(folder) if Path(folder).is_dir() else None


def _refuse_another_run(
    output: Path, previous: Mapping[str, Any] | None, record: Mapping[str, Any], error: type[Exception]
) -> None:
    """Raise ``error`` if ``output`` holds a predict run's label maps or those of ``record``'s command over other
    inputs (other folders or steps, or the same folders with files changed or removed: ``_inputs_extend``): the
    new outputs would stand beside stale ones of the cases the new inputs lack, and ``evaluate`` would score the
    mix. A mark written before inputs were recorded is compared without them, as predict compares its older
    records."""
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
    _refuse_other_command(output, previous, command, error)
    if not _inputs_extend(previous["inputs"], record["inputs"]):
        raise error(
            f"{output}: holds the outputs of {command} {_other_inputs(previous['inputs'], record['inputs'])} "
            f"({OUTPUT_MARKER}); the new outputs would stand beside stale ones. Choose another output folder, or "
            "delete this one to replace them"
        )


def _refuse_other_command(output: Path, previous: Mapping[str, Any], command: str, error: type[Exception]) -> None:
    """Raise ``error`` if ``output``'s mark ``previous`` is another command's and the folder holds its outputs
    (``rm OUT/*`` keeps the hidden mark): ``command``'s would stand among them."""
    if previous.get("written_by") != command and _holds_visible_files(output):
        raise error(
            f"{output}: holds the outputs of {previous.get('written_by')} ({OUTPUT_MARKER}); {command} would mix its "
            "own with them. Choose another output folder, or delete this one to replace them"
        )


def _inputs_extend(before: Any, now: Sequence[Mapping[str, Any]]) -> bool:
    """Whether inputs ``now`` are those a folder's outputs were made of (``before``), or more of them: the same
    folders (and steps), every file recorded before still there unchanged, new files (cases added to the input
    since; their outputs are written beside the earlier ones, which the run writes again) allowed. A changed or
    removed file is not: its old output would stand beside the new ones (a case that fails in the rerun keeps
    it) under a mark that claims the new inputs."""
    if not isinstance(before, list) or len(before) != len(now):
        return False
    return all(
        isinstance(old, Mapping) and _settings(old) == _settings(new) and _files(old) <= _files(new)
        for old, new in zip(before, now)
    )


def _settings(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An input entry less its files: its folder and, for postprocess apply, its steps."""
    return {key: value for key, value in entry.items() if key not in ("files", "cases")}


def _files(entry: Mapping[str, Any]) -> set[tuple[Any, ...]]:
    """An input entry's file identities (``file_signature``s), comparable as a set."""
    files = entry.get("files")
    return {tuple(signature) for signature in files if isinstance(signature, list)} if isinstance(files, list) else set()


def input_entry(folder: Path, paths: Sequence[Path], **settings: Any) -> dict[str, Any]:
    """An input folder as an output folder's mark records it: its path, ``settings`` (postprocess apply's steps)
    and the identities of the ``paths`` read from it (``file_signature``; missing files are skipped, refused for
    their case by the command's own reading)."""
    files = [file_signature(path) for path in paths if path.is_file()]
    return {"folder": str(folder.resolve()), **settings, "files": files}


def _other_inputs(before: Any, now: Sequence[Mapping[str, Any]]) -> str:
    """How the inputs a folder's outputs were made of differ from ``now``: other folders, or the same ones
    whose contents (or, for postprocess apply, whose steps: ``steps_sha256``) changed since."""
    entries = [entry for entry in before if isinstance(entry, Mapping)] if isinstance(before, list) else []
    folders_before = [str(entry.get("folder")) for entry in entries]
    folders_now = [str(entry["folder"]) for entry in now]
    if folders_before != folders_now:
        return _other_folders(folders_before, folders_now)
    if any(old.get("steps_sha256") != new.get("steps_sha256") for old, new in zip(entries, now)):
        return f"over {', '.join(folders_now)} with other postprocessing steps"
    return f"over {', '.join(folders_now)} before some of their files changed or were removed"


def _other_folders(before: list[str], now: list[str]) -> str:
    """How the input folders of a folder's outputs (``before``) differ from this run's (``now``), each folder named
    once: an ensemble over A, B, then over A, C was refused as 'over A, B, not over A, C'."""
    added = [folder for folder in now if folder not in before]
    if added or not before:
        return f"over {', '.join(before) or 'other inputs'}, not over {', '.join(added or now)}"
    left_out = [folder for folder in before if folder not in now]
    if not left_out:
        return f"over {', '.join(before)} in another order"
    kept = [folder for folder in before if folder in now]
    return f"over {', '.join(kept)} and also {', '.join(left_out)}, which this run does not read"
