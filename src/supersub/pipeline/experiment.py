"""``supersub experiment``: train every run of a grid file, evaluate it, and collect one results table.

Each grid point is an ordinary run directory ``OUT/<name>/`` (what ``supersub train --out`` writes), so
``predict``, ``evaluate``, ``calibrate`` and ``compare`` work on it. Invoking the same grid again skips the
finished runs (``metrics.json`` is written last by ``train``, with the run's total ``seconds``), resumes the
interrupted ones from their checkpoints (``train --resume``) and trains the missing ones. Runs train one
after another in this process: a training already uses every core of a small machine, and two would only
compete for them (and for memory).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .. import __version__
from ..config import config_yaml
from ..errors import SupersubError
from ..io import write_atomic, write_json_atomic, write_text_atomic
from ..run_dir import MARKER, RunDir
from .compare import METRICS, format_frame_markdown
from .evaluate import evaluate_run
from .grid import EXPERIMENT_MARKER, Grid, GridRun, identity_dict, load_grid
from .train import train_run

log = logging.getLogger("supersub")

RESULTS_STEM = "results"  # OUT/results.csv and OUT/results.md
VALIDATION = {"val_acc_super": "val super %", "val_acc_sub": "val sub %"}  # the final model's seen validation accuracy


@dataclass
class Experiment:
    """What :func:`run_experiment` did: the output folder and one row per run (also in ``results.csv``)."""

    out: Path
    table: pd.DataFrame


def run_experiment(grid: str | Path | dict[str, Any], out: str | Path | None = None, *, overwrite: bool = False,
                   dry_run: bool = False, **overrides: Any) -> Experiment:
    """:func:`supersub.api.experiment`: every run of the grid, in order, then the table.

    ``overrides`` are dotted config keys for every run (``--set``). ``dry_run`` only reports what each run
    would do (``new``, ``finished``, ``interrupted``, ``changed``). A run directory holding another
    configuration is an error unless ``overwrite`` (then it is retrained from scratch).
    """
    g = load_grid(grid, overrides)
    out = Path(out) if out is not None else g.default_out
    if dry_run:
        rows = [{"run": r.name, **r.values, "status": run_state(out / r.name, r, g)[0]} for r in g.runs]
        return Experiment(out, pd.DataFrame(rows))
    _prepare_out(out, g)
    rows: list[dict[str, Any]] = []
    for i, run in enumerate(g.runs, 1):
        log.info("experiment %s: run %d/%d %s", out, i, len(g.runs), run.name)
        rows.append(_run_one(run, out / run.name, g, overwrite))
        _write_results(out, pd.DataFrame(rows), g)  # after every run: a long grid's table is readable midway
    return Experiment(out, pd.DataFrame(rows))


def run_state(path: Path, run: GridRun, g: Grid) -> tuple[str, str]:
    """(state, reason) of a grid point's folder: new, finished, interrupted, or changed (another config)."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "new", ""
    RunDir.open(path)  # a folder supersub did not make is never trained into: one-line error
    run_dir = RunDir(path)
    if run_dir.config_file.is_file():
        try:
            saved = identity_dict(yaml.safe_load(run_dir.config_file.read_text(encoding="utf-8")) or {})
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return "changed", "config.yaml is unreadable"
        wanted = identity_dict(yaml.safe_load(config_yaml(run.config)))
        diff = next((k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)), None)
        if diff is not None:
            return "changed", f"{diff} is {saved.get(diff)!r} there, {wanted.get(diff)!r} in the grid"
    summary = _finished_summary(run_dir)
    if summary is None:
        return "interrupted", ""
    data = summary.get("data")
    if data is not None and Path(data).resolve() != g.spec.data.resolve():
        return "changed", f"it was trained on {data}, the grid's data is {g.spec.data}"
    return "finished", ""


def _finished_summary(run: RunDir) -> dict[str, Any] | None:
    """The training summary of a finished run; None while ``train`` has not written it (it does so last)."""
    if not (run.metrics_file.is_file() and run.saved_head_file.is_file() and run.model_file.is_file()):
        return None
    try:
        summary = json.loads(run.metrics_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) and "seconds" in summary else None


def _run_one(run: GridRun, path: Path, g: Grid, overwrite: bool) -> dict[str, Any]:
    """Train (or resume, or skip) one run, evaluate it when the grid names a test folder; its table row."""
    state, reason = run_state(path, run, g)
    if state == "changed" and not overwrite:
        raise SupersubError(f"{path}: holds a run of another configuration ({reason}); pass --overwrite to "
                            "retrain it, or choose another --out")
    action = {"new": "trained", "finished": "skipped", "interrupted": "resumed", "changed": "retrained"}[state]
    data = g.spec.data.resolve()
    t0 = time.perf_counter()
    try:
        if state != "finished":
            train_run(data, path, g.spec.config, overwrite=state == "changed", resume=state == "interrupted",
                      **run.overrides)
        metrics = _evaluation(path, g, fresh=state != "finished")
    except SupersubError as e:
        raise SupersubError(f"{path}: {e}") from None
    except Exception:
        log.error("experiment: run %s failed; run the experiment again to resume it", path)
        raise
    summary = _finished_summary(RunDir(path)) or {}
    final = summary.get("final", {}) if isinstance(summary.get("final"), dict) else {}
    row: dict[str, Any] = {"run": run.name, **run.values, "status": action,
                           "train_seconds": summary.get("seconds"), "wall_seconds": round(time.perf_counter() - t0, 1)}
    row.update({k: final.get(k) for k in VALIDATION})
    row.update({k: metrics.get(k) for k in METRICS})
    return row


def _evaluation(path: Path, g: Grid, fresh: bool) -> dict[str, Any]:
    """The run's metrics on the grid's test folder (evaluated unless a current evaluation is saved)."""
    test = g.spec.test
    if test is None:
        return {}
    stem = Path(test.labels).stem if test.labels is not None else Path(test.images).name
    saved = path / "evaluations" / f"{stem}.json"
    head = RunDir(path).saved_head_file
    if not fresh and saved.is_file() and saved.stat().st_mtime >= head.stat().st_mtime:
        try:
            return json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass  # a damaged evaluation is redone
    return evaluate_run(path, test.images, test.labels)


def _prepare_out(out: Path, g: Grid) -> None:
    """The experiment folder: created with a marker; a non-empty folder without one is not ours to fill."""
    if out.exists() and not out.is_dir():
        raise SupersubError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPERIMENT_MARKER).is_file():
        raise SupersubError(f"{out}: exists and is not a supersub experiment folder (no {EXPERIMENT_MARKER}); "
                            "choose another --out")
    if (out / MARKER).is_file():
        raise SupersubError(f"{out}: is a run directory; an experiment needs a folder of its own")
    write_json_atomic(out / EXPERIMENT_MARKER, {"supersub": __version__, "grid": g.source})
    # the grid as validated (a valid grid file again), beside the runs it made
    spec = g.spec.model_dump(mode="json", exclude_none=True)
    write_text_atomic(out / "grid.yaml", yaml.safe_dump(spec, sort_keys=False))


def _write_results(out: Path, df: pd.DataFrame, g: Grid) -> None:
    """``results.csv`` (every column) and ``results.md`` (readable headers), each written atomically."""
    write_atomic(out / f"{RESULTS_STEM}.csv", lambda fh: df.to_csv(fh, index=False))
    headers = {**VALIDATION, **METRICS}
    md = df.rename(columns={k: v for k, v in headers.items() if k in df.columns})
    text = f"# Experiment {g.source}\n\n{len(df)} of {len(g.runs)} runs; accuracy in %, CE in nats.\n\n"
    write_text_atomic(out / f"{RESULTS_STEM}.md", text + format_frame_markdown(md) + "\n")
