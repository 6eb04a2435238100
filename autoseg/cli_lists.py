"""nnU-Net's space-separated lists on autoseg's command line: ``-f 0 1 2 3 4``, ``-i DIR DIR``, ``--set a=1 b=2``.

Click takes one value per occurrence of a list option, so each value that follows such a flag (up to the
next token starting with ``-``) gets the flag repeated: ``-f 0 -f 1 ...``. Values the command's positional
arguments still lack are given back to them (``find-best -f 0 1 2 Dataset004``): first those a list cannot
take (``Dataset004`` is no fold), in whichever list they stand, then the last values of the last list.
Kept out of cli.py, which only parses and calls; it reads a click command's parameters and imports no typer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

# What a value of a list option looks like, by the option's parameter name; a value that is not one (and
# every value after it in that list) is a positional argument's: ``find-best -f 0 1 Dataset004 -c 2d 3d_fullres``.
LIST_VALUE_PATTERNS = {
    "folds": re.compile(r"\d+|all"),
    "configurations": re.compile(r"[23]d\w*"),  # nnU-Net's names: 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres
    "configs": re.compile(r"[23]d\w*"),
    "overrides": re.compile(r"[^=\s]+=.*", re.DOTALL),  # --set key=value
}


@dataclass
class _ListRun:
    """The values that followed one occurrence of a list option's flag (after its own value)."""

    name: str  # the option's parameter name
    flag_positions: list[int] = field(default_factory=list)  # where each repeated flag stands in the output
    values: list[str] = field(default_factory=list)

    def first_foreign(self) -> int:
        """Index of the first value this list's option cannot take (``len(values)`` when it takes all)."""
        pattern = LIST_VALUE_PATTERNS.get(self.name)
        if pattern is None:
            return len(self.values)
        return next((i for i, value in enumerate(self.values) if not pattern.fullmatch(value)), len(self.values))


def expand_lists(params: Sequence[Any], args: list[str]) -> list[str]:
    """``args`` (the command's name first) with every list option's flag repeated for each of its values,
    and the values the command's ``params`` (click parameters) lack as positional arguments given back."""
    multiple = {name for p in params if getattr(p, "multiple", False) for name in getattr(p, "opts", [])}
    valued = {name: p.name for p in params if p.param_type_name == "option" and not p.is_flag and not p.count
              for name in p.opts + p.secondary_opts}
    out, index, positionals = [args[0]], 1, 0
    runs: list[_ListRun] = []
    while index < len(args):
        token = args[index]
        out.append(token)
        index += 1
        if token in valued and index < len(args):
            out.append(args[index])  # the flag's own value
            index += 1
            if token in multiple:
                run = _ListRun(valued[token])
                while index < len(args) and not args[index].startswith("-"):
                    run.flag_positions.append(len(out))
                    run.values.append(args[index])
                    out.extend([token, args[index]])
                    index += 1
                if run.values:
                    runs.append(run)
        elif not token.startswith("-"):
            positionals += 1
    lacking = sum(1 for p in params if p.param_type_name == "argument" and p.required) - positionals
    given_back = _given_back(runs, lacking)
    for flag_at in sorted(given_back, reverse=True):
        del out[flag_at]  # its value becomes a positional argument
    return out


def _given_back(runs: Sequence[_ListRun], lacking: int) -> list[int]:
    """The positions of the repeated flags whose values become the ``lacking`` positional arguments: the
    values a list cannot take, in the order given, then the last values of the last list."""
    foreign = [at for run in runs for at in run.flag_positions[run.first_foreign():]][: max(lacking, 0)]
    remaining = lacking - len(foreign)
    last = [at for at in (runs[-1].flag_positions if runs else []) if at not in foreign]
    return foreign + (last[-remaining:] if remaining > 0 else [])
