"""pyproject's dependencies are exactly what the code imports: nothing declared and unused, nothing used and undeclared."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "supersub"

# import name -> distribution name, where the two differ
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "pytorch_ood": "pytorch-ood"}
# imported only inside ``try: ... except ImportError`` (typer bundles its own click in recent versions)
OPTIONAL = {"click"}


def _imported_top_level(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        names |= _imported_top_level(path)
    stdlib = set(sys.stdlib_module_names)
    return {n for n in names if n not in stdlib and n != "supersub" and n not in OPTIONAL}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in project["dependencies"]}


def _normalise(import_name: str) -> str:
    return DISTRIBUTION.get(import_name, import_name).lower().replace("_", "-")


def test_every_import_is_declared() -> None:
    missing = {_normalise(n) for n in _third_party_imports()} - _declared()
    assert not missing, f"imported but not in pyproject dependencies: {sorted(missing)}"


def test_every_declared_dependency_is_imported() -> None:
    unused = _declared() - {_normalise(n) for n in _third_party_imports()}
    assert not unused, f"declared in pyproject but never imported by src/supersub: {sorted(unused)}"
