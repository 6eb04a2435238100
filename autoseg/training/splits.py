"""Cross-validation splits: nnU-Net's 5 folds, written once, safely shared by concurrent fold jobs.

reference.md §1.5: sorted case ids, KFold(5, shuffle, seed 12345), saved as ``splits_final.json``;
fold ``all`` trains on every case. The KFold is reimplemented with numpy (same folds as scikit-learn's,
so an nnU-Net split file and ours agree). Five fold jobs started together create the file under a file
lock and write it atomically: none can read a half-written file (reference.md §3).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from filelock import FileLock

from autoseg.dataset.cases import training_cases
from autoseg.dataset.description import load_description
from autoseg.errors import DatasetError, PreprocessingError, TrainingError
from autoseg.paths import parse_dataset_id, resolve_dataset
from autoseg.preprocessing.runner import GT_FOLDER
from autoseg.preprocessing.store import case_paths, check_stored_cases, list_cases
from autoseg.utils.atomic import atomic_write_json, holder_text, shared_holder
from autoseg.utils.jsonio import read_json

# reference.md §1.5
NUM_FOLDS = 5
SPLIT_SEED = 12345
SPLITS_FILE = "splits_final.json"
FOLD_ALL = "all"


def fold_sizes(cases: int, n_folds: int = NUM_FOLDS) -> list[int]:
    """How many cases each fold of ``kfold_splits`` validates: the first ``cases % n_folds`` folds one more
    (scikit-learn's KFold). The planner prices the final validation of the largest (fold 0) from it."""
    return [cases // n_folds + (1 if fold < cases % n_folds else 0) for fold in range(n_folds)]


def kfold_splits(case_ids: Sequence[str], n_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[dict[str, list[str]]]:
    """Shuffled k-fold over sorted case ids: scikit-learn's ``KFold(n_folds, shuffle=True, random_state=seed)``.

    Indices are shuffled by ``RandomState(seed)``; fold ``i`` validates on the i-th consecutive chunk
    (the first ``n % n_folds`` chunks one longer) and trains on the rest; both lists in sorted order.
    """
    keys = sorted(case_ids)
    if len(keys) < n_folds:
        raise TrainingError(
            f"{len(keys)} training cases cannot be split into {n_folds} folds; add cases, train fold "
            f"'{FOLD_ALL}' (no validation), or write your own {SPLITS_FILE} into the dataset's preprocessed folder "
            f"with fewer folds (a list of {{\"train\": [case ids], \"val\": [case ids]}}, one per fold) and pass "
            "those folds to find-best (-f 0 -f 1 ...)"
        )
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = fold_sizes(len(keys), n_folds)
    splits = []
    start = 0
    for size in sizes:
        val = order[start : start + size]
        in_val = np.zeros(len(keys), dtype=bool)
        in_val[val] = True
        splits.append({"train": [keys[i] for i in np.flatnonzero(~in_val)], "val": [keys[i] for i in np.flatnonzero(in_val)]})
        start += size
    return splits


def load_or_create_splits(folder: Path, case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """The splits in ``folder/splits_final.json``, created first if absent (a user's file wins)."""
    path = Path(folder) / SPLITS_FILE
    if not path.exists():  # a folder in its place is left to read_splits to refuse
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.exists():  # another job may have written it while we waited
                atomic_write_json(path, kfold_splits(case_ids))
    return read_splits(path)


def read_splits(path: Path) -> list[dict[str, list[str]]]:
    """The folds of a split file, checked. Read as every JSON file is (``read_json``): one saved in another encoding
    than UTF-8 (a case id with an accent, from a Windows editor) stopped train, find-best and the cascade with an
    internal UnicodeDecodeError."""
    splits = read_json(path, TrainingError, "not found; `autoseg train` writes it (or write your own)",
                       "fix or delete it to recreate it")
    if not isinstance(splits, list) or not all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list) for s in splits
    ):
        raise TrainingError(
            f"{path}: a split file must be a JSON list of {{\"train\": [case ids], \"val\": [case ids]}}; "
            "fix or delete it to recreate it"
        )
    if not splits:
        raise TrainingError(f"{path}: the split file holds no folds (an empty list); fix or delete it to recreate it")
    for index, split in enumerate(splits):
        for part in ("train", "val"):
            odd = [case for case in split[part] if not isinstance(case, str)]
            if odd:  # else a set or a join further on fails with an internal TypeError
                raise TrainingError(
                    f"{path}: fold {index} '{part}' holds {json.dumps(odd[0])}, not a case id; case ids are strings "
                    "such as \"case_001\" (the file names without channel suffix and ending); fix or delete it to recreate it"
                )
    return splits


def canonical_fold(fold: int | str) -> str:
    """``all`` or the fold's number as written in ``fold_<k>`` folders: ``03`` or ``+3`` is fold ``3``.

    The fold names the model's ``fold_<k>`` folder, where prediction (``-f 3``), find-best and the
    report look for it; ``03`` trained into ``fold_03``, which none of them found.
    """
    text = str(fold).strip()
    if text == FOLD_ALL:
        return FOLD_ALL
    try:
        return str(int(text))
    except ValueError:
        raise TrainingError(f"fold {fold!r} is not a number or '{FOLD_ALL}'") from None


def fold_cases(
    folder: Path, case_ids: Sequence[str], fold: int | str, create: bool = True
) -> tuple[list[str], list[str]]:
    """``(train, val)`` case ids of ``fold`` (0.. or ``all``), checked against the available cases. Without
    ``create`` a missing split file is refused (``read_splits``) instead of written: a check must never write one."""
    available = set(case_ids)
    name = canonical_fold(fold)
    if name == FOLD_ALL:
        everything = sorted(available)
        return everything, everything
    index = int(name)
    path = Path(folder) / SPLITS_FILE
    train, val = named_fold_cases(folder, index, load_or_create_splits(folder, case_ids) if create else None)
    missing = sorted(set(train + val) - available)
    if missing:
        raise TrainingError(
            f"{path}: fold {index} names {len(missing)} case(s) missing from the preprocessed data "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); preprocess them or fix the split file"
        )
    if not train or not val:
        raise TrainingError(f"{path}: fold {index} has an empty train or val list")
    _refuse_repeated_cases(path, index, train, val)
    return train, val


def named_fold_cases(folder: Path, index: int, splits: Sequence[dict[str, list[str]]] | None = None
                     ) -> tuple[list[str], list[str]]:
    """``(train, val)`` of fold ``index`` as ``folder``'s split file lists them (``splits``: its folds, read already),
    unchecked against the stored cases: what train's listing waits for before ``fold_cases`` checks them."""
    path = Path(folder) / SPLITS_FILE
    splits = read_splits(path) if splits is None else splits
    if not 0 <= index < len(splits):
        raise TrainingError(f"fold {index} does not exist: {path} holds folds 0-{len(splits) - 1} (or use '{FOLD_ALL}')")
    return list(splits[index]["train"]), list(splits[index]["val"])


def stored_cases(store: Path, fold: int | str) -> list[str]:
    """The cases stored in ``store`` (``list_cases``), as train picks a fold's cases from them. While a preprocess run
    holds the store (its shared lock, held for its whole run), the cases the fold needs (the split file's fold; with no
    split file yet, or for fold 'all', every training case of the raw dataset) that the listing lacks are waited for
    (one bounded wait) where their arrays are there (being stored again: the marker is removed meanwhile), and refused,
    naming them, where they are not or are still missing: train split only the cases stored so far, or stopped with
    'fold k names 1 case(s) missing from the preprocessed data'. Refused too, for a fold with validation, while the
    references of its cases are not copied yet. A run re-storing a complete store holds up no train."""
    folder, name = Path(store).parent, canonical_fold(fold)
    writer = shared_holder(store)
    case_ids = list_cases(store)
    writer = shared_holder(store) if writer is None else writer  # asked before and after listing
    if writer is None:
        return case_ids
    dataset = _dataset_cases(folder)
    split = name != FOLD_ALL and (folder / SPLITS_FILE).is_file()
    if split:
        train, val = named_fold_cases(folder, int(name))
        wanted, scored = train + val, val
    elif dataset is None:  # the cases the fold needs are unknown: they would be only those stored so far
        raise _being_written(store, writer, f"fold {name}'s cases would be only those stored so far")
    else:
        wanted, scored = dataset[0], ([] if name == FOLD_ALL else dataset[0])
    case_ids = _wait_for_missing(store, name, wanted, case_ids, not split)
    if dataset is not None:
        _refuse_references_missing(store, name, scored, dataset[1])
    return case_ids


def _wait_for_missing(store: Path, fold: str, wanted: Sequence[str], case_ids: list[str], whole_dataset: bool
                      ) -> list[str]:
    """The store's listing once the ``wanted`` cases it lacks are stored, waited for (``check_stored_cases``: one
    bounded wait for all) only where their arrays are there; refused, naming them, where some are still missing while
    a preprocess run holds the store. ``whole_dataset``: ``wanted`` is every training case, not a fold's."""
    missing = sorted(set(wanted) - set(case_ids))
    if not missing:
        return case_ids
    if all(case_paths(store, case_id)[0].exists() for case_id in missing):  # none is stored for the first time
        with contextlib.suppress(PreprocessingError):  # still missing: refused below, or named by fold_cases
            check_stored_cases(store, missing)
        case_ids = list_cases(store)
        missing = sorted(set(wanted) - set(case_ids))
    if missing and (writer := shared_holder(store)) is not None:
        pending = (f"{len(missing)} of the dataset's {len(set(wanted))} training case(s) are not stored yet "
                   f"({_some(missing)}), so fold {fold}'s cases would be only those stored so far" if whole_dataset else
                   f"{len(missing)} case(s) of fold {fold} are not stored yet ({_some(missing)})")
        raise _being_written(store, writer, pending)
    return case_ids


def _refuse_references_missing(store: Path, fold: str, scored: Sequence[str], file_ending: str) -> None:
    """Refuse a fold whose validation cases (``scored``) lack the references preprocess copies last, while its run
    holds the store: train went on, then refused them with 're-run autoseg preprocess', the very run going on."""
    references = store.parent / GT_FOLDER
    missing = sorted(case for case in set(scored) if not (references / f"{case}{file_ending}").is_file())
    if missing and (writer := shared_holder(store)) is not None:
        pending = (f"the references of {len(missing)} case(s) ({_some(missing)}), which fold {fold}'s validation "
                   f"scores against, are not copied into {references} yet")
        raise _being_written(store, writer, pending)


def _being_written(store: Path, writer: int, pending: str) -> TrainingError:
    """The refusal of a fold's cases while a preprocess run holds the store, saying what is ``pending``."""
    return TrainingError(f"{store}: `autoseg preprocess` ({holder_text(writer)}) is storing cases into this folder "
                         f"right now, and {pending}; start train again once that preprocess has finished")


def _dataset_cases(folder: Path) -> tuple[list[str], str] | None:
    """The training case ids of the raw dataset whose preprocessed folder is ``folder``, as preprocess lists them, and
    its file ending; None where they cannot be listed (no such raw dataset, a broken dataset.json), or where
    ``folder`` is named like no dataset (a store outside the preprocessed root: nothing to resolve)."""
    if parse_dataset_id(folder.name) is None:
        return None
    try:
        location = resolve_dataset(folder.name)
        if location.preprocessed_dir.resolve() != folder.resolve():
            return None
        description = load_description(location.raw_dir)
        return [case.case_id for case in training_cases(location.raw_dir, description)], description.file_ending
    except (DatasetError, OSError):
        return None


def _some(cases: Sequence[str]) -> str:
    """The first five of ``cases`` for a message, '...' after them where there are more."""
    return f"{', '.join(cases[:5])}{'...' if len(cases) > 5 else ''}"


def _refuse_repeated_cases(path: Path, index: int, train: Sequence[str], val: Sequence[str]) -> None:
    """Refuse a hand-edited fold that lists a case twice or in both train and val.

    A case in both leaks into the validation it is scored on (the fold's Dice reads too high without a
    word); a case listed twice in ``val`` was predicted twice while the summary counted it once, and one
    listed twice in ``train`` is silently sampled twice as often.
    """
    for part, cases in (("train", train), ("val", val)):
        repeated = sorted(case for case, count in Counter(cases).items() if count > 1)
        if repeated:
            raise TrainingError(
                f"{path}: fold {index} lists {', '.join(repeated[:5])}{'...' if len(repeated) > 5 else ''} more than "
                f"once in '{part}'; list each case once"
            )
    both = sorted(set(train) & set(val))
    if both:
        raise TrainingError(
            f"{path}: fold {index} has {len(both)} case(s) in both 'train' and 'val' "
            f"({', '.join(both[:5])}{'...' if len(both) > 5 else ''}), so validation would score cases the fold "
            f"trained on; keep each case in one list, or train fold '{FOLD_ALL}' to train on every case"
        )


def classes_missing_from_training(
    fingerprint: dict[str, Any], class_names: dict[int, str], train: Sequence[str], val: Sequence[str]
) -> list[str]:
    """One note per class that no training case of a fold holds but a validation case does.

    Such a class cannot be learnt in that fold (a class in one case only always lands there in the fold
    validating that case), so its pseudo-Dice, validation Dice and cross-validation share read 0 for a
    reason the scores alone do not show. Uses the fingerprint's voxel counts per case (nothing is read
    again); an unusable fingerprint gives no notes.
    """
    case_ids, counts = _usable_voxel_counts(fingerprint)
    index = {case: i for i, case in enumerate(case_ids)}
    if set(train) == set(val) or not all(c in index for c in [*train, *val]):
        return []
    notes = []
    for label, per_case in sorted(counts.items()):
        if any(per_case[index[c]] for c in train):
            continue
        holders = [c for c in val if per_case[index[c]]]
        if holders:
            name = class_names.get(label)
            notes.append(
                f"note: class {label}{f' ({name})' if name else ''} is in no training case of this fold, only in "
                f"validation case(s) {', '.join(holders[:5])}{'...' if len(holders) > 5 else ''}: the fold cannot "
                "learn it and scores 0 for it; train fold 'all', or move such a case into training in splits_final.json"
            )
    return notes


def _usable_voxel_counts(fingerprint: dict[str, Any]) -> tuple[list[str], dict[int, list[Any]]]:
    """The fingerprint's case ids and the classes' voxel counts with one entry per case, as far as they are
    usable: a hand-edited fingerprint (counts as a list, a class "x", a count of 5 or null for every case, ids
    as a string) stopped the fold's start with an internal AttributeError, ValueError or TypeError, for notes
    that are only advice."""
    case_ids, counts = fingerprint.get("case_ids"), fingerprint.get("class_voxel_counts")
    if not (isinstance(case_ids, list) and all(isinstance(c, str) for c in case_ids) and isinstance(counts, dict)):
        return [], {}
    return case_ids, {int(label): per_case for label, per_case in counts.items()
                      if str(label).isdecimal() and isinstance(per_case, list) and len(per_case) == len(case_ids)}


def read_fingerprint_quietly(path: Path) -> dict[str, Any]:
    """The fingerprint as JSON, or ``{}`` when it is missing or unreadable (it only feeds notes here)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
