"""Wall seconds of each part of a fold's training, for the predicted-against-actual accounting.

A run killed and continued is one fold's training in several processes: the checkpoint carries what the
earlier ones spent (``TrainingState.spent_seconds``), so the accounting's parts and total cover them all,
as its trained iterations do. Time a killed process spent after its last checkpoint (work done again) is
not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PARTS = ("startup", "training", "checkpoints")


@dataclass
class PartTimes:
    """This process's seconds per part (``mine``) and the earlier processes' (``earlier``, from the checkpoint)."""

    mine: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    earlier: dict[str, float] = field(default_factory=dict)
    _fit: tuple[float, float] | None = None  # (fit start, checkpoint seconds then) while training

    def start_fit(self, start_time: float) -> None:
        """Training starts now: the time since ``start_time`` (the process's start) was startup."""
        now = time.monotonic()
        self.mine["startup"] = now - start_time
        self._fit = (now, self.mine["checkpoints"])

    def end_fit(self) -> None:
        self.mine = self._mine_now()
        self._fit = None

    def add_checkpoint(self, seconds: float) -> None:
        self.mine["checkpoints"] += seconds

    def spent(self) -> dict[str, float]:
        """Every process's seconds per part up to now (mid-training: the training time so far)."""
        return {part: self.earlier.get(part, 0.0) + seconds for part, seconds in self._mine_now().items()}

    def _mine_now(self) -> dict[str, float]:
        mine = dict(self.mine)
        if self._fit is not None:  # training time is the fit's wall time without its checkpoint writes
            fit_start, checkpoints_before = self._fit
            mine["training"] += time.monotonic() - fit_start - (mine["checkpoints"] - checkpoints_before)
        return mine
