"""The grid file of ``supersub experiment``: its schema (pydantic) and its expansion into named runs.

    data: bench-out/loso-reptile-0/data          # training data, as `supersub train --data`
    test: {images: DIR, labels: CSV}             # optional: every run is evaluated on it (labels optional)
    config: configs/base.yaml                    # optional: a `train --config` file under every run
    base: {optim.epochs: 15}                     # dotted config keys (as `train --set`) for every run
    grid:                                        # key -> values (a cross product), or a list of such
      model.approach: [two-heads, two-models]    # mappings (the union of their cross products)
      data.novel_count: [5000, 1000]
    seeds: [0, 1, 2]                             # every grid point once per seed
    out: runs/ab                                 # optional: the default of --out

Paths are relative to the current folder, as in ``train --config``. A run's name lists the keys whose
values differ between the grid's points, then the seed (``approach=two-models,novel_count=1000,seed=2``),
so the same file always gives the same names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sklearn.model_selection import ParameterGrid

from ..config import TrainConfig, config_to_dict
from ..errors import SupersubError
from ..io import read_mapping
from ..run_config import _flatten, resolve_config

# keys that change how a run is carried out, not what it computes: two runs that differ only here are the
# same experiment (for skipping finished runs and for grouping in `compare`)
NOT_IDENTITY = frozenset({"trainer.progress", "data.num_workers", "data.cache_dir"})
EXPERIMENT_MARKER = "supersub-experiment.json"  # marks a folder made by `supersub experiment`
MAX_NAME = 120  # longer names are cut and end in a hash of the whole name (folder names stay portable)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalFolder(_Strict):
    """Labelled images every run is evaluated on, as ``supersub evaluate --images --labels``."""

    images: Path
    labels: Path | None = None


Values = Annotated[list[Any], Field(min_length=1)]


class GridFile(_Strict):
    """The YAML file of ``supersub experiment`` (see the module docstring)."""

    data: Path
    test: EvalFolder | None = None
    config: Path | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: list[dict[str, Values]] = Field(default_factory=list)
    seeds: Annotated[list[int], Field(min_length=1)] | None = None
    out: Path | None = None

    @field_validator("grid", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """A single mapping is a one-item list: one cross product."""
        return [value] if isinstance(value, dict) else value

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value


@dataclass(frozen=True)
class GridRun:
    """One point of the grid: its folder name, its grid values and the configuration it trains with."""

    name: str
    values: dict[str, Any]  # the grid keys of this point (seed included), in the file's order
    overrides: dict[str, Any]  # every dotted key passed to `train` (base, point, command-line overrides)
    config: TrainConfig = field(compare=False)


@dataclass
class Grid:
    """A loaded grid file: where it came from, its fields, and its runs in the order they train."""

    source: str
    spec: GridFile
    runs: list[GridRun]
    keys: list[str]  # the grid keys that vary between points (the columns of the results table)

    @property
    def default_out(self) -> Path:
        return self.spec.out if self.spec.out is not None else Path("runs") / Path(self.source).stem


def load_grid(grid: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> Grid:
    """Read and validate a grid (a YAML path or the same as a dict) and expand it into runs.

    Every problem is one line naming the file and the field: an unknown top-level field or config key, a
    value of the wrong type, a config value out of range (each point's configuration is validated here,
    before anything trains), a missing data folder. ``overrides`` are dotted keys applied to every run
    (``experiment --set``); they may not name a grid key.
    """
    source, raw = _read(grid)
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as e:
        raise SupersubError(_validation_message(e, source, raw)) from None
    _check_paths(spec, source)
    base = _flatten(spec.base)
    for key in base:
        check_key(key, f"{source}: base")
    for k, sub in enumerate(spec.grid):
        for key in sub:
            check_key(key, f"{source}: grid" + (f"[{k}]" if len(spec.grid) > 1 else ""))
    overrides = dict(overrides or {})
    for key in overrides:
        check_key(key, "--set")
    axes = [dict(sub) for sub in spec.grid] or [{}]
    if spec.seeds is not None:
        if any("seed" in sub for sub in axes):
            raise SupersubError(f"{source}: seeds: give the seeds once, as 'seeds' or as the grid key 'seed'")
        axes = [{**sub, "seed": spec.seeds} for sub in axes]
    gridded = {key for sub in axes for key in sub}
    clash = sorted(gridded & set(overrides))
    if clash:
        raise SupersubError(f"--set {clash[0]}: is a grid key of {source}; change its values in the grid")
    order = list(dict.fromkeys(key for sub in axes for key in sub if key != "seed"))
    points = _points(axes, order)
    keys = _varying(points, order) + (["seed"] if any("seed" in p for p in points) else [])
    runs: list[GridRun] = []
    seen: set[str] = set()
    for point in points:
        values = {k: point[k] for k in keys if k in point}
        label = run_name(values) if values else "run"
        merged = {**base, **point, **overrides}
        try:
            cfg = resolve_config(spec.config, **merged)
        except SupersubError as e:
            raise SupersubError(f"{source}: grid point {label}: {_drop_source(str(e))}") from None
        identity = json.dumps(identity_dict(config_to_dict(cfg)), sort_keys=True, default=str)
        if identity in seen:  # two points of a union that resolve to the same configuration train once
            continue
        seen.add(identity)
        runs.append(GridRun(label, values, merged, cfg))
    _unique_names(runs)
    return Grid(source, spec, runs, keys)


def check_key(key: str, where: str) -> None:
    """A dotted config key as ``train --set`` takes it (``optim.lr``, ``seed``); anything else is an error."""
    node: type[BaseModel] = TrainConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = node.model_fields
        if part not in fields:
            close = difflib.get_close_matches(key, config_keys(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SupersubError(f"{where}: {key}: unknown config key{hint}")
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            node = annotation
            continue
        if depth < len(parts) - 1 and not _is_mapping(annotation):
            raise SupersubError(f"{where}: {key}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        return
    example = f"{key}.{next(iter(node.model_fields))}"
    raise SupersubError(f"{where}: {key}: is a section; name a key inside it, e.g. {example}")


def config_keys(node: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration (for "did you mean" hints)."""
    out: list[str] = []
    for name, info in node.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += config_keys(annotation, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def identity_dict(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (nested dict) as flat dotted keys, without :data:`NOT_IDENTITY`."""
    return {k: v for k, v in _flatten(config).items() if k not in NOT_IDENTITY}


def run_name(values: dict[str, Any]) -> str:
    """``key=value`` pairs joined by commas (hydra's multirun style), keys shortened to their last part
    where that stays unambiguous; characters a folder name should not hold become ``-``."""
    short = short_keys(list(values))
    name = ",".join(f"{short[k]}={format_value(v)}" for k, v in values.items())
    name = re.sub(r"[^A-Za-z0-9._+=,-]+", "-", name)
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def short_keys(keys: list[str]) -> dict[str, str]:
    """``model.approach`` -> ``approach`` unless another key ends the same way (then the whole key)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def format_value(value: Any) -> str:
    """A value as it reads in a name or a table: 0.0001 not 1e-04, true/false, lists joined by '-'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return "-".join(f"{k}{format_value(v)}" for k, v in value.items())
    return str(value)


# ---- helpers ---------------------------------------------------------------------------------------------

def _read(grid: str | Path | dict[str, Any]) -> tuple[str, Any]:
    if isinstance(grid, dict):
        return "grid", grid
    path = Path(grid)
    if not path.is_file():
        raise SupersubError(f"{path}: grid file not found")
    return str(path), read_mapping(path, "YAML", "top level must be a mapping (data, grid, seeds, ...)")


def _validation_message(err: ValidationError, source: str, raw: dict[str, Any]) -> str:
    """The first pydantic error as ``FILE: field: message``; a single-mapping grid has no list index."""
    first = err.errors()[0]
    loc = list(first["loc"])
    if loc[:1] == ["grid"] and isinstance(raw.get("grid"), dict) and len(loc) > 1 and loc[1] == 0:
        del loc[1]
    where = ".".join(str(p) for p in loc) or "(top level)"
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {where}: {msg}{more}"


def _check_paths(spec: GridFile, source: str) -> None:
    """The inputs must exist before the first of many runs starts."""
    checks = [("data", spec.data, "folder"), ("config", spec.config, "file")]
    if spec.test is not None:
        checks += [("test.images", spec.test.images, "folder"), ("test.labels", spec.test.labels, "file")]
    for name, path, kind in checks:
        if path is not None and not (path.is_dir() if kind == "folder" else path.is_file()):
            raise SupersubError(f"{source}: {name}: {path}: no such {kind}")


def _is_mapping(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", annotation) is dict


def _points(axes: list[dict[str, list[Any]]], order: list[str]) -> list[dict[str, Any]]:
    """Every point of every cross product (sklearn's ParameterGrid: the union of a list of grids), its keys
    in the file's order and the seed last."""
    points = []
    for point in ParameterGrid(axes):
        ordered = {k: point[k] for k in order if k in point}
        if "seed" in point:
            ordered["seed"] = point["seed"]
        points.append(ordered)
    return points


def _varying(points: list[dict[str, Any]], order: list[str]) -> list[str]:
    """Grid keys whose value is not the same in every point (a key missing from a point counts as a value)."""
    missing = object()
    return [k for k in order
            if len({json.dumps(p[k], sort_keys=True, default=str) if k in p else id(missing) for p in points}) > 1]


def _unique_names(runs: list[GridRun]) -> None:
    """Names come from values: only characters a folder name cannot hold could make two equal."""
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        if run.name in seen:
            digest = hashlib.sha1(json.dumps(run.overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
            runs[i] = GridRun(f"{run.name}-{digest}", run.values, run.overrides, run.config)
        seen[runs[i].name] = i


def _drop_source(message: str) -> str:
    """``config: optim.lr: ...`` -> ``optim.lr: ...`` (the grid file is named instead)."""
    return message[len("config: "):] if message.startswith("config: ") else message
