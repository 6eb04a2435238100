"""``autoseg ensemble``: average the saved probabilities of several prediction folders.

Each input folder holds, per case, ``<case>.npz`` (array ``probabilities``, ``(C, z, y, x)``) and its
``<case>.json`` sidecar (autoseg/utils/probability_files.py), as written by
``autoseg predict --save-probabilities``. The mean probabilities become a label map written in the
sidecar's geometry: argmax for classes, thresholding in ``regions_class_order`` for regions.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from autoseg.dataset.description import DatasetDescription, load_description
from autoseg.dataset.imageio import (
    SUPPORTED_ENDINGS, Geometry, endings_keeping_geometry, geometry_differences, geometry_lost_in, is_image_ending,
    itk_reads_spelling, spelled_ending, write_image,
)
from autoseg.errors import DatasetError, EvaluationError
from autoseg.evaluation.evaluate import (
    DiskFullError, dataset_json_of, entries_by_case, label_maps, raise_failures, require_folder,
)
from autoseg.evaluation.metrics import evaluation_classes
from autoseg.utils.probability_files import (
    PROBABILITIES_SUFFIX, probability_paths, read_probabilities, read_sidecar, refuse_non_finite, write_probability_files,
)
from autoseg.utils.atomic import (
    TEMP_NAME, atomic_write_json, remove_stale_temporaries, require_writable, staging_folder,
)
from autoseg.utils.disk import stop_on_full_disk
from autoseg.utils.grid_check import geometry_problem
from autoseg.utils.output_folders import check_output_folder, check_output_marker, claim_output_files, input_entry
from autoseg.utils.progress import parallel_map, stage_workers

ENSEMBLE_RERUN = "the same `autoseg ensemble`, which writes every case again"
REGION_THRESHOLD = 0.5  # a voxel belongs to a region when its sigmoid probability exceeds this (§1.1)


def probabilities_to_labels(
    probabilities: np.ndarray, labels: Mapping[str, Any], regions_class_order: Sequence[int] | None
) -> np.ndarray:
    """Label map from ``(C, z, y, x)`` probabilities.

    Classes: channel ``i`` is the ``i``-th label value in increasing order (background first, ignore
    excluded), the label is the argmax. Regions: channel ``i`` is the ``i``-th region in ``labels`` order;
    voxels above ``REGION_THRESHOLD`` get ``regions_class_order[i]``, later regions overwriting earlier.
    """
    problem = channel_count_problem(probabilities.shape[0], labels, regions_class_order)
    if problem is not None:
        raise ValueError(problem)
    if regions_class_order is not None:
        seg = np.zeros(probabilities.shape[1:], dtype=_label_dtype(max(regions_class_order, default=0)))
        for channel, value in zip(probabilities, regions_class_order):
            seg[channel > REGION_THRESHOLD] = value
        return seg
    values = _class_values(labels)
    lookup = np.asarray(values, dtype=_label_dtype(max(values)))
    return lookup[np.argmax(probabilities, axis=0)]


def _class_values(labels: Mapping[str, Any]) -> list[int]:
    """The label value of each class channel, background first (ignore excluded)."""
    classes, _ = evaluation_classes(labels)
    return [0, *sorted(v for _, vs in classes for v in vs)]


def channel_count_problem(channels: int, labels: Mapping[str, Any], regions_class_order: Sequence[int] | None) -> str | None:
    """Why ``channels`` probability channels do not fit ``labels`` and ``regions_class_order`` (None when they do)."""
    if regions_class_order is not None:
        regions = len(evaluation_classes(labels)[0])
        if len(regions_class_order) != channels or regions != channels:
            return (f"{channels} probability channels for {regions} regions and {len(regions_class_order)} entries in "
                    "regions_class_order")
        return None
    values = _class_values(labels)
    return None if len(values) == channels else f"{channels} probability channels for {len(values)} labels (background included)"


def _label_dtype(max_value: int) -> type:
    return np.uint8 if max_value <= np.iinfo(np.uint8).max else np.uint16


def _sidecar_geometry(path: Path, sidecar: Mapping[str, Any], case: str) -> Geometry:
    """The geometry a sidecar records, refused naming the sidecar when it is malformed (edited by hand or
    by another tool) or cannot place its ``shape``: it failed as a bare ``KeyError: 'spacing'`` that named no file,
    or in ITK after the other cases' label maps were written."""
    fix = "re-run predict with --save-probabilities for this case"
    try:
        geometry = Geometry.from_dict(sidecar["geometry"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EvaluationError(f"{path}: geometry of case {case} is malformed ({type(exc).__name__}: {exc}); {fix}") from None
    problem = geometry_problem(geometry, sidecar["shape"][1:])  # the shape is checked first (agreeing_sidecars)
    if problem is not None:
        raise EvaluationError(f"{path}: geometry of case {case} is malformed ({problem}); {fix}")
    return geometry


def agreeing_sidecars(case: str, input_dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], Geometry]:
    """The sidecars of ``case`` in ``input_dirs`` and their geometry, refused unless all give the same labels,
    regions, shape and geometry. ``ensemble_folders`` checks every case so before writing any: a mismatch found
    case by case left the other cases' label maps in the output folder, a partial ensemble."""
    sidecars = [read_sidecar(folder, case, EvaluationError) for folder in input_dirs]
    reference, first_sidecar = sidecars[0], probability_paths(input_dirs[0], case).sidecar
    _refuse_channels_unlike_labels(first_sidecar, reference, case)  # a valid shape, which the geometry must fit
    geometry = _sidecar_geometry(first_sidecar, reference, case)
    for folder, sidecar in zip(input_dirs, sidecars):
        path = probability_paths(folder, case).sidecar
        for key in ("labels", "regions_class_order", "shape"):
            if sidecar[key] != reference[key]:
                raise EvaluationError(
                    f"{path}: {key} {sidecar[key]} differs from {first_sidecar} "
                    f"{reference[key]} for case {case}; ensemble only predictions of the same images and labels"
                )
        diff = geometry_differences(_sidecar_geometry(path, sidecar, case), geometry)
        if diff:
            raise EvaluationError(f"{path}: geometry differs from {first_sidecar} for case {case}: {'; '.join(diff)}")
    return sidecars, geometry


def _refuse_channels_unlike_labels(path: Path, sidecar: Mapping[str, Any], case: str) -> None:
    """Refuse a sidecar whose ``shape`` gives a channel count its labels (and regions) do not have, before any case
    is written: the case failed on its own after the others' label maps were written, a partial ensemble."""
    shape, fix = sidecar["shape"], f"re-run predict with --save-probabilities for case {case}"
    if not (isinstance(shape, list) and len(shape) > 1 and all(type(n) is int and n > 0 for n in shape)):
        raise EvaluationError(f"{path}: shape {shape!r} of case {case} is not the channels and image axes; {fix}")
    try:
        problem = channel_count_problem(shape[0], sidecar["labels"], sidecar["regions_class_order"])
    except (AttributeError, TypeError, ValueError) as exc:
        problem = f"labels {sidecar['labels']!r} or regions_class_order are malformed ({type(exc).__name__}: {exc})"
    if problem is not None:
        raise EvaluationError(f"{path}: {problem} (case {case}); {fix}")


def _input_description(folder: Path, sidecar: Mapping[str, Any], sidecar_path: Path) -> DatasetDescription | None:
    """The dataset.json found for the input ``folder`` (its parent only for a ``crossval_folds_*`` folder), if it can
    be read and gives the labels and regions of the probabilities' ``sidecar``; else None, with a one-line note on one
    skipped. The sidecar is the authority: ensemble needs no dataset.json, and one above the inputs (another
    dataset's, an nnU-Net v1 one) refused ensembles that worked without it."""
    path = dataset_json_of(folder, any_parent=False)
    if path is None:
        return None
    try:
        description = load_description(path.parent)
    except DatasetError as exc:
        _skip_note(f"{exc}")
        return None
    key = next((key for key in ("labels", "regions_class_order") if getattr(description, key) != sidecar[key]), None)
    if key is not None:
        _skip_note(f"{path}: {key} {getattr(description, key)!r} differs from {sidecar[key]!r} of the probabilities "
                   f"{sidecar_path}")
        return None
    return description


def _described_as_written(description: DatasetDescription, endings: Iterable[str]) -> dict[str, Any]:
    """The inputs' dataset.json with the ``file_ending`` the label maps are written with, when they share one:
    ``--file-ending .nrrd`` wrote .nrrd label maps beside a dataset.json saying ``.nii.gz``. Mixed endings (predict's
    .nrrd of a sheared case beside the dataset's) keep the inputs' ``file_ending``."""
    written = set(endings)
    if len(written) != 1:
        return dict(description.raw)
    return {**description.raw, "file_ending": written.pop()}


def _skip_note(problem: str) -> None:
    print(f"note: {problem}; not copied to the ensemble's output (ensemble uses the labels the probabilities were "
          "predicted with)", file=sys.stderr)


def inputs_description(input_dirs: Sequence[Path], case: str) -> DatasetDescription | None:
    """The first input's dataset.json that gives the labels and regions its probabilities of ``case`` were predicted
    with (``_input_description``), for the output folder: nnU-Net copies the first input's, and without one
    ``postprocess determine`` and ``evaluate`` on the ensemble wanted ``-d``. Ones differing in ``file_ending`` only
    are not refused: each case keeps its own ending or ``--file-ending``."""
    for folder in input_dirs:
        description = _input_description(folder, read_sidecar(folder, case, EvaluationError),
                                         probability_paths(folder, case).sidecar)
        if description is not None:
            return description
    return None


def ensemble_case(
    case: str, input_dirs: Sequence[Path], output_dir: Path, file_ending: str, save_probabilities: bool,
    staging: Path | None = None,
) -> None:
    """Average one case's probabilities over ``input_dirs`` and write its label map (and probabilities) into
    ``output_dir``, or into ``staging`` for ``ensemble_folders`` to move there once every case is done (messages name
    ``output_dir``). Each .npz is read once, refused here if unreadable, of another shape than its sidecar's, or
    holding NaN or infinities, before this case's outputs are written."""
    sidecars, geometry = agreeing_sidecars(case, input_dirs)
    target = output_dir if staging is None else staging
    first_dir, reference = input_dirs[0], sidecars[0]
    total = None
    for folder, sidecar in zip(input_dirs, sidecars):
        probabilities = read_probabilities(folder, case, sidecar, EvaluationError)
        if total is None:
            total = probabilities.astype(np.float32)
        else:
            total += probabilities
        # checked on the total (finite so far), which holds this file's NaN or infinities, before any output
        refuse_non_finite(probability_paths(folder, case).probabilities, case, total, EvaluationError)
    mean = total / len(input_dirs)
    try:
        seg = probabilities_to_labels(mean, reference["labels"], reference["regions_class_order"])
    except ValueError as exc:
        raise EvaluationError(f"{probability_paths(first_dir, case).probabilities}: {exc} (case {case})") from None
    with stop_on_full_disk(output_dir, f"the label map of case {case}", DiskFullError, ENSEMBLE_RERUN):
        write_image(seg, geometry, target / f"{case}{file_ending}")
    if save_probabilities:  # named apart: a full disk here came after the label map was written
        with stop_on_full_disk(output_dir, f"the probabilities of case {case}", DiskFullError, ENSEMBLE_RERUN):
            write_probability_files(target, case, mean, geometry, reference["labels"], reference["regions_class_order"])


def _new_staging(out: Path) -> Path:
    """A hidden folder on ``out``'s file system where the cases are ensembled before any is moved into ``out``: inside
    ``out`` when it exists (a mount point), else in its nearest existing ancestor, so that neither ``out`` nor its
    missing parents are made for a run that fails. A killed run's is removed as a stale temporary."""
    if out.is_dir():
        require_writable(out)  # a read-only folder: refused before any case is averaged
        remove_stale_temporaries(out)  # what a killed run left half-written
        return staging_folder(out / "ensemble")
    ancestor = next(folder for folder in out.absolute().parents if folder.is_dir())
    remove_stale_temporaries(ancestor, out.name)
    return staging_folder(ancestor / out.name)


def _ensemble_staged(out: Path, dirs: Sequence[Path], endings: Mapping[str, str], save_probabilities: bool,
                     workers: int, staging: Path) -> None:
    """Every case of ``endings`` ensembled into ``staging``, refused (nothing in ``out``) when any case fails: the
    probabilities are read once, checked as they are averaged (they were all read twice, once to check them before
    any case was written, a partial ensemble otherwise)."""
    items = [(case, (case, dirs, out, ending, save_probabilities, staging)) for case, ending in endings.items()]
    _, failures = parallel_map(ensemble_case, items, workers, "ensembling", stop_on=(DiskFullError,))
    raise_failures(failures, len(items), "ensembled", out, written=False)


def _move_staged(staging: Path, out: Path) -> None:
    """Move the ensembled files from ``staging`` into ``out`` (renames on one file system: nothing is copied). A
    temporary that a worker killed mid-write left there (its case, run again, was written whole) is not moved."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(staging.iterdir()):
        if TEMP_NAME.match(path.name) is None:
            os.replace(path, out / path.name)


def _probability_cases(folder: Path) -> set[str]:
    """The cases whose probabilities ``folder`` holds. An entry named as them that is no file (a folder ``x.npz/``)
    is refused before any output: it failed as its case's IsADirectoryError after the other cases were written."""
    require_folder(folder, "predictions and their saved probabilities", "input folder (-i/--input)")
    found = sorted(p for p in folder.glob(f"*{PROBABILITIES_SUFFIX}") if not p.name.startswith("."))
    odd = next((p for p in found if not p.is_file()), None)
    if odd is not None:
        what = "a folder" if odd.is_dir() else "not a file (a broken link?)"
        raise EvaluationError(f"{odd}: is {what}, not the saved probabilities of case {odd.name[: -len(PROBABILITIES_SUFFIX)]}; "
                              f"move it out of {folder} (predict --save-probabilities writes <case>{PROBABILITIES_SUFFIX} files)")
    return {p.name[: -len(PROBABILITIES_SUFFIX)] for p in found}


def _check_file_ending(ending: str) -> str:
    """An explicit ``--file-ending`` must be one the writer knows, dot included, spelled so that ITK reads it back:
    checked before any case is read (``nii.gz`` without its dot, or ``.Nii.gz`` and ``.MHA``, failed in every case,
    one message each, and left a marked, empty output folder)."""
    if not is_image_ending(ending):
        raise EvaluationError(
            f"--file-ending {ending!r}: not an image file ending; give one of {', '.join(SUPPORTED_ENDINGS)} "
            "(with its leading dot)"
        )
    if not itk_reads_spelling(f"case{ending}"):
        raise EvaluationError(f"--file-ending {ending!r}: ITK, the image reader, cannot read this spelling back; give "
                              f"{ending.lower()!r}")
    return ending


def _refuse_geometry_lost(folder: Path, cases: Sequence[str], ending: str) -> None:
    """Refuse, before any case, a picture ending (PNG, BMP, a TIFF) that cannot hold the geometry of a case (from
    ``folder``'s sidecars): ``--file-ending .png`` over 2D NIfTI predictions of 0.5 mm pixels wrote label maps read
    back as 1 mm pixels at the origin, in silence, and a 3D TIFF of a shifted volume was refused case by case; so is
    NIfTI for a sheared case, which it wrote with the direction turned into a rotation (predict writes it as .nrrd)."""
    for case in cases:
        geometry = _sidecar_geometry(probability_paths(folder, case).sidecar, read_sidecar(folder, case, EvaluationError), case)
        lost = geometry_lost_in(ending.lower(), geometry)
        if lost:
            keeping = endings_keeping_geometry(ending.lower(), geometry)
            raise EvaluationError(
                f"--file-ending {ending}: cannot hold the voxel spacing, origin or direction of case {case} (case vs file: "
                f"{'; '.join(lost)}); give --file-ending {keeping}, which keep them, or "
                "leave it out (each case then keeps the ending predict gave it)"
            )


def _label_endings(folder: Path, cases: Sequence[str]) -> dict[str, str]:
    """Each case's label file ending in ``folder`` as spelled there (``.NII.GZ`` stays so), for outputs named like
    the inputs. Per case: predict writes a case NIfTI cannot hold (a sheared one) as ``.nrrd`` beside ``.nii.gz``
    ones, and the first case's ending, used for all, wrote it as NIfTI with its direction turned to a rotation."""
    maps = label_maps(folder)  # two label maps of one case are refused there
    missing = [case for case in cases if case not in maps]
    if missing:
        raise EvaluationError(
            f"{folder}: cannot tell the label file ending from the files of case {missing[0]}; give it explicitly (e.g. .nii.gz)"
        )
    return {case: spelled_ending(maps[case]) for case in cases}


def _refuse_other_endings(out: Path, endings: Mapping[str, str]) -> None:
    """Refuse an output folder holding a case's label map of another ending than this run writes it with (an earlier
    ensemble there without --file-ending, rerun with ``--file-ending .nrrd``): the rerun was let through as a resume,
    and left two label maps of every case, which evaluate and postprocess refuse."""
    listed = entries_by_case(out)
    for case in endings:
        path = next((path for path in listed.get(case, []) if spelled_ending(path) != endings[case]), None)
        if path is not None:
            ending = spelled_ending(path)
            raise EvaluationError(
                f"{path}: a label map of case {case} of another ending than this run's {endings[case]}; both would "
                f"stand in {out} (evaluate refuses two label maps of one case). Give the ending it has (--file-ending "
                f"{ending}), or choose another output folder"
            )


def _input_record(folder: Path, cases: Sequence[str]) -> dict[str, Any]:
    """An input folder as the output folder's mark records it: its path and the identities of the probability
    files of ``cases``, so that a rerun over the same folders (a resume, or with cases added) is told from one
    over other folders, or over the same folders predicted anew, whose outputs must not join the earlier ones."""
    return input_entry(folder, [path for case in cases for path in probability_paths(folder, case)])


def _refuse_missing_cases(folder: Path, missing: Sequence[str], cases: Mapping[Path, set[str]]) -> None:
    """Refuse ``folder`` lacking the ``missing`` cases other input folders hold. The count is this folder's: it
    read 'N case(s) missing in all', as if no folder held them."""
    if not missing:
        return
    others = [str(d) for d, held in cases.items() if missing[0] in held]
    raise EvaluationError(
        f"{probability_paths(folder, missing[0]).probabilities}: probabilities of case {missing[0]} missing (present in "
        f"{', '.join(others)}); {folder} lacks {len(missing)} case(s) that other folders hold; every folder must hold "
        "the same cases"
    )


def _refuse_label_maps_without_probabilities(folder: Path, found: set[str]) -> None:
    """Refuse ``folder`` holding a case's label map but not its probabilities: when every folder lacked them
    (predicted without --save-probabilities, or the npz deleted), the case was left out of the ensemble without a
    word, and evaluating the output scored fewer cases than were predicted."""
    lacking = sorted(case for case in label_maps(folder) if case not in found)
    if lacking:
        raise EvaluationError(
            f"{probability_paths(folder, lacking[0]).probabilities}: probabilities of case {lacking[0]} not found beside "
            f"its label map ({len(lacking)} case(s) of {folder} lack them); re-run predict with --save-probabilities "
            "for them, or move their label maps out"
        )


def _checked_cases(dirs: Sequence[Path], cases: Mapping[Path, set[str]]) -> list[str]:
    """The cases to ensemble, sorted, once every folder holds each of them with its probabilities and their sidecars
    agree across the folders; refused before any probabilities are read."""
    all_cases = set().union(*cases.values())
    if not all_cases:
        raise EvaluationError(f"{dirs[0]}: no <case>.npz probabilities; predict with --save-probabilities")
    for folder, found in cases.items():
        _refuse_missing_cases(folder, sorted(all_cases - found), cases)
        _refuse_label_maps_without_probabilities(folder, found)
    ordered = sorted(all_cases)
    for case in ordered:
        agreeing_sidecars(case, dirs)
    return ordered


def _written_endings(first_dir: Path, ordered: Sequence[str], file_ending: str | None) -> dict[str, str]:
    """Case -> the ending its label map is written with: ``file_ending`` (checked), else its own in ``first_dir``."""
    if file_ending:
        _refuse_geometry_lost(first_dir, ordered, _check_file_ending(file_ending))
        return dict.fromkeys(ordered, file_ending)
    return _label_endings(first_dir, ordered)


def ensemble_folders(
    input_dirs: Sequence[str | os.PathLike[str]],
    output_dir: str | Path,
    save_probabilities: bool = False,
    num_workers: int | None = None,
    file_ending: str | None = None,
) -> list[str]:
    """Ensemble the probabilities of the same cases in ``input_dirs`` into ``output_dir``.

    Every folder must hold the same cases. ``file_ending`` of the written label maps defaults to each case's
    own in the first folder (predict writes a case NIfTI cannot hold as ``.nrrd``). The inputs' dataset.json, if they
    have one (``inputs_description``), is written beside the label maps. Returns the ensembled case ids.
    """
    if isinstance(input_dirs, (str, os.PathLike)):  # one folder, not the characters of its path
        raise EvaluationError(f"{input_dirs}: give a list of at least two prediction folders to ensemble, not one path")
    dirs = [Path(d) for d in input_dirs]
    if len(dirs) < 2:
        raise EvaluationError(f"ensemble needs at least two prediction folders, got {len(dirs)}")
    cases = {d: _probability_cases(d) for d in dirs}  # each a folder before resolve(), which raised on a symbolic link loop
    resolved = [d.resolve() for d in dirs]
    repeated = next((d for d, r in zip(dirs, resolved) if resolved.count(r) > 1), None)
    if repeated is not None:
        raise EvaluationError(
            f"{repeated}: given twice as an input folder (it would count double in the average); give each folder once"
        )
    out = Path(output_dir)
    check_output_folder(out, EvaluationError, dirs)
    ordered = _checked_cases(dirs, cases)
    endings = _written_endings(dirs[0], ordered, file_ending)
    outputs = [out / f"{case}{endings[case]}" for case in ordered]
    description = inputs_description(dirs, ordered[0])
    if description is not None:
        outputs.append(out / "dataset.json")
    if save_probabilities:
        outputs += [path for case in ordered for path in probability_paths(out, case)]
    inputs = sorted((_input_record(d, ordered) for d in dirs), key=lambda record: record["folder"])
    workers = stage_workers(num_workers, EvaluationError)
    # The output folder's refusals (another tool's label maps) read no .npz: before the probabilities are read.
    check_output_marker(out, outputs, "ensemble", EvaluationError, inputs)
    if out.is_dir():
        _refuse_other_endings(out, endings)
    staging = _new_staging(out)
    try:
        _ensemble_staged(out, dirs, endings, save_probabilities, workers, staging)
        claim_output_files(out, outputs, "ensemble", EvaluationError, inputs)
        _move_staged(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # After the cases: written first, it was all a run whose every case failed left there.
    if description is not None:
        with stop_on_full_disk(out, "dataset.json", DiskFullError, ENSEMBLE_RERUN):
            atomic_write_json(out / "dataset.json", _described_as_written(description, endings.values()))
    return ordered
