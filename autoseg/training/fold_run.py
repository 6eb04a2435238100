"""``FoldRun``: everything resolved about one fold before it trains (``run.resolve_fold_run`` builds it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoseg.dataset.description import DatasetDescription
from autoseg.training.math_threads import ThreadChoice


@dataclass
class FoldRun:
    """Everything resolved before a fold trains: data, plan, network, split, config, device and limits."""

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
    budget_seconds: float | None = None
    budget_source: str | None = None  # whose budget_seconds is: "plan" (its predictions are for it) or "train --budget"
    epochs: int | None = None
    resume: bool = False
    previous_stage_cache: Path | None = None
    raw_dir: Path | None = None  # the raw dataset (its dataset.json is copied beside the folds)
    math_threads: ThreadChoice | None = None  # CPU only: torch's threads while the fold trains and validates
    start_time: float = field(default_factory=time.monotonic)

    @property
    def configuration(self) -> dict[str, Any]:
        return self.plans["configurations"][self.configuration_name]

    @property
    def fold_folder(self) -> Path:
        return self.model_folder / f"fold_{self.fold}"

    @property
    def patch_size(self) -> list[int]:
        """``--set patch_size`` if given, else the plan's."""
        return [int(p) for p in (self.config["patch_size"] or self.configuration["patch_size"])]

    @property
    def global_batch(self) -> int:
        """``--set batch_size`` if given, else the plan's: the batch over all ranks."""
        return int(self.config["batch_size"] or self.configuration["batch_size"])

    @property
    def cascade_labels(self) -> list[int]:
        """The foreground labels a cascade stage gets as one-hot input channels (none without one)."""
        return self.description.foreground_labels if self.previous_stage_cache is not None else []

    @property
    def in_channels(self) -> int:
        """The network's input channels: the image channels, then one per cascade label."""
        return self.description.num_channels + len(self.cascade_labels)
