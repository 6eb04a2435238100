"""``autoseg evaluate``: compare a folder of predictions with a folder of references.

Cases are matched by file name. Writes ``summary.json`` (per case and class, class means, foreground
mean; conventions in ``autoseg.evaluation.metrics``) and ``summary.csv`` (one row per case and class,
then the means), and ``format_table`` renders the means for a terminal.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autoseg.dataset.description import IGNORE_LABEL_NAME, DatasetDescription, load_description
from autoseg.dataset.imageio import (
    SUPPORTED_ENDINGS, Geometry, geometry_differences, is_integer_valued, read_image, spelled_ending,
)
from autoseg.dataset.verify import mask_255_hint
from autoseg.errors import DatasetError, EvaluationError
from autoseg.paths import printable_path
from autoseg.evaluation.metrics import (
    DEFAULT_TOLERANCE_MM,
    FLAG_KEYS,
    METRIC_KEYS,
    SegClass,
    case_metrics,
    evaluation_classes,
    mean_metrics,
)
from autoseg.utils.atomic import atomic_path, atomic_write_json, atomic_write_text, require_writable
from autoseg.utils.output_folders import (
    check_output_folder, describe_symlink_loop, predicting_model_folder, refuse_folder_among, refuse_probability_sidecar,
    symlink_loop,
)
from autoseg.utils.progress import Failure, parallel_map, stage_workers

SUMMARY_VERSION = 1
SUMMARY_JSON, SUMMARY_CSV = "summary.json", "summary.csv"  # what evaluate writes into its output folder
SPACING_TOLERANCE = 1e-3  # relative and absolute (mm): float32 headers round spacings
# The folders evaluate reads, named with their command-line options in messages about them.
PREDICTION_FOLDER = "prediction folder (-p/--pred)"
REFERENCE_FOLDER = "reference folder (-r/--ref)"


def dataset_json_places(pred_dir: Path, ref_dir: Path | None = None, any_parent: bool = True) -> list[Path]:
    """The folders a ``dataset.json`` describing predictions (and, with ``ref_dir``, their references) is looked for in,
    the most specific first: the references' folder and the one above it (a raw ``labelsTr/..``), the prediction
    folder, the model folder its ``predict_info.json`` names (a predict run's output), the model folder of a fold's
    ``validation/``, and last the prediction folder's parent (a model folder holds one beside its ``crossval_folds_*/``).
    A predict run's output may lie in any folder, one holding another dataset's dataset.json included: without
    ``any_parent`` (ensemble, which needs none) the parent is a place only for a ``crossval_folds_*`` folder."""
    places = [ref_dir, ref_dir.parent] if ref_dir is not None else []
    model = predicting_model_folder(pred_dir)
    places += [pred_dir, *([model] if model is not None else [])]
    if pred_dir.parent.name.startswith("fold_"):
        places.append(pred_dir.parent.parent)
    if any_parent or pred_dir.name.startswith("crossval_folds_"):
        places.append(pred_dir.parent)
    return list(dict.fromkeys(places))


def dataset_json_of(pred_dir: Path, ref_dir: Path | None = None, any_parent: bool = True) -> Path | None:
    """The first ``dataset.json`` in ``dataset_json_places``; None when there is none. Shared by evaluate, postprocess
    determine and ensemble."""
    places = dataset_json_places(pred_dir, ref_dir, any_parent)
    return next((place / "dataset.json" for place in places if (place / "dataset.json").is_file()), None)


def find_description(pred_dir: Path, ref_dir: Path) -> DatasetDescription:
    """The dataset.json ``dataset_json_of`` finds for ``pred_dir`` and ``ref_dir``, read, for when none is given. The
    preprocessed ``gt_segmentations/..`` holds none: a fold's validation evaluated against it took the references'
    values as classes, the ignore label scored as one and its voxels as background in the others."""
    found = dataset_json_of(pred_dir, ref_dir)
    if found is None:
        searched = ", ".join(map(str, dataset_json_places(pred_dir, ref_dir)))
        raise EvaluationError(
            f"{ref_dir}: no dataset.json found (looked in {searched}); name the dataset (-d DATASET) so the labels are known"
        )
    return load_description(found.parent)


def readable_description(pred_dir: Path, ref_dir: Path, ways_round: str) -> DatasetDescription:
    """``find_description``, one that cannot be read (the Decathlon's nnU-Net v1 dataset.json above its labelsTr)
    refused with ``ways_round`` it: evaluate and postprocess determine read it only for want of -d (determine gave
    the bare parse error, with no way round it)."""
    try:
        return find_description(pred_dir, ref_dir)
    except DatasetError as exc:
        raise EvaluationError(f"{exc} (the dataset.json found for the references {ref_dir} and predictions {pred_dir}; "
                              f"{ways_round})") from None


EVALUATE_WAYS_ROUND = "to evaluate without it, give the labels with --labels, or the dataset with -d"


def _description_beside(pred_dir: Path, ref_dir: Path, labels_given: bool = False) -> DatasetDescription | None:
    """``readable_description``, None when there is none. With ``labels_given`` (``--labels``, which wants only its
    ignore label: ignored voxels stay out of every metric) one that cannot be read is noted instead, as --labels needs
    none and the refusal asked to edit a file of the user's data."""
    if dataset_json_of(pred_dir, ref_dir) is None:
        return None
    if not labels_given:
        return readable_description(pred_dir, ref_dir, EVALUATE_WAYS_ROUND)
    try:
        return find_description(pred_dir, ref_dir)
    except DatasetError as exc:
        print(f"note: {exc}: not read for an ignore label (--labels gives the classes)", file=sys.stderr)
        return None


@dataclass
class LabelChoice:
    """What ``autoseg evaluate`` evaluates: the labels, the label file ending, and where they came from."""

    labels: DatasetDescription | dict[str, Any]
    file_ending: str
    source: str  # "dataset", "--labels" or "references"


def label_mapping(values: Sequence[int]) -> dict[str, Any]:
    """A ``dataset.json``-style labels mapping naming each class by its value (nnU-Net's simple evaluation)."""
    return {"background": 0, **{str(v): int(v) for v in values}}


def require_folder(folder: Path, holds: str = "label maps", name: str = "folder") -> None:
    """Refuse ``folder`` (``name`` in the message: the option it was given to) unless it is an existing folder; a
    file given in its place (one case's label map) is named as such: it was reported as 'folder not found', of a
    path that is there. So is a symbolic link loop on its way, reported as 'not found' or as a missing output folder."""
    if folder.is_file():
        raise EvaluationError(f"{folder}: is a file, not a folder; give the folder that holds the {holds}")
    if (loop := symlink_loop(folder)) is not None:
        raise EvaluationError(f"{describe_symlink_loop(folder, loop)}; point the link at the folder that holds the "
                              f"{holds}, or give another {name}")
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: {name} not found")


def label_file_ending(folder: Path) -> str:
    """The one image file ending of the label files in ``folder`` as they spell it (for evaluation without
    a dataset.json); before, ``.NII.GZ`` references were looked for as ``.nii.gz``, found none and were
    reported as holding only background."""
    require_folder(folder, "reference label maps", REFERENCE_FOLDER)
    endings = {spelled_ending(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} - {""}
    if not endings:
        raise EvaluationError(
            f"{folder}: holds no label files (any of {', '.join(SUPPORTED_ENDINGS)}); give the folder of reference label maps"
        )
    if len(endings) > 1:
        raise EvaluationError(
            f"{folder}: holds label files of several types ({', '.join(sorted(endings))}); keep one type per folder"
        )
    return endings.pop()


def check_integer_labels(path: Path, seg: np.ndarray) -> None:
    """Refuse a label map holding non-integer values (a probability or intensity map saved in its place):
    they match no label value, so every class would be scored as empty without a word."""
    if not is_integer_valued(seg):
        raise EvaluationError(
            f"{path}: holds non-integer values; a label map holds one class number per voxel (save the "
            "label map, not probabilities or intensities)"
        )


def _label_values(path: Path) -> list[int]:
    """The values of a reference label map, for evaluation without a dataset or --labels. A negative one is
    refused: it was scored as a class named '-1', which ``--labels -1`` refuses and no dataset.json may declare."""
    labels, _ = read_image(path)
    check_integer_labels(path, labels)
    values = [int(v) for v in np.unique(labels)]
    if values and values[0] < 0:
        raise EvaluationError(f"{path}: holds the negative value {values[0]}; label maps hold 0 (background) and "
                              "positive class numbers: give the labels to evaluate with --labels")
    return values


def labels_in_references(ref_dir: Path, file_ending: str, num_workers: int | None = None) -> list[int]:
    """Every non-zero value of the reference label maps, sorted."""
    items = [(case, (path,)) for case, path in list_cases(ref_dir, file_ending).items()]
    workers = stage_workers(num_workers, EvaluationError)
    results, failures = parallel_map(_label_values, items, workers, "reading references")
    raise_failures(failures, len(items), "read")
    values = sorted({v for found in results.values() for v in found} - {0})
    if not values:
        raise EvaluationError(
            f"{ref_dir}: the references hold only background (0); give the labels to evaluate with --labels"
        )
    return values


def choose_labels(
    pred_dir: Path, ref_dir: Path, description: DatasetDescription | None = None,
    label_values: Sequence[int] | None = None, num_workers: int | None = None,
) -> LabelChoice:
    """The dataset's labels if given; else ``label_values`` (``--labels``); else the ``dataset.json``
    beside the references; else every value found in the references (nnU-Net's simple evaluation).

    Run after ``check_evaluation_output``, which refuses a missing prediction folder: every reference was read for
    its values, and the command printed which labels it would evaluate, before it said that ``-p`` names no folder."""
    if description is not None and label_values:
        raise EvaluationError("give either a dataset (-d) or --labels, not both")
    if description is not None:
        return LabelChoice(description, description.file_ending, "dataset")
    if label_values:
        bad = [v for v in label_values if v <= 0]
        if bad or len(set(label_values)) != len(label_values):
            raise EvaluationError(
                f"--labels {' '.join(map(str, label_values))}: give distinct positive label values (0 is background)"
            )
        mapping = label_mapping(sorted(label_values))
        beside = _description_beside(pred_dir, ref_dir, labels_given=True)
        ignore = beside.ignore_label if beside is not None else None
        if ignore is not None:
            if ignore in label_values:
                raise EvaluationError(
                    f"--labels {' '.join(map(str, label_values))}: {ignore} is the ignore label of "
                    f"{dataset_json_of(pred_dir, ref_dir)} (its voxels are not scored); leave it out"
                )
            mapping[IGNORE_LABEL_NAME] = ignore
        return LabelChoice(mapping, label_file_ending(ref_dir), "--labels")
    found = _description_beside(pred_dir, ref_dir)
    if found is not None:
        return LabelChoice(found, found.file_ending, "dataset")
    ending = label_file_ending(ref_dir)
    match_cases(pred_dir, ref_dir, ending, quiet=True)  # -r imagesTr: refused by name, not after reading every image
    return LabelChoice(label_mapping(labels_in_references(ref_dir, ending, num_workers)), ending, "references")


def classes_absent_everywhere(summary: Mapping[str, Any]) -> list[str]:
    """Classes empty in every prediction and reference (a ``--labels`` value nobody holds): their metrics are NaN."""
    return [name for name, metrics in summary["mean"].items() if metrics["n_empty_in_both"] == summary["num_cases"]]


def absent_labels_note(summary: Mapping[str, Any]) -> str | None:
    """One note naming the labels in no reference and no prediction (``classes_absent_everywhere``), else None: a
    41-label CT's crops printed a note per label below the table."""
    absent = classes_absent_everywhere(summary)
    if len(absent) == 1:
        return f"note: label {absent[0]} is in no reference and no prediction; its metrics are NaN"
    if absent:
        return (f"note: {len(absent)} labels are in no reference and no prediction ({', '.join(absent)}); "
                "their metrics are NaN")
    return None


def _foreground_values(path: Path, ignore_label: int | None) -> set[int]:
    labels, _ = read_image(path)
    return {int(v) for v in np.unique(labels)} - {0, ignore_label}


def no_common_label_note(summary: Mapping[str, Any]) -> str | None:
    """A note on the first case that no class scores in both files, when its prediction and reference hold
    foreground labels, but none in common: found in the references (or chosen with ``--labels``), a 0/255
    reference of a 0/1 prediction scored Dice 0 without a word. Only that case's files are read again."""
    missed = (row for row in summary["metric_per_case"]
              if not any(m["volume_pred_mm3"] > 0 and m["volume_ref_mm3"] > 0 for m in row["metrics"].values()))
    row = next(missed, None)
    if row is None:
        return None
    pred, ref = (_foreground_values(Path(row[key]), summary["ignore_label"]) for key in ("prediction_file", "reference_file"))
    if not pred or not ref or pred & ref:
        return None
    return (f"note: case {row['case_id']}: the prediction holds label(s) {', '.join(map(str, sorted(pred)))} and the "
            f"reference {', '.join(map(str, sorted(ref)))}, no foreground label in common, so it scores Dice 0; if one "
            "of them was saved with other values (a 0/255 mask beside a 0/1 one), make them the same (divide a 0/255 "
            "mask by 255)")


def resolve_file_ending(description_or_labels: DatasetDescription | Mapping[str, Any], file_ending: str | None) -> str:
    """``file_ending`` if given, else the description's (a bare labels mapping has none).

    Anything else is refused first: from Python a dataset name (``"Dataset004"``, as ``-d`` takes it) was
    told to come with a file ending as if it were a labels mapping, and a list of label values (``-l 1 2``)
    raised an AttributeError.
    """
    if not isinstance(description_or_labels, (DatasetDescription, Mapping)):
        raise EvaluationError(
            f"labels {description_or_labels!r}: give the dataset's description, "
            "autoseg.dataset.description.load_description(dataset folder), or a labels mapping such as "
            "{'background': 0, 'Anterior': 1} with its file_ending"
        )
    if file_ending is not None:
        return file_ending
    if not isinstance(description_or_labels, DatasetDescription):
        raise EvaluationError("give the label file ending (e.g. '.nii.gz') when passing a labels mapping instead of a dataset")
    return description_or_labels.file_ending


def list_cases(folder: Path, file_ending: str) -> dict[str, Path]:
    """Case id -> file for every ``<case><file_ending>`` in ``folder`` (hidden files skipped)."""
    require_folder(folder)
    return {
        p.name[: -len(file_ending)]: p
        for p in sorted(folder.iterdir())
        if p.name.endswith(file_ending) and not p.name.startswith(".") and p.is_file()
    }


def read_pair(pred_path: Path, ref_path: Path) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Prediction, reference and the reference's geometry, after checking they share their grid.

    Shape, spacing, origin and direction must all agree: arrays of the same shape and spacing but a
    shifted origin or another direction (a prediction reoriented by another tool) lie over different
    anatomy, and comparing them voxel by voxel would score the wrong voxels without a word.
    """
    pred, pred_geometry = read_image(pred_path)
    ref, ref_geometry = read_image(ref_path)
    if pred.shape != ref.shape:
        raise EvaluationError(
            f"{pred_path}: shape {pred.shape} differs from the reference {ref_path} {ref.shape}; "
            "predictions must be in the reference's geometry (autoseg predict writes them so)"
        )
    if pred_geometry.is_2d != ref_geometry.is_2d:  # not as a spacing of 999 mm, the 2D placeholder, vs the slice's
        raise EvaluationError(
            f"{pred_path}: {geometry_differences(pred_geometry, ref_geometry)[0]} (prediction vs the reference {ref_path})"
        )
    if not np.allclose(pred_geometry.spacing, ref_geometry.spacing, rtol=SPACING_TOLERANCE, atol=SPACING_TOLERANCE):
        raise EvaluationError(
            f"{pred_path}: spacing {pred_geometry.spacing} differs from the reference {ref_path} "
            f"{ref_geometry.spacing}; predictions must be in the reference's geometry"
        )
    placement = geometry_differences(pred_geometry, ref_geometry)  # spacing agrees by now: origin, direction
    if placement:
        raise EvaluationError(
            f"{pred_path}: lies elsewhere than the reference {ref_path} ({'; '.join(placement)}, prediction vs reference); "
            "predictions must be in the reference's geometry (autoseg predict writes them so; resample or copy the "
            "reference's header only if the voxels truly correspond)"
        )
    return pred, ref, ref_geometry


def declared_values(description_or_labels: DatasetDescription | Mapping[str, Any]) -> frozenset[int] | None:
    """Every label value a dataset declares (background, classes or regions, ignore); ``None`` for a bare
    labels mapping (``--labels`` or the references' values: a chosen subset, other values allowed)."""
    if not isinstance(description_or_labels, DatasetDescription):
        return None
    classes, ignore_label = evaluation_classes(description_or_labels)
    return frozenset({0, *(v for _, values in classes for v in values), *([] if ignore_label is None else [ignore_label])})


def check_declared(path: Path, seg: np.ndarray, declared: frozenset[int], fix: str | None = None,
                   ignore_label: int | None = None) -> None:
    """Refuse a label map holding values the dataset does not declare: they would count as background.
    ``fix`` replaces evaluate's advice (postprocess apply gives its own); ``ignore_label``, the dataset's, is
    named as the value for voxels not to score (a reference marking them with another value, 255 say)."""
    unknown = seg[~np.isin(seg, sorted(declared))]
    if unknown.size:
        values = [v.item() for v in np.unique(unknown)]
        hint = mask_255_hint(np.unique(seg), declared)
        if not hint and ignore_label is not None:
            hint = f" ({ignore_label} is its ignore label: voxels not to score hold {ignore_label})"
        raise EvaluationError(
            f"{path}: holds label value(s) {', '.join(map(str, values[:5]))}{' ...' if len(values) > 5 else ''} that the "
            f"dataset does not declare (it declares {', '.join(map(str, sorted(declared)))}){hint}; "
            f"{fix or 'fix the file (to score other values, `autoseg evaluate --labels` takes them instead of the dataset)'}"
        )


def refuse_predicted_ignore_label(path: Path, pred: np.ndarray, ignore_label: int) -> None:
    """Refuse a prediction holding the dataset's ignore label, which marks reference voxels not to score and which no
    network predicts: it was scored as background without a word, when it meant references (or other label maps)
    given as the predictions. Refused as a value the dataset does not declare is."""
    count = int(np.count_nonzero(pred == ignore_label))
    if count:
        raise EvaluationError(
            f"{path}: holds the ignore label {ignore_label} in {count} voxel(s), a value that marks reference voxels not "
            "to score and that no network predicts (it would be scored as background); give -p the folder of predicted "
            "label maps, not references or other label maps"
        )


def read_checked_pair(
    pred_path: Path, ref_path: Path, declared: frozenset[int] | None = None, ignore_label: int | None = None,
    fix: str | None = None,
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """``read_pair``, then both files must hold integer labels and, with ``declared``, only those values, the
    prediction never ``ignore_label``: what every comparison of a prediction with its reference (evaluate,
    postprocess determine) may trust. ``ignore_label`` and ``fix`` as in ``check_declared``."""
    pred, ref, geometry = read_pair(pred_path, ref_path)
    check_integer_labels(pred_path, pred)
    check_integer_labels(ref_path, ref)
    if ignore_label is not None:
        refuse_predicted_ignore_label(pred_path, pred, ignore_label)
    if declared is not None:
        check_declared(pred_path, pred, declared, fix, ignore_label)
        check_declared(ref_path, ref, declared, fix, ignore_label)
    return pred, ref, geometry


def evaluate_case(
    pred_path: Path, ref_path: Path, classes: Sequence[SegClass], ignore_label: int | None, tolerance_mm: float,
    declared: frozenset[int] | None = None, fix: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics of one case (``{class name: {metric: value}}``); with ``declared``, both files may hold only those
    values (``fix``: what to do about another, as in ``check_declared``)."""
    pred, ref, geometry = read_checked_pair(pred_path, ref_path, declared, ignore_label, fix)
    return case_metrics(pred, ref, geometry.spacing, classes, ignore_label, tolerance_mm)


def check_tolerance(tolerance_mm: float) -> None:
    """The surface Dice's tolerance must be a positive, finite distance."""
    if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise EvaluationError(f"--tolerance-mm {tolerance_mm}: give a positive distance in mm (default {DEFAULT_TOLERANCE_MM})")


class DiskFullError(EvaluationError):
    """The disk (or quota) of the output folder of postprocess apply or ensemble is full: every later case would fail
    too, so the run stops at once (``parallel_map``'s ``stop_on``), as predict and preprocess do."""


def raise_failures(
    failures: Sequence[Failure], total: int, action: str, output_dir: Path | None = None, written: bool = True
) -> None:
    """One ``EvaluationError`` naming every failed case and why, if any failed; a case id from a file name that
    is not UTF-8 is shown as its path is (``odd\\xff``, not ``odd\\udcff``). With ``output_dir`` (commands writing
    one label map per case: postprocess apply, ensemble) it also says, as ``predict`` does, where the others went:
    each is written atomically, so a failed case leaves none, and the message named the failures only; ``written``
    False: the cases failed a check before any was written (ensemble's), and none was."""
    if not failures:
        return
    lines = "; ".join(f"{printable_path(f.key)}: {f.message}" for f in failures)
    rest = ""
    if output_dir is not None:
        done = total - len(failures) if written else 0
        rest = f"; the other {done} label map(s) are in {output_dir}" if done else "; no label map was written"
    raise EvaluationError(f"{len(failures)} of {total} cases could not be {action}: {lines}{rest}")


def _refuse_summary_file_as_folder(output: Path) -> None:
    """Refuse a new output folder named as a summary file (``-o results.json``, nnU-Net's ``-o`` being the summary
    file): it was made a folder ``results.json/`` holding summary.json and summary.csv."""
    if not output.exists() and output.suffix.lower() in (".json", ".csv"):
        raise EvaluationError(
            f"{output}: -o names the folder for summary.json and summary.csv, not a file; give a folder, e.g. "
            f"{output.with_suffix('')}"
        )


def _check_summary_paths(output: Path) -> None:
    """Refuse a summary file's path in ``output`` that evaluate must not write: a folder of that name (the metrics
    were computed, then the final rename failed as an internal error, after summary.json had been written beside a
    summary.csv folder), or a case's probabilities' sidecar (``refuse_probability_sidecar``)."""
    paths = [output / SUMMARY_JSON, output / SUMMARY_CSV]
    refuse_folder_among(paths, "autoseg evaluate", EvaluationError)
    for path in paths:
        refuse_probability_sidecar(path, EvaluationError)


def refuse_references_misused(pred_dir: Path, ref_dir: Path, output: Path, written: str, kind: str) -> None:
    """Refuse ``-p`` and ``-r`` naming one folder (every case scored perfect: evaluate reported Dice 1 everywhere and
    determine accepted nothing), or an ``output`` (``written``, a ``kind``) that is the reference folder or lies in it
    (a dataset's labelsTr then failed verify). Shared by evaluate and postprocess determine."""
    if pred_dir.resolve() == ref_dir.resolve():
        raise EvaluationError(f"{pred_dir}: is both the predictions (-p) and the references (-r) folder, which would "
                              "score every case perfect; give the predictions to score as -p")
    if output.resolve().is_relative_to(ref_dir.resolve()):
        raise EvaluationError(
            f"{output}: lies in the reference folder {ref_dir}; {written} would stand among the reference label maps "
            f"(a dataset's labelsTr would then fail verify); give -o a {kind} outside it"
        )


def check_evaluation_output(
    pred_dir: Path, ref_dir: Path, output_dir: str | Path | None, tolerance_mm: float = DEFAULT_TOLERANCE_MM
) -> Path:
    """Every check of evaluate's folders, tolerance and output that reads no label map; returns the output folder
    (default: ``pred_dir``). ``autoseg evaluate`` runs them before reading the references for their labels: it
    printed which labels it would evaluate, having read every reference, before refusing ``-o out.json``."""
    check_tolerance(tolerance_mm)
    out = Path(output_dir) if output_dir is not None else pred_dir
    require_folder(pred_dir, "predicted label maps", PREDICTION_FOLDER)  # before the output check: -o defaults to it
    require_folder(ref_dir, "reference label maps", REFERENCE_FOLDER)
    check_output_folder(out, EvaluationError)
    _check_summary_paths(out)
    _refuse_summary_file_as_folder(out)
    refuse_references_misused(pred_dir, ref_dir, out, "summary.json and summary.csv", "folder")
    # A folder that cannot be written (read-only, no permission) was refused only after every metric was
    # computed; for a new folder, the nearest one above it that exists is asked (nothing is made yet).
    require_writable(next(folder for folder in (out, *out.parents) if folder.is_dir()))
    return out


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    description_or_labels: DatasetDescription | Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
    num_workers: int | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    file_ending: str | None = None,
    case_ids: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every prediction in ``pred_dir`` (or the given ``case_ids``) against ``ref_dir``.

    Args:
        description_or_labels: the dataset description or its ``labels`` mapping; ``None`` looks for
            the ``dataset.json`` beside the references.
        output_dir: where ``summary.json`` and ``summary.csv`` go (default: ``pred_dir``).
        file_ending: label file ending (default: the description's; required with a labels mapping).
        case_ids: evaluate exactly these cases; each needs a prediction and a reference.
        extra: further top-level fields of the summary (how the predictions were made).

    Returns:
        The summary written to ``summary.json``.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    out = check_evaluation_output(pred_dir, ref_dir, output_dir, tolerance_mm)
    if description_or_labels is None:
        description_or_labels = readable_description(pred_dir, ref_dir, "give the dataset's labels instead")
    file_ending = resolve_file_ending(description_or_labels, file_ending)
    classes, ignore_label = evaluation_classes(description_or_labels)
    declared, fix = declared_values(description_or_labels), None
    if declared is None and ignore_label is not None:
        declared, fix = _declared_beside(pred_dir, ref_dir, ignore_label, {v for _, values in classes for v in values})
    pairs = match_cases(pred_dir, ref_dir, file_ending, case_ids)
    items = [(case, (pred, ref, classes, ignore_label, tolerance_mm, declared, fix)) for case, (pred, ref) in pairs.items()]
    workers = stage_workers(num_workers, EvaluationError)
    results, failures = parallel_map(evaluate_case, items, workers, "evaluating")
    raise_failures(failures, len(items), "evaluated")
    per_case = [
        {"case_id": case, "prediction_file": str(pred), "reference_file": str(ref), "metrics": results[case]}
        for case, (pred, ref) in pairs.items()
    ]
    summary = {
        "version": SUMMARY_VERSION,
        "prediction_folder": str(pred_dir),
        "reference_folder": str(ref_dir),
        "tolerance_mm": tolerance_mm,
        "ignore_label": ignore_label,
        "classes": {name: list(values) for name, values in classes},
        "num_cases": len(per_case),
        **mean_metrics([row["metrics"] for row in per_case], classes),
        "metric_per_case": per_case,
        **(extra or {}),
    }
    write_summary_pair(out, summary)
    return summary


def write_summary_pair(out: Path, summary: Mapping[str, Any]) -> None:
    """summary.json and summary.csv in ``out``, both new or neither: written one after the other, a failed CSV (a full
    disk) left the new JSON beside the old CSV. Both are made whole as temporaries first; summary.json, which the other
    commands read, is renamed last, and the new CSV removed should that rename fail."""
    csv_renamed = False
    try:
        with atomic_path(out / SUMMARY_JSON) as json_tmp:
            with atomic_path(out / SUMMARY_CSV) as csv_tmp:
                atomic_write_json(json_tmp, summary, durable=False)  # made durable by atomic_path
                atomic_write_text(csv_tmp, summary_csv(summary), durable=False)
            csv_renamed = True
    except BaseException:
        if csv_renamed:
            (out / SUMMARY_CSV).unlink(missing_ok=True)
        raise


def _declared_beside(pred_dir: Path, ref_dir: Path, ignore_label: int,
                     chosen: set[int]) -> tuple[frozenset[int] | None, str | None]:
    """With ``--labels`` (the ``chosen`` values) and the ignore label of the dataset.json found for them, the
    values that dataset declares and the chosen ones, and the fix for another: a reference marking voxels not to
    score with another value (255 for the dataset's 2) had them scored as background without a word. (None, None)
    without that dataset.json."""
    try:
        beside = find_description(pred_dir, ref_dir)
    except (EvaluationError, DatasetError):
        return None, None
    if beside.ignore_label != ignore_label:
        return None, None
    return (declared_values(beside) or frozenset()) | chosen, (
        f"fix the file (the dataset is {dataset_json_of(pred_dir, ref_dir)}, which gives --labels its ignore label)")


def unpredicted_references(summary: Mapping[str, Any], file_ending: str) -> list[str]:
    """Reference cases the summary did not score (``evaluate`` scores the predicted cases, so a reference
    without a prediction is left out): those of ``file_ending`` and of the scored references' endings (references
    of their own ending, other than the dataset.json's, went unnoted)."""
    scored = {row["case_id"] for row in summary["metric_per_case"]}
    endings = {file_ending, *(spelled_ending(Path(row["reference_file"])) for row in summary["metric_per_case"])}
    folder = Path(summary["reference_folder"])
    return sorted({case for ending in endings for case in list_cases(folder, ending)} - scored)


def label_maps(folder: Path) -> dict[str, Path]:
    """Case id -> label map for every image file of ``folder``, of the dataset's ending or another: predict writes a
    case NIfTI cannot hold (a sheared one) as ``.nrrd`` beside the dataset's ``.nii.gz``, and evaluate, postprocess
    determine and apply left it out without a word. Two files of one case are refused (which one is the case's?)."""
    require_folder(folder)
    found: dict[str, Path] = {}
    for case, entries in entries_by_case(folder).items():
        files = [path for path in entries if path.is_file()]
        if len(files) > 1:
            raise two_label_maps_error(folder, case, files)
        if files:
            found[case] = files[0]
    return found


def entries_by_case(folder: Path) -> dict[str, list[Path]]:
    """Case id -> the entries of ``folder`` named ``<case><an image ending>`` as spelled there (folders too, hidden
    ones skipped), in name order: the one listing of a folder's label maps by case, which ``label_maps``, evaluate's
    references and ensemble's output check each repeated."""
    listed: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        ending = spelled_ending(path)
        if ending and not path.name.startswith("."):
            listed.setdefault(path.name[: -len(ending)], []).append(path)
    return listed


def two_label_maps_error(folder: Path, case: str, files: Sequence[Path], detail: str = "") -> EvaluationError:
    """The error for ``files`` (two or more) of ``folder`` each a label map of ``case``, ``detail`` said of them."""
    return EvaluationError(f"{folder}: {files[0].name} and {files[1].name} are two label maps of case {case}{detail}; "
                           "keep one (move the other out)")


def match_cases(
    pred_dir: Path, ref_dir: Path, file_ending: str, case_ids: Sequence[str] | None = None, quiet: bool = False
) -> dict[str, tuple[Path, Path]]:
    """Case id -> (prediction, reference); every case needs both (default cases: ``prediction_cases``, ``quiet``
    leaves out its note, for a check before the evaluation that notes it). A prediction's reference has its
    ending, or the dataset's (a .nrrd prediction of a .nii.gz reference)."""
    require_folder(ref_dir, "reference label maps", REFERENCE_FOLDER)  # not the first case's missing reference
    predictions = prediction_cases(pred_dir, ref_dir, file_ending, quiet)
    cases = sorted(predictions) if case_ids is None else list(case_ids)
    if not cases:
        raise EvaluationError(f"{pred_dir}: no predictions to evaluate: no <case>{file_ending} files, and no label maps of "
                              f"another image ending whose case has a reference in {ref_dir}")
    pairs, listed = {}, entries_by_case(ref_dir)
    for case in cases:
        pred = predictions.get(case, pred_dir / f"{case}{file_ending}")
        if not pred.is_file():
            raise EvaluationError(f"{pred}: prediction of case {case} not found; predict it or leave it out")
        pairs[case] = (pred, _find_reference(ref_dir, case, pred, file_ending, listed))
    return pairs


def _find_reference(ref_dir: Path, case: str, pred: Path, file_ending: str, listed: Mapping[str, list[Path]]) -> Path:
    """The reference of ``case``: of its prediction's ending, else of the dataset's, else the one label map of the
    case in ``ref_dir`` (``listed``) of another ending. A folder named as a label map (``case_001.nii.gz/``) is named as
    such: it was reported as a reference not found, of a path that is there."""
    candidates = _reference_candidates(ref_dir, case, pred, file_ending)
    ref = next((path for path in candidates if path.is_file()), None)
    if ref is not None:
        return ref
    own = listed.get(case, [])
    files = [path for path in own if path.is_file()]
    if len(files) > 1:
        raise two_label_maps_error(ref_dir, case, files, f", neither of the prediction's ending ({pred.name})")
    if files:
        return files[0]
    folder = next((path for path in (*candidates, *own) if path.is_dir()), None)
    if folder is not None:
        raise EvaluationError(f"{folder}: is a folder, not a label map file, so case {case} has no reference (prediction "
                              f"{pred}); put the case's reference label map there in its place")
    raise EvaluationError(f"{candidates[-1]}: reference of case {case} not found (prediction {pred}); "
                          f"{_images_given_as_references(ref_dir, case, file_ending) or 'add it or remove the prediction'}")


def _images_given_as_references(ref_dir: Path, case: str, file_ending: str) -> str | None:
    """The fix when ``ref_dir`` holds the case's image instead (``-r imagesTr``), else None."""
    image = ref_dir / f"{case}_0000{file_ending}"
    if not image.is_file():
        return None
    return (f"{ref_dir} holds {image.name}, the case's image (channel 0000): give -r the folder of the reference label "
            "maps (a dataset's labelsTr), not the images")


def prediction_cases(pred_dir: Path, ref_dir: Path, file_ending: str, quiet: bool = False) -> dict[str, Path]:
    """Case id -> prediction for the label maps of ``pred_dir`` that are cases: those of the dataset's ending, and
    those of another image ending whose case has a reference (predict's .nrrd of a sheared case). Every image file
    was a case, so a stray one (a .png snapshot among .nii.gz predictions) was refused as a case without reference,
    where nnU-Net ignores it; such files are skipped with one note."""
    cases, skipped, listed = {}, [], entries_by_case(ref_dir)
    for case, path in label_maps(pred_dir).items():
        if path.name.endswith(file_ending) or any(ref.is_file() for ref in listed.get(case, [])):
            cases[case] = path
        else:
            skipped.append(path.name)
    if skipped and not quiet:
        print(f"note: {printable_path(pred_dir)}: skipped {len(skipped)} image file(s) that are not <case>{file_ending} and "
              f"have no reference of their case, e.g. {printable_path(skipped[0])}", file=sys.stderr)
    return cases


def _reference_candidates(ref_dir: Path, case: str, pred: Path, file_ending: str) -> list[Path]:
    """Where the reference of ``case`` may be: of its prediction's ending, then of the dataset's."""
    return [ref_dir / f"{case}{ending}" for ending in dict.fromkeys((spelled_ending(pred), file_ending))]


CSV_COLUMNS = ("case_id", "class", "label_values", *METRIC_KEYS, *FLAG_KEYS, "n_cases", "n_empty_in_both")


def summary_csv(summary: Mapping[str, Any]) -> str:
    """One row per case and class, then one per class mean and the foreground mean."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    values = {name: " ".join(map(str, v)) for name, v in summary["classes"].items()}
    for row in summary["metric_per_case"]:
        for name, metrics in row["metrics"].items():
            writer.writerow({"case_id": row["case_id"], "class": name, "label_values": values[name], **metrics})
    for name, metrics in summary["mean"].items():
        writer.writerow({"case_id": "mean", "class": name, "label_values": values[name], **metrics})
    writer.writerow({"case_id": "mean", "class": "foreground_mean", **summary["foreground_mean"]})
    return buffer.getvalue()


def _fmt(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def format_table(summary: Mapping[str, Any]) -> str:
    """The class means and the foreground mean as an aligned text table."""
    tolerance = summary["tolerance_mm"]
    # Regions (a class of several label values) are shown with the labels they hold.
    regions = any(len(values) > 1 for values in summary["classes"].values())
    first = "region (labels)" if regions else "class"
    header = [first, "Dice", "IoU", "HD95 mm", "ASSD mm", f"NSD@{tolerance:g}mm", "Precision", "Recall", "cases", "empty both"]
    # (key, digits): overlap ratios to 4 decimals, distances to 2.
    columns = (("dice", 4), ("iou", 4), ("hd95", 2), ("assd", 2), ("nsd", 4), ("precision", 4), ("recall", 4))
    rows = []
    for name, metrics in summary["mean"].items():
        label = f"{name} ({' '.join(map(str, summary['classes'][name]))})" if regions else name
        rows.append([label, *(_fmt(metrics.get(k), d) for k, d in columns), str(metrics["n_cases"]), str(metrics["n_empty_in_both"])])
    fg = summary["foreground_mean"]
    rows.append(["foreground mean", *(_fmt(fg.get(k), d) for k, d in columns), str(summary["num_cases"]), ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
