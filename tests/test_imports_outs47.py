"""Every name a prediction or output module imports is used (an unused import hides dead code); an import marked
``# noqa: F401`` re-exports its names on purpose (sliding_window.py's public names from tiling.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

import autoseg

from test_imports_data47 import unused_imports

PACKAGE = Path(autoseg.__file__).parent
EVALUATION = ("evaluate", "ensemble", "statistics", "metrics", "report", "model_files")
UTILS = ("output_folders", "probability_files", "grid_check")
MODULES = sorted([
    *(PACKAGE / "inference").glob("*.py"), *(PACKAGE / "postprocessing").glob("*.py"),
    *(PACKAGE / "evaluation" / f"{name}.py" for name in EVALUATION), *(PACKAGE / "utils" / f"{name}.py" for name in UTILS),
])


def _unused_unmarked(source: str) -> list[str]:
    """``unused_imports`` of ``source`` less those of import statements marked ``# noqa: F401``."""
    lines = source.splitlines()
    return [found for found in unused_imports(source)
            if "noqa: F401" not in lines[int(found.rsplit("line ", 1)[1].rstrip(")")) - 1]]


def test_only_imports_marked_as_re_exports_are_let_through() -> None:
    source = "from os import sep  # noqa: F401 - re-exported\nimport re\nimport json\njson.dumps(1)\n"
    assert _unused_unmarked(source) == ["re (line 2)"]


@pytest.mark.parametrize("module", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_unused_imports(module: Path) -> None:
    assert _unused_unmarked(module.read_text(encoding="utf-8")) == []
