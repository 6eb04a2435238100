"""Durations such as ``30m``, ``2h``, ``1h30m``, ``90s`` or plain seconds, for time budgets."""

from __future__ import annotations

import math
import re

from autoseg.errors import UsageError

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


def format_duration(seconds: float) -> str:
    """``12.5 min`` from a minute on, else ``4.2 s``: minutes alone printed a budget of a few seconds as
    ``0.0 min``."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
