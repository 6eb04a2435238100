"""The one test of "a finite number" for values read from JSON files or passed from Python."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_finite_number(value: Any, integer: bool = False) -> bool:
    """A finite number (a whole one if ``integer``): not a string, a boolean or null; NumPy's count, for values
    built in Python. An integer beyond any float (JSON's 1 followed by 400 zeros) is none: ``math.isfinite``
    raised an internal OverflowError on it, from a hand-edited plans file, fingerprint or metrics log."""
    kind = numbers.Integral if integer else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
