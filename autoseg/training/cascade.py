"""The cascade's hand-over: 3d_lowres predictions onto the 3d_cascade_fullres preprocessed grid.

The lowres stage's cross-validation writes every case's prediction (input geometry) to
``<lowres model folder>/predicted_next_stage/`` (docs/architecture.md). Before a cascade fold trains,
each is moved onto the fullres grid with the labels' own transpose, crop and resampling, and cached as
``<case>.npy`` (memory-mapped by the data loader, so patches are read without loading whole cases).
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from autoseg.dataset.description import DatasetDescription, load_description, previous_stage_label_problem
from autoseg.dataset.imageio import Geometry, geometry_differences, read_image
from autoseg.dataset.verify import label_value_problem
from autoseg.errors import TrainingError
from autoseg.preprocessing.inverse import label_to_preprocessed_grid
from autoseg.preprocessing.runner import declared_label_values
from autoseg.preprocessing.store import case_paths, load_case_waiting
from autoseg.training.checkpoints import split_digest
from autoseg.training.splits import FOLD_ALL, SPLITS_FILE, canonical_fold, fold_cases, read_splits, stored_cases
from autoseg.utils.atomic import atomic_path, atomic_write_json, folder_lock
from autoseg.utils.jsonio import read_json

NEXT_STAGE_FOLDER = "predicted_next_stage"
CACHE_FOLDER = "previous_stage_on_grid"
HANDED_BY_SUFFIX = ".handed_by.json"  # beside each copy: the fold and split (split_sha256) that handed it on
_NOT_THIS_PREDICTION = ("it is not a prediction of this dataset's previous stage for this case: delete it and train the "
                        "previous stage's fold that validates this case again")


def previous_stage_predictions(results_dir: Path, network: str, plans_name: str, previous: str) -> Path:
    return results_dir / f"{network}__{plans_name}__{previous}" / NEXT_STAGE_FOLDER


def check_previous_stage_labels(predictions: Path, description: DatasetDescription, dataset_json: Path | str) -> None:
    """Refuse previous-stage predictions of a model trained on other labels than ``description``'s (its model
    folder's dataset.json): their label maps passed the value check, and the cascade trained on input channels of
    other classes (renumbered ones, or one always empty). A folder without dataset.json is left to the checks of
    each file."""
    previous_json = predictions.parent / "dataset.json"
    if not previous_json.is_file():
        return
    if problem := previous_stage_label_problem(load_description(predictions.parent), previous_json, description, dataset_json):
        raise TrainingError(problem)


def handed_by_path(predictions: Path, case_id: str) -> Path:
    return predictions / f"{case_id}{HANDED_BY_SUFFIX}"


def record_handed_on(predictions: Path, case_id: str, fold: str, split: str | None) -> None:
    """Record which fold, trained on which split, handed ``case_id``'s prediction on (written atomically, after the
    copy): the cascade then knows a copy whose fold no longer validates the case (retrained on another split, or its
    folder deleted), which it trained on without a word."""
    atomic_write_json(handed_by_path(predictions, case_id), {"fold": fold, "split_sha256": split})


def hand_on(predictions: Path, label_map: Path, case_id: str, fold: str, split: str | None) -> None:
    """Copy a fold's validation ``label_map`` of ``case_id`` to ``predictions`` (``predicted_next_stage/``) and record
    the fold, under the folder's lock: between the copy and its record, another fold starting afresh
    (``clear_handed_on``) read the old record, named itself, and deleted the new copy."""
    predictions.mkdir(parents=True, exist_ok=True)
    with folder_lock(predictions):
        with atomic_path(predictions / label_map.name) as tmp:
            shutil.copyfile(label_map, tmp)
        record_handed_on(predictions, case_id, fold, split)


def clear_handed_on(predictions: Path, case_ids: Sequence[str], fold: str, validation: Path, file_ending: str) -> None:
    """Remove the copies of ``case_ids`` in ``predictions`` that ``fold`` handed on (its record names it; a copy
    without a record where it equals the fold's ``validation``), each with its record, under the folder's lock
    (``hand_on``). A case another fold has handed on since stays, even a byte-identical one."""
    if not predictions.is_dir():
        return
    with folder_lock(predictions):
        for case_id in case_ids:
            name = f"{case_id}{file_ending}"
            mine, given = validation / name, predictions / name
            handed = handing_fold(predictions, case_id)
            if handed == fold or (handed is None and mine.is_file() and given.is_file()
                                  and filecmp.cmp(mine, given, shallow=False)):
                given.unlink(missing_ok=True)
                handed_by_path(predictions, case_id).unlink(missing_ok=True)


def _handed_record(predictions: Path, case_id: str) -> dict[str, Any] | None:
    """The record of the fold that handed ``case_id`` on; None without one (an earlier autoseg's copy)."""
    path = handed_by_path(predictions, case_id)
    if not path.is_file():
        return None
    record = read_json(path, TrainingError, "missing", "delete it and train the previous stage's fold that validates "
                       "this case again")
    return record if isinstance(record, dict) and "fold" in record else None


def handing_fold(predictions: Path, case_id: str) -> str | None:
    """The fold that handed ``case_id`` on, per its record; None without one."""
    record = _handed_record(predictions, case_id)
    return None if record is None else str(record["fold"])


def _stale_handing(predictions: Path, case_id: str, store: Path, file_ending: str,
                   split_of: Callable[[str], tuple[list[str], list[str]] | None]) -> str | None:
    """Why the fold that handed ``case_id`` on no longer validates it in the current split, else None: its folder
    or validation of the case is gone, or the split file (``split_of(fold)``) gives it other cases than it was
    trained on (with no split file yet, there is no current split to differ from)."""
    record = _handed_record(predictions, case_id)
    if record is None:
        return None
    fold = str(record["fold"])
    validated = predictions.parent / f"fold_{fold}" / "validation" / f"{case_id}{file_ending}"
    if not validated.is_file():
        return f"fold {fold} handed it on, but {validated} is gone (the fold deleted, or being trained again)"
    split = split_of(fold)
    if split is None:  # no split yet (the file deleted): nothing to compare the fold's split with
        return None
    train, val = split
    if case_id not in val or record.get("split_sha256") not in (None, split_digest(train, val)):
        return f"fold {fold} handed it on when trained on another split than {store.parent / SPLITS_FILE} gives it now"
    return None


def _fold_splits(store: Path) -> Callable[[str], tuple[list[str], list[str]] | None]:
    """``fold -> (train, val)`` over every stored case, as the fold was trained (none where the split file cannot
    give it; None where there is no split file yet), each fold read once: per case, the split file was parsed and the
    store listed again. It only reads: it wrote a fresh split file where the user had deleted theirs."""
    @functools.cache
    def split_of(fold: str) -> tuple[list[str], list[str]] | None:
        try:
            if canonical_fold(fold) != FOLD_ALL and not (store.parent / SPLITS_FILE).exists():
                return None
            return fold_cases(store.parent, stored_cases(store, fold), fold, create=False)  # a case stored again waited for
        except TrainingError:
            return [], []

    return split_of


def _read_splits_unlocked(predictions: Path, case_ids: Sequence[str],
                          split_of: Callable[[str], tuple[list[str], list[str]] | None]) -> None:
    """Read (into ``split_of``'s cache) the split of each fold that handed a case on, before the predictions' lock:
    the store's listing waits up to 30 s for a case being stored again, and every lowres fold handing a case on waited
    that long behind the lock. A record changed meanwhile names a fold read under the lock, as before."""
    for case_id in case_ids:
        with contextlib.suppress(TrainingError):  # removed meanwhile, or unreadable: told under the lock
            if (fold := handing_fold(predictions, case_id)) is not None:
                split_of(fold)


def prepare_previous_stage(
    predictions: Path,
    cache: Path,
    store: Path,
    case_ids: Sequence[str],
    plans: dict[str, Any],
    configuration: str,
    file_ending: str,
) -> Path:
    """Cache every case's previous-stage labels on this configuration's grid; return the cache folder."""
    missing = [c for c in case_ids if not (predictions / f"{c}{file_ending}").is_file()]
    if missing:
        raise TrainingError(
            f"{predictions}: previous-stage predictions missing for {len(missing)} case(s) "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); "
            f"{_folds_to_train(missing, store.parent / SPLITS_FILE)}"
        )
    split_of = _fold_splits(store)
    _read_splits_unlocked(predictions, case_ids, split_of)
    with folder_lock(predictions) if case_ids else contextlib.nullcontext():  # each copy with its record (hand_on)
        for case_id in case_ids:
            if problem := _stale_handing(predictions, case_id, store, file_ending, split_of):
                raise TrainingError(
                    f"{predictions / f'{case_id}{file_ending}'}: previous-stage prediction of a fold that no longer "
                    f"validates this case ({problem}); {_folds_to_train([case_id], store.parent / SPLITS_FILE)}")
    cache.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        target = cache / f"{case_id}.npy"
        source = predictions / f"{case_id}{file_ending}"
        # The grid is the stored case's: a case preprocessed again (a new plan) after the cache was made
        # gets a new cache, not the old grid's labels (shifted, or of another shape).
        made_from = max(source.stat().st_mtime, _stored_time(store, case_id))
        if target.is_file() and target.stat().st_mtime >= made_from:
            continue
        labels, geometry = read_image(source)
        properties = load_case_waiting(store, case_id)[2]  # waits for a preprocess storing the case again
        if problem := label_value_problem(source, labels, declared_label_values(plans), fix=_NOT_THIS_PREDICTION):
            raise TrainingError(problem)
        if problem := _grid_problem(labels, geometry, properties):
            raise TrainingError(f"{source}: previous-stage prediction {problem}; {_NOT_THIS_PREDICTION}")
        on_grid = label_to_preprocessed_grid(labels, properties, plans, configuration)
        with atomic_path(target) as tmp:
            np.save(tmp, np.asarray(on_grid, dtype=np.int16)[None], allow_pickle=False)
    return cache


def _stored_time(store: Path, case_id: str) -> float:
    """When the case was stored (its properties file's time); a case that ``autoseg preprocess`` is storing again
    (its properties file removed meanwhile) is waited for, not a FileNotFoundError traceback."""
    try:
        return case_paths(store, case_id)[2].stat().st_mtime
    except FileNotFoundError:
        load_case_waiting(store, case_id)  # waits (bounded) for the writer; a case still missing is named
    return case_paths(store, case_id)[2].stat().st_mtime


def _folds_to_train(missing: Sequence[str], splits_path: Path) -> str:
    """The fix for missing previous-stage predictions: the folds of ``splits_path`` whose validation sets
    hold them (each fold writes its validation cases). It said "train all 5 folds" whatever the splits
    file held, and nothing of a case in no fold's validation set, which no fold ever predicts."""
    if not splits_path.is_file():
        return "train every fold of the previous stage first (each writes its validation cases there)"
    splits = read_splits(splits_path)
    folds = sorted({i for i, split in enumerate(splits) if set(split["val"]) & set(missing)})
    unvalidated = [c for c in missing if not any(c in split["val"] for split in splits)]
    fixes = [f"train fold(s) {', '.join(map(str, folds))} of the previous stage first (of {len(splits)} in "
             f"{splits_path}; each writes its validation cases there)"] if folds else []
    if unvalidated:
        fixes.append(f"{', '.join(unvalidated[:5])}{'...' if len(unvalidated) > 5 else ''} in no fold's 'val' of "
                     f"{splits_path}, so no fold predicts them: add each to one fold's 'val' and train that fold")
    return "; ".join(fixes)


def _grid_problem(labels: np.ndarray, geometry: Geometry, properties: dict[str, Any]) -> str | None:
    """What makes a previous-stage label map of the dataset's labels no prediction of this case: another grid
    than the case's image (it was resampled onto the case's grid, shifted or stretched, without a word). Another
    dataset's or a hand-made 3d_lowres prediction did so, and held labels the dataset lacks (its one-hot input
    silently dropped them; ``label_value_problem`` refuses those); the case's own model writes neither."""
    expected = tuple(properties["shape_original"])
    differences = [] if labels.shape[-len(expected):] == expected else [f"size {labels.shape[-len(expected):]} vs {expected}"]
    differences += geometry_differences(geometry, Geometry.from_dict(properties["geometry"]))
    if differences:
        return f"lies on another grid than the case's image ({'; '.join(differences)})"
    return None
