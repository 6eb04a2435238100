"""Every name a dataset or fingerprint module imports is used (an unused import hides dead code)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import autoseg

PACKAGE = Path(autoseg.__file__).parent
MODULES = sorted([*(PACKAGE / "dataset").glob("*.py"), *(PACKAGE / "fingerprint").glob("*.py")])


def unused_imports(source: str) -> list[str]:
    """The names bound by module-level imports that the module never reads."""
    tree = ast.parse(source)
    bound: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[(alias.asname or alias.name).split(".")[0]] = node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for alias in node.names:
                bound[alias.asname or alias.name] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree)
             if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    exported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            exported = {e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)}
    return [f"{name} (line {line})" for name, line in bound.items()
            if name not in used and name not in exported]


def test_checker_finds_an_unused_import() -> None:
    assert unused_imports("import os\nimport re\nre.compile('x')\n") == ["os (line 1)"]


@pytest.mark.parametrize("module", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_unused_imports(module: Path) -> None:
    assert unused_imports(module.read_text(encoding="utf-8")) == []
