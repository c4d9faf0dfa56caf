"""Files a person looks at: threshold sweeps, confusion matrices and training curves as CSV tables and PNG plots,
and the delta charts of `supersub compare`.

The maths that produces them (:mod:`supersub.novelty.calibrate`, :mod:`supersub.metrics`) never imports
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
from .novelty.calibrate import SWEEP_COLUMNS


def save_sweep(
    df: pd.DataFrame, csv_path: str | Path, png_path: str | Path, title: str, tau: float | None = None
) -> None:
    """Write the sweep as CSV and as a PNG plot of the three rates against tau (``tau`` marked)."""
    missing = [c for c in SWEEP_COLUMNS if c not in df.columns]
    if missing:
        raise SupersubError(f"save_sweep: data frame lacks column(s) {', '.join(missing)}")
    write_atomic(csv_path, lambda fh: df.to_csv(fh, index=False))
    save_figure(sweep_figure(df, title, tau), png_path)


def sweep_figure(df: pd.DataFrame, title: str, tau: float | None = None) -> Figure:
    """The three rates of a sweep against tau, ``tau`` marked by a dashed line."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for col, label in (("seen_acc", "seen accuracy"), ("unseen_acc", "novel flagged"), ("balanced", "balanced")):
        ax.plot(df["tau"], df[col], label=label)
    if tau is not None:
        ax.axvline(tau, color="black", linestyle="--", linewidth=1, label=f"tau = {tau:.3f}")
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


def curves_figure(epochs: pd.DataFrame, title: str | None = None) -> Figure | None:
    """Training curves of one stage: its loss columns and its accuracy columns against the epoch.

    ``epochs`` has one row per epoch (index = epoch); None when it holds no loss or accuracy column.
    """
    losses = [c for c in epochs.columns if "loss" in c and epochs[c].notna().any()]
    accs = [c for c in epochs.columns if "acc" in c and epochs[c].notna().any()]
    panels = [(cols, label) for cols, label in ((losses, "loss"), (accs, "accuracy")) if cols]
    if not panels:
        return None
    fig = Figure(figsize=(3.4 * len(panels), 2.9))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (cols, label) in zip(axes, panels):
        for col in cols:
            series = epochs[col].dropna()
            ax.plot(series.index, series.to_numpy(), marker="o", markersize=3, label=col)
        ax.set(xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
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
