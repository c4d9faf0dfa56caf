"""Files a person looks at: threshold sweeps, confusion matrices and training curves as CSV tables and PNG plots,
and the delta charts of `supersub compare`.

The maths that produces them (:mod:`supersub.novelty.threshold_search`, :mod:`supersub.metrics`) never imports
matplotlib; only this module does.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import SupersubError
from .io import atomic_path, write_atomic
from .metrics import LEVELS, OpenSetReport
from .novelty.threshold_search import SWEEP_COLUMNS


def save_sweep(
    df: pd.DataFrame, csv_path: str | Path, png_path: str | Path, title: str, tau: float | None = None,
    tau_label: str = "tau",
) -> None:
    """Write the sweep as CSV and as a PNG plot of the three rates against tau (``tau`` marked)."""
    missing = [c for c in SWEEP_COLUMNS if c not in df.columns]
    if missing:
        raise SupersubError(f"save_sweep: data frame lacks column(s) {', '.join(missing)}")
    write_atomic(csv_path, lambda fh: df.to_csv(fh, index=False))
    save_figure(sweep_figure(df, title, tau, tau_label), png_path)


def sweep_figure(df: pd.DataFrame, title: str, tau: float | None = None, tau_label: str = "tau") -> Figure:
    """The rates of a sweep against tau, ``tau`` marked by a dashed line; a sweep without novel images (the
    recall rule) draws the seen curve only, and says so in its legend rather than promising a novel one."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    has_novel = "unseen_acc" in df and bool(df["unseen_acc"].notna().any())
    curves = (("seen_acc", "seen accuracy"), ("unseen_acc", "novel flagged"), ("balanced", "balanced"))
    for col, label in curves if has_novel else curves[:1]:
        ax.plot(df["tau"], df[col], label=label if has_novel else f"{label} (no novel images here)")
    if tau is not None:
        ax.axvline(tau, color="black", linestyle="--", linewidth=1, label=f"{tau_label} = {tau:.4g}")
    ax.set(xlabel="threshold tau (seen iff confidence >= tau)", ylabel="rate", ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (for pages that embed their images)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def save_open_set_report(report: OpenSetReport, folder: Path, stem: str) -> None:
    """``{stem}_confusion_{level}.csv`` (rows = truth, columns = prediction) and ``.png`` per level."""
    for level in LEVELS:
        names = report.class_names[level]
        df = pd.DataFrame(report.confusion[level], index=pd.Index(names, name="truth"), columns=names)
        write_atomic(folder / f"{stem}_confusion_{level}.csv", lambda fh, df=df: df.to_csv(fh))
        _confusion_png(report.confusion[level], names, folder / f"{stem}_confusion_{level}.png", level)


def _confusion_png(counts: np.ndarray, names: list[str], path: Path, level: str) -> None:
    save_figure(confusion_figure(counts, names, level), path)


def confusion_figure(counts: np.ndarray, names: list[str], level: str) -> Figure:
    """Row-normalised confusion (share of each true class), class names shown when they fit."""
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(12.0, 3.0 + 0.25 * len(names))
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    if len(names) <= 60:
        shown = [_short(name) for name in names]
        size = "small" if len(names) <= 30 else 6
        ax.set_xticks(range(len(names)), shown, rotation=90, fontsize=size)
        ax.set_yticks(range(len(names)), shown, fontsize=size)
    ax.set(xlabel="predicted (novel last)", ylabel="true (novel last)", title=f"{level}class confusion")
    fig.tight_layout()
    return fig


def _short(name: str, limit: int = 24) -> str:
    """A tick label: the first of a class's comma-separated synonyms ("Scotch terrier, Scottie"), clipped."""
    first = name.split(",")[0].strip() or name
    return first if len(first) <= limit else first[: limit - 1] + "…"


def overlaid_curves_figure(stages: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Training curves of several models of one kind (the calibration folds) in one figure: a colour per column
    (val_loss, val_acc_sub, ...), a thin line per model, so that folds that behave alike read as one band."""
    columns: list[str] = []
    for frame in stages.values():
        columns += [c for c in frame.columns if ("loss" in c or "acc" in c) and frame[c].notna().any() and c not in columns]
    panels = [(cols, label) for cols, label in (([c for c in columns if "loss" in c], "loss"),
                                               ([c for c in columns if "acc" in c], "accuracy")) if cols]
    if not panels:
        return None
    fig = Figure(figsize=(3.4 * len(panels), 2.9))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = {c: f"C{i}" for i, c in enumerate(columns)}
    for ax, (cols, label) in zip(axes, panels):
        for col in cols:
            for k, frame in enumerate(f for f in stages.values() if col in f.columns):
                series = frame[col].dropna()
                many = len(stages) > 1
                ax.plot(series.index, series.to_numpy(), color=colours[col], linewidth=1 if many else 1.5,
                        alpha=0.7 if many else 1.0, marker=None if many else "o", markersize=3,
                        label=(f"{col} ({len(stages)} models)" if many else col) if k == 0 else None)
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


# ---- delta charts of `supersub compare` -------------------------------------------------------------------

@dataclass
class DeltaPanel:
    """One panel of a delta chart: metrics sharing a unit, and per compared group their deltas and stds."""

    ylabel: str
    metrics: list[str]
    delta: np.ndarray  # (groups, metrics)
    std: np.ndarray  # (groups, metrics); NaN = no error bar (a single seed)
    places: int = 2  # decimals of the value written on each bar


def save_delta_chart(path: str | Path, panels: Sequence[DeltaPanel], groups: Sequence[str], title: str) -> None:
    """Bars of each metric's change against the baseline (the seed paper's Figures 2-4), error bars = std
    over seeds; one colour per compared group, the value written on each bar when at most two groups."""
    widths = [max(len(p.metrics), 1) + 1 for p in panels]
    fig = Figure(figsize=(min(4.0 + 0.9 * sum(widths), 14.0), 4.2))
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(groups))]
    width = 0.8 / max(len(groups), 1)
    for ax, panel in zip(axes, panels):
        x = np.arange(len(panel.metrics))
        for i, group in enumerate(groups):
            offset = (i - (len(groups) - 1) / 2) * width
            err = np.nan_to_num(panel.std[i], nan=0.0)
            bars = ax.bar(x + offset, np.nan_to_num(panel.delta[i], nan=0.0), width, yerr=err, capsize=3,
                          color=colours[i], label=group, error_kw={"elinewidth": 1})
            if len(groups) <= 2:
                for bar, value, spread in zip(bars, panel.delta[i], err):
                    if not np.isnan(value):  # beyond the error bar, on the side the bar points to
                        tip = value + spread if value >= 0 else value - spread
                        ax.annotate(f"{value:+.{panel.places}f}",
                                    (bar.get_x() + bar.get_width() / 2, tip),
                                    xytext=(0, 3 if value >= 0 else -10), textcoords="offset points",
                                    ha="center", fontsize="x-small")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x, panel.metrics, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(panel.ylabel, fontsize="small")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(groups), 3), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(groups) - 1) // 3), 1, 1))
    save_figure(fig, path)
