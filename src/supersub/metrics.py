"""The competition's metrics, computed exactly as the official scorer (bench ``score.py``) does.

Per level (``super``/``sub``): accuracy in percent over all images, over images whose true class is
seen and over images whose true class is novel ("unseen"), the counts behind them, and the mean
cross-entropy ``-log(max(p_true, 1e-15))`` of the predicted distribution (novel column included).
Rounding and summation order follow the scorer, so the numbers match it to the last digit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
import torch
from rich.table import Table

from .errors import SupersubError
from .taxonomy import Taxonomy

LEVELS = ("super", "sub")
SUBSETS = ("overall", "seen", "unseen")
CE_FLOOR = 1e-15

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]
Metrics = dict[str, float | int | None]


def _labels(x: ArrayLike, name: str) -> list[int]:
    """Integer labels as a Python list (the scorer works on ints parsed from the CSV)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 1:
        raise SupersubError(f"{name}: expected a 1-D array of class indices, got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and not np.all(arr == np.round(arr))):
        raise SupersubError(f"{name}: expected integer class indices, found non-integer values (dtype {arr.dtype})")
    return [int(v) for v in arr.tolist()]


def _probs(x: ArrayLike, name: str, n_rows: int, novel: int) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.shape != (n_rows, novel + 1):
        raise SupersubError(
            f"{name}: expected shape ({n_rows}, {novel + 1}) (seen classes + novel column), got {tuple(arr.shape)}"
        )
    if not np.all(np.isfinite(arr)):
        raise SupersubError(f"{name}: contains a non-finite probability")
    return arr


def _check_truth(y: list[int], novel: int, name: str) -> None:
    bad = [i for i, v in enumerate(y) if not 0 <= v <= novel]
    if bad:
        raise SupersubError(f"{name}: row {bad[0]} has class {y[bad[0]]}, outside 0..{novel} (novel = {novel})")


def _level_metrics(level: str, y: list[int], pred: list[int], novel: int, probs: np.ndarray | None) -> Metrics:
    """One level's metrics; same loop, rounding and summation order as the scorer."""
    hit: dict[str, list[bool]] = {k: [] for k in SUBSETS}
    for t, p in zip(y, pred):
        ok = p == t
        hit["overall"].append(ok)
        hit["unseen" if t == novel else "seen"].append(ok)
    out: Metrics = {}
    for k, v in hit.items():
        out[f"{level}_acc_{k}"] = round(100.0 * sum(v) / len(v), 2) if v else None
        out[f"{level}_n_{k}"] = len(v)
    ce: float | None = None
    if probs is not None:
        p_true = probs[np.arange(len(y)), y].tolist()
        ce = round(sum(-math.log(max(p, CE_FLOOR)) for p in p_true) / len(p_true), 4)
    out[f"{level}_ce"] = ce
    return out


def competition_metrics(
    true_super: ArrayLike,
    true_sub: ArrayLike,
    pred_super: ArrayLike,
    pred_sub: ArrayLike,
    novel_super: int,
    novel_sub: int,
    super_probs: ArrayLike | None = None,
    sub_probs: ArrayLike | None = None,
) -> Metrics:
    """The scorer's dict: ``{level}_acc_{overall,seen,unseen}``, ``{level}_n_*``, ``{level}_ce``.

    Labels use the competition's indices (novel = ``novel_super``/``novel_sub``); probabilities are
    ``(N, novel + 1)`` arrays including the novel column, or ``None`` to report no cross-entropy.
    """
    levels = {
        "super": (_labels(true_super, "true_super"), _labels(pred_super, "pred_super"), novel_super, super_probs),
        "sub": (_labels(true_sub, "true_sub"), _labels(pred_sub, "pred_sub"), novel_sub, sub_probs),
    }
    n = len(levels["super"][0])
    if n == 0:
        raise SupersubError("competition_metrics: no images to score")
    out: Metrics = {}
    for level, (y, pred, novel, probs) in levels.items():
        if len(y) != n or len(pred) != n:
            raise SupersubError(
                f"{level}: {len(y)} true labels and {len(pred)} predictions, expected {n} of each"
            )
        _check_truth(y, novel, f"true_{level}")
        p = None if probs is None else _probs(probs, f"{level}_probs", n, novel)
        out.update(_level_metrics(level, y, pred, novel, p))
    return out


def _ce_text(ce: float | int | None) -> str:
    return f"{ce:.3f}" if ce is not None else "n/a"


def format_metrics_table(metrics: Metrics) -> str:
    """The scorer's printed table (same header, rows and column widths), without a trailing newline."""
    lines = [f"{'':8}{'CE':>8}{'overall':>10}{'seen':>8}{'unseen':>8}   (accuracy %, n = {metrics['super_n_overall']})"]
    for level in LEVELS:
        lines.append(
            f"{level:8}{_ce_text(metrics[f'{level}_ce']):>8}{str(metrics[f'{level}_acc_overall']):>10}"
            f"{str(metrics[f'{level}_acc_seen']):>8}{str(metrics[f'{level}_acc_unseen']):>8}"
        )
    return "\n".join(lines)


def metrics_rich_table(metrics: Metrics, title: str | None = None) -> Table:
    """The same rows and columns as :func:`format_metrics_table`, for the CLI's rich console."""
    table = Table(title=title, caption=f"accuracy %, n = {metrics['super_n_overall']}")
    table.add_column("")
    for col in ("CE", "overall", "seen", "unseen"):
        table.add_column(col, justify="right")
    for level in LEVELS:
        table.add_row(
            level,
            _ce_text(metrics[f"{level}_ce"]),
            *(str(metrics[f"{level}_acc_{k}"]) for k in SUBSETS),
        )
    return table


# ---- open-set report: threshold-free scores, calibration error, confusion including novel ------------


@dataclass
class OpenSetReport:
    """Per-level AUROC / FPR95 / AUPR and expected calibration error, and confusion matrices with novel last."""

    metrics: Metrics
    confusion: dict[str, np.ndarray]
    class_names: dict[str, list[str]]


def confusion_matrix(truth: ArrayLike, pred: ArrayLike, n_classes: int) -> np.ndarray:
    """(n, n) counts, rows = truth, columns = prediction; labels outside 0..n-1 are an error."""
    y, p = np.asarray(_labels(truth, "truth")), np.asarray(_labels(pred, "pred"))
    if len(y) != len(p):
        raise SupersubError(f"confusion_matrix: {len(y)} true labels but {len(p)} predictions")
    if len(y) and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= n_classes):
        raise SupersubError(f"confusion_matrix: labels must lie in 0..{n_classes - 1}")
    if not len(y):  # scikit-learn refuses empty input; no images is an all-zero table
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return sklearn_confusion_matrix(y, p, labels=np.arange(n_classes)).astype(np.int64)


def expected_calibration_error(probs: ArrayLike, truth: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error (L1, equal-width bins) via torchmetrics' ``CalibrationError``."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(np.asarray(probs, dtype=np.float64)).float()
    y = torch.as_tensor(np.asarray(_labels(truth, "truth")), dtype=torch.long)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        raise SupersubError(f"expected_calibration_error: {tuple(p.shape)} probabilities for {len(y)} labels")
    return float(multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=n_bins, norm="l1"))


def _ranking(conf: np.ndarray, is_novel: np.ndarray) -> dict[str, float | None]:
    from .novelty.ood_metrics import open_set_metrics

    if is_novel.all() or not is_novel.any():
        return {"auroc": None, "fpr95": None, "aupr": None}
    m = open_set_metrics(conf[~is_novel], conf[is_novel])
    return {k: round(m[k], 4) for k in ("auroc", "fpr95", "aupr")}


def open_set_report(
    true_super: ArrayLike, true_sub: ArrayLike, pred_super: ArrayLike, pred_sub: ArrayLike,
    super_probs: ArrayLike, sub_probs: ArrayLike, super_conf: ArrayLike, sub_conf: ArrayLike, taxonomy: Taxonomy,
) -> OpenSetReport:
    """Threshold-free metrics of the novelty confidences and calibration of the probabilities.

    ``super_*``: seen vs novel superclass over all images. ``sub_*``: seen vs novel subclass over images of
    *seen* superclasses (a novel superclass is the superclass score's job; the rule makes its subclass
    novel anyway). AUROC/AUPR/FPR95 are None when a level's labels have only one kind. ``*_ece`` is the
    expected calibration error of the full distribution including the novel column.
    """
    ys, yb = np.asarray(_labels(true_super, "true_super")), np.asarray(_labels(true_sub, "true_sub"))
    cs = np.asarray(torch.as_tensor(super_conf).double().cpu().numpy())
    cb = np.asarray(torch.as_tensor(sub_conf).double().cpu().numpy())
    known_super = ys != taxonomy.novel_super
    out: Metrics = {}
    ranks = {"super": _ranking(cs, ~known_super), "sub": _ranking(cb[known_super], yb[known_super] == taxonomy.novel_sub)}
    for level, r in ranks.items():
        out.update({f"{level}_{k}": v for k, v in r.items()})
    out["super_ece"] = round(expected_calibration_error(super_probs, ys), 4)
    out["sub_ece"] = round(expected_calibration_error(sub_probs, yb), 4)
    confusion = {
        "super": confusion_matrix(ys, pred_super, taxonomy.n_super + 1),
        "sub": confusion_matrix(yb, pred_sub, taxonomy.n_sub + 1),
    }
    names = {"super": [*taxonomy.super_names, "novel"], "sub": [*taxonomy.sub_names, "novel"]}
    return OpenSetReport(out, confusion, names)


def clustering_scores(truth: Sequence[Any], groups: Sequence[Any]) -> dict[str, float]:
    """How well ``groups`` (cluster ids) recover ``truth`` (class names or ids), in percent: clustering accuracy
    (the best one-to-one matching of groups to classes, Hungarian, as in Generalized Category Discovery, Vaze et
    al. CVPR 2022; unmatched groups count as wrong), normalised mutual information and adjusted Rand index."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if len(truth) != len(groups):
        raise SupersubError(f"clustering scores: {len(truth)} true labels but {len(groups)} group ids")
    if not len(truth):
        raise SupersubError("clustering scores: no images")
    t_ids, t = np.unique(np.asarray(truth, dtype=str), return_inverse=True)
    g_ids, g = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    counts = np.zeros((len(g_ids), len(t_ids)), dtype=np.int64)
    np.add.at(counts, (g, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {"acc": 100.0 * counts[rows, cols].sum() / len(t), "nmi": 100.0 * normalized_mutual_info_score(t, g),
            "ari": 100.0 * adjusted_rand_score(t, g)}
