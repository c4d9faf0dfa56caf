"""``supersub evaluate``: predict labelled images and score them with the competition's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.formats import read_labels, read_nested_labels
from ..data.records import Dataset
from ..io import write_json_atomic
from ..metrics import OpenSetReport, competition_metrics, open_set_report
from ..reporting import save_open_set_report
from ..run_dir import RunDir
from ..taxonomy import Taxonomy
from .predict import Prediction, predict_dataset


def evaluate_run(
    run_dir: str | Path, images: str | Path, labels: str | Path | None = None, *, skip_bad: bool = False,
    save: bool = True, out: str | Path | None = None, device: str | None = None, strict: bool = False,
) -> dict[str, Any]:
    """:func:`supersub.api.evaluate`: labels from a CSV or from nested folder names, metrics, saved report."""
    run = RunDir.open(run_dir)
    taxonomy = run.load_taxonomy()
    if labels is not None:
        ds = read_labels(Path(labels), Path(images), taxonomy)
    else:
        ds = read_nested_labels(Path(images), taxonomy, strict=strict)
    pred, kept, _ = predict_dataset(run_dir, ds, skip_bad, device)
    metrics, report = score_prediction(pred, kept, taxonomy)
    if save:
        target = metrics_file(run.path, images, labels, out)
        write_json_atomic(target, {"labels": str(labels if labels is not None else images), **metrics})
        save_open_set_report(report, target.parent, target.stem)
    return metrics


def metrics_file(run_dir: str | Path, images: str | Path, labels: str | Path | None, out: str | Path | None) -> Path:
    """Where ``evaluate`` saves its metrics JSON: ``out`` (default ``RUN/evaluations``) / the labels' name."""
    folder = Path(out) if out is not None else Path(run_dir) / "evaluations"
    stem = Path(labels).stem if labels is not None else Path(images).name
    return folder / f"{stem}.json"


def score_prediction(pred: Prediction, kept: Dataset, taxonomy: Taxonomy) -> tuple[dict[str, Any], OpenSetReport]:
    """The competition metrics plus the open-set ones of a prediction of labelled images (evaluate and report)."""
    truth_super, truth_sub = np.array(kept.super_labels), np.array(kept.sub_labels)
    metrics: dict[str, Any] = competition_metrics(
        truth_super, truth_sub, pred.super_pred.numpy(), pred.sub_pred.numpy(),
        taxonomy.novel_super, taxonomy.novel_sub, pred.super_probs.numpy(), pred.sub_probs.numpy(),
    )
    report = open_set_report(truth_super, truth_sub, pred.super_pred, pred.sub_pred, pred.super_probs,
                             pred.sub_probs, pred.super_conf, pred.sub_conf, taxonomy)
    metrics.update(report.metrics)
    return metrics, report
