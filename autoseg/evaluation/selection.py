"""``autoseg find-best``: pick the configuration (or pairwise ensemble) to use, from cross-validation.

Every model folder ``<results>/<Dataset>/<network>__<plans>__<config>/`` with validation predictions
for all requested folds is a candidate. Its folds' ``validation/`` predictions are merged into
``crossval_folds_<folds>/`` and evaluated together against ``<preprocessed>/<Dataset>/gt_segmentations/``
(one merged cross-validation, not a mean of fold means). Every pair of candidates whose merged folder
holds probabilities for all cases is ensembled into ``<results>/<Dataset>/ensembles/ensemble___A___B/``.
All are ranked by mean foreground Dice (reference §1.7); postprocessing is determined for the winner,
and ``inference_instructions.json`` / ``inference_instructions.txt`` say how to predict with it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shlex
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from autoseg.dataset.description import DatasetDescription, load_description
from autoseg.errors import EvaluationError
from autoseg.evaluation.ensemble import ensemble_folders
from autoseg.evaluation.evaluate import evaluate_folders, list_cases
from autoseg.paths import DatasetSpec, preprocessed_root, resolve_dataset, results_root
from autoseg.postprocessing.determine import DECISION_FILE, determine_postprocessing
from autoseg.training.splits import SPLITS_FILE, read_splits
from autoseg.utils.checkpoint_format import checkpoint_exists, checkpoint_name, fold_trainer
from autoseg.utils.jsonio import read_json
from autoseg.utils.atomic import (
    atomic_write_json, atomic_write_text, folder_lock_saying_waits, holder_text, remove_stale_temporaries, staging_folder,
)
from autoseg.utils.names import string_list
from autoseg.utils.probability_files import probability_paths

INSTRUCTIONS_VERSION = 2  # 2: candidate paths relative to <results>/<Dataset>/ (1: absolute)
INSTRUCTIONS_JSON = "inference_instructions.json"
INSTRUCTIONS_TXT = "inference_instructions.txt"
POSTPROCESSING_JSON = DECISION_FILE  # the decision find-best keeps beside each model (re-exported for model files)
ENSEMBLES_FOLDER = "ensembles"
ENSEMBLE_PREFIX = "ensemble___"
ENSEMBLE_SEPARATOR = "___"  # between members (model folder names hold "__")
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")  # 5-fold cross-validation (reference §1.5)
RANK_METRIC = "dice"  # mean foreground Dice over the merged cross-validation (reference §1.7)
RANK_TOLERANCE = 1e-4  # candidates whose Dice lies this close to the best raw Dice tie (float noise decides nothing)
TIE_RULE = "fewer models (a single configuration before an ensemble: cheaper to predict), then the name, alphabetically"
PREDICT_CHECKPOINT = "final"  # training validates its final checkpoint, so that is what CV measured


@dataclass
class Candidate:
    """A configuration or an ensemble of configurations, with its merged cross-validation."""

    name: str
    model_folders: tuple[Path, ...]
    crossval_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def foreground_dice(self) -> float:
        return float(self.summary.get("foreground_mean", {}).get(RANK_METRIC, math.nan))

    @property
    def class_dice(self) -> dict[str, float]:
        return {name: float(m.get(RANK_METRIC, math.nan)) for name, m in self.summary.get("mean", {}).items()}


def ensemble_name(model_names: Sequence[str]) -> str:
    """The folder of an ensemble of model folders under ``ensembles/``."""
    return ENSEMBLE_PREFIX + ENSEMBLE_SEPARATOR.join(model_names)


def ensemble_model_names(name: str) -> list[str]:
    """The model folders an ``ensembles/`` folder name joins (none for another name)."""
    return name[len(ENSEMBLE_PREFIX):].split(ENSEMBLE_SEPARATOR) if name.startswith(ENSEMBLE_PREFIX) else []


def crossval_folder_name(folds: Sequence[str]) -> str:
    return "crossval_folds_" + "_".join(folds)


def is_model_folder(path: Path) -> bool:
    """``<network>__<plans>__<config>`` folders (not hidden ones, not ``ensembles``)."""
    return path.is_dir() and not path.name.startswith(".") and len(path.name.split("__")) == 3


def configuration_of(model_folder: Path) -> str:
    """The configuration a ``<network>__<plans>__<config>`` folder holds."""
    return model_folder.name.split("__")[2]


def trained_model_folders(
    dataset_results: Path, folds: Sequence[str], file_ending: str, val_cases: Mapping[str, Sequence[str]] | None = None,
    configurations: Sequence[str] | None = None,
) -> tuple[list[Path], list[str]]:
    """Model folders (of ``configurations``, default all) with validation predictions for every fold, and why
    each other one was skipped.

    ``val_cases`` (fold -> its validation cases, from the split file) also skips a folder whose fold
    lacks some of them: its cross-validation would be scored on fewer cases without a word.
    """
    if not dataset_results.is_dir():
        raise EvaluationError(f"{dataset_results}: no results folder; train the 5 folds of a configuration first (autoseg train)")
    complete, skipped = [], []
    for folder in sorted(p for p in dataset_results.iterdir() if is_model_folder(p)):
        if configurations is not None and configuration_of(folder) not in configurations:
            continue
        predicted = validation_predictions(folder, folds, file_ending)
        missing = [f for f in folds if not predicted[f]]
        incomplete = {f: sorted(set(val_cases[f]) - set(predicted[f])) for f in folds if predicted[f] and f in (val_cases or {})}
        incomplete = {f: cases for f, cases in incomplete.items() if cases}
        if training := fold_in_training(folder, folds):
            skipped.append(training)
        elif missing:
            skipped.append(f"{folder.name}: no validation predictions for fold(s) {', '.join(missing)}")
        elif incomplete:
            fold, cases = next(iter(incomplete.items()))
            skipped.append(
                f"{folder.name}: fold {fold}'s validation lacks {len(cases)} of its split's case(s) ({', '.join(cases[:3])}"
                f"{' ...' if len(cases) > 3 else ''}; a validation stopped midway or files removed): re-run it with "
                f"autoseg train DATASET {configuration_of(folder)} {fold} --continue"
            )
        elif problem := prediction_problem(folder, folds):
            skipped.append(f"{folder.name}: {problem}")
        else:
            complete.append(folder)
    return complete, skipped


def fold_in_training(model_folder: Path, folds: Sequence[str]) -> str | None:
    """Why ``model_folder`` is left out while ``autoseg train`` runs one of its folds (holds its lock), else None:
    ``train --continue`` writes the fold's new final checkpoint, then its new validation, so find-best ranked the
    fold by its earlier run's validation in silence."""
    for fold in folds:
        holder = fold_trainer(model_folder / f"fold_{fold}")
        if holder is not None:
            return (f"{model_folder.name}: fold {fold} is being trained by {holder_text(holder)} right now, so its "
                    f"validation predictions may be an earlier run's; run find-best again once that training has ended")
    return None


def validation_predictions(model_folder: Path, folds: Sequence[str], file_ending: str) -> dict[str, dict[str, Path]]:
    """Each fold's validation predictions in ``model_folder`` (empty for a fold without any)."""
    return {f: list_cases_or_empty(model_folder / f"fold_{f}" / "validation", file_ending) for f in folds}


class MissingFoldsError(EvaluationError):
    """find-best's refusal when model folders lack validation predictions of folds it ranks over: the report, which
    runs find-best with its default folds, adds why those folds were asked for to this refusal alone."""


def no_candidate_error(
    dataset_results: Path, folds: Sequence[str], file_ending: str, skipped: Sequence[str],
    configurations: Sequence[str] | None,
) -> EvaluationError:
    """The error for no rankable model folder, telling to train only the folds that some model folder (of
    ``configurations``) lacks validation for: it said 'train fold(s) 0, 1, 2, 3, 4' with fold 0 trained. It names
    ``-f`` with the folds trained too: a model meant to have fewer folds was only told to train the others."""
    folders = [p for p in sorted(dataset_results.iterdir()) if is_model_folder(p)
               and (configurations is None or configuration_of(p) in configurations)]
    predicted = [validation_predictions(folder, folds, file_ending) for folder in folders]
    lacking = [f for f in folds if not folders or any(not cases[f] for cases in predicted)]
    reasons = f" ({'; '.join(skipped)})" if skipped else ""
    if not lacking:
        return EvaluationError(f"{dataset_results}: no configuration can be ranked over folds {', '.join(folds)}{reasons}; "
                               "fix what is named for each")
    trained = [f for f in folds if f not in lacking]
    fewer = (f", or rank a model meant to have fewer folds over the folds trained (autoseg find-best "
             f"{dataset_results.name} {' '.join(f'-f {f}' for f in trained)})" if trained else "")
    return MissingFoldsError(
        f"{dataset_results}: no configuration has validation predictions for folds {', '.join(folds)}{reasons}; "
        f"train fold(s) {', '.join(lacking)} first (autoseg train DATASET CONFIG FOLD, once per fold; fold 'all' has no "
        f"validation){fewer}"
    )


def prediction_problem(model_folder: Path, folds: Sequence[str]) -> str | None:
    """Why find-best's commands could not predict the folds with ``model_folder`` (``None`` when they can, or when
    its folds have their checkpoints and its plans.json lists no configurations): predict reads the configuration from the folder's name, so a copy under
    another name (``cp -r MODEL MODEL.bak``: configuration '3d_fullres.bak') was ranked, ensembled with its own
    original and chosen; a folder whose folds' final checkpoints were deleted (validation predictions kept) was
    chosen too; and a cascade stage runs its previous stage's folder with the same folds first, so one without it
    (deleted, or the cascade copied alone) was chosen as well. Their commands failed."""
    lacking = folds_without_checkpoint(model_folder, folds)
    if lacking:
        return (f"no {PREDICT_CHECKPOINT} checkpoint of fold(s) {', '.join(lacking)} (deleted or moved?), which the "
                f"predict command needs; restore them, or train those folds of {configuration_of(model_folder)} again")
    plans_file = model_folder / "plans.json"
    plans = read_json(plans_file, EvaluationError, "not found", "restore it") if plans_file.is_file() else None
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        return None
    name = configuration_of(model_folder)
    if name not in configurations:
        return (f"configuration {name!r} (read from the folder's name, as predict reads it) is not in its plans.json "
                f"({', '.join(configurations)}): a copy under another name? rename it <network>__<plans>__<configuration> "
                f"or move it out of {model_folder.parent}")
    previous = configurations[name].get("previous_stage") if isinstance(configurations[name], dict) else None
    if not isinstance(previous, str):
        return None
    network, plans_name, _ = model_folder.name.split("__")
    sibling = model_folder.parent / f"{network}__{plans_name}__{previous}"
    lacking = folds_without_checkpoint(sibling, folds)
    if not lacking:
        return None
    return (f"a cascade stage, which predicts from the labels of {sibling.name}, and {sibling} has no {PREDICT_CHECKPOINT} "
            f"checkpoint of fold(s) {', '.join(lacking)}; train (or copy) those folds of {previous} first")


def folds_without_checkpoint(model_folder: Path, folds: Sequence[str]) -> list[str]:
    """The folds of ``model_folder`` without the checkpoint find-best's predict commands load."""
    return [f for f in folds if not checkpoint_exists(model_folder / f"fold_{f}" / checkpoint_name(PREDICT_CHECKPOINT))]


def check_configurations(dataset_results: Path, configurations: Sequence[str]) -> None:
    """Every ``-c`` configuration must have a model folder: a misspelt one (``3d_fullrez``) was reported
    as "no configuration has validation predictions", sending the user to train what was trained."""
    trained = sorted({configuration_of(p) for p in dataset_results.iterdir() if is_model_folder(p)})
    unknown = [c for c in configurations if c not in trained]
    if unknown:
        raise EvaluationError(
            f"{dataset_results}: no model folder of configuration {', '.join(unknown)} (trained: "
            f"{', '.join(trained) or 'none'}); give -c one of the trained configurations, or train it first"
        )


def split_val_cases(dataset_name: str, folds: Sequence[str]) -> dict[str, list[str]]:
    """Each fold's validation cases from the split file training used (none without the file).

    A fold the file does not hold is refused naming the folds it does: with a split file of your own of 3 folds,
    the default folds 0-4 were reported as missing validation predictions, "train folds 0-4 first", which training
    refuses (fold 3 does not exist)."""
    path = preprocessed_root() / dataset_name / SPLITS_FILE
    if not path.is_file():
        return {}
    splits = read_splits(path)
    absent = [f for f in folds if int(f) >= len(splits)]
    if absent:
        held = [str(k) for k in range(len(splits))]
        raise EvaluationError(
            f"{path}: the split file holds folds {', '.join(held)}, not fold(s) {', '.join(absent)} (find-best's default "
            f"is 0-4); give the folds trained with it: -f {' -f '.join(held)}"
        )
    return {f: list(splits[int(f)]["val"]) for f in folds}


def list_cases_or_empty(folder: Path, file_ending: str) -> dict[str, Path]:
    return list_cases(folder, file_ending) if folder.is_dir() else {}


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no extra disk for probabilities), copy where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def merge_crossval(model_folder: Path, folds: Sequence[str], file_ending: str) -> Path:
    """Gather the folds' validation predictions (and probabilities) into one folder, rebuilt from
    scratch beside the target and renamed into place."""
    target = model_folder / crossval_folder_name(folds)
    remove_stale_temporaries(model_folder, target.name)  # a killed run's staging folder
    staging = staging_folder(target)
    try:
        seen: dict[str, str] = {}
        for fold in folds:
            validation = model_folder / f"fold_{fold}" / "validation"
            for case, path in list_cases(validation, file_ending).items():
                if case in seen:
                    raise EvaluationError(
                        f"{path}: case {case} is also a validation case of fold {seen[case]}; folds must not "
                        "overlap (check the split file the folds were trained with)"
                    )
                seen[case] = fold
                for source in (path, *probability_paths(validation, case)):
                    if source.is_file():
                        _link_or_copy(source, staging / source.name)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def folds_without_probabilities(model_folder: Path, folds: Sequence[str], file_ending: str) -> list[str]:
    """The folds whose validation saved no probabilities for some of its cases (trained without
    ``--save-probabilities``): the model can join no ensemble."""
    def lacking(validation: Path) -> bool:
        cases = list_cases(validation, file_ending)
        return not all(probability_paths(validation, case).probabilities.is_file() for case in cases)
    return [fold for fold in folds if lacking(model_folder / f"fold_{fold}" / "validation")]


def _evaluate(candidate: Candidate, gt_dir: Path, description: DatasetDescription, num_workers: int | None) -> Candidate:
    """The candidate with its cross-validation summary. A merged prediction that cannot be scored (cut short, or of
    labels the dataset lacks) is a link to a fold's validation file, which is named and remade by validating that
    fold again: the reader's own fix ("copy or export it again") left the user rerunning find-best on it."""
    try:
        candidate.summary = evaluate_folders(candidate.crossval_dir, gt_dir, description, num_workers=num_workers)
    except EvaluationError as exc:
        if len(candidate.model_folders) > 1:
            raise
        folder = candidate.model_folders[0]
        raise EvaluationError(
            f"{exc}; {candidate.crossval_dir.name} gathers {folder}/fold_<k>/validation/: validate the fold holding each "
            f"case again (autoseg train DATASET {configuration_of(folder)} <k> --continue), then run find-best again"
        ) from None
    return candidate


def _check_same_cases(candidates: Sequence[Candidate], file_ending: str) -> None:
    """A ranking is only fair when every candidate was validated on the same cases."""
    first = candidates[0]
    cases = set(list_cases(first.crossval_dir, file_ending))
    for other in candidates[1:]:
        differ = cases ^ set(list_cases(other.crossval_dir, file_ending))
        if differ:
            raise EvaluationError(
                f"{other.crossval_dir}: cross-validated on other cases than {first.crossval_dir} (e.g. "
                f"{sorted(differ)[0]}); train all configurations with the same split file"
            )


def ensemble_candidates(
    singles: Sequence[Candidate], dataset_results: Path, folds: Sequence[str], description: DatasetDescription,
    num_workers: int | None,
) -> tuple[list[Candidate], list[str]]:
    """Every pair of candidates that saved probabilities, ensembled over the merged cross-validation, and why
    each other candidate joins none (it was left out without a word, so no ensemble was ranked and none said why)."""
    ending = description.file_ending
    with_probabilities, notes = [], []
    for candidate in singles:
        lacking = folds_without_probabilities(candidate.model_folders[0], folds, ending)
        if not lacking:
            with_probabilities.append(candidate)
            continue
        configuration = configuration_of(candidate.model_folders[0])
        notes.append(
            f"{candidate.name}: in no ensemble: the validation of fold(s) {', '.join(lacking)} saved no probabilities; "
            f"validate each again with autoseg train DATASET {configuration} {lacking[0]} --continue --save-probabilities"
        )
    pairs = []
    for a, b in itertools.combinations(with_probabilities, 2):
        name = ensemble_name((a.name, b.name))
        output = dataset_results / ENSEMBLES_FOLDER / name / crossval_folder_name(folds)
        shutil.rmtree(output, ignore_errors=True)  # never evaluate stale cases of an earlier run
        ensemble_folders([a.crossval_dir, b.crossval_dir], output, num_workers=num_workers, file_ending=ending)
        pairs.append(Candidate(name, a.model_folders + b.model_folders, output))
    return pairs, notes if len(singles) > 1 else []


def ranked_dice(candidate: Candidate) -> float:
    """The candidate's mean foreground Dice as ranking compares it (raw, not rounded); NaN as -inf."""
    dice = candidate.foreground_dice
    return dice if math.isfinite(dice) else -math.inf


def tied_with_best(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates within ``RANK_TOLERANCE`` of the best raw Dice (the best included; none when no Dice is finite).
    Rounding both to 4 decimals still let float noise decide at a rounding boundary (0.88125001 vs 0.88124999)."""
    best = max(map(ranked_dice, candidates), default=-math.inf)
    if not math.isfinite(best):
        return []
    return [c for c in candidates if best - ranked_dice(c) <= RANK_TOLERANCE]


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: those tied with the best Dice (``tied_with_best``) ordered by ``TIE_RULE``, then the others by Dice."""
    tied = tied_with_best(candidates)
    rest = [c for c in candidates if c not in tied]
    return (sorted(tied, key=lambda c: (len(c.model_folders), c.name))
            + sorted(rest, key=lambda c: (-ranked_dice(c), len(c.model_folders), c.name)))


def tie_note(ranked: Sequence[Candidate]) -> str | None:
    """A note naming the candidates that tie with the winner, and the rule that chose among them; None without a tie."""
    tied = [c.name for c in tied_with_best(ranked) if c is not ranked[0]]
    if not tied:
        return None
    best = max(map(ranked_dice, ranked))
    return (f"{ranked[0].name} ties with {', '.join(tied)} at {best:.4f} (mean foreground Dice within {RANK_TOLERANCE:g} "
            f"of the best); chosen by the tie rule: {TIE_RULE}")


def postprocessing_path(best: Candidate) -> Path:
    """A single configuration keeps its decision in its model folder (exported with it); an ensemble's
    lives in its ensemble folder."""
    folder = best.model_folders[0] if len(best.model_folders) == 1 else best.crossval_dir.parent
    return folder / POSTPROCESSING_JSON


def inference_commands(model_folders: Sequence[Path], folds: Sequence[str], decision: dict[str, Any], decision_file: Path) -> list[str]:
    """The exact commands that reproduce the chosen candidate's cross-validation pipeline on new images."""
    fold_args = " ".join(folds)
    predict = "autoseg predict -i INPUT_FOLDER -o {out} -m {folder} -f " + fold_args + f" --checkpoint {PREDICT_CHECKPOINT}"
    if len(model_folders) == 1:
        commands = [predict.format(out="OUTPUT_FOLDER", folder=shlex.quote(str(model_folders[0])))]
    else:
        outputs = [f"OUTPUT_FOLDER_MODEL{i + 1}" for i in range(len(model_folders))]
        commands = [
            predict.format(out=out, folder=shlex.quote(str(folder))) + " --save-probabilities"
            for out, folder in zip(outputs, model_folders)
        ]
        commands.append(f"autoseg ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER")
    if decision["steps"]:
        commands.append(f"autoseg postprocess apply -i OUTPUT_FOLDER -o OUTPUT_FOLDER_PP --decision {shlex.quote(str(decision_file))}")
    return commands


# Keys of a candidate record (and of "best") holding a path under the dataset's results folder, a list for
# model_folders; inference_instructions.json stores them relative to that folder (resolve_instructions).
CANDIDATE_PATH_KEYS = ("model_folders", "crossval_folder", "summary_file", "postprocessing_file")


def _candidate_record(candidate: Candidate) -> dict[str, Any]:
    return {
        "name": candidate.name,
        "model_folders": [str(f) for f in candidate.model_folders],
        "crossval_folder": str(candidate.crossval_dir),
        "summary_file": str(candidate.crossval_dir / "summary.json"),
        "foreground_dice": candidate.foreground_dice,
        "class_dice": candidate.class_dice,
    }


def _map_candidate_paths(instructions: dict[str, Any], convert: Any) -> dict[str, Any]:
    """A copy of the instructions with ``convert`` applied to every path of every candidate and of best."""
    def record(candidate: dict[str, Any]) -> dict[str, Any]:
        converted = dict(candidate)
        for key in CANDIDATE_PATH_KEYS:
            if key in converted:
                value = converted[key]
                converted[key] = [convert(v) for v in value] if isinstance(value, list) else convert(value)
        return converted
    return {**instructions, "candidates": [record(c) for c in instructions["candidates"]], "best": record(instructions["best"])}


def portable_instructions(instructions: dict[str, Any], dataset_results: Path) -> dict[str, Any]:
    """The instructions as stored: candidate paths relative to the dataset's results folder, so a results
    root copied or moved elsewhere (``cp -r``, another machine) reports from its own files, not the
    original's. The commands keep absolute paths: they are for the shell, run where find-best ran."""
    return _map_candidate_paths(instructions, lambda p: Path(p).relative_to(dataset_results).as_posix())


def resolve_instructions(instructions: dict[str, Any], dataset_results: Path) -> dict[str, Any]:
    """Stored instructions with their candidate paths resolved against the dataset's results folder now in
    use; absolute paths (files of earlier versions) stay as they are."""
    return _map_candidate_paths(instructions, lambda p: str(dataset_results / p))


def check_fold_names(folds: Sequence[str]) -> None:
    """Every fold a cross-validation fold's number: ``-f 0,1,2`` (one fold per ``-f`` here, as in predict and
    export-model) was looked for as a fold named '0,1,2', refused as missing validation predictions only
    after the dataset checks; ``-f all`` trains without validation, so it has none to rank."""
    bad = next((f for f in folds if not (f.isascii() and f.isdigit())), None)
    if bad is None:
        return
    values = [v for v in bad.replace(",", " ").split() if v]
    hint = f" (-f {' -f '.join(values)}, or -f {' '.join(values)})" if len(values) > 1 else ""
    raise EvaluationError(f"fold {bad!r}: not a cross-validation fold; give one fold number per -f{hint}; fold 'all' "
                          "has no validation predictions to rank")


def find_best(
    dataset_spec: DatasetSpec,
    folds: int | str | Sequence[int | str] = DEFAULT_FOLDS,
    configurations: str | Sequence[str] | None = None,
    allow_ensembles: bool = True,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Evaluate every trained configuration (and pairwise ensemble), choose the best, determine its
    postprocessing and write the inference instructions; returns what ``inference_instructions.json`` holds,
    its paths resolved (``resolve_instructions``).

    Args:
        folds: the folds to merge, a sequence or one fold.
        configurations: only consider model folders of these configurations (e.g. ``3d_fullres``, or a list).
        allow_ensembles: also evaluate pairwise ensembles of candidates that saved probabilities.
    """
    folds = string_list(folds)
    check_fold_names(folds)
    repeated = next((f for f in folds if folds.count(f) > 1), None)
    if repeated is not None:
        raise EvaluationError(f"fold {repeated} is given twice; give each fold once (e.g. -f 0 -f 1 -f 2 -f 3 -f 4)")
    dataset = resolve_dataset(dataset_spec)
    # Absolute: the instructions, summaries and printed commands record these paths, and a root given
    # relative (AUTOSEG_RESULTS=res) left them valid only in the folder find-best ran from (report and
    # the commands failed elsewhere).
    dataset_results = results_root().absolute() / dataset.name
    gt_dir = preprocessed_root().absolute() / dataset.name / "gt_segmentations"
    if not gt_dir.is_dir():
        raise EvaluationError(f"{gt_dir}: reference segmentations not found; run autoseg preprocess {dataset.name} first")
    probe = next((p for p in sorted(dataset_results.glob("*__*__*")) if (p / "dataset.json").is_file()), None)
    description = load_description(probe if probe is not None else dataset.raw_dir)
    configurations = None if configurations is None else string_list(configurations)
    # One find-best of a dataset at a time: each rebuilds the merged folders (deleting the previous
    # ones), ensembles and summaries that the other would be reading (a second run waits here). The
    # candidates are chosen once the lock is held: chosen before the wait, a fold that a training took up
    # meanwhile was ranked by its earlier validation. (No results folder: trained_model_folders says so.)
    holders = "another find-best or an import-model of this dataset"
    with folder_lock_saying_waits(dataset_results, holders) if dataset_results.is_dir() else contextlib.nullcontext():
        folders, skipped = trained_model_folders(dataset_results, folds, description.file_ending,
                                                 split_val_cases(dataset.name, folds), configurations)
        if configurations is not None:
            check_configurations(dataset_results, configurations)
        if not folders:
            raise no_candidate_error(dataset_results, folds, description.file_ending, skipped, configurations)
        return _select_and_write(dataset.name, dataset_results, folders, skipped, folds, gt_dir, description,
                                 allow_ensembles, num_workers)


def _select_and_write(
    dataset_name: str, dataset_results: Path, folders: Sequence[Path], skipped: list[str], folds: list[str],
    gt_dir: Path, description: DatasetDescription, allow_ensembles: bool, num_workers: int | None,
) -> dict[str, Any]:
    """find_best's work on the chosen model folders: merge, ensemble, evaluate, rank, determine the
    winner's postprocessing, write the instructions (under find_best's lock). The previous run's
    instructions go first: they name merged folders and summaries this run rebuilds, so a run killed
    half-way leaves none (report then asks for find-best) rather than an old ranking beside new summaries."""
    for name in (INSTRUCTIONS_JSON, INSTRUCTIONS_TXT):
        (dataset_results / name).unlink(missing_ok=True)
    singles = [Candidate(f.name, (f,), merge_crossval(f, folds, description.file_ending)) for f in folders]
    _check_same_cases(singles, description.file_ending)
    ensembles: list[Candidate] = []
    if allow_ensembles:
        ensembles, not_ensembled = ensemble_candidates(singles, dataset_results, folds, description, num_workers)
        skipped = skipped + not_ensembled
    ranked = rank([_evaluate(c, gt_dir, description, num_workers) for c in singles + ensembles])
    best = ranked[0]
    decision_file = postprocessing_path(best)
    decision = determine_postprocessing(best.crossval_dir, gt_dir, description, output_json=decision_file, num_workers=num_workers)
    commands = inference_commands(best.model_folders, folds, decision, decision_file)
    _refuse_taken_up(dataset_results, folders, folds)
    instructions = {
        "version": INSTRUCTIONS_VERSION,
        "dataset_name": dataset_name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folds": folds,
        "rank_metric": f"mean foreground Dice over the merged cross-validation (reference §1.7), ties within {RANK_TOLERANCE:g} of the best",
        "tie_rule": TIE_RULE,
        "tie": tie_note(ranked),
        "reference_folder": str(gt_dir),
        "num_cases": best.summary["num_cases"],
        "candidates": [_candidate_record(c) for c in ranked],
        "skipped": skipped,
        "best": {
            **_candidate_record(best),
            "postprocessing_file": str(decision_file),
            "postprocessing_steps": decision["steps"],
            "foreground_dice_postprocessed": decision["dice_after"]["foreground_mean"],
        },
        "commands": commands,
    }
    atomic_write_json(dataset_results / INSTRUCTIONS_JSON, portable_instructions(instructions, dataset_results))
    atomic_write_text(dataset_results / INSTRUCTIONS_TXT, instructions_text(instructions))
    return instructions


def _refuse_taken_up(dataset_results: Path, folders: Sequence[Path], folds: Sequence[str]) -> None:
    """Ask the chosen folders again once their merges, ensembles and postprocessing are done (minutes): a training
    that started meanwhile got its fold ranked by its earlier run's validation, so no best model is named."""
    for folder in folders:
        if training := fold_in_training(folder, folds):
            raise EvaluationError(f"{dataset_results}: a training started while find-best ranked the models, so none "
                                  f"is named best: {training}")


def instructions_text(instructions: dict[str, Any]) -> str:
    """The ranking and the commands, readable in a terminal and runnable line by line."""
    best = instructions["best"]
    lines = [
        f"# {instructions['dataset_name']}: best of {len(instructions['candidates'])} candidate(s) by "
        f"{instructions['rank_metric']}, {instructions['num_cases']} cases",
    ]
    for position, candidate in enumerate(instructions["candidates"], 1):
        lines.append(f"#  {position}. {candidate['name']}: {candidate['foreground_dice']:.4f}")
    lines += [f"# note: {reason}" for reason in instructions["skipped"]]
    if instructions.get("tie"):  # absent from instructions written before ties were noted
        lines.append(f"# tie: {instructions['tie']}")
    lines.append(
        f"# chosen: {best['name']} (with postprocessing: {best['foreground_dice_postprocessed']:.4f}, "
        f"{len(best['postprocessing_steps'])} step(s), decision in {best['postprocessing_file']})"
    )
    lines.append("# replace INPUT_FOLDER and the OUTPUT_FOLDER* names, then run:")
    return "\n".join(lines + instructions["commands"]) + "\n"
