"""``train_fold``: the one entry point of ``autoseg train`` (and of ``torchrun -m autoseg train``).

Resolves dataset, plan, configuration, network, split and config; trains (or resumes / extends) the
fold; then predicts its validation cases and scores them. Launched by torchrun it joins the process
group itself (the environment says so), and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml

from autoseg.dataset.description import load_description
from autoseg.errors import NetworkError, PlanError, TrainingError
from autoseg.evaluation.evaluate import SUMMARY_CSV, SUMMARY_JSON
from autoseg.inference.model import listed_differences, plan_differences
from autoseg.networks import get_network_spec
from autoseg.paths import DatasetSpec, resolve_dataset
from autoseg.planning.accounting import PARTS
from autoseg.planning.plans import (
    check_plans_follow_dataset,
    get_configuration,
    load_plans,
    plans_path,
)
from autoseg.preprocessing.runner import timing_path
from autoseg.training.cascade import (
    CACHE_FOLDER, NEXT_STAGE_FOLDER, check_previous_stage_labels, clear_handed_on, prepare_previous_stage,
    previous_stage_predictions,
)
from autoseg.training.checkpoints import BEST, FINAL, LATEST, refuse_another_prediction_plan, split_digest
from autoseg.training.config import dump_config, resolve_training_config
from autoseg.training.config_rules import RULES
from autoseg.training.distributed import (
    DistributedContext, barrier, init_distributed, on_main, rank_batch_size, shutdown,
)
from autoseg.training.fold_run import FoldRun
from autoseg.training.math_threads import applied, choose_math_threads
from autoseg.training.model_setup import amp_dtype, determinism_restored, meta_state_dict
from autoseg.training.monitor import LOG_FILE, METRICS_FILE, PLOT_FILE, set_aside_log
from autoseg.training.plan_device import check_plan_device
from autoseg.training.schedule import extended_total
from autoseg.training.pretrained import PretrainedSource, check_pretrained, load_pretrained, read_pretrained
from autoseg.training.splits import FOLD_ALL, canonical_fold, fold_cases, stored_cases
from autoseg.training.trainer import Trainer, describe_best, network_request
from autoseg.training.validation import GT_FOLDER, VALIDATION_FOLDER, validate_fold
from autoseg.utils.atomic import (
    FolderLocked, atomic_path, atomic_write_json, atomic_write_text, exclusive_holder, remove_stale_temporaries,
    holder_text,
)
from autoseg.utils.folders import locked_new_folder
from autoseg.utils.jsonio import read_json
from autoseg.utils.mappings import flatten
from autoseg.utils.names import string_list
from autoseg.utils.probability_files import SIDECAR_SUFFIX, probability_paths
from autoseg.utils.device import choose_device as shared_choose_device
from autoseg.utils.device import device_memory_bytes
from autoseg.utils.duration import check_budget_seconds
from autoseg.utils.finite import is_finite_number

DEFAULT_PLANS_NAME = "autosegPlans"
CONFIG_FILE = "training_config.yaml"
MAX_SEED = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes no larger seed
ACCOUNTING_FILE = "time_accounting.json"
FOLD_LOCK_POLL_SECONDS = 0.05  # how often a train waiting for a check's shared lock on the fold (an instant) retries


def choose_device(name: str | None) -> torch.device:
    """The training device (``None``/``auto``: CUDA, else MPS, else CPU)."""
    return shared_choose_device(name, TrainingError)


def _model_folder_files(model_folder: Path, plans: dict[str, Any], raw_dir: Path, config: dict[str, Any]) -> None:
    """plans.json, dataset.json and the resolved training config next to the folds."""
    model_folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(model_folder / "plans.json", plans)
    with atomic_path(model_folder / "dataset.json") as tmp:
        shutil.copyfile(raw_dir / "dataset.json", tmp)
    atomic_write_text(model_folder / CONFIG_FILE, dump_config(config))


def train_fold(
    dataset_spec: DatasetSpec,
    configuration: str,
    fold: int | str,
    network: str | None = None,
    plans_name: str = DEFAULT_PLANS_NAME,
    epochs: int | None = None,
    budget_seconds: float | None = None,
    continue_: bool = False,
    device: str | None = None,
    seed: int = 0,
    deterministic: bool = False,
    overrides: str | Sequence[str] | None = (),
    save_probabilities: bool = False,
    workers: int | None = None,
    pretrained_weights: str | Path | None = None,
) -> dict[str, Any]:
    """Train one fold (0-4 or ``all``) and validate it; returns a summary of the run.

    Args:
        dataset_spec: ``Dataset004``, ``4``, the full name, the raw dataset folder or its ``DatasetLocation``.
        configuration: a configuration of the plan (``2d``, ``3d_fullres``, ...).
        network: a registered network; default the plan's.
        epochs: train this many epochs (with ``continue_``: extend a run to this many).
        budget_seconds: wall time for the whole fold including final validation; the iteration count
            follows from the measured speed. Default: the plan's compute budget, if it has one.
        continue_: resume from ``checkpoint_latest.safetensors`` exactly where it stopped.
        overrides: ``key=value`` training config overrides (``--set``), a sequence or one (None: none).
        workers: data loading processes (0 = in-process); default from the config (``auto``).
        pretrained_weights: start from this checkpoint, model folder or model zip (``training/pretrained.py``).

    Returns:
        ``{"model_folder", "fold", "epochs", "iterations", "best_pseudo_dice_ema", "seconds",
        "validation", "pretrained", "time_accounting"}`` where ``validation`` is the evaluation summary (None for fold
        ``all``) and ``pretrained`` what ``pretrained_weights`` loaded (None without).
    """
    start = time.monotonic()
    _check_options(epochs, budget_seconds, continue_, pretrained_weights)
    _check_workers(workers)
    _check_seed(seed)
    run = resolve_fold_run(
        dataset_spec, configuration, canonical_fold(fold), network, plans_name, string_list(overrides or ()), device, seed=seed,
        deterministic=deterministic, workers=workers, epochs=epochs, budget_seconds=budget_seconds,
        resume=continue_, start_time=start,
    )
    _refuse_a_case_named_summary(run, save_probabilities)
    prepared = _preprocess_seconds(run.store)  # read before training: a damaged record is refused before, not after it
    context = init_distributed(run.device.type)
    if context.enabled and run.device.type == "cuda":
        run.device = torch.device("cuda", context.local_rank)
    try:
        with _fold_held(run, context), applied(run.math_threads), determinism_restored():
            trainer, device_warnings, source = _start(run, context, pretrained_weights)
            with trainer.monitor.stop_logged():
                pretrained = _train(trainer, run, context, source, device_warnings)
                validation, validation_seconds = _final_validation(trainer, run, context, save_probabilities)
                accounting = _recorded_accounting(trainer, run, context, validation_seconds, start, prepared)
        barrier(context)
    finally:
        shutdown(context)
    best = trainer.state.best_ema
    return {
        "model_folder": str(run.model_folder), "fold": run.fold, "epochs": trainer.state.epoch,
        "iterations": trainer.state.iteration, "best_pseudo_dice_ema": best if math.isfinite(best) else None,
        "seconds": time.monotonic() - start, "validation": validation,
        "pretrained": pretrained.lines() if pretrained else None, "time_accounting": accounting,
    }


@contextlib.contextmanager
def _fold_held(run: FoldRun, context: DistributedContext) -> Iterator[None]:
    """Rank 0 holds the fold folder for the whole run: two ``autoseg train`` of one fold at once (two terminals, a
    re-submitted cluster job) both wrote its checkpoints, log and validation. The second is refused, naming the
    process; the kernel drops the lock of a killed run. Folders made only to be locked go again if left empty.
    Rank 0's refusal, or its ``OSError`` making the folder (no permission, a read-only disk), reaches every rank
    before any barrier (``on_main``): the others waited there for it (6 h under NCCL)."""
    with contextlib.ExitStack() as stack:
        on_main(lambda: _hold_fold(run, stack), context)
        yield


def _hold_fold(run: FoldRun, stack: contextlib.ExitStack) -> None:
    """Make and lock the fold folder into ``stack``; a fold another process holds is refused, naming it."""
    _refuse_folders_named_as_files(run)  # a file where the fold folder is made: named, not a raw error
    try:
        _lock_fold_folder(run.fold_folder, stack)
    except FolderLocked as exc:
        raise TrainingError(f"{run.fold_folder}: fold {run.fold} is being trained by {holder_text(exc.pid)} right "
                            "now; two runs of one fold write over each other's checkpoints, log and validation: wait "
                            "for that run to end (or stop it and resume it with --continue)") from None


def _lock_fold_folder(folder: Path, stack: contextlib.ExitStack) -> None:
    """Make and lock ``folder`` into ``stack`` (``locked_new_folder``), ``FolderLocked`` naming the process training
    it. A lock held only shared is waited for: a check of whether the fold is being trained (predict, export-model,
    find-best) holds one for an instant, and a train starting then was refused as trained by the checker."""
    while True:
        try:
            stack.enter_context(locked_new_folder(folder, wait=False))
            return
        except FolderLocked:
            holder = exclusive_holder(folder)
            if holder is not None:
                raise FolderLocked(folder, holder or None) from None
        time.sleep(FOLD_LOCK_POLL_SECONDS)


def _check_options(epochs: int | None, budget_seconds: float | None, continue_: bool, pretrained: Any) -> None:
    """Refuse option values before anything is written. From Python ``epochs=1.5`` trained a fractional epoch
    (reported as 1), and ``epochs="1"`` or ``budget_seconds="30m"`` raised a bare TypeError."""
    if epochs is not None and budget_seconds is not None:
        raise TrainingError("give --epochs or --budget, not both")
    if epochs is not None and not is_finite_number(epochs, integer=True):
        raise TrainingError(f"--epochs {epochs!r}: must be a whole number of epochs, at least 1")
    if epochs is not None and epochs < 1:
        raise TrainingError(f"--epochs {epochs}: must be at least 1")
    if budget_seconds is not None:
        check_budget_seconds(budget_seconds, TrainingError)
    if pretrained is not None and continue_:
        raise TrainingError("--pretrained-weights starts a fold, --continue resumes one from its own checkpoint; drop one of them")


def _refuse_a_case_named_summary(run: FoldRun, save_probabilities: bool) -> None:
    """With --save-probabilities a validation case's sidecar is ``<case>.json`` in ``validation/`` and, gathered by
    find-best, in ``crossval_folds_*/``, where evaluate writes summary.json: a case named ``summary`` was refused
    only once training was over, by evaluate, with advice about an ``-o`` train has not. Every case of the split
    counts, as find-best gathers every fold. (find-best keeps its postprocessing.json in the model folder.)"""
    case_id = SUMMARY_JSON.removesuffix(SIDECAR_SUFFIX)  # the one case whose sidecar is summary.json
    if save_probabilities and run.fold != FOLD_ALL and case_id in {*run.train_cases, *run.val_cases}:
        raise TrainingError(
            f"case {case_id}: with --save-probabilities its probabilities' sidecar {SUMMARY_JSON} would be replaced by "
            f"evaluate's summary in the fold's {VALIDATION_FOLDER}/ and in crossval_folds_*/; rename the case's "
            f"files in {run.raw_dir} (e.g. to {case_id}_case) and preprocess again, or train without "
            "--save-probabilities"
        )


def _check_workers(workers: int | None) -> None:
    """Refuse a --workers count before anything is written: 1000 was refused only once the trainer was built, naming
    num_workers and leaving the fold's training_log.txt behind, and from Python ``workers=2.5`` trained with 2. The
    bound is ``num_workers``' rule."""
    problem = None if workers is None else RULES["num_workers"].problem(workers)
    if problem is not None:
        raise TrainingError(f"--workers {workers!r}: {problem}; without --workers it is auto")


def _check_seed(seed: int) -> None:
    """numpy's global seed takes 0 to 2**32 - 1; another --seed crashed with an internal ValueError (and from
    Python a float or string seed with a TypeError)."""
    if not (is_finite_number(seed, integer=True) and 0 <= seed <= MAX_SEED):
        raise TrainingError(f"--seed {seed!r}: must be a whole number from 0 to {MAX_SEED} (2**32 - 1)")


def resolve_fold_run(dataset_spec: DatasetSpec, configuration: str, fold: str, network: str | None, plans_name: str,
                     overrides: Sequence[str], device: str | None, workers: int | None = None,
                     **limits: Any) -> FoldRun:
    """Dataset, plan, network, resolved config, split, model folder and device of a fold; ``limits``
    are FoldRun's seed, epochs, budget, resume and start fields (the plan's budget applies
    when neither --epochs nor --budget is given); ``workers`` (--workers) goes into the config."""
    location = resolve_dataset(dataset_spec)
    plans_file = plans_path(location.preprocessed_dir, plans_name)
    plans = load_plans(plans_file)
    plan = get_configuration(plans, configuration)
    description = load_description(location.raw_dir)
    check_plans_follow_dataset(plans, description, plans_file,
                               location.raw_dir / "dataset.json", location.name, plans_name)
    network_name = network or plan["network"]["name"]
    try:
        get_network_spec(network_name)
    except NetworkError as exc:  # a hand-edited plan names no registered network: say where the name came from
        if network is not None:
            raise
        raise NetworkError(f"{plans_file}: configuration {configuration}: {exc}; "
                           "fix the plans file's network name, or re-plan") from None
    config = _with_command_options(resolve_training_config(network_name, overrides, plan, str(plans_file)),
                                   limits["epochs"], workers)
    store = location.preprocessed_dir / plan["data_identifier"]
    case_ids = stored_cases(store, fold)
    if not case_ids:
        raise TrainingError(f"{store}: no preprocessed cases; run `autoseg preprocess {location.name} -c {configuration}` first")
    train_cases, val_cases = fold_cases(location.preprocessed_dir, case_ids, fold)
    model_folder = location.results_dir / f"{network_name}__{plans_name}__{configuration}"
    if limits["budget_seconds"] is not None:
        limits["budget_source"] = "train --budget"
    elif limits["epochs"] is None and not limits["resume"] and config["use_plan_schedule"]:
        limits["budget_seconds"] = _plan_budget(plans, plan, store)
        limits["budget_source"] = "plan" if limits["budget_seconds"] is not None else None
    chosen_device = choose_device(device)
    return FoldRun(
        dataset_name=location.name, preprocessed_dir=location.preprocessed_dir, store=store, plans=plans,
        plans_name=plans_name, configuration_name=configuration, description=description, network_name=network_name,
        fold=fold, model_folder=model_folder, train_cases=train_cases, val_cases=val_cases, config=config,
        device=chosen_device, raw_dir=location.raw_dir,
        math_threads=choose_math_threads(config["math_threads"], chosen_device, bool(limits.get("deterministic"))),
        previous_stage_cache=model_folder / CACHE_FOLDER if plan.get("previous_stage") else None, **limits,
    )


def _with_command_options(config: dict[str, Any], epochs: int | None, workers: int | None) -> dict[str, Any]:
    """The resolved config with train's --epochs and --workers in it, as the run uses them: the fold's
    training_config.yaml said ``num_epochs: 1000`` and ``use_plan_schedule: true`` of a run of --epochs 2."""
    if epochs is not None:
        config["num_epochs"], config["use_plan_schedule"] = epochs, False
    if workers is not None:
        config["num_workers"] = workers
    return config


def _plan_budget(plans: dict[str, Any], plan: dict[str, Any], store: Path) -> float | None:
    """The plan's budget left for training and validation: preparing the data is done (its recorded
    time, else the plan's prediction of it)."""
    if not (plans.get("budget") or {}).get("seconds"):
        return None
    prepared = _preprocess_seconds(store)
    if prepared is None:
        prepared = (plan.get("predicted_seconds") or {}).get("preprocess") or 0.0
    return max(plans["budget"]["seconds"] - prepared, 1.0)


def _prepare_folders(run: FoldRun) -> None:
    """Rank 0: the previous stage's predictions on this grid (cascade) and stale temporaries removed."""
    if run.previous_stage_cache is not None:
        predictions = previous_stage_predictions(run.model_folder.parent, run.network_name, run.plans_name,
                                                 run.configuration["previous_stage"])
        dataset_json = run.raw_dir / "dataset.json" if run.raw_dir is not None else "the dataset's dataset.json"
        check_previous_stage_labels(predictions, run.description, dataset_json)
        prepare_previous_stage(predictions, run.previous_stage_cache, run.store, stored_cases(run.store, run.fold), run.plans,
                               run.configuration_name, run.description.file_ending)
    for folder in (run.model_folder, run.fold_folder, run.fold_folder / VALIDATION_FOLDER):
        remove_stale_temporaries(folder)  # what a killed run left half-written
    if not run.resume:
        _clear_earlier_run(run)


def _clear_earlier_run(run: FoldRun) -> None:
    """A run without --continue (the fold's checkpoints deleted, or a run killed before its first) starts its own
    record: the earlier training_log.txt is kept under another name (``set_aside_log``), and the earlier run's
    metrics, plot, time accounting and validation (the label maps and probabilities of the store's cases, the
    summary) are removed. Appended to, the log mixed two runs; left, the validation of cases no longer in the split
    stood beside the new one (find-best merged both) and the records described a model that is gone. Other files
    in validation/ are not autoseg's and stay."""
    set_aside_log(run.fold_folder)
    validation = run.fold_folder / VALIDATION_FOLDER
    _clear_handed_to_next_stage(run, validation)
    earlier = [*(run.fold_folder / name for name in (METRICS_FILE, PLOT_FILE, ACCOUNTING_FILE)), *_validation_files(run)]
    for path in earlier:
        path.unlink(missing_ok=True)


def _clear_handed_to_next_stage(run: FoldRun, validation: Path) -> None:
    """A 3d_lowres fold trained afresh removes what its earlier run handed to the cascade: the cases of
    ``predicted_next_stage/`` whose record names this fold. Left, a case that moved to another fold's validation
    (another split) kept the outdated prediction, which the cascade then trained on (``clear_handed_on``)."""
    if run.configuration.get("next_stage"):
        clear_handed_on(run.model_folder / NEXT_STAGE_FOLDER, stored_cases(run.store, run.fold), run.fold, validation,
                        run.description.file_ending)


def _write_run_files(run: FoldRun) -> None:
    """Rank 0, once the run is known to start (checkpoint or pretrained weights loaded): plans, dataset and
    the resolved config beside the folds, and the fold's own config. A refused --continue or
    --pretrained-weights leaves the files of the run that made the checkpoints as they were."""
    _model_folder_files(run.model_folder, run.plans, run.raw_dir, run.config)
    atomic_write_text(run.fold_folder / CONFIG_FILE, dump_config(run.config))


def _start(run: FoldRun, context: DistributedContext,
           pretrained_weights: str | Path | None) -> tuple[Trainer, list[str], PretrainedSource | None]:
    """Refuse what cannot train before anything is written, prepare the folders and build the trainer;
    returns it with the warnings about the plan on this device and the pretrained weights, read and checked."""
    rank_batch = rank_batch_size(run.global_batch, context)
    device_warnings = check_plan_device(
        run.plans, run.configuration_name, run.device.type, device_memory_bytes(run.device), run.patch_size,
        rank_batch, context.world_size, run.network_name, run.config["optimizer"]["name"],
    )
    # Refused before anything is written: fp16 off CUDA, a network option or patch the family refuses.
    amp_dtype(run.config["mixed_precision"], run.device)
    state = _checked_network(run, rank_batch)
    _refuse_overwrite(run)
    _refuse_missing_references(run)
    source = _checked_pretrained(run, state, pretrained_weights)
    on_main(lambda: _prepare_folders(run), context)  # the others wait for it (the cascade's cache)
    return Trainer(run, context), device_warnings, source


def _checked_network(run: FoldRun, rank_batch: int) -> dict[str, torch.Tensor] | None:
    """``meta_state_dict``, with a refusal of the plan's topology (a hand-edited patch whose deepest stage is one
    voxel, a block count the family does not read) naming the plans file and configuration it came from."""
    try:
        return meta_state_dict(network_request(run, rank_batch), run.config)
    except NetworkError as exc:
        raise NetworkError(f"{plans_path(run.preprocessed_dir, run.plans_name)}: configuration "
                           f"{run.configuration_name}: {exc}") from None


def _checked_pretrained(run: FoldRun, state: dict[str, torch.Tensor] | None,
                        pretrained_weights: str | Path | None) -> PretrainedSource | None:
    """The pretrained weights, read and matched to the fold's network built on the meta device (``state``: shapes
    only), before a fresh start sets the fold's earlier log aside and deletes its validation: a refused file or shape
    left the folder so although nothing trained. A network the meta device cannot build (None) is matched when it is
    loaded."""
    if pretrained_weights is None:
        return None
    source = read_pretrained(pretrained_weights)
    if state is not None:
        check_pretrained(state, source, run.network_name)
    return source


def _train(trainer: Trainer, run: FoldRun, context: DistributedContext, source: PretrainedSource | None,
           device_warnings: Sequence[str]) -> Any:
    """Resume or load pretrained weights, train what is left; returns what the pretrained weights loaded."""
    _restore(trainer, run)
    pretrained = None
    if source is not None:
        pretrained = load_pretrained(trainer.setup.network, source, run.network_name, trainer.monitor.log,
                                     run.dataset_name, run.fold, split_digest(run.train_cases, run.val_cases))
    on_main(lambda: _write_run_files(run), context)
    for warning in device_warnings:
        trainer.monitor.log(f"warning: {warning}")
    if trainer.state.iteration < trainer.state.total_iterations:
        trainer.fit()
    else:  # nothing left to train (killed in the final validation): the time so far is this run's startup
        trainer.times.mine["startup"] = time.monotonic() - run.start_time
        trainer.save(FINAL, missing_only=True)  # rank 0 decides: other hosts may not see the fold's files
    on_main(trainer.monitor.raise_kept, context)  # a log line rank 0 failed to write since the last epoch stops all
    barrier(context)
    return pretrained


def _preprocess_seconds(store: Path) -> float | None:
    """How long `autoseg preprocess` took for this store (its record), or None without one."""
    path = timing_path(store)
    if not path.is_file():
        return None
    record = read_json(path, TrainingError, "missing", "delete it or re-run `autoseg preprocess`")
    seconds = record.get("seconds") if isinstance(record, dict) else None
    if not is_finite_number(seconds) or seconds < 0:
        # a record without a number of seconds crashed as an internal KeyError, after the training and validation
        raise TrainingError(f"{path}: has no number of seconds the preprocessing took ('seconds': {seconds!r}); "
                            "delete it or re-run `autoseg preprocess`")
    return float(seconds)


def time_accounting(trainer: Trainer, run: FoldRun, validation_seconds: float, run_seconds: float,
                    preprocess: float | None) -> dict[str, Any]:
    """Predicted (the plan's) against actual seconds of each part of the run, for the fold's results."""
    plan, plans = run.configuration, run.plans
    estimate = trainer.replanner.validation_estimate if trainer.replanner is not None else None
    # A run killed and continued: the parts and the total hold the earlier processes' time up to their checkpoint.
    actual = {"preprocess": preprocess, **trainer.times.spent(), "final_validation": validation_seconds}
    actual = {k: None if v is None else round(v, 1) for k, v in actual.items()}
    actual["total"] = round(run_seconds + (preprocess or 0.0) + sum(trainer.times.earlier.values()), 1)
    return {
        "budget_seconds": (plans.get("budget") or {}).get("seconds"),
        "train_budget_seconds": run.budget_seconds,
        "budget_source": run.budget_source,
        "predicted": plan.get("predicted_seconds"),
        "final_validation_estimated_by_training": None if estimate is None else round(estimate, 1),
        "actual": actual,
        "iterations": {"planned": plan.get("num_iterations"), "trained": trainer.state.iteration},
    }


def _recorded_accounting(trainer: Trainer, run: FoldRun, context: DistributedContext, validation_seconds: float,
                         start: float, prepared: float | None) -> dict[str, Any]:
    """The fold's time accounting, written to its results by rank 0 (kept as it was when this run trained nothing)."""
    accounting = _kept_accounting(trainer, run)
    if accounting is None:
        accounting = time_accounting(trainer, run, validation_seconds, time.monotonic() - start, prepared)
        if context.is_main:
            atomic_write_json(run.fold_folder / ACCOUNTING_FILE, accounting)
    return accounting


def _kept_accounting(trainer: Trainer, run: FoldRun) -> dict[str, Any] | None:
    """The fold's recorded accounting when this --continue trained nothing (its schedule was finished), else
    None. Such a run has no training, startup or checkpoint time of its own: it replaced the accounting of the
    run that trained the model with zeros for every part and a total that was not their sum."""
    path = run.fold_folder / ACCOUNTING_FILE
    if not run.resume or trainer.trained or not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # unreadable: written afresh
    return kept if isinstance(kept, dict) and isinstance(kept.get("actual"), dict) else None


def format_time_accounting(accounting: dict[str, Any]) -> str:
    """One line per part: predicted against actual seconds, then the budget the run kept."""
    predicted = accounting.get("predicted") or {}
    lines = ["time (s)          predicted    actual"]
    for part in (*PARTS, "total"):
        actual = accounting["actual"].get(part)
        guess = predicted.get(part)
        lines.append(f"  {part:<16}{'-' if guess is None else f'{guess:.0f}':>9}  {'-' if actual is None else f'{actual:.0f}':>8}")
    plan_budget = accounting.get("budget_seconds")
    if accounting.get("budget_source") == "train --budget":
        said = f"  this run's budget {accounting['train_budget_seconds']:.0f} s (train --budget; preprocessing not counted)"
        if plan_budget:
            said += f"; the predictions are the plan's, for its budget of {plan_budget:.0f} s"
        lines.append(said)
    elif accounting.get("budget_source") == "plan":
        lines.append(f"  budget {plan_budget:.0f} s (preprocessing counted once per dataset)")
    elif plan_budget:
        lines.append(f"  no budget for this run (--epochs, --continue or use_plan_schedule=false); the predictions "
                     f"are the plan's, for its budget of {plan_budget:.0f} s")
    return "\n".join(lines)


def _refuse_missing_references(run: FoldRun) -> None:
    """A fold with validation needs the reference of each validation case, which preprocess copies into
    ``gt_segmentations/``: without the folder (deleted, or a store copied without it) or with some of its files gone,
    the fold trained its whole schedule, then failed in its validation."""
    if run.fold == FOLD_ALL:
        return
    references = run.preprocessed_dir / GT_FOLDER
    fix = (f"re-run `autoseg preprocess {run.dataset_name} -c {run.configuration_name}` (it copies them), then train "
           "again")
    if not references.is_dir():
        raise TrainingError(f"{references}: not found; the fold's validation scores its predictions against these "
                            f"references: {fix}")
    ending = run.description.file_ending
    missing = [case for case in run.val_cases if not (references / f"{case}{ending}").is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise TrainingError(f"{references}: no reference ({ending}) of {len(missing)} of fold {run.fold}'s "
                            f"{len(run.val_cases)} validation case(s) ({', '.join(missing[:3])}{more}); the fold's "
                            f"validation scores its predictions against them: {fix}")


def _refuse_overwrite(run: FoldRun) -> None:
    """Without --continue, refuse a fold that already has checkpoints, before anything is written
    beside them (its training_config.yaml still describes the run that made them). With --continue,
    refuse a fold holding a final model but no training state: an imported model (or one whose
    checkpoint_latest was deleted) cannot be continued, and starting over would replace it."""
    _refuse_folders_named_as_files(run)
    has = {name: (run.fold_folder / name).is_file() for name in (LATEST, FINAL, BEST)}
    if not run.resume and (has[LATEST] or has[FINAL]):
        raise TrainingError(
            f"{run.fold_folder}: this fold already has checkpoints; add --continue to resume or extend it "
            "(with --epochs), or delete the folder to start over"
        )
    if not run.resume and has[BEST]:  # left, a run without pseudo-validation writes no best: predict took it as its own
        raise TrainingError(
            f"{run.fold_folder}: this fold already has checkpoints ({BEST} of an earlier run, whose {LATEST} and "
            f"{FINAL} are gone); delete it, or the folder, to start over, or add --continue to resume from it (the "
            "epochs after it are trained again)"
        )
    _refuse_another_plan(run)
    if run.resume and has[FINAL] and not has[LATEST]:
        raise TrainingError(
            f"{run.fold_folder}: holds a final model ({FINAL}) but no training state ({LATEST}) to continue "
            "from (an imported model?); --continue would train the fold from the start and replace it. Train "
            "into another results root, or delete the folder to start over"
        )


# The files a fold's run writes in its folder, and in the model folder (``_model_folder_files``).
FOLD_FILES = (LOG_FILE, CONFIG_FILE, METRICS_FILE, PLOT_FILE, ACCOUNTING_FILE, LATEST, BEST, FINAL)
MODEL_FILES = ("plans.json", "dataset.json", CONFIG_FILE)


def _refuse_folders_named_as_files(run: FoldRun) -> None:
    """A folder where the run writes or removes one of its files (``training_log.txt``, ``plans.json`` or
    ``validation/summary.json`` made a folder by hand) stopped the run with an internal IsADirectoryError, some after
    the earlier log was set aside or an epoch trained; a file where it makes a folder (the dataset's results folder,
    the fold's, its ``validation``, the cascade's folders) with an internal NotADirectoryError. All are checked
    before anything changes."""
    folders = [*reversed(run.fold_folder.parents[:3]), run.fold_folder, run.fold_folder / VALIDATION_FOLDER]
    folders += [run.model_folder / NEXT_STAGE_FOLDER] if run.configuration.get("next_stage") else []
    folders += [run.previous_stage_cache] if run.previous_stage_cache is not None else []
    for path in folders:
        if path.exists() and not path.is_dir():
            raise TrainingError(f"{path}: is a file, where training makes a folder; move or rename that file, then "
                                "train again")
    files = {**{run.fold_folder / name: f"the fold's {name}" for name in FOLD_FILES},
             **{run.model_folder / name: f"the model folder's {name}" for name in MODEL_FILES},
             **{path: f"the fold's {VALIDATION_FOLDER}/{path.name}" for path in _validation_files(run)}}
    for path, what in files.items():
        if path.is_dir():
            raise TrainingError(f"{path}: is a folder, where training writes {what}; move or rename that folder, then "
                                "train again")


def _validation_files(run: FoldRun) -> list[Path]:
    """What the fold's validation writes, and a fresh start removes: the summary, and each case's label map and
    probabilities."""
    validation = run.fold_folder / VALIDATION_FOLDER
    paths = [validation / name for name in (SUMMARY_JSON, SUMMARY_CSV)]
    for case_id in stored_cases(run.store, run.fold):  # a case being stored again is waited for, not left out
        paths += [validation / f"{case_id}{run.description.file_ending}", *probability_paths(validation, case_id)]
    return paths


# What a trained fold's checkpoint depends on: the grid, patch, network and intensities it was trained
# with, and the label and channel layout (a re-plan that changed only the schedule keeps the folds valid).
MODEL_PLAN_KEYS = ("spatial_dims", "spacing", "patch_size", "normalization", "resampling", "network")
MODEL_PLANS_KEYS = ("transpose_forward", "labels", "channel_names", "regions_class_order", "ignore_label")


def _model_parts(plans: dict[str, Any], configuration: str) -> dict[str, Any]:
    plan = plans.get("configurations", {}).get(configuration, {})
    return {**{k: plans.get(k) for k in MODEL_PLANS_KEYS}, **{k: plan.get(k) for k in MODEL_PLAN_KEYS}}


def _refuse_another_plan(run: FoldRun) -> None:
    """Refuse a fold run whose plan differs from the ``plans.json`` that the model folder's trained folds
    were trained with (the plan re-made with ``--overwrite``): the run would replace that file, so those
    folds would be predicted at another spacing, patch or network than they learnt (or not load at all),
    and ``--continue`` would go on training on data preprocessed for another grid."""
    stored = run.model_folder / "plans.json"
    trained = sorted(
        folder.name for folder in run.model_folder.glob("fold_*")
        if any((folder / name).is_file() for name in (LATEST, FINAL, BEST))  # best alone: --continue resumes it
    )
    if not stored.is_file() and run.resume:
        _refuse_checkpoint_of_another_plan(run)
    if not trained or not stored.is_file():
        return
    try:
        before = _model_parts(load_plans(stored), run.configuration_name)
    except PlanError:
        return  # unreadable: nothing trustworthy to protect; the run rewrites it
    if changed := plan_differences(before, _model_parts(run.plans, run.configuration_name)):
        raise TrainingError(
            f"{stored}: {', '.join(trained)} of this model were trained with another plan than "
            f"{plans_path(run.preprocessed_dir, run.plans_name)} ({listed_differences(changed)}; re-planned with "
            f"--overwrite?); training here would replace the plan those folds need. Plan under a new name "
            f"(autoseg plan --plans-name NAME, then preprocess and train with --plans-name NAME), or delete those folds "
            "to retrain them all with this plan"
        )


def _refuse_checkpoint_of_another_plan(run: FoldRun) -> None:
    """--continue with no plans.json beside the model folder: the checkpoint it takes (latest, else best) must record
    this plan's grid; a re-plan to another spacing with the same patch and network was continued without a word."""
    latest = run.fold_folder / LATEST
    source = latest if latest.is_file() else run.fold_folder / BEST
    if source.is_file():
        refuse_another_prediction_plan(source, run.plans, run.configuration_name)


def _restore(trainer: Trainer, run: FoldRun) -> None:
    """With --continue load the latest checkpoint, else the best (as nnU-Net's --c falls back to it), and extend
    with --epochs. A fold holding only checkpoint_best (latest deleted) was trained from the start without a word."""
    latest, best = run.fold_folder / LATEST, run.fold_folder / BEST
    if not run.resume:
        return
    if not latest.is_file() and not best.is_file():  # killed before its first checkpoint (as nnU-Net's --c): start the fold
        trainer.monitor.log(f"{latest}: no checkpoint to continue from yet; training the fold from the start")
        return
    source = latest if latest.is_file() else best
    trainer.load(source)
    if source == best:
        trainer.monitor.log(f"{latest} and {run.fold_folder / FINAL} are missing: resuming from {BEST} at epoch "
                            f"{trainer.state.epoch}, "
                            "so the epochs after it are trained again")
    earlier = _earlier_config(run)
    if run.epochs is None:
        _keep_schedule(run.config, earlier)
    _warn_changed_settings(trainer, run, earlier)
    state = trainer.state
    if run.epochs is not None:
        state.total_iterations = extended_total(state, run.epochs, trainer.iterations_per_epoch)
    trainer.monitor.log(f"resumed from {source} at epoch {state.epoch}, iteration {state.iteration} of {state.total_iterations}")
    if state.iteration >= state.total_iterations:
        _finished_run(trainer, run)


def _finished_run(trainer: Trainer, run: FoldRun) -> None:
    """--continue on a fold whose schedule is done trains nothing: said in the log, and refused with --budget,
    which asked for training a finished schedule (its learning rate at 0) cannot get (it used to train nothing,
    silently, and exit 0 as if the budget had been spent)."""
    state = trainer.state
    done = f"{run.fold_folder} already finished its schedule ({state.iteration} of {state.total_iterations} iterations, {state.epoch} epochs)"
    extend = f"to train it longer give --continue --epochs N with N > {state.epoch}"
    if run.budget_source == "train --budget":
        raise TrainingError(
            f"--budget {run.budget_seconds:g} s: {done}; a budget does not extend a finished run (its learning rate "
            f"has reached 0): {extend}, or delete {run.fold_folder} and train without --continue to retrain it within "
            "the budget (--continue alone validates it again)"
        )
    trainer.monitor.log(f"nothing left to train: {done}; validating it again ({extend})")


def _earlier_config(run: FoldRun) -> dict[str, Any]:
    """The flattened training_config.yaml of the run a --continue resumes; empty where missing or hand-damaged (one
    not UTF-8 stopped the --continue with an internal UnicodeDecodeError)."""
    try:
        return flatten(yaml.safe_load((run.fold_folder / CONFIG_FILE).read_text(encoding="utf-8")) or {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return {}


# What sets a run's schedule; resumed without --epochs, the checkpoint's schedule goes on whatever they now say.
SCHEDULE_KEYS = ("num_epochs", "use_plan_schedule")


def _keep_schedule(config: dict[str, Any], earlier: dict[str, Any]) -> None:
    """--continue without --epochs trains to the checkpoint's total: the run's config keeps the schedule the earlier
    run recorded (a resumed --epochs 2 run was written as ``num_epochs: 1000``, and warned of it as a change)."""
    for key in SCHEDULE_KEYS:
        if type(earlier.get(key)) is type(config[key]):  # a hand-edited value of another type is not the schedule
            config[key] = earlier[key]


def _warn_changed_settings(trainer: Trainer, run: FoldRun, before: dict[str, Any]) -> None:
    """--continue resolves the config afresh from the defaults, the plan and this command's --set; settings
    the interrupted run was given (its fold's training_config.yaml, ``before``) and this command leaves out
    silently changed the resumed run (an earlier ``--set iterations_per_epoch=5`` dropped: epochs of 250)."""
    now = flatten(run.config)
    changed = [f"{key} {before[key]!r} -> {now[key]!r}" for key in now
               if key in before and before[key] != now[key] and key not in SCHEDULE_KEYS]  # --epochs says it
    if changed:
        trainer.monitor.log(
            f"warning: --continue trains with other settings than the run it resumes ({'; '.join(changed[:5])}"
            f"{'; ...' if len(changed) > 5 else ''}; from {run.fold_folder / CONFIG_FILE}); repeat that run's --set to resume it as it was"
        )


def _final_validation(trainer: Trainer, run: FoldRun, context: DistributedContext,
                      save_probabilities: bool) -> tuple[dict[str, Any] | None, float]:
    """Rank 0 validates a held-out fold (fold ``all`` has none): the summary and its seconds (None and 0 on the other
    ranks, which wait for it and stop with its error)."""
    if run.fold == FOLD_ALL:
        return None, 0.0
    started = time.monotonic()
    summary = on_main(lambda: _validation(trainer, run, save_probabilities), context)
    return summary, time.monotonic() - started if context.is_main else 0.0


def _validation(trainer: Trainer, run: FoldRun, save_probabilities: bool) -> dict[str, Any]:
    """Validate with the final checkpoint, or reuse a summary written after it."""
    summary_path = run.fold_folder / VALIDATION_FOLDER / "summary.json"
    final = run.fold_folder / FINAL
    if summary_path.is_file() and summary_path.stat().st_mtime >= final.stat().st_mtime and not save_probabilities:
        kept = _summary_of_cases(summary_path, run.val_cases)
        if kept is not None:
            return kept
        trainer.monitor.log(f"{summary_path}: not a summary of this fold's {len(run.val_cases)} validation cases; validating again")
    started = time.monotonic()
    summary = validate_fold(
        run.model_folder, run.fold, run.store, run.preprocessed_dir / GT_FOLDER, run.val_cases, run.description,
        str(run.device), save_probabilities=save_probabilities, previous_stage_cache=run.previous_stage_cache,
        hand_to_next_stage=bool(run.configuration.get("next_stage")), split=split_digest(run.train_cases, run.val_cases),
        mixed_precision=trainer.mixed_precision, log=trainer.monitor.log,
        tta=trainer.validation_tta(),
        deadline=None if run.budget_seconds is None else run.start_time + run.budget_seconds,
    )
    dice = summary.get("foreground_mean", {}).get("dice")
    foreground = "none (no foreground class scored)" if dice is None else f"{dice:.4f}"
    per_class = ", ".join(f"{name} {m.get('dice', float('nan')):.4f}" for name, m in summary.get("mean", {}).items())
    trainer.monitor.log(
        f"validation of {len(run.val_cases)} cases in {time.monotonic() - started:.0f} s: mean Dice {foreground} ({per_class})"
    )
    trainer.monitor.raise_kept()  # inside on_main: a log line of the validation that failed stops every rank
    return summary


def _summary_of_cases(path: Path, case_ids: Sequence[str]) -> dict[str, Any] | None:
    """The validation summary at ``path`` if it scores exactly ``case_ids``, else None. A damaged summary.json stopped
    a --continue of a finished fold with an internal JSONDecodeError, and one that was no summary (``[]``, another
    evaluate's) was reported as the fold's validation."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        scored = sorted(row["case_id"] for row in summary["metric_per_case"])
        has_means = isinstance(summary["mean"], dict) and isinstance(summary["foreground_mean"], dict)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return summary if has_means and scored == sorted(case_ids) else None


def _best_ema(value: float | None) -> float:
    """The summary's best pseudo-Dice EMA for ``describe_best`` (None: there was none). A best EMA of 0 (no
    foreground predicted yet, as after a short budget) was taken for none: 'no pseudo-Dice ..., so no
    checkpoint_best' beside the checkpoint_best it had written."""
    return -math.inf if value is None else value


def format_training_summary(summary: dict[str, Any]) -> str:
    """A few readable lines for the terminal (the full summary is in the fold's files)."""
    lines = [
        f"model folder: {summary['model_folder']} (fold {summary['fold']})",
        f"trained {summary['iterations']} iterations in {summary['epochs']} epochs, "
        f"{summary['seconds'] / 60:.1f} min; {describe_best(_best_ema(summary['best_pseudo_dice_ema']))}",
    ]
    lines += summary.get("pretrained") or []
    validation = summary.get("validation")
    if validation:
        per_class = ", ".join(f"{name} {m['dice']:.4f}" for name, m in validation["mean"].items())
        lines.append(
            f"validation Dice of {validation['num_cases']} cases: mean {validation['foreground_mean']['dice']:.4f} "
            f"({per_class})"
        )
    if summary.get("time_accounting"):
        lines.append(format_time_accounting(summary["time_accounting"]))
    return "\n".join(lines)
