"""Every import of the package is declared in pyproject.toml; every module imports in a fresh interpreter,
also without the optional extras installed."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import autoseg

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autoseg"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Distributions that only an extra brings, and the import names that must stay out of module level.
OPTIONAL_IMPORTS = {"onnx": "onnx", "onnxruntime": "onnx"}


def _distribution(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def _top_level_imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _all_modules() -> list[str]:
    """Every module but ``__main__`` (importing it runs the CLI)."""
    return sorted(m.name for m in pkgutil.walk_packages(autoseg.__path__, "autoseg.") if not m.name.endswith("__main__"))


def test_every_third_party_import_is_a_declared_dependency() -> None:
    core = {_distribution(r) for r in PYPROJECT["dependencies"]}
    extras = {name: {_distribution(r) for r in reqs} for name, reqs in PYPROJECT["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in PACKAGE.rglob("*.py"):
        for name in _top_level_imports(path, module_level_only=False):
            if name in sys.stdlib_module_names or name in ("autoseg", "__future__"):
                continue
            dists = {d.lower() for d in distributions.get(name, [name])}
            extra = OPTIONAL_IMPORTS.get(name)
            declared = core | (extras[extra] if extra else set())
            if not dists & declared:
                undeclared[name] = str(path.relative_to(ROOT))
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def test_optional_packages_are_imported_only_inside_the_functions_that_need_them() -> None:
    at_module_level = {
        str(path.relative_to(ROOT)): sorted(names & set(OPTIONAL_IMPORTS))
        for path in PACKAGE.rglob("*.py")
        if (names := _top_level_imports(path, module_level_only=True)) & set(OPTIONAL_IMPORTS)
    }
    assert at_module_level == {}


def test_torch_is_not_pinned_so_an_installed_cuda_build_is_kept() -> None:
    torch_requirements = [r for r in PYPROJECT["dependencies"] if _distribution(r) == "torch"]
    assert torch_requirements and not any("==" in r or "<" in r for r in torch_requirements)


def test_every_module_imports_in_a_fresh_interpreter_without_the_optional_extras() -> None:
    """A subprocess hides onnx and onnxruntime (as on a plain ``pip install autoseg``) and imports every
    module of the package, so a missing or optional import at module level fails here."""
    modules = _all_modules()
    assert "autoseg.cli" in modules and len(modules) > 50
    blocked = sorted(OPTIONAL_IMPORTS)
    script = (
        "import importlib, json, sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "failed = {}\n"
        f"for module in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(module)\n"
        "    except Exception as exc:\n"
        "        failed[module] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}
