"""Threshold-free open-set metrics for comparing novelty scores (confidence space: higher = more seen).

AUROC and AUPR rank novel images against seen ones over all thresholds; FPR95 is the share of novel
images still accepted as seen at the strictest threshold that keeps 95% of the seen images, the
operating point the OOD literature (e.g. Liang et al., ODIN, ICLR 2018) reports.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ..errors import SupersubError
from .threshold_search import ArrayLike, as_float_array


def fpr_at_tpr(seen: np.ndarray, novel: np.ndarray, tpr: float = 0.95) -> float:
    """Share of novel confidences ``>= tau`` for the largest ``tau`` keeping at least ``tpr`` of seen ones.

    Read off scikit-learn's ROC curve (seen = positive) at its first point reaching ``tpr``, without
    interpolation between points, so the value is one a real threshold achieves.
    """
    if not 0.0 < tpr <= 1.0:
        raise SupersubError(f"fpr_at_tpr: tpr must be in (0, 1], got {tpr}")
    is_seen = np.concatenate([np.ones(len(seen)), np.zeros(len(novel))])
    fpr, tprs, _ = roc_curve(is_seen, np.concatenate([seen, novel]), drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr - 1e-9)])


def open_set_metrics(conf_seen: ArrayLike, conf_novel: ArrayLike) -> dict[str, float]:
    """``auroc`` (seen vs novel), ``fpr95`` (novel accepted at 95% seen kept) and ``aupr`` (novel = positive).

    Ties count half in AUROC, so identical score sets give 0.5. Also returns ``n_seen`` and ``n_novel``.
    """
    seen, novel = as_float_array(conf_seen, "conf_seen"), as_float_array(conf_novel, "conf_novel")
    if len(seen) == 0 or len(novel) == 0:
        raise SupersubError(f"open_set_metrics: needs seen and novel confidences, got {len(seen)} and {len(novel)}")
    is_novel = np.concatenate([np.zeros(len(seen)), np.ones(len(novel))])
    novelty = -np.concatenate([seen, novel])
    return {
        "auroc": float(roc_auc_score(is_novel, novelty)),
        "fpr95": fpr_at_tpr(seen, novel, 0.95),
        "aupr": float(average_precision_score(is_novel, novelty)),
        "n_seen": len(seen),
        "n_novel": len(novel),
    }
