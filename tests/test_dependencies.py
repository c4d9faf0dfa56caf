"""pyproject's dependencies are exactly what the code imports: nothing declared and unused, nothing used and undeclared."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the test extra declares tomli for it (a missing one is an error, never a skip)
    import tomli as tomllib

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


# distribution -> the distribution whose module it provides (xgboost-cpu is xgboost without the CUDA libraries)
PROVIDES = {"xgboost-cpu": "xgboost"}


def _names(requirements: list[str]) -> set[str]:
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in requirements}
    return {PROVIDES.get(n, n) for n in names}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _declared() -> set[str]:
    """Core dependencies plus the extras of supersub's own features (not the test or logger tools)."""
    project = _project()
    extras = project.get("optional-dependencies", {})
    return _names(project["dependencies"]) | _names(extras.get("boost", [])) | _names(extras.get("review", []))


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported when the module is imported (not inside a function)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _normalise(import_name: str) -> str:
    return DISTRIBUTION.get(import_name, import_name).lower().replace("_", "-")


def test_every_import_is_declared() -> None:
    missing = {_normalise(n) for n in _third_party_imports()} - _declared()
    assert not missing, f"imported but not in pyproject dependencies: {sorted(missing)}"


def _weight_packages() -> set[str]:
    """Packages that hold data, not code: the bundled weights are found by ``importlib.util.find_spec``."""
    from supersub.models.weight_sources import WEIGHT_SOURCES

    return {s.distribution for s in WEIGHT_SOURCES.values()}


def test_every_declared_dependency_is_imported() -> None:
    unused = _declared() - {_normalise(n) for n in _third_party_imports()} - _weight_packages()
    assert not unused, f"declared in pyproject but never imported by src/supersub: {sorted(unused)}"


def test_extras_are_imported_lazily() -> None:
    """A package of an extra (xgboost) is imported only inside the function that needs it, so a core install
    imports every module and fails with a one-line hint only when the feature is used."""
    extra = _names(_project().get("optional-dependencies", {}).get("boost", []))
    assert extra, "the boost extra declares xgboost"
    eager = {str(path.relative_to(SRC)): sorted(extra & {_normalise(n) for n in _module_level_imports(path)})
             for path in SRC.rglob("*.py")}
    assert not {k: v for k, v in eager.items() if v}, f"extras imported at module level: {eager}"


def test_a_missing_extra_is_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from supersub.errors import SupersubError
    from supersub.models.boosted import _xgboost

    monkeypatch.setitem(sys.modules, "xgboost", None)  # what an install without the extra looks like
    with pytest.raises(SupersubError, match=r'pip install "supersub\[boost\]"'):
        _xgboost()


def test_the_test_extra_declares_tomli_for_python_3_10() -> None:
    """Without it, this file could not be imported on 3.10 (it used to skip itself there instead)."""
    test_extra = _project()["optional-dependencies"]["test"]
    assert any(r.replace(" ", "").startswith("tomli>=") and "python_version<'3.11'" in r.replace(" ", "")
               for r in test_extra), test_extra
