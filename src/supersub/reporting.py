"""Files a person looks at: threshold sweeps, confusion matrices and training curves as CSV tables and PNG plots.

The maths that produces them (:mod:`supersub.novelty.calibrate`, :mod:`supersub.metrics`) never imports
matplotlib; only this module does.
"""

from __future__ import annotations

import io
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
