"""The layer order of docs/architecture.md, checked from the source: no upward import, no import cycle.

Every ``import`` statement counts, including the ones inside functions (a late import is still a
dependency). A module may import its own package, any lower layer, or another unit of its own layer.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "supersub"

# lowest first; a unit is a top-level module or sub-package of supersub
LAYERS: list[set[str]] = [
    {"__init__", "errors", "taxonomy", "io", "score_catalog", "memory", "threads"},  # ground floor
    {"config", "run_config"},
    {"novelty", "metrics", "losses", "grouping"},  # maths on arrays and tensors
    {"data", "models", "reporting", "report_page"},
    {"inference", "run_dir"},
    {"training"},
    {"pipeline", "pretrain", "review"},
    {"api"},
    {"cli", "cli_options", "cli_data", "cli_errors"},
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}
# the pure layer: what the issue allows novelty/ and metrics.py to import
PURE = {"novelty", "metrics"}
PURE_MAY_IMPORT = {"__init__", "errors", "taxonomy", "io", "score_catalog", "threads", "config", "novelty", "metrics"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute supersub module) of every import of a supersub module in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "supersub"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "supersub":
                target = node.module
            else:
                continue
            # "from . import api" names a module: count it, not the package
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                    (PACKAGE.parent / Path(*candidate.split("."))).is_dir()
                found.append((node.lineno, candidate if is_module else target))
    return found


def _graph() -> dict[str, list[tuple[int, str]]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in _graph()}
    assert units <= set(LAYER_OF), f"units without a layer in LAYERS (and docs/architecture.md): {units - set(LAYER_OF)}"


def test_no_import_goes_up_a_layer() -> None:
    upward = []
    for module, imports in _graph().items():
        for line, target in imports:
            here, there = _unit(module), _unit(target)
            if LAYER_OF[there] > LAYER_OF[here]:
                upward.append(f"{module}:{line} imports {target} ({there} is above {here})")
    assert not upward, "\n".join(upward)


def test_novelty_and_metrics_import_only_the_ground_floor_config_and_each_other() -> None:
    bad = [f"{module}:{line} imports {target}" for module, imports in _graph().items() if _unit(module) in PURE
           for line, target in imports if _unit(target) not in PURE_MAY_IMPORT]
    assert not bad, "\n".join(bad)


def _find_cycle(graph: dict[str, list[str]]) -> list[str]:
    """One import cycle of ``graph`` (module -> imported modules) as a path that ends where it starts, or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if state.get(nxt) is None:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = 2
        return []

    for module in graph:
        if state.get(module) is None:
            found = visit(module, [])
            if found:
                return found
    return []


def test_no_import_cycle() -> None:
    graph = {m: sorted({t for _, t in imports if t != m}) for m, imports in _graph().items()}
    cycle = _find_cycle(graph)
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": []}) == []


def test_the_checker_sees_relative_and_late_imports() -> None:
    """The parser resolves ``from . import api``, ``from ..x import y`` and imports inside functions."""
    cli = {t for _, t in _imports(PACKAGE / "cli.py")}
    assert {"supersub.api", "supersub.errors", "supersub.config"} <= cli  # api and config are imported late
    evidence = {t for _, t in _imports(PACKAGE / "pipeline" / "evidence.py")}
    assert {"supersub.training.finetune", "supersub.pipeline.stage_plan"} <= evidence


def test_validating_a_config_imports_no_model_or_detector_code() -> None:
    """The config reads score ranges and bundled backbone names as data; the maths never pulls in plotting."""
    code = ("import sys, supersub.config; heavy = [m for m in ('torch', 'pytorch_ood', 'timm') if m in sys.modules];"
            "import supersub.novelty.threshold_search, supersub.metrics; plots = 'matplotlib' in sys.modules;"
            "print(heavy, plots)")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[] False"


def test_no_two_modules_share_a_file_name() -> None:
    """A path alone tells a newcomer what a file holds: no two modules of the package are called the same
    (``__init__.py`` aside, and Lightning's ``module.py`` convention for a LightningModule / DataModule)."""
    seen: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    shared = {name: paths for name, paths in seen.items() if len(paths) > 1 and name not in ("__init__.py", "module.py")}
    assert not shared, f"modules sharing a file name: {shared}"
