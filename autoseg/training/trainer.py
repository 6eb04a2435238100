"""The training loop of one fold: config-driven, resumable exactly, budget-aware, distributed-ready.

One ``Trainer`` serves every network; family differences are the step strategies of ``steps.py``. Its
parts each live in their own module: model setup (``model_setup.py``), schedule and run state
(``schedule.py``), pseudo-validation (``pseudo_validation.py``), checkpoints (``checkpoints.py``) and
budget re-planning (``replanning.py``). Epoch = ``iterations_per_epoch`` training iterations +
pseudo-validation on un-augmented patches of the validation cases, whose EMA selects
``checkpoint_best``. A checkpoint is written atomically at every epoch end; because each batch is a
function of its index, resuming from it replays the uninterrupted run exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.dataset.description import DatasetDescription
from autoseg.errors import TrainingError
from autoseg.fingerprint.file import FINGERPRINT_FILE
from autoseg.inference.model import PREDICTION_PLAN, prediction_plan
from autoseg.training import budget as budget_rules
from autoseg.training.augmentation import resolve_augmentation, sampling_size
from autoseg.training.checkpoints import (
    BEST,
    FINAL,
    LATEST,
    restore_training_checkpoint,
    split_digest,
    training_checkpoint,
)
from autoseg.training.data_loading import (
    TRAIN_STREAM,
    VAL_STREAM,
    BatchSource,
    BatchStream,
    SamplingSpec,
    batch_to_device,
    case_cache_bytes,
    validation_workers,
    worker_count,
)
from autoseg.training.distributed import DistributedContext, all_reduce_sum, on_main, rank_batch_size, wrap_model
from autoseg.training.fold_run import FoldRun
from autoseg.training.model_setup import ModelSetup, NetworkRequest, build_model, seed_everything
from autoseg.training.math_threads import recount_at_epoch_end
from autoseg.training.monitor import Monitor, WarmTimer
from autoseg.training.part_times import PartTimes
from autoseg.training.pseudo_validation import PseudoValidationResult, epoch_batches, pseudo_validate
from autoseg.training.replanning import (
    BudgetReplanner,
    deadline,
    tile_seconds_samples,
    validation_passes,
    validation_reserve_inputs,
)
from autoseg.training.schedule import TrainingState, iterations_per_epoch, learning_rate, planned_total
from autoseg.training.splits import classes_missing_from_training, read_fingerprint_quietly
from autoseg.training.steps import LabelSpec, build_step
from autoseg.training.watchdog import IterationWatchdog
from autoseg.utils.checkpoint_format import write_checkpoint

__all__ = ["FoldRun", "Trainer"]


def label_spec(description: DatasetDescription) -> tuple[LabelSpec, list[str]]:
    """The label layout of the network's output and the name of each scored channel (regions as
    declared, classes by value)."""
    regions = [values for _, values in description.regions] if description.has_regions else None
    names = [name for name, _ in description.regions] if description.has_regions else [
        description.class_names[v] for v in description.foreground_labels]
    return LabelSpec(description.num_output_channels, regions, description.ignore_label), names


def network_request(run: FoldRun, batch_size: int) -> NetworkRequest:
    """What the fold's network is built from (``batch_size``: one rank's)."""
    n_outputs = label_spec(run.description)[0].n_outputs
    return NetworkRequest(run.network_name, run.configuration, run.in_channels, n_outputs, run.patch_size, batch_size)


def sampling_specs(
    run: FoldRun, batch_size: int, case_cache: int = 0, context: DistributedContext | None = None
) -> tuple[SamplingSpec, SamplingSpec, dict[str, Any]]:
    """Training (augmented, sampled larger for rotation and scaling) and validation batch specs of
    the run's patch and cascade labels for ``context``'s rank, each source keeping up to ``case_cache``
    bytes of decompressed cases, and the resolved augmentation."""
    context = context or DistributedContext()
    offset = sum(rank_batch_size(run.global_batch, replace(context, rank=r)) for r in range(context.rank))
    cfg, desc, patch_size, cascade_labels = run.config, run.description, run.patch_size, run.cascade_labels
    aug = resolve_augmentation(cfg["augmentation"], patch_size, run.configuration["normalization"],
                               run.configuration.get("mirror_axes"))
    common = dict(
        folder=run.store, patch_size=patch_size, batch_size=batch_size,
        oversample_foreground=cfg["oversample_foreground"], foreground_labels=desc.foreground_labels,
        previous_stage_folder=run.previous_stage_cache, previous_stage_labels=cascade_labels or None,
        n_image_channels=desc.num_channels, case_cache_bytes=case_cache, ignore_label=desc.ignore_label,
        global_batch_size=run.global_batch, batch_offset=offset,
        regions=[values for _, values in desc.regions] if desc.has_regions else None,
    )
    train = SamplingSpec(case_ids=run.train_cases, sample_size=sampling_size(patch_size, aug), augmentation=aug, **common)
    val = SamplingSpec(case_ids=run.val_cases, sample_size=patch_size, augmentation=None, **common)
    return train, val, aug


def fold_stream(run: FoldRun, rank: int, spec: SamplingSpec, stream_id: int, start: int, workers: int,
                name: str = "data loading") -> BatchStream:
    """A batch stream of one rank of the fold's run from batch ``start`` on, pinned for CUDA."""
    return BatchStream(BatchSource(spec, run.seed, stream_id, rank), start, workers, run.config["prefetch_batches"],
                       run.config["worker_timeout_seconds"], name, pin_memory=run.device.type == "cuda")


def number_or_none(value: float) -> float | None:
    """NaN and infinities as None: metrics.jsonl stays standard JSON (``NaN`` and ``Infinity`` are not)."""
    return value if math.isfinite(value) else None


def describe_best(best_ema: float) -> str:
    """The run's best pseudo-Dice EMA for the terminal (none without pseudo-validation)."""
    if not math.isfinite(best_ema):
        return "no pseudo-Dice (val_iterations_per_epoch=0 or no foreground seen), so no checkpoint_best"
    return f"best pseudo-Dice EMA {best_ema:.4f}"


def check_diverged(network: torch.nn.Module, losses: list[float], epoch: int, latest: Path) -> None:
    """Stop a run whose weights became NaN or infinite, or whose every loss of the epoch was: nothing after
    it can recover, and its checkpoint would replace the last good one (whose epoch is kept)."""
    weights_bad = any(not bool(torch.isfinite(p).all()) for p in network.parameters())
    if not weights_bad and not (losses and not any(math.isfinite(loss) for loss in losses)):
        return
    what = "the network's weights became" if weights_bad else "every training loss of the epoch was"
    kept = f"{latest} keeps epoch {epoch}" if latest.is_file() else "no checkpoint was written"
    raise TrainingError(
        f"training diverged in epoch {epoch + 1}: {what} NaN or infinite ({kept}); lower the learning rate "
        "(--set optimizer.lr=...) and rerun with --continue, or check the preprocessed data's intensities"
    )


def epoch_row(state: TrainingState, train_loss: float, result: PseudoValidationResult, output_names: list[str],
              learning_rate_now: float, epoch_start: float, iteration_seconds: float | None,
              device: torch.device) -> dict[str, Any]:
    """One line of metrics.jsonl (the warm iterations' speed; on CUDA the peak memory allocated)."""
    return {
        "epoch": state.epoch,
        "iteration": state.iteration,
        # an epoch with a NaN or infinite step (fp16 overflow) that did not diverge has no mean loss to write
        "train_loss": number_or_none(train_loss),
        # JSON null where there is no number (no pseudo-validation, no foreground seen yet)
        "val_loss": number_or_none(result.loss),
        "pseudo_dice": number_or_none(result.dice),
        "pseudo_dice_ema": state.ema,
        # None (JSON null) for a class absent from both patches and predictions.
        "pseudo_dice_per_class": {n: number_or_none(v) for n, v in zip(output_names, result.per_class)},
        "learning_rate": learning_rate_now,
        "epoch_seconds": time.monotonic() - epoch_start,
        "seconds_per_iteration": iteration_seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def log_fold_start(run: FoldRun, setup: ModelSetup, world_size: int, workers: int, log: Callable[[str], None]) -> None:
    """The training log's first lines: what trains where, and the classes some fold never sees."""
    threads = f", {run.math_threads.describe()}" if run.math_threads else ""
    log(
        f"training {run.network_name} {run.configuration_name} fold {run.fold} of {run.dataset_name} on {run.device} "
        f"(world size {world_size}, {workers} data workers{threads}, patch {run.patch_size}, batch "
        f"{run.global_batch}, memory format {str(setup.memory_format).removeprefix('torch.')}, mixed precision "
        f"{setup.amp_dtype}); {len(run.train_cases)} training / {len(run.val_cases)} validation cases"
    )
    fingerprint = read_fingerprint_quietly(run.preprocessed_dir / FINGERPRINT_FILE)
    for note in classes_missing_from_training(fingerprint, run.description.class_names, run.train_cases, run.val_cases):
        log(note)


def checkpoint_metadata(run: FoldRun, setup: ModelSetup, labels: LabelSpec, state: TrainingState,
                        mirror_axes: list[int]) -> dict[str, Any]:
    """What inference needs to rebuild the network and check its plans (``prediction_plan``), and where the run
    stood."""
    return {
        "network": run.network_name, "network_options": setup.network_options, "topology": setup.topology,
        "in_channels": run.in_channels, "num_outputs": labels.n_outputs, "configuration": run.configuration_name,
        "plans_name": run.plans_name, "dataset_name": run.dataset_name, "fold": run.fold,
        "split_sha256": split_digest(run.train_cases, run.val_cases),
        "optimizer": run.config["optimizer"]["name"],
        "mirror_axes": mirror_axes, "patch_size": run.patch_size, "epoch": state.epoch,
        "iteration": state.iteration, "total_iterations": state.total_iterations,
        PREDICTION_PLAN: prediction_plan(run.plans, run.configuration_name),
    }


class Trainer:
    """Trains one fold; ``fit()`` runs (or resumes) the schedule and writes the final checkpoint."""

    def __init__(self, run: FoldRun, context: DistributedContext | None = None) -> None:
        self.run = run
        self.context = context or DistributedContext()
        cfg, plan = run.config, run.configuration
        self.device = run.device
        self.monitor = Monitor(run.fold_folder, active=self.context.is_main)
        self.patch_size = run.patch_size
        self.global_batch = run.global_batch
        self.batch_size = rank_batch_size(self.global_batch, self.context)
        self.iterations_per_epoch = iterations_per_epoch(cfg, plan)
        self.labels, self.output_names = label_spec(run.description)
        self.in_channels = run.in_channels
        self.mixed_precision = str(cfg["mixed_precision"])
        seed_everything(run.seed, run.deterministic, self.device)
        self.setup = build_model(network_request(run, self.batch_size), cfg, self.device, self.context, self.monitor.log)
        self.step = build_step(
            self.setup.model, self.setup.network, run.network_name, self.setup.optimizer, self.labels, cfg, self.device,
            self.setup.amp_dtype, wrap=lambda m: wrap_model(m, self.context, self.device), in_channels=self.in_channels,
        )
        case_cache = case_cache_bytes(cfg["case_cache_mb"], self.workers(), self.context.world_size)
        self.train_spec, self.val_spec, aug = sampling_specs(run, self.batch_size, case_cache, self.context)
        self.mirror_axes = list(aug["mirror"]["axes"]) if aug["mirror"]["p"] > 0 else []
        self.state = TrainingState(planned_total(cfg, plan, self.iterations_per_epoch))
        self.times = PartTimes()  # wall time per part, for predicted-against-actual accounting
        self.replanner: BudgetReplanner | None = None
        # Whether this process trained (ran fit()): a --continue of a finished schedule does not.
        self.trained = False

    # ------------------------------------------------------------------ checkpoints

    def save(self, name: str, missing_only: bool = False) -> None:
        """Checkpoint ``name`` (``missing_only``: unless rank 0 finds it written), on every rank alike: rank 0 writes
        it through ``on_main``, so its error (a full disk, no permission) stops every rank with the same line; raised
        on rank 0 alone, the others waited for it at their next collective (6 h under NCCL)."""
        path = self.run.fold_folder / name
        on_main(lambda: None if missing_only and path.is_file() else self._write_checkpoint(name), self.context)

    def _write_checkpoint(self, name: str) -> None:
        """Rank 0: the checkpoint ``name`` of the state so far (with the time spent, the mirroring decided)."""
        if self.replanner is not None:
            self.state.validation_tta = self.replanner.mirroring
        self.state.spent_seconds = self.times.spent()
        started = time.monotonic()
        metadata = checkpoint_metadata(self.run, self.setup, self.labels, self.state, self.mirror_axes)
        checkpoint = training_checkpoint(self.setup, self.step.state_dict(), self.state, metadata)
        write_checkpoint(self.run.fold_folder / name, checkpoint)
        self.times.add_checkpoint(time.monotonic() - started)

    def load(self, path: Path) -> None:
        run = self.run
        self.state = restore_training_checkpoint(path, self.setup, self.step, run.network_name, run.configuration_name,
                                                 run.config["optimizer"]["name"], self.device, str(run.fold),
                                                 split_digest(run.train_cases, run.val_cases), run.model_folder.name)
        self.times.earlier = dict(self.state.spent_seconds)

    def validation_tta(self) -> bool:
        """Whether the final validation mirrors: as this run's budget decided, else as the checkpoint's run
        decided, else as the plan says."""
        if self.replanner is not None:
            return self.replanner.mirroring
        if self.state.validation_tta is not None:
            return self.state.validation_tta
        return bool(self.run.configuration.get("validation_tta", True))

    # ------------------------------------------------------------------ loop

    def workers(self) -> int:
        """Data loading processes: the config's ``num_workers``, which holds ``--workers`` (``auto``: by device)."""
        return worker_count(self.run.config["num_workers"], self.device.type, self.context.world_size)

    def budget_replanner(self) -> BudgetReplanner | None:
        """The re-planner of a run with a time budget (None without one)."""
        run, cfg = self.run, self.run.config
        end = deadline(run.start_time, run.budget_seconds, cfg["budget_safety_fraction"])
        if end is None:
            return None
        reserve = validation_reserve_inputs(run.store, run.fold, run.val_cases, self.patch_size, self.labels.n_outputs)
        passes = validation_passes(self.mirror_axes, run.configuration) if self.state.validation_tta is not False else 1
        tile = lambda: tile_seconds_samples(self.setup, self.in_channels, self.patch_size, self.device)  # noqa: E731
        return BudgetReplanner(end, run.budget_seconds, reserve, passes, tile, cfg, self.context, self.monitor.log)

    def training_stream(self, workers: int) -> BatchStream:
        """The training batches from the current iteration on, as ``fit()`` consumes them."""
        return fold_stream(self.run, self.context.rank, self.train_spec, TRAIN_STREAM, self.state.iteration, workers)

    def validation_stream(self, workers: int) -> BatchStream:
        """The pseudo-validation batches from the current epoch on (fewer workers than training)."""
        start = self.state.epoch * int(self.run.config["val_iterations_per_epoch"])
        return fold_stream(self.run, self.context.rank, self.val_spec, VAL_STREAM, start, validation_workers(workers),
                           "validation data loading")

    def fit(self) -> None:
        """Train until ``total_iterations``; writes checkpoints, log, metrics and the final checkpoint."""
        cfg, run = self.run.config, self.run
        self.trained = True
        self.times.start_fit(run.start_time)
        workers = self.workers()
        log_fold_start(run, self.setup, self.context.world_size, workers, self.monitor.log)
        self.replanner = self.budget_replanner()
        if self.replanner is not None:
            self.replanner.start(self.state)
        stream, val_stream = self.training_stream(workers), self.validation_stream(workers)
        self.monitor.start(self.state.total_iterations, self.state.iteration)
        watchdog = IterationWatchdog.for_plan(self.run.configuration, self.monitor.log)
        self.setup.model.train()
        try:
            self._train(stream, val_stream, watchdog)
        finally:
            watchdog.stop()
            stream.close()
            val_stream.close()
            self.monitor.stop()
        self.times.end_fit()
        done = (f"training finished: {self.state.iteration} iterations, {self.state.epoch} epochs, "
                f"{describe_best(self.state.best_ema)}")
        on_main(lambda: (self._write_checkpoint(FINAL), self.monitor.log(done)), self.context)

    def _train(self, stream: BatchStream, val_stream: BatchStream, watchdog: IterationWatchdog) -> None:
        """Epochs until the total; under a budget the total is re-planned after each epoch."""
        timer = WarmTimer(self.state.iteration)
        while self.state.iteration < self.state.total_iterations:
            epoch_start = time.monotonic()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            losses = self.train_epoch(stream, watchdog, timer)
            self._end_epoch(losses, val_stream, epoch_start, timer.seconds_per_iteration(self.state.iteration))
            epoch_seconds = time.monotonic() - epoch_start
            if self.replanner is not None and self.state.iteration < self.state.total_iterations:
                # a finished schedule is not extended: its learning rate has reached 0
                self.replanner.replan(self.state, epoch_seconds / max(len(losses), 1))
            # the last recount also sets the threads of the final validation; DDP ranks keep theirs
            threads = recount_at_epoch_end(self.run.math_threads, epoch_seconds) if not self.context.enabled else None
            if threads is not None:
                self.monitor.log(f"math threads now {threads.describe(f'at the end of epoch {self.state.epoch}')}")

    def train_epoch(self, stream: BatchStream, watchdog: IterationWatchdog, timer: WarmTimer) -> list[float]:
        """One epoch of training steps; under a budget the first probe re-plans the total, which may
        end this epoch early."""
        cfg, state = self.run.config, self.state
        end = state.epoch_end(self.iterations_per_epoch)
        probe_seconds = budget_rules.PROBE_MAX_SHARE * (self.run.budget_seconds or math.inf)
        # the probe times training steps only; validation adds its forward passes
        overhead = 1 + cfg["val_iterations_per_epoch"] / self.iterations_per_epoch * budget_rules.FORWARD_SHARE_OF_ITERATION
        timer.new_epoch()
        losses: list[float] = []
        while state.iteration < min(end, state.total_iterations):
            timer.before_iteration(state.iteration)
            for group in self.setup.optimizer.param_groups:
                group["lr"] = learning_rate(cfg, state)
            watchdog.begin(state.iteration)
            loss, _ = self.step.train(*batch_to_device(next(stream), self.device, self.setup.memory_format))
            watchdog.end()
            losses.append(loss)
            state.iteration += 1
            if self.replanner is not None and timer.probe_done(state.iteration, cfg["budget_probe_iterations"], probe_seconds):
                self.replanner.replan(state, timer.seconds_per_iteration(state.iteration) * overhead)
                timer.restart(state.iteration)  # the re-plan's own timing is not this epoch's pace
            elif self.replanner is not None:  # called alike on every rank: under DDP it is a collective
                known = budget_rules.pace_known(timer.warm_iterations(state.iteration), timer.warm_seconds(),
                                                self.run.budget_seconds)
                speed = timer.seconds_per_iteration(state.iteration) * overhead if known else None
                self.replanner.keep_pace(state, speed, end)
            self.monitor.update(state.iteration, state.total_iterations, state.epoch, loss,
                                timer.iterations_per_second(state.iteration), state.ema)
        return losses

    def _end_epoch(self, losses: list[float], val_stream: Any, epoch_start: float, iteration_seconds: float | None) -> None:
        """Pseudo-validate, record the epoch's metrics, checkpoint (latest, and best on a new best EMA);
        a diverged epoch stops the run before its weights replace the last good checkpoint."""
        cfg, state = self.run.config, self.state
        check_diverged(self.setup.network, losses, state.epoch, self.run.fold_folder / LATEST)
        n_batches = epoch_batches(int(cfg["val_iterations_per_epoch"]), len(losses), self.iterations_per_epoch)
        result = pseudo_validate(self.setup, self.step.loss, self.labels, val_stream, n_batches, self.device, self.context)
        train_loss = float(all_reduce_sum(torch.tensor([float(np.mean(losses))]), self.context)[0]) / self.context.world_size
        improved = state.add_pseudo_dice(result.dice, cfg["pseudo_dice_ema"])
        state.epoch += 1
        row = epoch_row(state, train_loss, result, self.output_names, self.setup.optimizer.param_groups[0]["lr"],
                        epoch_start, iteration_seconds, self.device)
        state.history.append(row)
        # Rank 0 writes through on_main: its error (a full disk) stops every rank with the same line.
        on_main(lambda: self._write_epoch(row, improved), self.context)

    def _write_epoch(self, row: dict[str, Any], improved: bool) -> None:
        """Rank 0: the epoch's checkpoints, metrics and log lines. The best checkpoint before the latest, which commits
        the epoch: a full disk refusing the best one after the latest had left an epoch --continue took as done, never
        redone, so the rerun finished without checkpoint_best. The metrics follow the latest (what a reader of them
        may resume from)."""
        if improved:
            self._write_checkpoint(BEST)
        self._write_checkpoint(LATEST)
        self.monitor.write_history(self.state.history)
        self.monitor.log_epoch(row, improved, self.state.total_iterations, "region" if self.labels.regions else "class")
