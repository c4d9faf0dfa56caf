"""``supersub compare``: the competition metrics of several runs, mean ± std over seeds, and deltas.

Runs whose configurations differ only by ``seed`` form a group (``group_by`` groups by chosen keys
instead); each group's metrics are averaged over its runs, and every group is compared with the baseline
group, as the seed paper's figures compare two settings. A run's metrics are those of its evaluation
(``RUN/evaluations/<name>.json``, written by ``supersub evaluate`` or by ``supersub experiment``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from ..errors import SupersubError
from ..io import read_mapping, write_atomic, write_text_atomic
from ..reporting import DeltaPanel, save_delta_chart
from ..run_dir import MARKER, RunDir
from .grid import EXPERIMENT_MARKER, check_key, format_value, identity_dict, short_keys

# column -> header: the competition's metrics per level, then the threshold-free AUROC of each level
METRICS: dict[str, str] = {
    "super_acc_overall": "super overall", "super_acc_seen": "super seen", "super_acc_unseen": "super unseen",
    "super_ce": "super CE",
    "sub_acc_overall": "sub overall", "sub_acc_seen": "sub seen", "sub_acc_unseen": "sub unseen", "sub_ce": "sub CE",
    "super_auroc": "super AUROC", "sub_auroc": "sub AUROC",
}
ACCURACY = [m for m in METRICS if "_acc_" in m]
PANELS = [("accuracy change (points)", ACCURACY), ("CE change (nats, lower is better)", ["super_ce", "sub_ce"]),
          ("AUROC change", ["super_auroc", "sub_auroc"])]
DATA_KEY, TEST_KEY = "train_data", "test_labels"  # identity beyond the config: what a run trained and was scored on
FILES = ("compare.csv", "compare.md", "compare_deltas.csv", "compare_delta.png")


@dataclass
class RunRecord:
    """One run as compare sees it: its seed, what makes it a distinct experiment, and its metrics."""

    path: Path
    seed: int
    identity: dict[str, Any]  # flat config keys without the seed, plus train data and test labels
    metrics: dict[str, float]  # every METRICS key; NaN where the evaluation has none


@dataclass
class Group:
    """Runs of one setting (different seeds); ``values`` are the keys that tell it from the other groups."""

    label: str
    values: dict[str, Any]
    runs: list[RunRecord]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def column(self, metric: str) -> np.ndarray:
        return np.array([r.metrics[metric] for r in self.runs], dtype=float)


@dataclass
class Comparison:
    """Groups, their mean ± std table, the deltas against the baseline group, and the files written."""

    groups: list[Group]
    baseline: str
    summary: pd.DataFrame  # one row per group: group, n, seeds, <metric>_mean, <metric>_std
    deltas: pd.DataFrame  # one row per other group: group, paired, <metric>_delta, <metric>_std
    files: list[Path]


def compare_runs(runs: list[str | Path], *, baseline: str | Path | None = None, group_by: list[str] | None = None,
                 evaluation: str | None = None, out: str | Path | None = None, overwrite: bool = False) -> Comparison:
    """:func:`supersub.api.compare`: load, group, summarise, compare with the baseline, write the files."""
    paths = [run for r in runs for run in expand_runs(Path(r))]
    if not paths:
        raise SupersubError("compare: no run directories given")
    if baseline is not None and Path(baseline).resolve() not in {p.resolve() for p in paths}:
        paths.insert(0, Path(baseline))
    targets = [Path(out) / name for name in FILES] if out is not None else []
    if not overwrite:
        for target in targets:
            if target.exists():
                raise SupersubError(f"{target}: exists (pass --overwrite to replace it)")
    records = [load_record(p, evaluation) for p in paths]
    groups = group_runs(records, group_by)
    base_path = Path(baseline).resolve() if baseline is not None else paths[0].resolve()
    base = next(g for g in groups if any(r.path.resolve() == base_path for r in g.runs))
    result = Comparison(groups, base.label, summarise(groups), deltas(groups, base), [])
    if out is not None:
        result.files = _write(result, Path(out))
    return result


def expand_runs(path: Path) -> list[Path]:
    """A run directory as itself; an experiment folder (`supersub experiment --out`) as every run in it."""
    if (path / EXPERIMENT_MARKER).is_file() and not (path / MARKER).is_file():
        return sorted(p for p in path.iterdir() if (p / MARKER).is_file())
    return [path]


def load_record(path: Path, evaluation: str | None = None) -> RunRecord:
    """A run directory's seed, identity and evaluation metrics; a missing piece is a one-line error."""
    run = RunDir.open(path)
    config = read_mapping(run.config_file, "YAML", "not a configuration")
    identity = identity_dict(config)
    seed = identity.pop("seed", 0)
    file = _evaluation_file(run, evaluation)
    scores = read_mapping(file, "JSON", "expected a JSON object")
    summary = read_mapping(run.metrics_file, "JSON", "expected a JSON object") if run.metrics_file.is_file() else {}
    identity[DATA_KEY] = summary.get("data")
    identity[TEST_KEY] = scores.get("labels")
    metrics = {m: _number(scores.get(m), file, m) for m in METRICS}
    return RunRecord(Path(path), int(seed), identity, metrics)


def group_runs(records: list[RunRecord], group_by: list[str] | None = None) -> list[Group]:
    """Runs with equal identities (or equal ``group_by`` values) in one group, in the order first seen."""
    if group_by:
        for key in group_by:
            if key != "seed":
                check_key(key, "--group-by")

        def ident(r: RunRecord) -> dict[str, Any]:
            return {k: r.seed if k == "seed" else r.identity.get(k) for k in group_by}
    else:
        def ident(r: RunRecord) -> dict[str, Any]:
            return r.identity
    buckets: dict[str, list[RunRecord]] = {}
    idents: dict[str, dict[str, Any]] = {}
    for r in records:
        key = json.dumps(ident(r), sort_keys=True, default=str)
        buckets.setdefault(key, []).append(r)
        idents[key] = ident(r)
    keys = list(group_by) if group_by else _differing(list(idents.values()))
    short = short_keys(keys)
    groups = []
    for key, runs in buckets.items():
        values = {k: idents[key].get(k) for k in keys}
        label = ", ".join(f"{short[k]}={_show(k, v)}" for k, v in values.items()) or "all runs"
        groups.append(Group(label, values, runs))
    return groups


def summarise(groups: list[Group]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1: NaN for a single run) of every metric per group."""
    rows = []
    for g in groups:
        row: dict[str, Any] = {"group": g.label, **{k: format_value(v) for k, v in g.values.items()},
                               "n": len(g.runs), "seeds": ",".join(str(s) for s in g.seeds)}
        for m in METRICS:
            col = g.column(m)
            ok = col[~np.isnan(col)]
            row[f"{m}_mean"] = float(ok.mean()) if len(ok) else math.nan
            row[f"{m}_std"] = float(ok.std(ddof=1)) if len(ok) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def deltas(groups: list[Group], base: Group) -> pd.DataFrame:
    """Each other group minus the baseline, per metric.

    When both groups hold the same seeds once each, the runs pair by seed: the delta is the mean of the
    per-seed differences and its std their standard deviation (the seed's share of the noise cancels).
    Otherwise the delta is the difference of the means and its std sqrt(std_a^2 + std_b^2).
    """
    rows = []
    for g in groups:
        if g is base:
            continue
        paired = sorted(g.seeds) == sorted(base.seeds) and len(set(g.seeds)) == len(g.seeds)
        row: dict[str, Any] = {"group": g.label, "baseline": base.label, "paired": paired}
        for m in METRICS:
            if paired:
                mine = {r.seed: r.metrics[m] for r in g.runs}
                diff = np.array([mine[r.seed] - r.metrics[m] for r in base.runs], dtype=float)
                diff = diff[~np.isnan(diff)]
                delta = float(diff.mean()) if len(diff) else math.nan
                std = float(diff.std(ddof=1)) if len(diff) > 1 else math.nan
            else:
                a, b = g.column(m), base.column(m)
                a, b = a[~np.isnan(a)], b[~np.isnan(b)]
                delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
                spreads = [float(x.std(ddof=1)) for x in (a, b) if len(x) > 1]
                std = math.sqrt(sum(s * s for s in spreads)) if spreads else math.nan
            row[f"{m}_delta"], row[f"{m}_std"] = delta, std
        rows.append(row)
    return pd.DataFrame(rows)


# ---- presentation ----------------------------------------------------------------------------------------

def decimals(metric: str) -> int:
    """Accuracies in % with 2 decimals (as the scorer prints them), CE and AUROC with 3."""
    return 2 if "_acc_" in metric else 3


def mean_std_text(mean: float, std: float, places: int, signed: bool = False) -> str:
    """``85.00 ± 7.07``; the mean alone when there is no spread to show (a single run)."""
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.{places}f}" if signed else f"{mean:.{places}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{places}f}"


def summary_cells(c: Comparison) -> pd.DataFrame:
    """The summary as the table a person reads: group, n, then ``mean ± std`` per metric."""
    rows = []
    for _, r in c.summary.iterrows():
        row = {"group": r["group"] + (" (baseline)" if r["group"] == c.baseline else ""), "n": str(r["n"])}
        row.update({METRICS[m]: mean_std_text(r[f"{m}_mean"], r[f"{m}_std"], decimals(m)) for m in METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def delta_cells(c: Comparison) -> pd.DataFrame:
    """The deltas as signed ``delta ± std`` cells."""
    rows = []
    for _, r in c.deltas.iterrows():
        row = {"group": r["group"], "paired by seed": "yes" if r["paired"] else "no"}
        row.update({METRICS[m]: mean_std_text(r[f"{m}_delta"], r[f"{m}_std"], decimals(m), signed=True)
                    for m in METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def format_frame_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' ``to_markdown`` needs the optional tabulate package; this is 5 lines)."""
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(df.columns))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def frame_rich_table(df: pd.DataFrame, title: str | None = None, caption: str | None = None) -> Table:
    """Any table of this module for the terminal: first column left, the others right-aligned."""
    table = Table(title=title, caption=caption)
    for i, col in enumerate(df.columns):
        table.add_column(str(col), justify="left" if i == 0 else "right", overflow="fold")  # run names: no "…"
    for row in df.itertuples(index=False):
        table.add_row(*("" if v is None or (isinstance(v, float) and math.isnan(v)) else
                        f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return table


def markdown(c: Comparison) -> str:
    """compare.md: the mean ± std table, then the deltas against the baseline."""
    parts = [f"# Comparison of {sum(len(g.runs) for g in c.groups)} runs in {len(c.groups)} groups",
             "", "Mean ± std over the runs of each group (seeds); accuracy in %, CE in nats, AUROC of the novelty "
             "score (super: novel superclass vs seen; sub: novel subclass among seen superclasses).", "",
             format_frame_markdown(summary_cells(c))]
    if len(c.deltas):
        parts += ["", f"## Change against {c.baseline}", "", format_frame_markdown(delta_cells(c))]
    return "\n".join(parts) + "\n"


def _write(c: Comparison, out: Path) -> list[Path]:
    summary_csv, md, deltas_csv, png = (out / name for name in FILES)
    write_atomic(summary_csv, lambda fh: c.summary.to_csv(fh, index=False))
    write_text_atomic(md, markdown(c))
    files = [summary_csv, md]
    if len(c.deltas):
        write_atomic(deltas_csv, lambda fh: c.deltas.to_csv(fh, index=False))
        panels = [DeltaPanel(ylabel, [METRICS[m] for m in ms], c.deltas[[f"{m}_delta" for m in ms]].to_numpy(float),
                             c.deltas[[f"{m}_std" for m in ms]].to_numpy(float), decimals(ms[0]))
                  for ylabel, ms in PANELS]
        save_delta_chart(png, panels, list(c.deltas["group"]), f"change against {c.baseline}")
        files += [deltas_csv, png]
    return files


# ---- helpers ---------------------------------------------------------------------------------------------

def _evaluation_file(run: RunDir, name: str | None) -> Path:
    folder = run.path / "evaluations"
    if name is not None:
        file = folder / f"{Path(name).stem}.json"
        if not file.is_file():
            raise SupersubError(f"{file}: no such evaluation (run 'supersub evaluate {run.path} --images ...')")
        return file
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not found:
        raise SupersubError(f"{run.path}: no evaluation in {folder} (run 'supersub evaluate {run.path} --images ...' "
                            "first)")
    if len(found) > 1:
        names = ", ".join(f.stem for f in found)
        raise SupersubError(f"{run.path}: several evaluations ({names}); choose one with --evaluation NAME")
    return found[0]


def _number(value: Any, file: Path, key: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SupersubError(f"{file}: {key} must be a number, found {value!r}")
    return float(value)


def _differing(idents: list[dict[str, Any]]) -> list[str]:
    """Keys whose values are not the same in every group (in a stable order: as the configs list them)."""
    keys = list(dict.fromkeys(k for ident in idents for k in ident))
    return [k for k in keys if len({json.dumps(i.get(k), sort_keys=True, default=str) for i in idents}) > 1]


def _show(key: str, value: Any) -> str:
    """A group value for a label: paths by their last two parts (train data and test labels are long)."""
    if key in (DATA_KEY, TEST_KEY) and isinstance(value, str):
        return "/".join(Path(value).parts[-2:])
    return format_value(value)


def by_metric(cells: pd.DataFrame) -> pd.DataFrame:
    """A table of :func:`summary_cells` or :func:`delta_cells` turned so that each group is a column: ten
    metrics fit a terminal as rows, not as columns."""
    turned = cells.set_index("group").T
    return turned.reset_index(names="metric")
