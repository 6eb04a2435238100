"""The CPU math threads a fold trains with: as many as cores are idle when it starts (``math_threads: auto``).

OpenMP threads wait for each other at every barrier, so a thread whose core another process holds
slows all of them; ``utils/cpu_load.py`` says why and how idle cores are measured. ``autoseg plan``
times its probe with the same choice, so the plan is made for the threads training will start with.
"""

from __future__ import annotations

from typing import Any

import torch

from autoseg.errors import TrainingError
from autoseg.utils.cpu_load import ThreadChoice, applied, idle_thread_choice

__all__ = ["ThreadChoice", "applied", "choose_math_threads"]


def choose_math_threads(setting: Any, device: torch.device, deterministic: bool) -> ThreadChoice | None:
    """The config's ``math_threads`` resolved for ``device`` (None off the CPU, where it does not apply).

    ``auto``: as many threads as cores are idle (``idle_thread_choice``); a deterministic run keeps
    torch's count, so a rerun on a busier machine sums in the same order.
    """
    if device.type != "cpu":
        return None
    limit = max(1, torch.get_num_threads())
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise TrainingError(f"math_threads must be >= 1 or 'auto', got {setting!r}")
        return ThreadChoice(int(setting), limit)
    if deterministic:
        return ThreadChoice(limit, limit)
    return idle_thread_choice()
