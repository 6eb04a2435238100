"""Python callers' lists of names, folds or settings: one given where a list is taken."""

from __future__ import annotations

from typing import Sequence


def string_list(value: int | str | Sequence[int | str]) -> list[str]:
    """``value`` as a list of strings, a lone name or number being a list of one.

    The CLI always passes lists; from Python ``find_best(spec, configurations="3d_fullres")`` was read letter
    by letter ("no model folder of configuration 3, d, _, f, ..."), ``train_fold(..., overrides="a=1")`` too
    ("--set 'a': expected key=value") and ``folds=0`` raised a bare TypeError.
    """
    items = [value] if isinstance(value, (str, int)) else value
    return [str(item) for item in items]
