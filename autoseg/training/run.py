"""``train_fold``: the one entry point of ``autoseg train`` (and of ``torchrun -m autoseg train``).

Resolves dataset, plan, configuration, network, split and config; trains (or resumes / extends) the
fold; then predicts its validation cases and scores them. Launched by torchrun it joins the process
group itself (the environment says so), and only rank 0 writes files.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from autoseg.dataset.description import load_description
from autoseg.errors import TrainingError
from autoseg.networks import get_network_spec
from autoseg.paths import resolve_dataset
from autoseg.planning.accounting import PARTS
from autoseg.planning.plans import get_configuration, load_plans, plans_path
from autoseg.preprocessing.runner import timing_path
from autoseg.preprocessing.store import list_cases
from autoseg.training.augmentation import resolve_augmentation
from autoseg.training.cascade import CACHE_FOLDER, prepare_previous_stage, previous_stage_predictions
from autoseg.training.checkpoints import FINAL, LATEST
from autoseg.training.config import dump_config, resolve_config
from autoseg.training.distributed import barrier, init_distributed, shutdown
from autoseg.training.plan_device import check_plan_device
from autoseg.training.pretrained import load_pretrained
from autoseg.training.splits import FOLD_ALL, fold_cases
from autoseg.training.trainer import FoldRun, Trainer
from autoseg.training.validation import GT_FOLDER, VALIDATION_FOLDER, validate_fold
from autoseg.utils.atomic import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temporaries
from autoseg.utils.jsonio import read_json
from autoseg.utils.device import choose_device as shared_choose_device
from autoseg.utils.device import device_memory_bytes

DEFAULT_PLANS_NAME = "autosegPlans"
CONFIG_FILE = "training_config.yaml"
ACCOUNTING_FILE = "time_accounting.json"


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
    dataset_spec: str,
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
    overrides: Sequence[str] = (),
    save_probabilities: bool = False,
    workers: int | None = None,
    pretrained_weights: str | Path | None = None,
) -> dict[str, Any]:
    """Train one fold (0-4 or ``all``) and validate it; returns a summary of the run.

    Args:
        dataset_spec: ``Dataset004``, ``4``, the full name or the raw dataset folder.
        configuration: a configuration of the plan (``2d``, ``3d_fullres``, ...).
        network: a registered network; default the plan's.
        epochs: train this many epochs (with ``continue_``: extend a run to this many).
        budget_seconds: wall time for the whole fold including final validation; the iteration count
            follows from the measured speed. Default: the plan's compute budget, if it has one.
        continue_: resume from ``checkpoint_latest.safetensors`` exactly where it stopped.
        overrides: ``key=value`` training config overrides (``--set``).
        workers: data loading processes (0 = in-process); default from the config (``auto``).
        pretrained_weights: start from this checkpoint, model folder or model zip (``training/pretrained.py``).

    Returns:
        ``{"model_folder", "fold", "epochs", "iterations", "best_pseudo_dice_ema", "seconds",
        "validation", "pretrained"}`` where ``validation`` is the evaluation summary (None for fold
        ``all``) and ``pretrained`` what ``pretrained_weights`` loaded (None without).
    """
    start = time.monotonic()
    if epochs is not None and budget_seconds is not None:
        raise TrainingError("give --epochs or --budget, not both")
    if epochs is not None and epochs < 1:
        raise TrainingError(f"--epochs {epochs}: must be at least 1")
    if budget_seconds is not None and budget_seconds <= 0:
        raise TrainingError(f"--budget {budget_seconds}: must be positive")
    if pretrained_weights is not None and continue_:
        raise TrainingError("--pretrained-weights starts a fold, --continue resumes one from its own checkpoint; drop one of them")
    fold = str(fold)
    location = resolve_dataset(dataset_spec)
    preprocessed_dir = location.preprocessed_dir
    plans = load_plans(plans_path(preprocessed_dir, plans_name))
    plan = get_configuration(plans, configuration)
    description = load_description(location.raw_dir)
    network_name = network or plan["network"]["name"]
    get_network_spec(network_name)
    config = resolve_config(network_name, overrides)
    config["augmentation"] = resolve_augmentation(config["augmentation"], config["patch_size"] or plan["patch_size"], plan["normalization"])
    if any(o.partition("=")[0].strip() == "num_epochs" for o in overrides):
        config["use_plan_schedule"] = False  # an explicit --set num_epochs wins over the plan's schedule
    store = preprocessed_dir / plan["data_identifier"]
    case_ids = list_cases(store)
    if not case_ids:
        raise TrainingError(f"{store}: no preprocessed cases; run `autoseg preprocess {location.name} -c {configuration}` first")
    train_cases, val_cases = fold_cases(preprocessed_dir, case_ids, fold)
    model_folder = location.results_dir / f"{network_name}__{plans_name}__{configuration}"
    torch_device = choose_device(device)
    context = init_distributed(torch_device.type)
    if context.enabled and torch_device.type == "cuda":
        torch_device = torch.device("cuda", context.local_rank)
    try:
        device_warnings = check_plan_device(
            plans, configuration, torch_device.type, device_memory_bytes(torch_device),
            config["patch_size"] or plan["patch_size"],
            -(-int(config["batch_size"] or plan["batch_size"]) // context.world_size), context.world_size,
            network_name,
        )
        planned_budget = budget_seconds is None and epochs is None and not continue_ and config["use_plan_schedule"]
        if planned_budget and (plans.get("budget") or {}).get("seconds"):
            # the plan's budget covers the whole run; preparing the data is done (its time, else the prediction)
            prepared = _preprocess_seconds(store)
            if prepared is None:
                prepared = (plan.get("predicted_seconds") or {}).get("preprocess") or 0.0
            budget_seconds = max(plans["budget"]["seconds"] - prepared, 1.0)
        previous_cache = None
        if plan.get("previous_stage"):
            previous_cache = model_folder / CACHE_FOLDER
            if context.is_main:
                predictions = previous_stage_predictions(location.results_dir, network_name, plans_name, plan["previous_stage"])
                prepare_previous_stage(predictions, previous_cache, store, case_ids, plans, configuration, description.file_ending)
        if context.is_main:
            for folder in (model_folder, model_folder / f"fold_{fold}", model_folder / f"fold_{fold}" / "validation"):
                remove_stale_temporaries(folder)  # what a killed run left half-written
            _model_folder_files(model_folder, plans, location.raw_dir, config)
            # Each fold keeps the exact config it was trained with (folds may differ in --set values).
            atomic_write_text(model_folder / f"fold_{fold}" / CONFIG_FILE, dump_config(config))
        barrier(context)
        run = FoldRun(
            dataset_name=location.name, preprocessed_dir=preprocessed_dir, store=store, plans=plans,
            plans_name=plans_name, configuration_name=configuration, description=description,
            network_name=network_name, fold=fold, model_folder=model_folder, train_cases=train_cases,
            val_cases=val_cases, config=config, device=torch_device, seed=seed, deterministic=deterministic,
            num_workers=workers, budget_seconds=budget_seconds, epochs=epochs, resume=continue_,
            previous_stage_cache=previous_cache, start_time=start,
        )
        trainer = Trainer(run, context)
        for warning in device_warnings:
            trainer.monitor.log(f"warning: {warning}")
        _restore_or_check(trainer, run)
        pretrained = None
        if pretrained_weights is not None:
            pretrained = load_pretrained(trainer.network, pretrained_weights, network_name, trainer.monitor.log)
        if trainer.iteration < trainer.total_iterations:
            trainer.fit()
        elif not (run.fold_folder / FINAL).is_file():
            trainer.save(FINAL)
        barrier(context)
        validation, validation_seconds = None, 0.0
        if context.is_main and fold != FOLD_ALL:
            started = time.monotonic()
            validation = _validation(trainer, run, preprocessed_dir, save_probabilities, next_stage=bool(plan.get("next_stage")))
            validation_seconds = time.monotonic() - started
        accounting = time_accounting(trainer, run, plan, plans, validation_seconds, time.monotonic() - start)
        if context.is_main:
            atomic_write_json(run.fold_folder / ACCOUNTING_FILE, accounting)
        barrier(context)
    finally:
        shutdown(context)
    return {
        "model_folder": str(model_folder),
        "fold": fold,
        "epochs": trainer.epoch,
        "iterations": trainer.iteration,
        "best_pseudo_dice_ema": trainer.best_ema,
        "seconds": time.monotonic() - start,
        "validation": validation,
        "pretrained": pretrained.lines() if pretrained else None,
        "time_accounting": accounting,
    }


def _preprocess_seconds(store: Path) -> float | None:
    """How long `autoseg preprocess` took for this store (its record), or None without one."""
    path = timing_path(store)
    if not path.is_file():
        return None
    return float(read_json(path, TrainingError, "missing", "delete it or re-run `autoseg preprocess`")["seconds"])


def time_accounting(trainer: Trainer, run: FoldRun, plan: dict[str, Any], plans: dict[str, Any],
                    validation_seconds: float, run_seconds: float) -> dict[str, Any]:
    """Predicted (the plan's) against actual seconds of each part of the run, for the fold's results."""
    preprocess = _preprocess_seconds(run.store)
    actual = {"preprocess": preprocess, **trainer.actual_seconds, "final_validation": validation_seconds}
    actual = {k: None if v is None else round(v, 1) for k, v in actual.items()}
    actual["total"] = round(run_seconds + (preprocess or 0.0), 1)
    return {
        "budget_seconds": (plans.get("budget") or {}).get("seconds"),
        "train_budget_seconds": run.budget_seconds,
        "predicted": plan.get("predicted_seconds"),
        "final_validation_estimated_by_training": None if trainer.validation_estimate is None else round(trainer.validation_estimate, 1),
        "actual": actual,
        "iterations": {"planned": plan.get("num_iterations"), "trained": trainer.iteration},
    }


def format_time_accounting(accounting: dict[str, Any]) -> str:
    """One line per part: predicted against actual seconds."""
    predicted = accounting.get("predicted") or {}
    lines = ["time (s)          predicted    actual"]
    for part in (*PARTS, "total"):
        actual = accounting["actual"].get(part)
        guess = predicted.get(part)
        lines.append(f"  {part:<16}{'-' if guess is None else f'{guess:.0f}':>9}  {'-' if actual is None else f'{actual:.0f}':>8}")
    if accounting.get("budget_seconds"):
        lines.append(f"  budget {accounting['budget_seconds']:.0f} s (preprocessing counted once per dataset)")
    return "\n".join(lines)


def _restore_or_check(trainer: Trainer, run: FoldRun) -> None:
    """With --continue load the latest checkpoint (and extend with --epochs); without, refuse to
    overwrite a fold that already has checkpoints."""
    latest = run.fold_folder / LATEST
    if not run.resume:
        if latest.is_file() or (run.fold_folder / FINAL).is_file():
            raise TrainingError(
                f"{run.fold_folder}: this fold already has checkpoints; add --continue to resume or extend it "
                "(with --epochs), or delete the folder to start over"
            )
        return
    if not latest.is_file():  # killed before its first checkpoint (as nnU-Net's --c): start the fold
        trainer.monitor.log(f"{latest}: no checkpoint to continue from yet; training the fold from the start")
        return
    trainer.load(latest)
    if run.epochs is not None:
        total = run.epochs * trainer.iterations_per_epoch
        if total < trainer.iteration:
            raise TrainingError(
                f"--epochs {run.epochs}: the run already trained {trainer.epoch} epochs ({trainer.iteration} "
                "iterations); give a larger number to extend it"
            )
        trainer.total_iterations = total
    trainer.monitor.log(
        f"resumed from {latest} at epoch {trainer.epoch}, iteration {trainer.iteration} of {trainer.total_iterations}"
    )


def _validation(
    trainer: Trainer, run: FoldRun, preprocessed_dir: Path, save_probabilities: bool, next_stage: bool
) -> dict[str, Any]:
    """Validate with the final checkpoint, or reuse a summary written after it."""
    summary_path = run.fold_folder / VALIDATION_FOLDER / "summary.json"
    final = run.fold_folder / FINAL
    if summary_path.is_file() and summary_path.stat().st_mtime >= final.stat().st_mtime and not save_probabilities:
        return json.loads(summary_path.read_text())
    started = time.monotonic()
    summary = validate_fold(
        run.model_folder, run.fold, run.store, preprocessed_dir / GT_FOLDER, run.val_cases, run.description,
        str(run.device), save_probabilities=save_probabilities, previous_stage_cache=run.previous_stage_cache,
        hand_to_next_stage=next_stage, mixed_precision=trainer.mixed_precision, log=trainer.monitor.log,
        tta=run.configuration.get("validation_tta", True),
    )
    foreground = summary.get("foreground_mean", {}).get("dice")
    per_class = ", ".join(f"{name} {m.get('dice', float('nan')):.4f}" for name, m in summary.get("mean", {}).items())
    trainer.monitor.log(
        f"validation of {len(run.val_cases)} cases in {time.monotonic() - started:.0f} s: mean Dice {foreground} ({per_class})"
    )
    return summary


def format_training_summary(summary: dict[str, Any]) -> str:
    """A few readable lines for the terminal (the full summary is in the fold's files)."""
    lines = [
        f"model folder: {summary['model_folder']} (fold {summary['fold']})",
        f"trained {summary['iterations']} iterations in {summary['epochs']} epochs, "
        f"{summary['seconds'] / 60:.1f} min; best pseudo-Dice EMA {summary['best_pseudo_dice_ema']:.4f}",
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
