"""Probabilities with a "novel" column, consistent with the thresholded decisions.

The competition scores the cross-entropy of a full distribution that includes "novel", while the
decision rule thresholds confidences. The novel probability is a logistic in confidence centred on the
threshold, ``q = sigmoid(slope * (tau - conf))``: exactly 0.5 at ``tau``, above 0.5 exactly when the
rule says novel, and decreasing in confidence. The slope is fitted by maximum likelihood on seen vs
(pseudo-)novel confidences, so q is calibrated rather than a hard 0/1 that would make CE explode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import SupersubError
from .calibrate import ArrayLike, as_float_array
from .decide import subclass_mask

SLOPE_MIN, SLOPE_MAX = 1.0, 1000.0
PROB_FLOOR = 1e-6
NOVEL_MARGIN = 1e-4  # novel by the rule => novel probability at least 0.5 + this
_GRID = 41
_REFINE_STEPS = 60


def novel_probability(conf: torch.Tensor, tau: float, slope: float) -> torch.Tensor:
    """``sigmoid(slope * (tau - conf))``: 0.5 at the threshold, monotone decreasing in ``conf``.

    A confidence below ``tau`` (novel by the rule, compared in the confidence's dtype as
    :func:`~supersub.novelty.decide.decide` does) gets at least ``0.5 + NOVEL_MARGIN``: ``sigmoid`` of a
    tiny positive number rounds to exactly 0.5, and the row renormalisation of :func:`_floor_rows` may take
    off a few millionths, either of which would let the novel column disagree with the decision.
    """
    conf = torch.as_tensor(conf)
    if not conf.is_floating_point():
        conf = conf.float()
    q = torch.sigmoid(slope * (tau - conf))
    return torch.where(conf < tau, q.clamp_min(0.5 + NOVEL_MARGIN), q)


def _nll(log_slope: float, x_seen: np.ndarray, x_novel: np.ndarray) -> float:
    """Mean negative log-likelihood of the logistic with ``x = tau - conf`` (novel = label 1)."""
    s = np.exp(log_slope)
    total = np.logaddexp(0.0, s * x_seen).sum() + np.logaddexp(0.0, -s * x_novel).sum()
    return float(total / (len(x_seen) + len(x_novel)))


def fit_slope(conf_seen: ArrayLike, conf_novel: ArrayLike, tau: float) -> float:
    """Maximum-likelihood slope of :func:`novel_probability` with the centre pinned at ``tau``.

    The likelihood is convex in the slope, hence unimodal in log-slope: a log grid finds the bracket,
    golden-section search refines it. Clamped to [1, 1000]: perfectly separated data would push the
    slope to infinity (a hard 0/1), data on the wrong side of tau to a negative slope.
    """
    seen, novel = as_float_array(conf_seen, "conf_seen"), as_float_array(conf_novel, "conf_novel")
    if len(seen) == 0 or len(novel) == 0:
        raise SupersubError(f"fit_slope: needs seen and novel confidences, got {len(seen)} and {len(novel)}")
    x_seen, x_novel = tau - seen, tau - novel
    grid = np.linspace(np.log(SLOPE_MIN), np.log(SLOPE_MAX), _GRID)
    values = [_nll(g, x_seen, x_novel) for g in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
    inv_phi = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(_REFINE_STEPS):
        a, b = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
        if _nll(a, x_seen, x_novel) <= _nll(b, x_seen, x_novel):
            hi = b
        else:
            lo = a
    refined = (lo + hi) / 2
    best = refined if _nll(refined, x_seen, x_novel) < values[i] else grid[i]
    return float(np.clip(np.exp(best), SLOPE_MIN, SLOPE_MAX))


def _floor_rows(p: torch.Tensor) -> torch.Tensor:
    """Every entry at least PROB_FLOOR, rows renormalised to 1, so the cross-entropy stays finite."""
    p = p.clamp_min(PROB_FLOOR)
    return p / p.sum(dim=1, keepdim=True)


def with_novel_column(
    super_probs: torch.Tensor,
    sub_probs: torch.Tensor,
    decision_super_pred: torch.Tensor,
    q_super: torch.Tensor,
    q_sub: torch.Tensor,
    sub_to_super: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full distributions ``(N, K+1)`` and ``(N, M+1)`` with novel last, from seen-class probabilities.

    ``P_super = [(1 - q_super) * super_probs, q_super]``;
    ``P(novel sub) = q_super + (1 - q_super) * q_sub`` (a novel superclass implies a novel subclass);
    the remaining mass goes to the seen subclasses in proportion to ``sub_probs`` (simple, and it keeps
    probability on subclasses of other superclasses, so a wrong superclass costs a bounded CE). When the
    decided superclass is seen but has no subclasses (possible after a holdout), the decision rule says
    "novel subclass" whatever the confidence, so q_sub is taken as 1 there.
    """
    n, n_super = super_probs.shape
    for name, t in (("decision_super_pred", decision_super_pred), ("q_super", q_super), ("q_sub", q_sub)):
        if tuple(t.shape) != (n,):
            raise SupersubError(f"with_novel_column: {name} has shape {tuple(t.shape)}, expected ({n},)")
    if sub_probs.shape[0] != n or len(sub_to_super) != sub_probs.shape[1]:
        raise SupersubError(
            f"with_novel_column: sub_probs has shape {tuple(sub_probs.shape)}; expected {n} rows "
            f"and {len(sub_to_super)} columns (one per entry of sub_to_super)"
        )
    empty = (decision_super_pred < n_super) & ~subclass_mask(sub_to_super, decision_super_pred).any(dim=1)
    q_sub = torch.where(empty, torch.ones_like(q_sub), q_sub)
    p_novel_sub = q_super + (1 - q_super) * q_sub
    seen_sub = sub_probs / sub_probs.sum(dim=1, keepdim=True).clamp_min(torch.finfo(sub_probs.dtype).tiny)
    p_super = torch.cat([(1 - q_super).unsqueeze(1) * super_probs, q_super.unsqueeze(1)], dim=1)
    p_sub = torch.cat([(1 - p_novel_sub).unsqueeze(1) * seen_sub, p_novel_sub.unsqueeze(1)], dim=1)
    return _floor_rows(p_super), _floor_rows(p_sub)
