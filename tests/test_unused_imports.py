"""Every name an autoseg module imports at module level is used (an unused import hides dead code); an import
statement marked ``# noqa: F401`` re-exports its names on purpose (sliding_window.py's public names from tiling.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import autoseg

PACKAGE = Path(autoseg.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def unused_imports(source: str) -> list[tuple[str, int]]:
    """The names (with their line) bound by module-level imports that the module never reads, names in ``__all__``
    and import statements marked ``# noqa: F401`` on any of their lines excepted."""
    tree, lines = ast.parse(source), source.splitlines()
    bound: dict[str, int] = {}
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or getattr(node, "module", None) == "__future__":
            continue
        if any("noqa: F401" in line for line in lines[node.lineno - 1:node.end_lineno]):
            continue
        for alias in node.names:
            name = alias.asname or alias.name
            bound[name.split(".")[0] if isinstance(node, ast.Import) else name] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    exported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            exported = {e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)}
    return [(name, line) for name, line in bound.items() if name not in used | exported]


def test_the_checker_finds_unused_imports_and_lets_marked_re_exports_through() -> None:
    source = ("from os import (  # noqa: F401 - re-exported\n    sep,\n)\nimport re\nimport json\nimport os.path\n"
              "from typing import Any\n__all__ = ['Any']\njson.dumps(1)\n")
    assert unused_imports(source) == [("re", 4), ("os", 6)]


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_unused_imports(module: Path) -> None:
    assert unused_imports(module.read_text(encoding="utf-8")) == []
