"""Choosing novelty thresholds from confidences of seen and (pseudo-)novel images.

Confidence space throughout: higher = more seen, and an image is kept as seen iff ``conf >= tau``.
Candidate thresholds are the midpoints between consecutive distinct confidences (plus one just below
the smallest and one just above the largest), which covers every distinct outcome exactly; a coarse
grid could miss the best split and would make the result depend on the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import SupersubError

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]
OBJECTIVES = ("balanced", "expected", "eer", "recall")
SWEEP_COLUMNS = ("tau", "seen_acc", "unseen_acc", "balanced")
_TIE = 1e-12


def as_float_array(x: ArrayLike | None, name: str) -> np.ndarray:
    """A finite 1-D float64 array (``None`` -> empty), so every objective sees the same numbers."""
    if x is None:
        return np.empty(0)
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise SupersubError(f"{name}: expected a 1-D array of confidences, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise SupersubError(f"{name}: contains a non-finite value")
    return arr


class _Rates:
    """Seen-keep, seen-accuracy and novel-flag rates at any threshold, via sorted arrays."""

    def __init__(self, seen: np.ndarray, novel: np.ndarray, correct_seen: np.ndarray | None) -> None:
        order = np.argsort(seen, kind="stable")
        self.seen = seen[order]
        weight = np.ones_like(seen) if correct_seen is None else correct_seen[order]
        # kept_weight[i] = total weight of seen[i:], i.e. of the images with conf >= seen[i]
        self.kept_weight = np.concatenate([np.cumsum(weight[::-1])[::-1], [0.0]])
        self.novel = np.sort(novel)

    def keep(self, taus: np.ndarray) -> np.ndarray:
        return 1.0 - np.searchsorted(self.seen, taus, side="left") / len(self.seen)

    def seen_acc(self, taus: np.ndarray) -> np.ndarray:
        return self.kept_weight[np.searchsorted(self.seen, taus, side="left")] / len(self.seen)

    def flag(self, taus: np.ndarray) -> np.ndarray:
        if len(self.novel) == 0:
            return np.full(len(taus), np.nan)
        return np.searchsorted(self.novel, taus, side="left") / len(self.novel)


def _edges(values: np.ndarray) -> np.ndarray:
    """Sorted distinct confidences padded by one step below and above.

    Candidate ``i`` is the midpoint of ``edges[i], edges[i+1]``; every tau in ``(edges[i], edges[i+1]]``
    gives the same decisions, so a plateau of candidates ``i..j`` is the interval ``(edges[i], edges[j+1]]``.
    """
    u = np.unique(values)
    pad = 1e-3 * max(u[-1] - u[0], float(np.abs(u).max()), 1.0)
    return np.concatenate([[u[0] - pad], u, [u[-1] + pad]])


def _plateau_middle(score: np.ndarray, edges: np.ndarray) -> float:
    """The middle of the widest run of best-scoring candidates (the most margin on both sides)."""
    best = np.flatnonzero(score >= score.max() - _TIE)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    widths = [edges[r[-1] + 1] - edges[r[0]] for r in runs]
    run = runs[int(np.argmax(widths))]
    return float((edges[run[0]] + edges[run[-1] + 1]) / 2)


def _correct(correct_seen: ArrayLike | None, n_seen: int) -> np.ndarray | None:
    if correct_seen is None:
        return None
    arr = as_float_array(correct_seen, "correct_seen")
    if len(arr) != n_seen:
        raise SupersubError(f"correct_seen has {len(arr)} entries but conf_seen has {n_seen}")
    return arr


def sweep(
    conf_seen: ArrayLike, conf_novel: ArrayLike | None, correct_seen: ArrayLike | None = None, n: int = 201
) -> pd.DataFrame:
    """Rates on ``n`` evenly spaced thresholds spanning all confidences (for plots and reports).

    ``seen_acc`` is the share of seen images kept (times ``correct_seen``: accuracy on seen images),
    ``unseen_acc`` the share of novel images flagged (NaN without novel images), ``balanced`` their mean.
    """
    seen, novel = as_float_array(conf_seen, "conf_seen"), as_float_array(conf_novel, "conf_novel")
    if len(seen) == 0:
        raise SupersubError("sweep: no seen confidences")
    if n < 2:
        raise SupersubError(f"sweep: n must be at least 2, got {n}")
    rates = _Rates(seen, novel, _correct(correct_seen, len(seen)))
    edges = _edges(np.concatenate([seen, novel]))
    taus = np.linspace(edges[0], edges[-1], n)
    seen_acc, unseen_acc = rates.seen_acc(taus), rates.flag(taus)
    return pd.DataFrame(
        {"tau": taus, "seen_acc": seen_acc, "unseen_acc": unseen_acc, "balanced": (seen_acc + unseen_acc) / 2}
    )


def _recall_threshold(seen: np.ndarray, target_recall: float) -> float:
    """The largest candidate that still keeps at least ``target_recall`` of the seen images."""
    if not 0.0 < target_recall <= 1.0:
        raise SupersubError(f"choose_threshold(recall): target_recall must be in (0, 1], got {target_recall}")
    edges = _edges(seen)
    candidates = (edges[:-1] + edges[1:]) / 2
    kept = len(seen) - np.searchsorted(np.sort(seen), candidates, side="left")
    need = int(np.ceil(target_recall * len(seen) - 1e-9))
    return float(candidates[np.flatnonzero(kept >= need)[-1]])


def choose_threshold(
    conf_seen: ArrayLike,
    conf_novel: ArrayLike | None,
    objective: str = "balanced",
    correct_seen: ArrayLike | None = None,
    target_recall: float = 0.95,
    novel_share: float = 0.5,
) -> float:
    """The threshold optimising ``objective`` (seen iff conf >= tau).

    balanced: max mean of seen accuracy (keep rate times ``correct_seen`` if given) and novel-flag rate;
    expected: max expected accuracy on a test set where ``novel_share`` of the images are novel, i.e.
              ``(1 - novel_share) * seen accuracy + novel_share * novel-flag rate`` (balanced is 0.5);
    eer:      seen-keep rate closest to novel-flag rate;
    recall:   largest tau keeping >= ``target_recall`` of seen images (novel images not needed).
    Ties pick the middle of the widest best plateau.
    """
    if objective not in OBJECTIVES:
        raise SupersubError(f"choose_threshold: unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    seen, novel = as_float_array(conf_seen, "conf_seen"), as_float_array(conf_novel, "conf_novel")
    if len(seen) == 0:
        raise SupersubError(f"choose_threshold({objective}): no seen confidences")
    if objective == "recall":
        return _recall_threshold(seen, target_recall)
    if len(novel) == 0:
        raise SupersubError(f"choose_threshold({objective}): needs novel confidences, got none")
    rates = _Rates(seen, novel, _correct(correct_seen, len(seen)))
    edges = _edges(np.concatenate([seen, novel]))
    candidates = (edges[:-1] + edges[1:]) / 2
    if objective in ("balanced", "expected"):
        share = 0.5 if objective == "balanced" else novel_share
        if not 0.0 < share < 1.0:
            raise SupersubError(f"choose_threshold(expected): novel_share must be in (0, 1), got {share}")
        score = (1.0 - share) * rates.seen_acc(candidates) + share * rates.flag(candidates)
    else:
        score = -np.abs(rates.keep(candidates) - rates.flag(candidates))
    return _plateau_middle(score, edges)


def kept_share(conf_seen: ArrayLike, tau: float) -> float:
    """Share of seen confidences kept as seen (``conf >= tau``)."""
    seen = as_float_array(conf_seen, "conf_seen")
    if len(seen) == 0:
        raise SupersubError("kept_share: no seen confidences")
    return float(np.mean(seen >= tau))


def transfer_threshold(share: float, conf_seen: ArrayLike) -> float:
    """The threshold that keeps ``share`` of ``conf_seen``: a calibration model's operating point carried
    over to another model whose scores have a different scale (``novelty.transfer: quantile``).

    ``share = 0`` gives a threshold above every confidence (everything flagged novel).
    """
    seen = as_float_array(conf_seen, "conf_seen")
    if len(seen) == 0:
        raise SupersubError("transfer_threshold: no seen confidences")
    if not 0.0 <= share <= 1.0:
        raise SupersubError(f"transfer_threshold: share must be in [0, 1], got {share}")
    if share == 0.0:
        return float(_edges(seen)[-1])
    return _recall_threshold(seen, share)
