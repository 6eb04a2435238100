"""``autoseg preprocess``: every training case of a dataset through ``preprocess_case`` into the store.

Parallel over cases; a failing case is named with its reason while the others complete. Resumable: a
case whose stored properties carry the same input fingerprint (plan parameters + input files) and whose
files pass the store's cheap checks (``store.open_case``) is skipped; a case killed mid-write has no
properties JSON, and one cut short or emptied later fails the checks, so both are redone. Nothing is
deleted except the temporary files of killed runs (``remove_stale_temporaries``), the stored copies of cases that
failed now or that the dataset no longer lists (and their ground truth once no store holds them), and raw data is
only read. A case stored in no store of the run gets no ground-truth copy.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet as Set, Any, Callable, Sequence

import numpy as np

from autoseg.dataset.cases import Case, training_cases
from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import (
    TIFF_ENDINGS,
    case_nonfinite_voxels,
    detached_data_files,
    header_with_data_files_renamed,
    read_case_images,
    read_image,
    spelled_ending,
    tiff_spacing_files,
)
from autoseg.dataset.verify import label_geometry_problem, label_value_problem, nonfinite_problem, only_ignore_problem
from autoseg.errors import DatasetError, PreprocessingError
from autoseg.fingerprint.cropping import crop_slices
from autoseg.paths import DatasetSpec, resolve_dataset
from autoseg.planning.plans import (
    check_plans_follow_dataset,
    get_configuration,
    load_plans,
    plans_path,
)
from autoseg.preprocessing import store
from autoseg.preprocessing.pipeline import preprocess_case
from autoseg.utils.atomic import atomic_path, atomic_write_json, folder_lock, remove_stale_temporaries
from autoseg.utils.disk import stop_on_full_disk
from autoseg.utils.file_identity import file_signature
from autoseg.utils.names import string_list
from autoseg.utils.progress import Failure, parallel_map, stage_workers

FORMAT_VERSION = 2  # bump when preprocessing changes its output for the same plan and input (2: 333a523, slices clipped)
TIMING_SUFFIX = "_preprocess_timing.json"


def timing_path(store: Path) -> Path:
    """Where ``preprocess`` records how long it took for a store: beside the store (which holds cases only)."""
    return store.parent / f"{store.name}{TIMING_SUFFIX}"


GT_FOLDER = "gt_segmentations"
# Configuration keys that change preprocessed values; others (batch size, network...) do not.
FINGERPRINT_KEYS = ("spatial_dims", "spacing", "normalization", "resampling")
# A case keeping less than this share of its annotated (non-ignore) volume at the planned spacing is named
# in a warning: sparse annotations (scribbles a voxel thick) fade into the ignore label when coarsened.
ANNOTATION_KEPT_WARNING = 0.5


@dataclass
class ConfigurationReport:
    """What happened to one data identifier (shared by configurations with the same one)."""

    configurations: list[str]
    data_identifier: str
    output_dir: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # found stored but damaged, hence redone
    removed: list[str] = field(default_factory=list)  # failed now: their earlier stored copies deleted
    dropped: list[str] = field(default_factory=list)  # stored earlier, no longer in the dataset: deleted
    thinned: dict[str, float] = field(default_factory=dict)  # case -> share of its annotated volume kept
    seconds: float = 0.0  # this store's own time: checking its cases, preparing them

    def thinned_warning(self) -> str | None:
        """The cases that keep less than half of their annotation at the planned spacing, or None."""
        if not self.thinned:
            return None
        kept = ", ".join(f"{case} {share:.0%}" for case, share in sorted(self.thinned.items()))
        return (f"WARNING {', '.join(self.configurations)}: resampled to the planned spacing, these cases keep less "
                f"than half of their annotated (non-ignore) volume: {kept}; sparse annotations thinner than a voxel "
                "there fade into the ignore label: plan so that the configuration keeps the annotation's spacing "
                "(docs/planning.md, 'Choosing resolution') or annotate thicker")


@dataclass
class PreprocessReport:
    dataset_name: str
    plans_name: str
    outputs: list[ConfigurationReport]
    gt_copied: int = 0
    gt_unchanged: int = 0
    gt_dropped: list[str] = field(default_factory=list)  # ground-truth label maps of no listed case: deleted
    gt_failed: list[str] = field(default_factory=list)  # cases stored in no store of this run: ground truth not copied
    # stores of the plan not preprocessed in this run -> their cases no longer in the dataset, deleted
    dropped_elsewhere: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = []
        for out in self.outputs:
            damaged = f"; found damaged, hence redone: {', '.join(out.damaged)}" if out.damaged else ""
            dropped = f"; removed, no longer in the dataset: {', '.join(out.dropped)}" if out.dropped else ""
            lines.append(
                f"{', '.join(out.configurations)} -> {out.output_dir}: {len(out.processed)} preprocessed, "
                f"{len(out.skipped)} already done, {len(out.failed)} failed{damaged}{dropped}"
            )
            if warning := out.thinned_warning():
                lines.append(warning)
        lines.extend(f"{identifier} (not preprocessed in this run): removed, no longer in the dataset: {', '.join(cases)}"
                     for identifier, cases in self.dropped_elsewhere.items())
        dropped = (f"; removed, of no case of the dataset (or of another file ending): {', '.join(self.gt_dropped)}"
                   if self.gt_dropped else "")
        failed = f"; not copied, failed to preprocess: {', '.join(self.gt_failed)}" if self.gt_failed else ""
        lines.append(f"ground truth: {self.gt_copied} copied, {self.gt_unchanged} unchanged{dropped}{failed}; "
                     f"{self.seconds:.1f} s")
        return "\n".join(lines)


def declared_label_values(plans: dict[str, Any]) -> set[int]:
    """Every value a label map may hold under the plans' labels: background, classes (regions: their
    members) and the ignore label."""
    values: set[int] = set()
    for value in plans["labels"].values():
        values.update(value if isinstance(value, list) else [value])
    return values


def foreground_labels(plans: dict[str, Any]) -> list[int]:
    """Label values that are classes: not background, not the ignore label (regions: their members)."""
    ignore = plans.get("ignore_label")
    return sorted(v for v in declared_label_values(plans) if v > 0 and v != ignore)


def annotated_volume_mm3(seg: np.ndarray, ignore_label: int, spacing: Sequence[float]) -> float:
    """The volume of a label map's voxels that are not the ignore label (background scribbles count)."""
    return float(np.count_nonzero(seg != ignore_label)) * math.prod(spacing)


def annotation_kept(seg: np.ndarray, seg_pp: np.ndarray, ignore_label: int | None, label: Path,
                    properties: dict[str, Any]) -> float | None:
    """The share of a case's annotated volume its preprocessed labels keep (None without an ignore label).
    Resampling sparse annotations to a coarser spacing let the ignore label win every voxel, and training
    ran with loss 0 without a word: labels left with no annotated voxel are refused, naming the spacings."""
    if ignore_label is None:
        return None
    # Only the crop is compared: the background of an image's zero border (a skull-stripped MRI's) is cropped
    # away at any spacing, and counting it named cases at their own spacing as keeping 12-19% of it.
    cropped = seg.transpose(properties["transpose_forward"])[crop_slices(properties["bbox"])]
    before = annotated_volume_mm3(cropped, ignore_label, properties["spacing"])
    after = annotated_volume_mm3(seg_pp, ignore_label, properties["target_spacing"])
    if after > 0:
        return after / before
    shown = lambda spacing: "x".join(f"{s:.4g}" for s in spacing)  # noqa: E731
    lost = (f"resampled from {shown(properties['spacing'])} mm to the planned {shown(properties['target_spacing'])} mm, "
            f"its {np.count_nonzero(cropped != ignore_label)} annotated voxel(s) all became the ignore label {ignore_label}: "
            "the annotation is thinner than a voxel at that spacing; plan so that the configuration keeps the "
            "annotation's spacing (a larger --budget; docs/planning.md, 'Choosing resolution'), preprocess and train "
            "another configuration (-c; 3d_lowres is coarser by design), or annotate thicker")
    # a label of the ignore label only is refused before (only_ignore_problem); here, one annotated outside the crop only
    outside = "annotates no voxel inside its image's nonzero region (the crop): nothing to learn; annotate it or leave it out"
    raise DatasetError(f"{label}: {lost if before else outside}")


def companion_files(image: Path) -> list[Path]:
    """The files read with an image that hold part of it: a 3D TIFF's spacing sidecar (``.json``) and a
    detached header's data files (``.mhd`` + ``.raw``, ``.nhdr`` + ``.raw.gz``), where they exist."""
    sidecar = image.with_suffix(".json")
    files = [sidecar] if image.suffix.lower() in TIFF_ENDINGS and sidecar.is_file() else []
    return files + [image.parent / name for name in detached_data_files(image) if (image.parent / name).is_file()]


def _files_read_with(path: Path) -> list[Path]:
    """The files read with an input: its ``companion_files`` and every spacing file of a TIFF that exists. A
    channel file ``<case>_0000.tif`` takes its spacing from ``<case>.json``, which ``companion_files`` (fit for
    a label's copy) does not name: an image's spacing edited after preprocessing left its case 'already done'."""
    spacing = [f for f in tiff_spacing_files(path) if f.is_file()] if path.suffix.lower() in TIFF_ENDINGS else []
    return list(dict.fromkeys([*companion_files(path), *spacing]))


def input_fingerprint(case: Case, plans: dict[str, Any], config: dict[str, Any]) -> str:
    """Hash of everything a stored case depends on: plan parameters and the input files' size, mtime
    and first 64 KiB (fast, and any rewrite of a file changes its mtime), their companion files included
    (the voxels of an ``.mhd`` lie in its ``.raw``: hashing the header alone kept a stale copy of an
    edited ``.raw``)."""
    inputs = [*case.images, *([case.label] if case.label else [])]
    content = {
        "format": FORMAT_VERSION,
        "transpose_forward": plans["transpose_forward"],
        "labels": plans["labels"],
        "ignore_label": plans.get("ignore_label"),
        "configuration": {k: config.get(k) for k in FINGERPRINT_KEYS},
        "files": [file_signature(p) for p in inputs for p in (p, *_files_read_with(p))],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class DiskFullError(PreprocessingError):
    """The disk (or quota) of a folder preprocess writes to is full: every later case would fail too."""


# How to resume once space is freed, in utils.disk.stop_on_full_disk's one-line refusal (which also takes a full disk
# that blosc2 or SimpleITK report as a RuntimeError, unlike the OSError-only copy this module kept).
PREPROCESS_RERUN = "`autoseg preprocess`: the cases stored so far are kept and skipped"


def stored_state(folder: Path, case_id: str, fingerprint: str) -> str:
    """``done`` (skip it), ``absent`` (never stored, or killed before its marker), ``stale`` (other plan
    parameters or input files, or stored without chunk checksums) or ``damaged`` (fails ``store.open_case``'s
    checks: cut short, emptied by a power loss, overwritten; or its labels are missing). A case that another
    preprocess run of the dataset starts storing again during the check (its marker removed) is ``absent``: it was
    reported as found damaged."""
    if (marker := store.marker_state(folder, case_id)) is None:
        return "absent"
    try:
        _, seg, properties = store.open_case(folder, case_id)
    except store.OutdatedStore:
        return "stale"
    except PreprocessingError:
        return "damaged" if store.marker_state(folder, case_id) == marker else "absent"
    if seg is None:
        return "damaged"
    return "done" if properties.get("input_fingerprint") == fingerprint else "stale"


def preprocess_one(
    case_id: str, images: Sequence[Path], label: Path, plans: dict[str, Any], configuration: str,
    folder: Path, fingerprint: str,
) -> dict[str, Any]:
    """Read, preprocess and store one training case (runs in a worker process)."""
    data, geometry = read_case_images(images, len(plans["channel_names"]))
    if (found := case_nonfinite_voxels(images, data)) is not None:
        # NaN or Inf in an image added or edited after verify: normalization spread one over the whole case
        raise DatasetError(nonfinite_problem(*found))
    seg, label_geometry = read_image(label)
    if seg.shape != data.shape[1:]:
        raise DatasetError(
            f"{label}: shape {seg.shape} differs from its image {images[0]} {data.shape[1:]}; "
            "run `autoseg verify` and fix the label"
        )
    if problem := label_geometry_problem(label, label_geometry, Path(images[0]), geometry):  # saved off its image since plan
        raise DatasetError(problem)
    # a case added or a label edited after verify and plan (a 0/255 mask) was stored and trained on
    problem = (label_value_problem(label, seg, declared_label_values(plans))
               or only_ignore_problem(label, seg, plans.get("ignore_label")))
    if problem:
        raise DatasetError(problem)
    config = get_configuration(plans, configuration)
    data_pp, seg_pp, properties = preprocess_case(data, geometry, plans, config, seg, copy=False)
    kept = annotation_kept(seg, seg_pp, plans.get("ignore_label"), label, properties)
    del data, seg
    properties["case_id"] = case_id
    properties["input_fingerprint"] = fingerprint
    properties["class_locations"] = store.class_locations(seg_pp, foreground_labels(plans), store.case_seed(case_id))
    with stop_on_full_disk(folder, f"case {case_id}", DiskFullError, PREPROCESS_RERUN):
        store.save_case(folder, case_id, data_pp, seg_pp, properties, patch_size=config.get("patch_size"))
    return {"shape": list(data_pp.shape), "annotation_kept": kept}


def copy_ground_truth(label: Path, target: Path) -> bool:
    """Copy a raw label for evaluation, atomically, with a 3D TIFF's spacing sidecar or a detached header's
    data file, copied first: the label marks completion; False when identical copies are already there."""
    copied = False
    for source, destination, content in _ground_truth_files(label, target):
        if destination.is_file() and (filecmp.cmp(source, destination, shallow=False) if content is None
                                      else destination.read_bytes() == content):
            continue
        with atomic_path(destination, durable=False) as tmp:  # compared byte for byte on every run
            if content is None:
                shutil.copyfile(source, tmp)
            else:
                tmp.write_bytes(content)
        copied = True
    return copied


def _ground_truth_files(label: Path, target: Path) -> list[tuple[Path, Path, bytes | None]]:
    """(source, destination, the bytes to write instead of a copy) of a label's ground-truth files, the label last.

    A detached header's data files are named after the target (``p1/seg.mhd``'s ``seg.raw`` -> ``<case>.raw``)
    and its copy names them so: cases listed in dataset.json from folders of their own (``p1/seg.mhd``,
    ``p2/seg.mhd``) all wrote ``gt_segmentations/seg.raw``, each over the last, and every header but the
    last read another case's voxels (cut short or zero-filled)."""
    label_stem, target_stem = label.name[: -len(spelled_ending(label))], target.name[: -len(spelled_ending(target))]
    renamed = {name: target_stem + name[len(label_stem):] if name.startswith(label_stem) else f"{target_stem}_{name}"
               for name in detached_data_files(label)}
    files: list[tuple[Path, Path, bytes | None]] = [
        (source, target.with_suffix(".json") if source == label.with_suffix(".json")
         else target.parent / renamed.get(source.name, source.name), None)
        for source in companion_files(label)]
    changed = any(old != new for old, new in renamed.items())
    return [*files, (label, target, header_with_data_files_renamed(label, renamed) if changed else None)]


def _group_by_identifier(plans: dict[str, Any], names: Sequence[str]) -> dict[str, list[str]]:
    """Configurations sharing a data identifier (e.g. the cascade's fullres) are preprocessed once."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(get_configuration(plans, name)["data_identifier"], []).append(name)
    return groups


def _refuse_clashing_case_ids(raw_dir: Path, cases: Sequence[Case]) -> None:
    """Refuse cases ``x`` and ``x_seg`` before any is stored (``store.clashing_case_ids``): each run stored the
    one preprocessed last in the other's file, and training read an image as a label map or refused it as damaged."""
    clash = store.clashing_case_ids(case.case_id for case in cases)
    if clash is not None:
        case, other = clash
        raise PreprocessingError(
            f"{raw_dir}: cases {case} and {other} cannot both be preprocessed: the stored image of {other} and the "
            f"stored label map of {case} are both {other}{store.DATA_SUFFIX}; rename the files of case {other} "
            f"(e.g. to {case}-seg) and run preprocess again"
        )


def drop_cases_not_in(folder: Path, case_ids: set[str]) -> list[str]:
    """Delete the stored cases of ``folder`` that the dataset no longer lists; returns them. Training takes every
    case of the store: a case removed from imagesTr/labelsTr (a bad scan taken out) was still trained on, as nnU-Net,
    which deletes the whole output folder before preprocessing, never does."""
    dropped = [case for case in store.list_cases(folder) if case not in case_ids]
    for case in dropped:
        store.remove_case(folder, case)
    return dropped


def drop_stale_cases_elsewhere(plans: dict[str, Any], preprocessed_dir: Path, done: Sequence[str],
                               case_ids: set[str]) -> dict[str, list[str]]:
    """Delete the cases the dataset no longer lists from the plan's other stores on disk (data identifiers not in
    ``done``); returns identifier -> deleted cases. ``preprocess -c 3d_fullres`` after a case was taken out left it in
    the 3d_lowres store, and training 3d_lowres still used it. Each store is changed under its shared lock, as by
    its own preprocess run: a train starting meanwhile listed it with no writer in sight and split cases being
    deleted."""
    identifiers = {get_configuration(plans, name)["data_identifier"] for name in plans["configurations"]}
    dropped = {}
    for identifier in sorted(identifiers - set(done)):
        folder = preprocessed_dir / identifier
        if not folder.is_dir():
            continue
        with folder_lock(folder, shared=True):
            if cases := drop_cases_not_in(folder, case_ids):
                dropped[identifier] = cases
    return dropped


def stored_in_any(preprocessed_dir: Path, case_id: str) -> bool:
    """Whether a store in the dataset's ``preprocessed_dir`` still holds ``case_id`` (one preprocessed in an earlier
    run, e.g. by ``-c 3d_lowres`` when this run's ``-c 3d_fullres`` failed it): its ground truth is still that store's
    reference. Every store counts, not only those of this run's plans: gt_segmentations/ is shared by every plans
    name, and a run of one failing a case deleted the reference another's store still used."""
    folders = (path for path in (preprocessed_dir.iterdir() if preprocessed_dir.is_dir() else ())
               if path.is_dir() and not path.name.startswith(".") and path.name != GT_FOLDER)
    return any(store.case_paths(folder, case_id)[2].is_file() for folder in folders)


def drop_ground_truth_not_in(gt_dir: Path, names: set[str]) -> list[str]:
    """Delete the ground-truth label maps (and their companion files) other than ``names``, the dataset's
    ``<case><file_ending>``; returns the deleted label maps' names. A removed case's reference stayed beside the others
    for evaluation and the report, and so did every copy of a dataset converted to another file ending
    (``case.nii.gz`` beside ``case.nrrd``). Hidden files are left alone: a concurrent preprocess's temporary
    (``.<case>.nii.gz.<host>-<pid>-<random>.tmp.nii.gz``) was deleted under it, and that run failed on its rename."""
    labels = [path for path in (gt_dir.iterdir() if gt_dir.is_dir() else ())
              if not path.name.startswith(".") and spelled_ending(path) and path.is_file()]
    dropped = sorted(path.name for path in labels if path.name not in names)
    for name in dropped:
        for companion in companion_files(gt_dir / name):
            companion.unlink(missing_ok=True)
        (gt_dir / name).unlink(missing_ok=True)
    return dropped


def copy_ground_truths(report: PreprocessReport, gt_dir: Path, cases: Sequence[Case], file_ending: str,
                       failed: Set[str] = frozenset(), still_stored: Callable[[str], bool] = lambda case_id: True
                       ) -> None:
    """Copy the raw label of every case but the ``failed`` ones (stored in no store of this run) into ``gt_dir`` for
    evaluation and delete the copies of cases no longer listed or orphaned (failed, and not ``still_stored`` in any
    store of the dataset), counting them in ``report``. A failed case's label was copied and counted as if stored, and
    evaluation compared against a reference of a case with no stored data. Under ``gt_dir``'s lock, the orphans
    decided inside it: a run failing a case deleted the reference another run had just stored and copied."""
    gt_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(gt_dir):
        remove_stale_temporaries(gt_dir)
        orphaned = {case_id for case_id in failed if not still_stored(case_id)}
        kept = {case.case_id for case in cases} - orphaned
        report.gt_dropped = drop_ground_truth_not_in(gt_dir, {f"{case_id}{file_ending}" for case_id in kept})
        report.gt_failed = sorted(failed)
        for case in cases:
            assert case.label is not None
            if case.case_id in failed:
                continue
            with stop_on_full_disk(gt_dir, f"the ground truth of case {case.case_id}", DiskFullError, PREPROCESS_RERUN):
                copied = copy_ground_truth(case.label, gt_dir / f"{case.case_id}{file_ending}")
            if copied:
                report.gt_copied += 1
            else:
                report.gt_unchanged += 1


def _preprocess_store(out: ConfigurationReport, plans: dict[str, Any], cases: Sequence[Case], workers: int,
                      held: contextlib.ExitStack) -> ConfigurationReport:
    """Preprocess the cases not stored yet into one data identifier's store (``out``), deleting the cases the dataset
    no longer lists and the earlier copies of those that fail now; returns ``out``, filled in. The store's shared lock
    is entered into ``held``: the caller keeps it until the references are copied too."""
    started = time.perf_counter()
    name = out.configurations[0]
    config = get_configuration(plans, name)
    items = []
    for case in cases:
        fingerprint = input_fingerprint(case, plans, config)
        state = stored_state(out.output_dir, case.case_id, fingerprint)
        if state == "done":
            out.skipped.append(case.case_id)
        else:
            if state == "damaged":
                out.damaged.append(case.case_id)
            args = (case.case_id, case.images, case.label, plans, name, out.output_dir, fingerprint)
            items.append((case.case_id, args))
    out.output_dir.mkdir(parents=True, exist_ok=True)
    # The store's shared lock for the whole run, not only around each case (save_case's): a train started between
    # two cases of the dataset's first run (or before its references were copied) found no writer and split the
    # cases stored so far (or was refused for references missing).
    held.enter_context(folder_lock(out.output_dir, shared=True))
    remove_stale_temporaries(out.output_dir)  # a killed run's; a concurrent run's are left alone
    out.dropped = drop_cases_not_in(out.output_dir, {case.case_id for case in cases})
    results, out.failed = parallel_map(
        preprocess_one, items, min(workers, max(1, len(items))), f"preprocess {out.data_identifier}",
        stop_on=(DiskFullError,),
    )
    # A case that fails now keeps no copy stored from earlier inputs: training would use it without a word.
    out.removed = sorted(f.key for f in out.failed if store.remove_case(out.output_dir, f.key))
    out.processed = sorted(results)
    out.thinned = {case: result["annotation_kept"] for case, result in results.items()
                   if (result["annotation_kept"] or 1.0) < ANNOTATION_KEPT_WARNING}
    out.seconds = time.perf_counter() - started
    return out


def _record_timings(outputs: Sequence[ConfigurationReport], command_seconds: float, workers: int) -> None:
    """Record, beside each store that prepared cases, how long the command took for it: the whole command less
    the other stores' own time, i.e. what preparing this store alone takes, as the plan predicts it (start-up
    included: reading dataset.json and the plans, checking the stores and ground truths). `autoseg train`
    subtracts it from the plan's budget and reports it against the prediction; it counted the cases and pool
    only, about 5 s less than the plan priced."""
    for out in outputs:
        if not out.processed:
            continue
        timing = timing_path(out.output_dir)
        remove_stale_temporaries(timing.parent, timing.name)
        others = sum(other.seconds for other in outputs if other is not out)
        with stop_on_full_disk(timing.parent, f"the timing record {timing.name}", DiskFullError, PREPROCESS_RERUN):
            atomic_write_json(timing, {"seconds": command_seconds - others, "cases": len(out.processed),
                                       "workers": workers})


def preprocess_dataset(
    dataset_spec: DatasetSpec,
    configurations: str | Sequence[str] | None = None,
    num_workers: int | None = None,
    plans_name: str = "autosegPlans",
    started: float | None = None,
) -> PreprocessReport:
    """Preprocess every training case for ``configurations`` (default: all planned) of a dataset.

    ``started``: the ``time.time()`` the command started at, when it did before this call (a command of its own
    pays its interpreter and imports first), for the timing records; default this call.
    Raises ``PreprocessingError`` at the end, listing each failed case and why, when any failed; all
    other cases are stored and a re-run redoes only the failed ones.
    """
    start = time.perf_counter()
    before = 0.0 if started is None else max(0.0, time.time() - started)
    location = resolve_dataset(dataset_spec)
    description = load_description(location.raw_dir)
    cases = training_cases(location.raw_dir, description)
    _refuse_clashing_case_ids(location.raw_dir, cases)
    plans = load_plans(plans_path(location.preprocessed_dir, plans_name))
    check_plans_follow_dataset(plans, description, plans_path(location.preprocessed_dir, plans_name),
                               location.raw_dir / "dataset.json", location.name, plans_name)
    if configurations is not None:  # one name, not its letters ("configuration '3' is not in plans")
        configurations = string_list(configurations)
    names = list(dict.fromkeys(configurations)) if configurations else list(plans["configurations"])  # each once
    workers = max(1, stage_workers(num_workers, PreprocessingError))
    report = PreprocessReport(location.name, plans_name, [])
    with contextlib.ExitStack() as held:  # each store's shared lock, until its cases' references are copied
        for identifier, group in _group_by_identifier(plans, names).items():
            out = ConfigurationReport(group, identifier, location.preprocessed_dir / identifier)
            report.outputs.append(_preprocess_store(out, plans, cases, workers, held))
        report.dropped_elsewhere = drop_stale_cases_elsewhere(
            plans, location.preprocessed_dir, [out.data_identifier for out in report.outputs], {c.case_id for c in cases})
        failed = {case.case_id for case in cases} - {c for out in report.outputs for c in (*out.processed, *out.skipped)}
        copy_ground_truths(report, location.preprocessed_dir / GT_FOLDER, cases, description.file_ending, failed,
                           lambda case_id: stored_in_any(location.preprocessed_dir, case_id))
    report.seconds = time.perf_counter() - start
    _record_timings(report.outputs, before + report.seconds, workers)
    failures = [(out, f) for out in report.outputs for f in out.failed]
    if failures:
        listed = "; ".join(f"{f.key} ({out.data_identifier}): {f.message}" for out, f in failures)
        removed = sorted({case for out in report.outputs for case in out.removed})
        removed_note = (f" Their copies stored from earlier inputs were removed ({', '.join(removed)}), so training "
                        "cannot use them." if removed else "")
        # the CLI prints the error alone: the summary's warnings would be lost
        warnings = "".join(f" {warning}." for out in report.outputs if (warning := out.thinned_warning()))
        error = PreprocessingError(
            f"{len(failures)} case(s) failed to preprocess: {listed}. The other cases are stored; fix these "
            f"inputs and re-run `autoseg preprocess` (finished cases are skipped).{removed_note}{warnings}"
        )
        error.report = report  # type: ignore[attr-defined]  # the CLI can still print the summary
        raise error
    return report
