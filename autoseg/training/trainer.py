"""The training loop of one fold: config-driven, resumable exactly, budget-aware, distributed-ready.

One ``Trainer`` serves every network; family differences are the step strategies of ``steps.py``.
Epoch = ``iterations_per_epoch`` training iterations + pseudo-validation on un-augmented patches of
the validation cases (Dice from per-class TP/FP/FN over the epoch, smoothed by an EMA that selects
``checkpoint_best``). A checkpoint is written atomically at every epoch end, holding weights,
optimiser, grad scaler, RNG states, iteration, schedule total and the metrics history; because each
batch is a function of its index, resuming from it replays the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.utils.device import autocast_dtype
from autoseg.dataset.description import DatasetDescription
from autoseg.errors import TrainingError
from autoseg.networks import create_network, get_network_spec
from autoseg.preprocessing.store import load_properties
from autoseg.planning import accounting
from autoseg.training import budget as budget_rules
from autoseg.training.augmentation import resolve_augmentation, sampling_size
from autoseg.training.bf16_guard import bf16_step_survives
from autoseg.training.checkpoints import (
    BEST,
    FINAL,
    FORMAT_VERSION,
    LATEST,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from autoseg.training.data_loading import (
    TRAIN_STREAM,
    VAL_STREAM,
    BatchSource,
    BatchStream,
    SamplingSpec,
    auto_workers,
    batch_to_device,
    validation_workers,
)
from autoseg.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    broadcast_value,
    rank_batch_size,
    wrap_model,
)
from autoseg.training.monitor import Monitor
from autoseg.training.splits import FOLD_ALL
from autoseg.training.steps import LabelSpec, WithAux, build_step
from autoseg.training.watchdog import IterationWatchdog

# reference.md §1.5: 250 iterations per epoch when neither the config nor the plan says otherwise.
DEFAULT_ITERATIONS_PER_EPOCH = 250
# Iterations excluded from speed measurements (allocation, oneDNN / cuDNN kernel selection).
WARMUP_ITERATIONS = 2


@dataclass
class FoldRun:
    """Everything resolved before a fold trains (see ``run.train_fold``)."""

    dataset_name: str
    preprocessed_dir: Path
    store: Path
    plans: dict[str, Any]
    plans_name: str
    configuration_name: str
    description: DatasetDescription
    network_name: str
    fold: str
    model_folder: Path
    train_cases: list[str]
    val_cases: list[str]
    config: dict[str, Any]
    device: torch.device
    seed: int = 0
    deterministic: bool = False
    num_workers: int | None = None
    budget_seconds: float | None = None
    epochs: int | None = None
    resume: bool = False
    previous_stage_cache: Path | None = None
    start_time: float = field(default_factory=time.monotonic)

    @property
    def configuration(self) -> dict[str, Any]:
        return self.plans["configurations"][self.configuration_name]

    @property
    def fold_folder(self) -> Path:
        return self.model_folder / f"fold_{self.fold}"


# Tiles per forward pass when timing the final validation's network cost.
TIMING_TILES = 2


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the training config's ``mixed_precision`` (auto, fp16, bf16, off)."""
    return autocast_dtype(setting, device, TrainingError)


def network_topology(plan: dict[str, Any], network: str, patch_size: list[int], log: Any) -> dict[str, Any]:
    """The plan's topology; for another family (``--network``) or patch (``--set patch_size``), the
    planner's topology rules applied to that family's constraints at the plan's spacing and width."""
    topology = dict(plan["network"]["topology"])
    if network == plan["network"]["name"] and list(patch_size) == list(plan["patch_size"]):
        return topology
    from autoseg.planning.topology import plan_topology

    spacing = list(plan["spacing"])[-len(patch_size):]
    width = int(plan.get("width") or topology["features_per_stage"][0])
    derived = plan_topology(patch_size, spacing, get_network_spec(network).constraints, width)
    stride = derived.size_multiple
    if any(p % s for p, s in zip(patch_size, stride)):
        raise TrainingError(
            f"patch size {patch_size} is not divisible by the total stride {stride} that network {network!r} "
            "needs at this patch; choose a multiple of it with --set patch_size=[...] or re-plan"
        )
    log(
        f"note: the plan was made for {plan['network']['name']} at patch {plan['patch_size']}; the topology of "
        f"{network} at patch {patch_size} follows the planner's rules, but its memory and time were not planned "
        f"(run `autoseg plan ... --network {network}` for that)"
    )
    return derived.to_dict()


def build_optimizer(parameters: Any, settings: dict[str, Any]) -> torch.optim.Optimizer:
    name = settings["name"]
    if name == "sgd":
        return torch.optim.SGD(
            parameters, lr=settings["lr"], momentum=settings["momentum"], nesterov=settings["nesterov"],
            weight_decay=settings["weight_decay"],
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(parameters, lr=settings["lr"], betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"])
    raise TrainingError(f"--set optimizer.name={name!r}: unknown optimizer; choose sgd, adam or adamw")


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels


class Trainer:
    """Trains one fold; ``fit()`` runs (or resumes) the schedule and writes the final checkpoint."""

    def __init__(self, run: FoldRun, context: DistributedContext | None = None) -> None:
        self.run = run
        self.context = context or DistributedContext()
        cfg, plan = run.config, run.configuration
        self.device = run.device
        self.monitor = Monitor(run.fold_folder, active=self.context.is_main)
        self.patch_size = [int(p) for p in (cfg["patch_size"] or plan["patch_size"])]
        self.global_batch = int(cfg["batch_size"] or plan["batch_size"])
        self.batch_size = rank_batch_size(self.global_batch, self.context)
        self.iterations_per_epoch = int(cfg["iterations_per_epoch"] or plan.get("iterations_per_epoch") or DEFAULT_ITERATIONS_PER_EPOCH)
        desc = run.description
        regions = [values for _, values in desc.regions] if desc.has_regions else None
        self.labels = LabelSpec(desc.num_output_channels, regions, desc.ignore_label)
        # Names of the pseudo-Dice entries: output channel order (regions as declared, classes by value).
        self.output_names = [name for name, _ in desc.regions] if desc.has_regions else [
            desc.class_names[v] for v in desc.foreground_labels]
        cascade_labels = desc.foreground_labels if run.previous_stage_cache is not None else []
        self.in_channels = desc.num_channels + len(cascade_labels)
        self.mixed_precision = str(cfg["mixed_precision"])
        self.amp_dtype = amp_dtype(self.mixed_precision, self.device)
        seed_everything(run.seed, run.deterministic, self.device)
        self._build_network(cfg, plan)
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu":
            self.amp_dtype = self._checked_cpu_bf16()
        self.step = build_step(
            self.model, self.network, run.network_name, self.optimizer, self.labels, cfg, self.device, self.amp_dtype,
            wrap=lambda m: wrap_model(m, self.context, self.device), in_channels=self.in_channels,
        )
        aug = resolve_augmentation(cfg["augmentation"], self.patch_size, plan["normalization"])
        common = dict(
            folder=run.store, patch_size=self.patch_size, batch_size=self.batch_size,
            oversample_foreground=cfg["oversample_foreground"], foreground_labels=desc.foreground_labels,
            previous_stage_folder=run.previous_stage_cache, previous_stage_labels=cascade_labels or None,
            n_image_channels=desc.num_channels,
        )
        self.train_spec = SamplingSpec(case_ids=run.train_cases, sample_size=sampling_size(self.patch_size, aug), augmentation=aug, **common)
        self.val_spec = SamplingSpec(case_ids=run.val_cases, sample_size=self.patch_size, augmentation=None, **common)
        self.mirror_axes = list(range(len(self.patch_size))) if aug["mirror"]["p"] > 0 else []
        # Progress state (all of it goes into the checkpoint).
        self.iteration = 0
        self.epoch = 0
        self.total_iterations = self._planned_total()
        self.lr_anchor = budget_rules.PolyAnchor()
        self.history: list[dict[str, Any]] = []
        self._tile_seconds: float | None = None
        # Wall time of each part of the run, for predicted-against-actual accounting (not checkpointed).
        self.actual_seconds = {"startup": 0.0, "training": 0.0, "checkpoints": 0.0}
        self.validation_estimate: float | None = None
        self.ema: float | None = None
        self.best_ema = -math.inf

    # ------------------------------------------------------------------ setup

    def _build_network(self, cfg: dict[str, Any], plan: dict[str, Any]) -> None:
        topology = network_topology(plan, self.run.network_name, self.patch_size, self.monitor.log)
        topology["extra"] = {**topology.get("extra", {}), "patch_size": self.patch_size}
        options = {**plan["network"].get("options", {}), **cfg["network_options"]}
        options.setdefault("deep_supervision", cfg["loss"]["deep_supervision"])
        self.topology, self.network_options = topology, options
        self.network = create_network(
            self.run.network_name, topology, self.in_channels, self.labels.n_outputs, **options
        ).to(self.device)
        self.memory_format = torch.contiguous_format
        if cfg["channels_last"]:
            self.memory_format = torch.channels_last_3d if len(self.patch_size) == 3 else torch.channels_last
            self.network = self.network.to(memory_format=self.memory_format)
        model: torch.nn.Module = WithAux(self.network)
        if cfg["compile"]:
            model = torch.compile(model)
        self.model = wrap_model(model, self.context, self.device)
        self.optimizer = build_optimizer(self.network.parameters(), cfg["optimizer"])

    def _checked_cpu_bf16(self) -> torch.dtype | None:
        """bf16 unless a child process's bf16 steps of this network crash or hang (training/bf16_guard.py)."""
        spec = dict(network=self.run.network_name, topology=self.topology, in_channels=self.in_channels,
                    n_outputs=self.labels.n_outputs, options=self.network_options, patch=self.patch_size,
                    batch=self.batch_size, threads=torch.get_num_threads())
        survived, why = bf16_step_survives(spec)
        if survived:
            return torch.bfloat16
        self.monitor.log(f"warning: {why} for {self.run.network_name} at patch {self.patch_size}, batch {self.batch_size} "
                         "(a fault of oneDNN's bf16 kernels on this CPU, docs/troubleshooting.md); training in float32")
        return None

    def _planned_total(self) -> int:
        """Iterations of the schedule before any time budget: --epochs, else the plan's budgeted
        count (when ``use_plan_schedule``), else ``num_epochs`` x iterations per epoch."""
        cfg, plan = self.run.config, self.run.configuration
        if self.run.epochs is not None:
            return int(self.run.epochs) * self.iterations_per_epoch
        if cfg["use_plan_schedule"] and plan.get("num_iterations"):
            return int(plan["num_iterations"])
        return int(cfg["num_epochs"]) * self.iterations_per_epoch

    def metadata(self) -> dict[str, Any]:
        run = self.run
        return {
            "format_version": FORMAT_VERSION,
            "network": run.network_name,
            "network_options": self.network_options,
            "topology": self.topology,
            "in_channels": self.in_channels,
            "num_outputs": self.labels.n_outputs,
            "configuration": run.configuration_name,
            "plans_name": run.plans_name,
            "dataset_name": run.dataset_name,
            "fold": run.fold,
            "mirror_axes": self.mirror_axes,
            "patch_size": self.patch_size,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "total_iterations": self.total_iterations,
        }

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict[str, Any]:
        step_state = self.step.state_dict()
        return {
            "network_weights": self.network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": step_state.pop("grad_scaler"),
            "extra_state": step_state,
            "rng_state": capture_rng_state(),
            "trainer_state": {
                "epoch": self.epoch,
                "iteration": self.iteration,
                "total_iterations": self.total_iterations,
                "lr_anchor": [self.lr_anchor.iteration, self.lr_anchor.fraction],
                "ema": self.ema,
                "best_ema": self.best_ema,
                "history": self.history,
            },
            "metadata": self.metadata(),
        }

    def save(self, name: str) -> None:
        if self.context.is_main:
            started = time.monotonic()
            save_checkpoint(self.run.fold_folder / name, self.checkpoint())
            self.actual_seconds["checkpoints"] += time.monotonic() - started

    def load(self, path: Path) -> None:
        checkpoint = load_checkpoint(path, map_location=self.device)
        meta = checkpoint["metadata"]
        if meta.get("network") != self.run.network_name or meta.get("configuration") != self.run.configuration_name:
            raise TrainingError(
                f"{path}: was trained as {meta.get('network')}/{meta.get('configuration')}, not "
                f"{self.run.network_name}/{self.run.configuration_name}; use another results folder or drop --continue"
            )
        try:
            self.network.load_state_dict(checkpoint["network_weights"])
            self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingError(
                f"{path}: does not fit this network (changed plan or network options?): {str(exc).splitlines()[0]}"
            ) from exc
        self.step.load_state_dict({"grad_scaler": checkpoint.get("grad_scaler_state"), **checkpoint.get("extra_state", {})})
        restore_rng_state(checkpoint["rng_state"])
        state = checkpoint["trainer_state"]
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.total_iterations = int(state["total_iterations"])
        anchor = state.get("lr_anchor", [0, 1.0])  # checkpoints before anchoring: the plain poly
        self.lr_anchor = budget_rules.PolyAnchor(int(anchor[0]), float(anchor[1]))
        self.ema, self.best_ema = state["ema"], float(state["best_ema"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ loop

    def _learning_rate(self) -> float:
        schedule, initial = self.run.config["lr_schedule"], self.run.config["optimizer"]["lr"]
        if schedule["name"] == "constant":
            return initial
        if schedule["name"] == "poly":
            return self.lr_anchor.lr(initial, self.iteration, self.total_iterations, schedule["exponent"])
        raise TrainingError(f"--set lr_schedule.name={schedule['name']!r}: choose poly or constant")

    def _tensors(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_to_device(batch, self.device, self.memory_format)

    def _workers(self) -> int:
        chosen = self.run.num_workers if self.run.num_workers is not None else self.run.config["num_workers"]
        if chosen == "auto":
            return auto_workers(self.device.type, self.context.world_size)
        if int(chosen) < 0:
            raise TrainingError(f"num_workers must be >= 0 or 'auto', got {chosen}")
        return int(chosen)

    def fit(self) -> None:
        """Train until ``total_iterations``; writes checkpoints, log, metrics and the final checkpoint."""
        cfg = self.run.config
        fit_start = time.monotonic()
        self.actual_seconds["startup"] = fit_start - self.run.start_time
        checkpoints_before = self.actual_seconds["checkpoints"]
        workers = self._workers()
        self.monitor.log(
            f"training {self.run.network_name} {self.run.configuration_name} fold {self.run.fold} of "
            f"{self.run.dataset_name} on {self.device} (world size {self.context.world_size}, {workers} data workers, "
            f"patch {self.patch_size}, batch {self.global_batch}, mixed precision {self.amp_dtype}); "
            f"{len(self.run.train_cases)} training / {len(self.run.val_cases)} validation cases"
        )
        source = BatchSource(self.train_spec, self.run.seed, TRAIN_STREAM, self.context.rank)
        val_source = BatchSource(self.val_spec, self.run.seed, VAL_STREAM, self.context.rank)
        deadline = self._deadline()
        validation_reserve = self._validation_reserve_inputs() if deadline is not None else None
        start_iteration = self.iteration
        pin = self.device.type == "cuda"
        stream = BatchStream(source, self.iteration, workers, cfg["prefetch_batches"], cfg["worker_timeout_seconds"], pin_memory=pin)
        val_stream = BatchStream(
            val_source, self.epoch * int(cfg["val_iterations_per_epoch"]), validation_workers(workers),
            cfg["prefetch_batches"], cfg["worker_timeout_seconds"], "validation data loading", pin_memory=pin,
        )
        self.monitor.start(self.total_iterations, self.iteration)
        watchdog = IterationWatchdog(float(self.run.configuration.get("predicted_seconds_per_iteration") or 1.0), self.monitor.log)
        self.model.train()
        try:
            while self.iteration < self.total_iterations:
                epoch_start = time.monotonic()
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                n = min(self.iterations_per_epoch, self.total_iterations - self.iteration)
                losses, timer_start = [], None
                for i in range(n):
                    if i == WARMUP_ITERATIONS or (i == 0 and self.iteration - start_iteration >= WARMUP_ITERATIONS):
                        timer_start, timed_from = time.monotonic(), self.iteration
                    for group in self.optimizer.param_groups:
                        group["lr"] = self._learning_rate()
                    watchdog.begin(self.iteration)
                    data, target = self._tensors(next(stream))
                    loss, _ = self.step.train(data, target)
                    watchdog.end()
                    losses.append(loss)
                    self.iteration += 1
                    speed = (self.iteration - timed_from) / (time.monotonic() - timer_start) if timer_start else 0.0
                    if (deadline is not None and self.iteration - start_iteration == cfg["budget_probe_iterations"] + WARMUP_ITERATIONS
                            and timer_start):
                        per_iteration = (time.monotonic() - timer_start) / (self.iteration - timed_from)
                        overhead = 1 + cfg["val_iterations_per_epoch"] / self.iterations_per_epoch * budget_rules.FORWARD_SHARE_OF_ITERATION
                        self._rebudget(deadline, per_iteration * overhead, validation_reserve)
                        n = min(n, self.total_iterations - self.iteration + i + 1)
                    self.monitor.update(self.iteration, self.total_iterations, self.epoch, loss, speed, self.ema)
                    if i + 1 >= n:
                        break
                warm = self.iteration - timed_from if timer_start else 0
                iteration_seconds = (time.monotonic() - timer_start) / warm if warm else None
                self._end_epoch(losses, val_stream, epoch_start, iteration_seconds)
                if deadline is not None:
                    per_iteration = (time.monotonic() - epoch_start) / max(len(losses), 1)
                    self._rebudget(deadline, per_iteration, validation_reserve)
        finally:
            watchdog.stop()
            stream.close()
            val_stream.close()
            self.monitor.stop()
        checkpoint_time = self.actual_seconds["checkpoints"] - checkpoints_before
        self.actual_seconds["training"] += time.monotonic() - fit_start - checkpoint_time
        self.save(FINAL)
        self.monitor.log(f"training finished: {self.iteration} iterations, {self.epoch} epochs, best pseudo-Dice EMA {self.best_ema:.4f}")

    def _end_epoch(self, losses: list[float], val_stream: BatchStream, epoch_start: float,
                   iteration_seconds: float | None) -> None:
        """Pseudo-validate, record the epoch's metrics (with the warm iterations' speed and, on CUDA, the
        peak memory allocated), checkpoint."""
        cfg = self.run.config
        val_loss, dice, per_class = self._pseudo_validation(val_stream)
        train_loss = float(all_reduce_sum(torch.tensor([float(np.mean(losses))]), self.context)[0]) / self.context.world_size
        alpha = cfg["pseudo_dice_ema"]
        if not math.isnan(dice):
            self.ema = dice if self.ema is None else alpha * self.ema + (1 - alpha) * dice
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "pseudo_dice": dice,
            "pseudo_dice_ema": self.ema if self.ema is not None else math.nan,
            # None (JSON null) for a class absent from both patches and predictions.
            "pseudo_dice_per_class": {n: None if math.isnan(v) else v for n, v in zip(self.output_names, per_class)},
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.monotonic() - epoch_start,
            "seconds_per_iteration": iteration_seconds,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
        }
        self.history.append(row)
        improved = self.ema is not None and self.ema > self.best_ema
        if improved:
            self.best_ema = self.ema
        self.save(LATEST)
        if improved:
            self.save(BEST)
        self.monitor.write_history(self.history)
        self.monitor.log(
            f"epoch {self.epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, pseudo-Dice {dice:.4f} "
            f"(EMA {row['pseudo_dice_ema']:.4f}{', new best' if improved else ''}), lr {row['learning_rate']:.2e}, "
            f"{row['epoch_seconds']:.1f} s, iteration {self.iteration}/{self.total_iterations}"
        )
        kind = "region" if self.labels.regions else "class"
        self.monitor.log(f"epoch {self.epoch}: pseudo-Dice per {kind}: "
                         + ", ".join(f"{name} {'-' if value is None else f'{value:.4f}'}"
                                     for name, value in row["pseudo_dice_per_class"].items()))

    @torch.no_grad()
    def _pseudo_validation(self, val_stream: BatchStream) -> tuple[float, float, list[float]]:
        """Mean loss, mean foreground Dice and the Dice of each class (or region) over un-augmented
        validation patches (TP/FP/FN pooled; NaN for a class absent from patches and predictions);
        batch ``epoch * n + j`` of the validation stream, built ahead by its workers."""
        n_batches = int(self.run.config["val_iterations_per_epoch"])
        n_classes = len(self.labels.regions) if self.labels.regions else self.labels.n_outputs - 1
        counts = torch.zeros(3, n_classes, dtype=torch.float64)
        loss_sum = 0.0
        self.model.eval()
        try:
            for j in range(n_batches):
                data, labels = self._tensors(next(val_stream))
                loss, logits = self._evaluate(data, labels)
                loss_sum += loss
                counts += self._confusion(logits, labels).cpu()
        finally:
            self.model.train()
        totals = all_reduce_sum(torch.cat([counts.flatten(), torch.tensor([loss_sum, n_batches], dtype=torch.float64)]), self.context)
        tp, fp, fn = totals[: 3 * n_classes].view(3, n_classes)
        denominator = 2 * tp + fp + fn
        per_class = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.full_like(tp, math.nan))
        valid = per_class[~per_class.isnan()]
        dice = float(valid.mean()) if len(valid) else math.nan
        return float(totals[-2] / max(float(totals[-1]), 1.0)), dice, per_class.tolist()

    def _evaluate(self, data: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and logits of the network in eval mode (full-resolution output, dropout off)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext():
            logits = self.network(data)
        logits = (logits[0] if isinstance(logits, (list, tuple)) else logits).float()
        return float(self.step.loss([logits], self.labels.loss_target(labels))), logits

    def _confusion(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(3, classes) TP, FP, FN of the batch; ignore-label voxels do not count."""
        valid = None if self.labels.ignore_label is None else labels != self.labels.ignore_label
        if self.labels.regions:
            predicted = logits > 0
            target = self.labels.binary_target(labels).bool()
        else:
            predicted = torch.nn.functional.one_hot(logits.argmax(1), self.labels.n_outputs).movedim(-1, 1)[:, 1:].bool()
            target = self.labels.binary_target(labels)[:, 1:].bool()
        if valid is not None:
            predicted, target = predicted & valid, target & valid
        axes = [0, *range(2, predicted.ndim)]
        tp = (predicted & target).sum(axes)
        fp = (predicted & ~target).sum(axes)
        fn = (~predicted & target).sum(axes)
        return torch.stack([tp, fp, fn]).double()

    # ------------------------------------------------------------------ time budget

    def _deadline(self) -> float | None:
        """When training must stop (monotonic clock), or None without a time budget."""
        if self.run.budget_seconds is None:
            return None
        usable = self.run.budget_seconds * (1 - self.run.config["budget_safety_fraction"])
        return self.run.start_time + usable

    @property
    def validation_passes(self) -> int:
        """Forward passes per tile in the final validation: every mirroring, unless the plan turned
        test-time augmentation off for validation to fit the budget."""
        return 2 ** len(self.mirror_axes) if self.run.configuration.get("validation_tta", True) else 1

    def _validation_reserve_inputs(self) -> tuple[list[int], list[float]]:
        """Sliding-window tiles and export seconds of every validation case (for the final
        validation's time reserve, from the cases' real shapes); fold ``all`` has no final validation."""
        tiles: list[int] = []
        export: list[float] = []
        if self.run.fold == FOLD_ALL:
            return tiles, export
        for case_id in self.run.val_cases:
            properties = load_properties(self.run.store, case_id)
            tiles.append(accounting.tiles_per_case(properties["shape_after_resampling"], self.patch_size))
            resampled = list(properties["shape_after_resampling"]) != list(properties["shape_after_crop"])
            export.append(accounting.export_seconds(math.prod(properties["shape_original"]), self.labels.n_outputs, resampled))
        return tiles, export

    def _seconds_per_tile(self) -> float:
        """Forward time of one sliding-window tile in eval mode, measured once (for the validation reserve)."""
        if self._tile_seconds is None:
            tiles = torch.zeros((TIMING_TILES, self.in_channels, *self.patch_size), device=self.device)
            self.network.eval()
            autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                self.network(tiles)  # warm-up
                start = time.perf_counter()
                self.network(tiles)
                self._tile_seconds = (time.perf_counter() - start) / TIMING_TILES
            self.network.train()
        return self._tile_seconds

    def _rebudget(self, deadline: float, seconds_per_iteration: float, reserve_inputs: tuple[list[int], list[float]] | None) -> None:
        """Set ``total_iterations`` so training plus the final validation end at the deadline."""
        tiles, export = reserve_inputs or ([], [])
        reserve = accounting.final_validation_seconds(tiles, self.validation_passes, self._seconds_per_tile(), export)
        self.validation_estimate = reserve
        total = budget_rules.affordable_total(self.iteration, deadline - time.monotonic() - reserve, seconds_per_iteration)
        total = int(broadcast_value(total, self.context))
        exponent = float(self.run.config["lr_schedule"].get("exponent", 1.0))
        self.lr_anchor = self.lr_anchor.retarget(self.iteration, self.total_iterations, total, exponent)
        if total != self.total_iterations:
            self.monitor.log(
                f"time budget: {seconds_per_iteration:.3f} s per iteration measured, final validation estimated "
                f"{reserve:.0f} s; schedule set to {total} iterations (was {self.total_iterations})"
            )
        self.total_iterations = total

