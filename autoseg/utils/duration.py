"""Durations such as ``30m``, ``2h``, ``1h30m``, ``90s`` or plain seconds, for time budgets."""

from __future__ import annotations

import math
import re
from typing import Any

from autoseg.errors import UsageError
from autoseg.utils.finite import is_finite_number

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ``UsageError`` with the accepted forms when it cannot be read."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _PART.findall(value)
        if not parts or _PART.sub("", value).strip():
            raise UsageError(f"duration {text!r} not understood; write e.g. 30m, 2h, 1h30m, 90s or 1800") from None
        seconds = sum(float(n) * _SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds):  # float() reads 'nan' and 'inf', which no budget can be
        raise UsageError(f"duration {text!r} is not a finite time; write e.g. 30m, 2h, 1h30m, 90s or 1800")
    if seconds <= 0:
        raise UsageError(f"duration {text!r} must be positive")
    return seconds


def check_budget_seconds(seconds: Any, error: type[Exception]) -> None:
    """Refuse, with the stage's own ``error``, a budget that is not a positive, finite number of seconds: from
    Python a duration such as "30m" is easily passed as is (so the converter is named), and NaN passed a plain
    ``<= 0`` test (the demo ran on with it, training planned and crashed mid-run with it)."""
    if not (is_finite_number(seconds) and seconds > 0):
        raise error(f"--budget must be a positive, finite number of seconds, got {seconds!r}; e.g. 30m or 1800 "
                    "(from Python: autoseg.utils.duration.parse_duration('30m') converts a duration)")


def format_duration(seconds: float) -> str:
    """``12.5 min`` from a minute on, else ``4.2 s``: minutes alone printed a budget of a few seconds as
    ``0.0 min``."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
