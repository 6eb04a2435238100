"""``autoseg postprocess determine|apply``: choose connected-component postprocessing on the
cross-validation predictions, store the decision as JSON, and replay it (reference §1.7).

Candidates, each tried on top of what was accepted before it:

1. keep the largest component of all foreground classes together;
2. per class (or region), on top of 1: keep its largest component, or remove its components smaller
   than ``SMALL_COMPONENT_FRACTION`` x the smallest component of that class in any reference. When
   both pass the rule, the one with the higher Dice is kept (the gentler removal on a tie).

Acceptance rule (improves on nnU-Net's strict "greater than", which accepts gains of 1e-9, i.e.
noise): a candidate is accepted when the mean Dice of the classes it targets (all foreground classes
for step 1, the one class for step 2) rises by more than ``epsilon`` AND no class's mean Dice drops by
more than ``epsilon``. Class means skip cases where the class is empty in both prediction and
reference; a class with no such case at all counts as Dice 1 (nothing predicted, nothing there).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autoseg.utils.jsonio import read_json
from autoseg.dataset.description import DatasetDescription
from autoseg.dataset.imageio import (
    SUPPORTED_ENDINGS, is_image_ending, label_map_shape, read_image, write_image,
)
from autoseg.errors import EvaluationError
from autoseg.evaluation.evaluate import (
    PREDICTION_FOLDER, DiskFullError, REFERENCE_FOLDER, check_declared, check_integer_labels, declared_values,
    label_maps, match_cases, raise_failures, read_checked_pair, refuse_references_misused, require_folder,
    readable_description, resolve_file_ending,
)
from autoseg.evaluation.metrics import SIZE_UNITS, SegClass, case_metrics, evaluation_classes, size_unit
from autoseg.postprocessing.connected_components import component_volumes_mm3, keep_largest, remove_small
from autoseg.utils.atomic import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from autoseg.utils.disk import stop_on_full_disk
from autoseg.utils.output_folders import (
    check_output_file, check_output_folder, claim_output_files, input_entry, output_file, predicting_model_folder,
    refuse_image_name,
)
from autoseg.utils.probability_files import is_probability_sidecar
from autoseg.utils.progress import parallel_map, stage_workers

DECISION_VERSION = 1
DECISION_FILE = "postprocessing.json"  # determine's decision, in the folder it was asked for
DEFAULT_EPSILON = 1e-3  # smallest mean Dice gain (and largest per-class loss) that counts, see module doc
SMALL_COMPONENT_FRACTION = 0.5  # "small" = below half of the smallest true component ever seen
RULE = (
    "accept a candidate when the mean Dice of the classes it targets rises by more than epsilon and no "
    "class's mean Dice drops by more than epsilon; candidates: keep largest foreground component, then per "
    "class keep largest component or remove components below a volume"
)

Step = dict[str, Any]
OPERATIONS = ("keep_largest", "remove_small")


def apply_postprocessing(decision: Mapping[str, Any], seg: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Replay the accepted steps of ``decision`` on one label map, in order (deterministic)."""
    return _apply_steps(decision["steps"], seg, spacing)


def _apply_steps(steps: Sequence[Step], seg: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    for step in steps:
        if step["operation"] == "keep_largest":
            seg = keep_largest(seg, step["label_values"])
        elif step["operation"] == "remove_small":
            seg = remove_small(seg, step["label_values"], step["min_volume_mm3"], spacing)
        else:
            raise EvaluationError(f"unknown postprocessing operation {step['operation']!r}; re-run postprocess determine")
    return seg


def _evaluate_candidates(
    pred_path: Path,
    ref_path: Path,
    accepted: Sequence[Step],
    candidates: Sequence[Step],
    classes: Sequence[SegClass],
    ignore_label: int | None,
    declared: frozenset[int] | None = None,
) -> dict[str, Any]:
    """Per class Dice of one case after ``accepted`` and after each candidate on top of it, and the
    smallest reference component volume per class. The files are checked as ``evaluate`` checks them
    (with ``declared``, the dataset's label values only; the prediction never ``ignore_label``): a 0/255 reference
    otherwise had no foreground and the decision was taken on it without a word."""
    pred, ref, geometry = read_checked_pair(pred_path, ref_path, declared, ignore_label)
    spacing = geometry.spacing
    base = _apply_steps(accepted, pred, spacing)

    def dice(seg: np.ndarray) -> dict[str, float]:
        metrics = case_metrics(seg, ref, spacing, classes, ignore_label, surface_metrics=False)
        return {name: m["dice"] for name, m in metrics.items()}

    smallest = {}
    for name, values in classes:
        volumes = component_volumes_mm3(np.isin(ref, values), spacing)
        smallest[name] = float(volumes.min()) if volumes.size else math.inf
    return {
        "base": dice(base),
        "candidates": [dice(_apply_steps([c], base, spacing)) for c in candidates],
        "smallest_reference_mm3": smallest,
        "size_unit": size_unit(ref.shape),
    }


def _class_means(per_case: Sequence[Mapping[str, float]], classes: Sequence[SegClass]) -> dict[str, float]:
    means = {}
    for name, _ in classes:
        values = np.array([case[name] for case in per_case], dtype=float)
        values = values[~np.isnan(values)]
        means[name] = float(values.mean()) if values.size else 1.0
    return means


def _accepts(before: Mapping[str, float], after: Mapping[str, float], targets: Sequence[str], epsilon: float) -> bool:
    gain = np.mean([after[t] for t in targets]) - np.mean([before[t] for t in targets])
    worst_drop = max(before[name] - after[name] for name in before)
    return bool(gain > epsilon and worst_drop <= epsilon)


def _run_pass(
    pairs: Mapping[str, tuple[Path, Path]],
    accepted: Sequence[Step],
    candidates: Sequence[Step],
    classes: Sequence[SegClass],
    ignore_label: int | None,
    num_workers: int,
    description: str,
    declared: frozenset[int] | None = None,
) -> tuple[dict[str, float], list[dict[str, float]], list[dict[str, Any]]]:
    """One pass over the cases: class mean Dice after ``accepted`` and after each candidate."""
    items = [
        (case, (pred, ref, accepted, candidates, classes, ignore_label, declared)) for case, (pred, ref) in pairs.items()
    ]
    results, failures = parallel_map(_evaluate_candidates, items, num_workers, description)
    raise_failures(failures, len(items), "evaluated")
    rows = [results[case] for case in pairs]
    base = _class_means([r["base"] for r in rows], classes)
    after = [_class_means([r["candidates"][i] for r in rows], classes) for i in range(len(candidates))]
    return base, after, rows


def _record(step: Step, before: Mapping[str, float], after: Mapping[str, float], accepted: bool) -> dict[str, Any]:
    return {**step, "accepted": accepted, "dice_before": dict(before), "dice_after": dict(after)}


def check_epsilon(epsilon: float) -> None:
    """``epsilon`` is a Dice difference: finite, at least 0 and below 1. NaN accepted nothing, a negative
    value demanded that every class improve, and 1 or more can never be exceeded, each without a word."""
    if not (math.isfinite(epsilon) and 0 <= epsilon < 1):
        raise EvaluationError(
            f"--epsilon {epsilon}: give a Dice difference of at least 0 and below 1 (default {DEFAULT_EPSILON})"
        )


def check_decision_target(decision_file: Path) -> None:
    """Refuse a decision file that would replace a file not a decision, or be taken for a label map: ``-o`` naming a
    prediction (``case1.nii.gz``), a reference or ``dataset.json`` replaced it with the decision's JSON, and a new
    ``x.nii.gz`` in the predictions folder failed every later evaluate and apply there as an unreadable label map.
    A file named ``DECISION_FILE`` (the default, and find-best's) is always replaced: a damaged one (a truncated
    write) is what apply asks to determine again, and refusing it left no way to."""
    check_output_file(decision_file, EvaluationError, DECISION_FILE)
    fix = f"give -o a new .json file name (or a folder ending in / for {DECISION_FILE} in it)"
    refuse_image_name(decision_file, "a decision file is JSON", fix, EvaluationError)
    if decision_file.is_file() and decision_file.name != DECISION_FILE:
        try:
            earlier = json.loads(decision_file.read_bytes())
        except (ValueError, UnicodeDecodeError):
            earlier = None
        if not (isinstance(earlier, dict) and earlier.get("version") == DECISION_VERSION and "steps" in earlier):
            raise EvaluationError(f"{decision_file}: exists and is not a postprocessing decision, which this run would "
                                  f"replace; {fix}")


def _with_mean(dice: Mapping[str, float]) -> dict[str, float]:
    """Class Dice with their mean, as the decision records it."""
    return {**dice, "foreground_mean": float(np.mean(list(dice.values())))}


def _class_candidates(classes: Sequence[SegClass], rows: Sequence[Mapping[str, Any]]) -> list[Step]:
    """Step 2's candidates: per class, keep its largest component, or remove its components below
    ``SMALL_COMPONENT_FRACTION`` x its smallest reference component (when any reference holds it)."""
    candidates: list[Step] = []
    for name, values in classes:
        candidates.append({"operation": "keep_largest", "target": name, "label_values": list(values)})
        smallest = min(r["smallest_reference_mm3"][name] for r in rows)
        if math.isfinite(smallest):
            candidates.append({
                "operation": "remove_small", "target": name, "label_values": list(values),
                "min_volume_mm3": SMALL_COMPONENT_FRACTION * smallest,
            })
    return candidates


def _choose_per_class(
    candidates: Sequence[Step], after: Sequence[Mapping[str, float]], current: Mapping[str, float],
    names: Sequence[str], epsilon: float, accepted: list[Step],
) -> list[dict[str, Any]]:
    """Per class, the passing candidate of higher Dice (on a tie the gentler removal, listed last) is appended to
    ``accepted``; returns every candidate's record."""
    records = []
    for name in names:
        options = [(c, a) for c, a in zip(candidates, after) if c["target"] == name]
        passing = [(c, a) for c, a in options if _accepts(current, a, [name], epsilon)]
        best = max(passing, key=lambda ca: (ca[1][name], ca[0]["operation"] == "remove_small"), default=None)
        records.extend(_record(c, current, a, best is not None and c is best[0]) for c, a in options)
        if best is not None:
            accepted.append(best[0])
    return records


def check_determine_arguments(pred_dir: Path, ref_dir: Path, output_json: str | Path | None, epsilon: float) -> Path:
    """Every check of determine's arguments that reads no label map (the epsilon, the decision file, one folder given
    twice, then each folder there); returns the decision file. Run before the dataset.json is looked for: ``-p X -r X``
    was refused for want of a dataset.json, and fixing that (``-d``) only led to the real fault, one folder given twice."""
    check_epsilon(epsilon)
    decision_file = output_file(pred_dir, output_json, DECISION_FILE)
    refuse_references_misused(pred_dir, ref_dir, decision_file, "the decision file", "file")
    check_decision_target(decision_file)
    require_folder(pred_dir, "predicted label maps", PREDICTION_FOLDER)
    require_folder(ref_dir, "reference label maps", REFERENCE_FOLDER)
    return decision_file


def determine_postprocessing(
    pred_dir: str | Path,
    ref_dir: str | Path,
    description_or_labels: DatasetDescription | Mapping[str, Any] | None,
    output_json: str | Path | None = None,
    num_workers: int | None = None,
    epsilon: float = DEFAULT_EPSILON,
    file_ending: str | None = None,
) -> dict[str, Any]:
    """Decide the postprocessing on cross-validation predictions (all folds in ``pred_dir``).

    ``description_or_labels`` None looks for the dataset.json as ``evaluate`` does (beside the references, in or
    beside the predictions), once the arguments are checked.
    Returns the decision (also written to ``output_json``, default ``pred_dir/postprocessing.json``; a name
    ending in a separator is a folder to write ``postprocessing.json`` in):
    ``steps`` (the accepted operations, replayed by ``apply_postprocessing``), every ``candidate`` with
    its class Dice before and after, and the class Dice of the predictions before and after all steps.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    decision_file = check_determine_arguments(pred_dir, ref_dir, output_json, epsilon)
    if description_or_labels is None:
        description_or_labels = readable_description(pred_dir, ref_dir, "to determine without it, give the dataset with -d")
    file_ending = resolve_file_ending(description_or_labels, file_ending)
    classes, ignore_label = evaluation_classes(description_or_labels)
    pairs = match_cases(pred_dir, ref_dir, file_ending, None)
    workers = stage_workers(num_workers, EvaluationError)
    names = [name for name, _ in classes]
    foreground = sorted({v for _, values in classes for v in values})

    # Step 1: largest foreground component.
    fg_step = {"operation": "keep_largest", "target": "foreground", "label_values": foreground}
    # The first pass reads every file: it checks them (later passes read the same files again).
    initial, (fg_after,), rows = _run_pass(
        pairs, [], [fg_step], classes, ignore_label, workers, "postprocessing: foreground",
        declared_values(description_or_labels),
    )
    fg_ok = _accepts(initial, fg_after, names, epsilon)
    accepted: list[Step] = [fg_step] if fg_ok else []
    records = [_record(fg_step, initial, fg_after, fg_ok)]
    current = fg_after if fg_ok else initial

    # Step 2: per class, keep largest or remove small components (one pass for all candidates).
    candidates = _class_candidates(classes, rows)
    if candidates:
        _, after, _ = _run_pass(pairs, accepted, candidates, classes, ignore_label, workers, "postprocessing: per class")
        records.extend(_choose_per_class(candidates, after, current, names, epsilon, accepted))

    final = current
    if len(accepted) > (1 if fg_ok else 0):
        final, _, _ = _run_pass(pairs, accepted, [], classes, ignore_label, workers, "postprocessing: final")
    decision = {
        "version": DECISION_VERSION, "rule": RULE, "epsilon": epsilon, "file_ending": file_ending,
        "num_cases": len(pairs), "size_unit": _decision_size_unit(rows), "steps": accepted,
        "dice_before": _with_mean(initial), "dice_after": _with_mean(final), "candidates": records,
    }
    atomic_write_json(decision_file, decision)
    return decision


def _decision_size_unit(rows: Sequence[Mapping[str, Any]]) -> str:
    """The unit of the decision's ``min_volume_mm3`` (the key keeps its name for the decisions already written):
    ``mm^2`` when every reference is a 2D image, whose component sizes are areas; 2D datasets were told of
    'components below 4.5 mm^3'. A reference of fewer axes among them (a 1 x N image, in mm, beside 2D ones) does not
    change it: the unit of the references of the most axes."""
    return max((row["size_unit"] for row in rows), key=SIZE_UNITS.index, default="mm^3")


def _values_text(values: Sequence[int]) -> str:
    return f"label{'s' if len(values) > 1 else ''} {', '.join(map(str, values))}"


def _step_text(step: Mapping[str, Any], unit: str) -> str:
    """One step as a person reads it: its target (with the label values, a region's all of them) and its operation,
    a removal's size in ``unit`` (the decision's ``size_unit``)."""
    values = _values_text(step["label_values"])
    target = (f"foreground ({values})" if step["target"] == "foreground"
              else f"{step['target']} ({'region of ' if len(step['label_values']) > 1 else ''}{values})")
    if step["operation"] == "keep_largest":
        return f"{target}: keep the largest component"
    return f"{target}: remove components below {step['min_volume_mm3']:.4g} {unit}"


def _recorded_dice(step: Mapping[str, Any], candidates: Any) -> tuple[float, float] | None:
    """The mean Dice of the classes ``step`` targets before and after it, from its accepted candidate record; None
    when ``candidates`` records none (a decision written by hand or by another tool)."""
    records = candidates if isinstance(candidates, list) else []
    record = next((c for c in records if isinstance(c, dict) and c.get("accepted")
                   and {key: c.get(key) for key in step} == dict(step)), None)
    if record is None:
        return None
    targets = list(record["dice_before"]) if record["target"] == "foreground" else [record["target"]]
    before, after = (float(np.mean([dice[t] for t in targets])) for dice in (record["dice_before"], record["dice_after"]))
    return before, after


def describe_steps(decision: Mapping[str, Any]) -> list[str]:
    """The steps apply replays (``decision["steps"]``), one line each, with the mean Dice of the classes each targets
    before and after it (what the rule compares) where the candidates record it: the command printed the raw step
    dicts, without their Dice, and a decision with steps but no candidates printed none."""
    lines, unit = [], decision.get("size_unit", "mm^3")  # decisions written before size_unit: 3D ones
    for number, step in enumerate(decision["steps"], 1):
        dice = _recorded_dice(step, decision.get("candidates"))
        lines.append(f"{number}. {_step_text(step, unit)}" + (f": Dice {dice[0]:.4f} -> {dice[1]:.4f}" if dice else ""))
    return lines


def _step_problem(step: Any) -> str | None:
    """Why one stored step cannot be replayed (``None`` when it can)."""
    if not isinstance(step, dict) or step.get("operation") not in OPERATIONS:
        return f"step {step!r} is not an object whose operation is one of {', '.join(OPERATIONS)}"
    values = step.get("label_values")
    if not (isinstance(values, list) and values and all(type(v) is int and v > 0 for v in values)):
        return f"step {step['operation']} has label_values {values!r}, not a list of positive label values"
    volume = step.get("min_volume_mm3")
    if step["operation"] == "remove_small" and not (
        type(volume) in (int, float) and math.isfinite(volume) and volume >= 0
    ):
        return f"step remove_small has min_volume_mm3 {volume!r}, not a volume in mm^3"
    return None


def _file_ending_problem(ending: str) -> str | None:
    """Why a stored ``file_ending`` names no image files (``None`` when it does): an empty one took every file
    of the folder, all as the case '' (the label maps collapsed into one case, the decision file that case)."""
    if is_image_ending(ending):
        return None
    return f"file_ending {ending!r} is not an image file ending (one of {', '.join(SUPPORTED_ENDINGS)})"


def load_decision(path: str | Path) -> dict[str, Any]:
    """Read a ``postprocessing.json``; raise ``EvaluationError`` naming the file if it is not one.

    Every step is checked before any label map is touched: a hand-edited step (a missing or mistyped key)
    otherwise failed in every case with a bare ``KeyError: 'label_values'`` that named neither file nor fix.
    A folder given (the one ``determine`` wrote its decision in) was called "not found"; it is named as a folder.
    """
    if Path(path).is_dir():
        inside = Path(path) / DECISION_FILE
        fix = f"give {inside}" if inside.is_file() else "give the decision file autoseg postprocess determine wrote"
        raise EvaluationError(f"{path}: is a folder, not a decision file; {fix}")
    decision = read_json(
        path, EvaluationError, "not found; run autoseg postprocess determine first",
        "re-run autoseg postprocess determine",
    )
    return check_decision(decision, str(path))


def check_decision(decision: Any, where: str) -> dict[str, Any]:
    """``decision`` (parsed JSON) if it is a postprocessing decision whose every step can be replayed;
    else ``EvaluationError`` naming ``where`` (a file, or a model zip's member)."""
    if (
        not isinstance(decision, dict) or decision.get("version") != DECISION_VERSION
        or not isinstance(decision.get("steps"), list) or not isinstance(decision.get("file_ending"), str)
    ):
        raise EvaluationError(f"{where}: is not a postprocessing decision (version {DECISION_VERSION}); re-run postprocess determine")
    problem = _file_ending_problem(decision["file_ending"])
    problem = problem or next((p for p in map(_step_problem, decision["steps"]) if p is not None), None)
    problem = problem or _unknown_values_problem(decision)
    if problem is not None:
        raise EvaluationError(f"{where}: {problem}; re-run autoseg postprocess determine")
    return decision


def decision_label_values(decision: Mapping[str, Any]) -> frozenset[int] | None:
    """The label values of the dataset ``decision`` was determined on: background and those of its first
    candidate, which keeps the largest component of every foreground class; None for a decision without it."""
    candidates = decision.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    values = first.get("label_values") if isinstance(first, dict) and first.get("target") == "foreground" else None
    if not (isinstance(values, list) and all(type(value) is int for value in values)):
        return None
    return frozenset({0, *values})


def _unknown_values_problem(decision: Mapping[str, Any]) -> str | None:
    """Why a step names label values the dataset lacks (``None`` when none does, or the values are unknown): a step
    edited to ``[7]`` in a dataset of 1 and 2 changed no voxel, and apply wrote the label maps unchanged without a word."""
    known = decision_label_values(decision)
    if known is None:
        return None
    for step in decision["steps"]:
        unknown = sorted(set(step["label_values"]) - known)
        if unknown:
            return (f"step {step['operation']} names label value(s) {unknown} that the dataset it was determined on does not "
                    f"have (its foreground values: {sorted(known - {0})})")
    return None


# What apply's refusal of undeclared values advises: its inputs are predictions, which hold the dataset's classes
# only (never the ignore label, which a reference may hold), not label maps to declare classes for.
APPLY_LABEL_FIX = ("postprocess apply takes predictions of the dataset's classes, as autoseg predict writes them "
                   "(never its ignore label); give it the predictions, not references or masks")


APPLY_RERUN = "the same `autoseg postprocess apply`, which writes every case again"


_DIMENSIONS = {"mm^3": "3D", "mm^2": "2D", "mm": "1D (one voxel wide)", "voxels": "single-voxel"}


def _dimensions(unit: str) -> str:
    """The kind of label map whose component sizes are in ``unit`` (a line of voxels, in mm, was called 2D)."""
    return _DIMENSIONS[unit]


def _removal_unit(decision: Mapping[str, Any]) -> str | None:
    """The unit of ``decision``'s ``remove_small`` sizes; None without such a step or a recorded ``size_unit``."""
    unit = decision.get("size_unit")
    if unit not in SIZE_UNITS or not any(step["operation"] == "remove_small" for step in decision["steps"]):
        return None
    return unit


def size_unit_problem(input_dir: Path, files: Sequence[Path], decision: Mapping[str, Any]) -> str | None:
    """Why ``decision``'s removal sizes do not measure the components of the label maps ``files`` of ``input_dir``
    (None when they do): a decision determined on 2D label maps (sizes in mm^2) removed components of 3D ones by
    their volume in mm^3 (or the reverse) without a word. The folder's unit is that of its label maps of the most axes,
    as determine's (``_decision_size_unit``): a one-slice case among 3D ones is measured in mm^3 there, and refusing
    it here refused applying a decision to the very folder it was determined on. Only ``remove_small`` steps
    measure; a decision without ``size_unit`` (written before it was recorded) is not checked."""
    unit = _removal_unit(decision)
    if unit is None:
        return None
    shapes = {path: shape for path in files if (shape := label_map_shape(path)) is not None}
    if not shapes:
        return None
    example, found = max(((path, size_unit(shape)) for path, shape in shapes.items()),
                         key=lambda item: SIZE_UNITS.index(item[1]))
    if found == unit:
        return None
    return (f"{input_dir}: its label maps are {_dimensions(found)} (e.g. {example.name}), whose component sizes are "
            f"in {found}, but the decision was determined on {_dimensions(unit)} label maps and removes components by "
            f"their size in {unit}; apply a decision determined on {_dimensions(found)} predictions like these (autoseg "
            f"postprocess determine), or give the {_dimensions(unit)} label maps this decision is for")


def _apply_file(source: Path, target: Path, decision: Mapping[str, Any], declared: frozenset[int] | None) -> None:
    """Postprocess one label map. One holding non-integer values (a probability map or float image given in
    its place) is refused as ``evaluate`` refuses it: it was written back with its voxels of the steps' values
    edited, as if it were a label map. So is one holding values the dataset does not have (``declared``; a
    0/255 mask), which predict never writes: it was passed through without a word."""
    seg, geometry = read_image(source)
    check_integer_labels(source, seg)
    if declared is not None:
        check_declared(source, seg, declared, APPLY_LABEL_FIX)
    processed = apply_postprocessing(decision, seg, geometry.spacing)  # outside: only a write can meet a full disk
    with stop_on_full_disk(target.parent, f"the label map {target.name}", DiskFullError, APPLY_RERUN):
        write_image(processed, geometry, target)


def _input_record(input_dir: Path, files: Mapping[str, Path], decision: Mapping[str, Any]) -> dict[str, Any]:
    """What ``apply_to_folder``'s outputs are made of, as the output folder's mark records it: the input folder,
    the identities of its label maps and a digest of the decision's steps. Applying another folder (or the same
    one with other label maps or steps) into a folder an earlier apply filled left new label maps beside stale
    ones of the cases the new input lacks, and ``evaluate`` scored the mix; a rerun of the same apply (a resume,
    or with cases added to the input) matches."""
    steps = json.dumps(decision["steps"], sort_keys=True).encode()
    return input_entry(input_dir, list(files.values()), steps_sha256=hashlib.sha256(steps).hexdigest())


DESCRIBING_FILES = ("dataset.json", "plans.json")  # what apply copies beside its label maps, as nnU-Net's does


def _describing_files(input_dir: Path) -> dict[str, bytes]:
    """Name -> content of the dataset.json and plans.json of ``input_dir``, else of the model its ``predict_info.json``
    names (predict writes none beside its label maps), read before any output: apply wrote neither, so evaluate,
    ensemble or determine on its output wanted -d where the input needed none. Each name is looked up on its own, and
    a case's probabilities sidecar (a case named ``plans``) is none: it was copied as the plans, the model's
    dataset.json left out."""
    folders = [folder for folder in (input_dir, predicting_model_folder(input_dir)) if folder is not None]
    found = {}
    for name in DESCRIBING_FILES:
        source = next((folder / name for folder in folders
                       if (folder / name).is_file() and not is_probability_sidecar(folder / name)), None)
        if source is not None:
            found[name] = _read_describing_file(source)
    return found


def _read_describing_file(source: Path) -> bytes:
    """The bytes of ``source``; one that cannot be read is refused by name, before any output is written."""
    try:
        return source.read_bytes()
    except OSError as exc:
        raise EvaluationError(f"{source}: cannot be read ({exc.strerror or exc}); make it readable, or move it out so "
                              f"that {source.name} is not copied beside the postprocessed label maps") from None


def apply_to_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    decision_json: str | Path | Mapping[str, Any],
    num_workers: int | None = None,
) -> list[Path]:
    """Postprocess every label map in ``input_dir`` into ``output_dir``; returns the written label maps. The input's
    dataset.json and plans.json (``_describing_files``) are copied beside them.

    A decision given as a mapping is checked as a file is (``check_decision``): a malformed one failed in every
    case with a bare ``KeyError``, or raised one, after marking the output folder."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if isinstance(decision_json, Mapping):
        decision = check_decision(dict(decision_json), "decision_json (the decision given)")
    else:
        decision = load_decision(decision_json)
    files = label_maps(input_dir)
    if not files:
        raise EvaluationError(f"{input_dir}: no label maps (e.g. <case>{decision['file_ending']}) to postprocess")
    check_output_folder(output_dir, EvaluationError, [input_dir])
    if (problem := size_unit_problem(input_dir, list(files.values()), decision)) is not None:
        raise EvaluationError(problem)
    described = _describing_files(input_dir)
    outputs = [output_dir / name for name in (*(path.name for path in files.values()), *described)]
    claim_output_files(output_dir, outputs, "postprocess apply", EvaluationError, [_input_record(input_dir, files, decision)])
    remove_stale_temporaries(output_dir)  # what a killed run left half-written
    declared = decision_label_values(decision)
    items = [(case, (path, output_dir / path.name, decision, declared)) for case, path in files.items()]
    workers = stage_workers(num_workers, EvaluationError)
    _, failures = parallel_map(_apply_file, items, workers, "postprocessing", stop_on=(DiskFullError,))
    # After the cases, and only beside one: written first, they were all a run whose every case failed left there.
    for name, data in described.items():  # each atomically, as nnU-Net's apply copies them
        if len(failures) < len(items):
            with stop_on_full_disk(output_dir, name, DiskFullError, APPLY_RERUN):
                atomic_write_bytes(output_dir / name, data)
    raise_failures(failures, len(items), "postprocessed", output_dir)
    return [output_dir / path.name for path in files.values()]

