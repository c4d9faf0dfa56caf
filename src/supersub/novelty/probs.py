"""Probabilities with a "novel" column, consistent with the thresholded decisions.

The competition scores the cross-entropy of a full distribution that includes "novel", while the
decision rule thresholds confidences. The novel probability is a logistic in confidence centred on the
threshold, ``q = sigmoid(slope * (tau - conf))``: exactly 0.5 at ``tau``, above 0.5 exactly when the
rule says novel, and decreasing in confidence. The slope is fitted by maximum likelihood on seen vs
(pseudo-)novel confidences, so q is calibrated rather than a hard 0/1 that would make CE explode.
:func:`with_novel_column` turns the two q's and the seen-class probabilities into one hierarchical pair
of distributions that agrees with the decisions row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from ..errors import SupersubError
from .threshold_search import ArrayLike, as_float_array

SLOPE_MIN, SLOPE_MAX = 1.0, 1000.0
PROB_FLOOR = 1e-6
NOVEL_MARGIN = 1e-4  # novel by the rule => novel probability at least 0.5 + this, after flooring too
DECISION_MARGIN = 1e-4  # the decided column exceeds every other column of its level by at least this
MAX_FLOOR_SHARE = 0.25  # at most this share of a row goes to flooring (only for taxonomies of ~250,000 classes)


def novel_probability(conf: torch.Tensor, tau: float, slope: float) -> torch.Tensor:
    """``sigmoid(slope * (tau - conf))``: 0.5 at the threshold, monotone decreasing in ``conf``.

    A confidence below ``tau`` (novel by the rule, compared in the confidence's dtype as
    :func:`~supersub.novelty.decide.decide` does) gets at least ``0.5 + NOVEL_MARGIN``: ``sigmoid`` of a
    tiny positive number rounds to exactly 0.5, which would let the novel column disagree with the
    decision. (:func:`with_novel_column` enforces the margin again, after flooring, whatever q it is given.)
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

    A logistic regression with one coefficient and a fixed offset, fitted with scipy's bounded scalar
    minimiser on the log-slope (the likelihood is convex in the slope, hence unimodal in its log).
    Clamped to [1, 1000]: perfectly separated data would push the slope to infinity (a hard 0/1), data
    on the wrong side of tau to a negative slope.
    """
    seen, novel = as_float_array(conf_seen, "conf_seen"), as_float_array(conf_novel, "conf_novel")
    if len(seen) == 0 or len(novel) == 0:
        raise SupersubError(f"fit_slope: needs seen and novel confidences, got {len(seen)} and {len(novel)}")
    x_seen, x_novel = tau - seen, tau - novel
    bounds = (np.log(SLOPE_MIN), np.log(SLOPE_MAX))
    result = minimize_scalar(_nll, bounds=bounds, args=(x_seen, x_novel), method="bounded",
                             options={"xatol": 1e-6})
    # the bounded search never evaluates the ends exactly: a likelihood still falling there is the clamp
    best = min([float(result.x), *bounds], key=lambda g: _nll(g, x_seen, x_novel))
    return float(np.clip(np.exp(best), SLOPE_MIN, SLOPE_MAX))


@dataclass
class _Leaves:
    """One row's outcomes as a tree, ``(N,)``/``(N, M)``/``(N, K)`` float64: a novel superclass (``novel``),
    seen subclass j of its superclass (``seen``), a novel subclass of seen superclass k (``novel_sub_of``).

    Any non-negative leaves summing to 1 give a hierarchically consistent pair (:meth:`levels`).
    """

    novel: torch.Tensor
    seen: torch.Tensor
    novel_sub_of: torch.Tensor

    def super_mass(self, member: torch.Tensor) -> torch.Tensor:
        return self.seen @ member + self.novel_sub_of

    def novel_sub(self) -> torch.Tensor:
        return self.novel + self.novel_sub_of.sum(dim=1)

    def levels(self, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([self.super_mass(member), self.novel.unsqueeze(1)], dim=1),
                torch.cat([self.seen, self.novel_sub().unsqueeze(1)], dim=1))


def _calibrated_leaves(
    super_probs: torch.Tensor, sub_probs: torch.Tensor, q_super: torch.Tensor, q_sub: torch.Tensor,
    owner: torch.Tensor, member: torch.Tensor,
) -> _Leaves:
    """Step 1 of :func:`with_novel_column`: the calibrated tree before it is reconciled with the decision."""
    n_super = member.shape[1]
    has_subs = member.sum(dim=0) > 0
    s = super_probs.clamp_min(0)
    s = torch.where(s.sum(1, keepdim=True) > 0, s, torch.ones_like(s))
    s = s / s.sum(dim=1, keepdim=True)
    b = sub_probs.clamp_min(0)
    in_super = (b @ member)[:, owner]  # the subclass head's mass on each subclass's superclass
    # p(j | k): the subclass head within superclass k (uniform over S_k if the head gives it no mass at all)
    uniform = (1.0 / member.sum(dim=0).clamp_min(1))[owner].expand_as(b)
    cond = torch.where(in_super > 0, b / in_super.clamp_min(torch.finfo(b.dtype).tiny), uniform)
    q = q_super.clamp(0, 1).unsqueeze(1)
    r = torch.where(has_subs, q_sub.clamp(0, 1).unsqueeze(1), torch.ones(1, n_super, dtype=s.dtype))
    seen_super = (1 - q) * s
    return _Leaves(q.squeeze(1), (seen_super * (1 - r))[:, owner] * cond, seen_super * r)


def _pool_level(decided: torch.Tensor, others: torch.Tensor, gap: float, target: torch.Tensor) -> torch.Tensor:
    """The level ``lam`` to which every other entry of a level is lowered (``(others - lam)+`` moves to the
    decided entry) so that the decided entry beats all of them by ``gap`` and reaches ``target``.

    ``decided + others.sum(1)`` must be 1 (the whole level). Lowering the largest entries to a common level
    is the least costly fix in expected cross-entropy: minimising ``-sum_i p_i log p'_i`` subject to
    ``p'_d >= p'_i`` sets the decided entry and the entries above it to their average and leaves the rest
    alone (pool-adjacent-violators). ``inf`` where nothing needs to move.
    """
    n = others.shape[0]
    v = torch.cat([others, others.new_zeros(n, 1)], dim=1).sort(dim=1, descending=True).values
    cs = torch.cat([v.new_zeros(n, 1), v.cumsum(dim=1)], dim=1)  # cs[:, m]: sum of the m largest
    below = torch.cat([v, v.new_full((n, 1), -torch.inf)], dim=1)  # below[:, m]: the (m+1)-th largest
    m = torch.arange(cs.shape[1], dtype=v.dtype)
    # decided + (the m largest - m * lam) = lam + gap, for the smallest m whose lam is above the next one
    lam_all = (decided.unsqueeze(1) + cs - gap) / (m + 1)
    ok = lam_all >= below
    lam = lam_all.gather(1, ok.to(torch.int8).argmax(dim=1, keepdim=True)).squeeze(1)
    # decided + (the m largest - m * lam) = target
    need = (target - decided).unsqueeze(1)
    lam_t_all = (cs[:, 1:] - need) / m[1:]
    ok_t = lam_t_all >= below[:, 1:]
    lam_t = lam_t_all.gather(1, ok_t.to(torch.int8).argmax(dim=1, keepdim=True)).squeeze(1)
    lam_t = torch.where(need.squeeze(1) <= 0, torch.full_like(lam_t, torch.inf), lam_t.clamp_min(0))
    lam = torch.minimum(lam, lam_t)
    return torch.where(lam >= v[:, 0], torch.full_like(lam, torch.inf), lam)


def _take(amount: torch.Tensor, *parts: torch.Tensor) -> list[torch.Tensor]:
    """Split ``amount`` over ``parts`` in proportion to them (each part's share, same shapes as the parts)."""
    total = sum(p.sum(dim=1) if p.ndim == 2 else p for p in parts)
    f = (amount / total.clamp_min(1e-300)).clamp(0, 1)
    return [p * (f.unsqueeze(1) if p.ndim == 2 else f) for p in parts]


def _may_hold(mask: torch.Tensor) -> bool:
    """Whether a step of :func:`_agree` can change a row. Each step masks its changes by row, so skipping it is
    only a saving; a traced graph (ONNX export) keeps every step, since the next batch may need it."""
    return torch.jit.is_tracing() or bool(mask.any())


def _agree(
    t: _Leaves, super_pred: torch.Tensor, sub_pred: torch.Tensor, owner: torch.Tensor, member: torch.Tensor,
    gap: float, target: float,
) -> _Leaves:
    """Step 3 of :func:`with_novel_column`: move leaf mass until each level's argmax is the decision.

    Each level is pooled with :func:`_pool_level` (the least costly fix for that level), and the mass taken
    from an entry comes first from leaves whose move leaves the *other* level unchanged (e.g. a decided
    novel subclass takes seen-subclass mass into the novel subclass of the *same* superclass). A later
    move never undoes an earlier one, so the result meets both levels' conditions.
    """
    n, n_sub = t.seen.shape
    n_super = member.shape[1]
    q, seen, nsub = t.novel.clone(), t.seen.clone(), t.novel_sub_of.clone()
    rows = torch.arange(n)
    novel_super, novel_sub = super_pred == n_super, sub_pred == n_sub
    full_target = torch.full((n,), target, dtype=q.dtype)
    no_target = torch.full((n,), -torch.inf, dtype=q.dtype)

    # a) decided novel superclass: lower the superclass masses, first their novel-subclass leaves (the novel
    # subclass column does not change), then their seen subclasses in proportion
    if _may_hold(novel_super):
        mass = seen @ member + nsub
        lam = _pool_level(q, mass, gap, full_target)
        red = torch.where(novel_super.unsqueeze(1), (mass - lam.unsqueeze(1)).clamp_min(0), torch.zeros_like(mass))
        from_nsub = torch.minimum(red, nsub)
        rest = red - from_nsub
        in_seen = (seen @ member).clamp_min(1e-300)
        seen = seen - seen * (rest / in_seen).clamp(0, 1)[:, owner]
        nsub = nsub - from_nsub
        q = q + red.sum(dim=1)

    # b) subclass level
    seen_row = ~novel_sub
    if _may_hold(seen_row):  # decided seen subclass j* (of k*): pool j* with what beats it
        j = sub_pred.clamp_max(n_sub - 1)
        k = owner[j]
        d = seen[rows, j]
        nov = q + nsub.sum(dim=1)
        others = torch.cat([seen.scatter(1, j.unsqueeze(1), 0.0), nov.unsqueeze(1)], dim=1)
        lam = _pool_level(d, others, gap, no_target).unsqueeze(1)
        red = torch.where(seen_row.unsqueeze(1), (others - lam).clamp_min(0), torch.zeros_like(others))
        seen = seen - red[:, :n_sub]
        red_nov = red[:, n_sub]
        own = torch.minimum(red_nov, nsub[rows, k])  # k*'s novel-subclass leaf first: superclasses unchanged
        nsub[rows, k] -= own
        nsub_other = nsub.scatter(1, k.unsqueeze(1), 0.0)
        take_q, take_other = _take(red_nov - own, q, nsub_other)
        q, nsub = q - take_q, nsub - take_other
        seen[rows, j] += torch.where(seen_row, red.sum(dim=1), torch.zeros_like(d))
    if _may_hold(novel_sub):  # decided novel subclass: seen subclasses move into their own superclass's novel leaf
        lam = _pool_level(q + nsub.sum(dim=1), seen, gap, full_target).unsqueeze(1)
        red = torch.where(novel_sub.unsqueeze(1), (seen - lam).clamp_min(0), torch.zeros_like(seen))
        seen, nsub = seen - red, nsub + red @ member

    # c) superclass level of a decided seen superclass k*: Q and other superclasses give to k*'s decided leaf
    seen_super = ~novel_super
    if _may_hold(seen_super):
        k = super_pred.clamp_max(n_super - 1)
        mass = seen @ member + nsub
        d = mass[rows, k]
        others = torch.cat([mass.scatter(1, k.unsqueeze(1), 0.0), q.unsqueeze(1)], dim=1)
        lam = _pool_level(d, others, gap, no_target).unsqueeze(1)
        red = torch.where(seen_super.unsqueeze(1), (others - lam).clamp_min(0), torch.zeros_like(others))
        f = (red[:, :n_super] / mass.clamp_min(1e-300)).clamp(0, 1)  # superclass k gives from all its leaves
        seen, nsub, q = seen - seen * f[:, owner], nsub - nsub * f, q - red[:, n_super]
        moved = red.sum(dim=1)
        j = sub_pred.clamp_max(n_sub - 1)
        seen[rows, j] += torch.where(seen_super & seen_row, moved, torch.zeros_like(moved))
        nsub[rows, k] += torch.where(seen_super & novel_sub, moved, torch.zeros_like(moved))
    return _Leaves(q, seen, nsub)


def _floor_pair(member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A hierarchically consistent pair with every entry >= 1/Z, and the weight that floors rows at PROB_FLOOR.

    Superclass k gets ``(|S_k| + 1) / Z`` (its subclasses and its novel share), the novel superclass ``1/Z``;
    every seen subclass ``1/Z`` and the novel subclass the rest, ``(K + 1) / Z``, with ``Z = M + K + 1``.
    """
    n_sub, n_super = member.shape
    z = float(n_sub + n_super + 1)
    u_super = torch.cat([member.sum(dim=0) + 1, torch.ones(1, dtype=torch.float64)]) / z
    u_sub = torch.cat([torch.ones(n_sub, dtype=torch.float64), torch.tensor([n_super + 1.0], dtype=torch.float64)]) / z
    return u_super.unsqueeze(0), u_sub.unsqueeze(0), min(z * PROB_FLOOR, MAX_FLOOR_SHARE)


def _check_decision(
    super_pred: torch.Tensor, sub_pred: torch.Tensor, owner: torch.Tensor, n_super: int, n_sub: int
) -> None:
    if bool(((super_pred < 0) | (super_pred > n_super) | (sub_pred < 0) | (sub_pred > n_sub)).any()):
        raise SupersubError(f"with_novel_column: decisions must lie in 0..{n_super} and 0..{n_sub}")
    seen_sub = sub_pred < n_sub
    if bool((seen_sub & (super_pred == n_super)).any()):
        raise SupersubError("with_novel_column: a row has a novel superclass but a seen subclass")
    owners = owner[sub_pred.clamp_max(n_sub - 1)] if n_sub else torch.zeros_like(sub_pred)
    if bool((seen_sub & (owners != super_pred)).any()):
        raise SupersubError("with_novel_column: a decided subclass does not belong to the decided superclass")


def with_novel_column(
    super_probs: torch.Tensor,
    sub_probs: torch.Tensor,
    super_pred: torch.Tensor,
    sub_pred: torch.Tensor,
    q_super: torch.Tensor,
    q_sub: torch.Tensor,
    sub_to_super: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full distributions ``(N, K+1)`` and ``(N, M+1)`` with novel last, hierarchical and agreeing with the decision.

    ``super_pred``/``sub_pred`` are the decision (novel = K resp. M), ``q_super``/``q_sub`` the calibrated novel
    probabilities of each level (:func:`novel_probability` of the confidences the decision thresholded),
    ``super_probs``/``sub_probs`` the (temperature-scaled) seen-class probabilities of the two heads.

    1. *Calibrated tree.* A novel superclass gets ``q_super``; seen superclass k gets
       ``(1 - q_super) * super_probs[k]``, which splits into its novel subclass (share ``r_k = q_sub``; all of
       it, ``r_k = 1``, for a superclass without subclasses, possible after a holdout) and its seen subclasses
       in proportion to the subclass head renormalised within k. So ``P(novel sub) = q_super + sum_k
       P_super(k) * r_k``: a novel superclass implies a novel subclass, and the subclasses of k share
       exactly what k does not give to its novel subclass.
    2. *Agreement* (:func:`_agree`). Where the decision disagrees with the argmax of a level, the decided
       entry is pooled with the entries above it (the least costly fix in expected cross-entropy), moving
       mass between leaves of the tree so that the decided entry beats every other entry of its level by
       ``DECISION_MARGIN`` and a decided novel entry reaches ``0.5 + NOVEL_MARGIN``. Nothing moves in a row
       whose calibrated tree already agrees.
    3. *Floor.* Mix with weight ``Z * PROB_FLOOR`` (``Z = K + M + 1``) with a fixed tree whose every entry is
       >= 1/Z (:func:`_floor_pair`): every entry ends >= PROB_FLOOR with nothing renormalised away, and the
       margins of step 2 are inflated beforehand by what this mix can take off, so they hold after it for any
       number of classes.

    So every row: both levels sum to 1; every entry >= PROB_FLOOR; the argmax of each level is the decision
    (a seen subclass lies in the decided superclass); a decided novel column is >= 0.5 + NOVEL_MARGIN;
    ``P(novel sub) >= P(novel super)``; and the subclasses of superclass k never hold more than
    ``P_super(k)``. Computed in float64 on the CPU, returned in the inputs' floating dtype and device.
    """
    n, n_super = super_probs.shape
    n_sub = sub_probs.shape[1]
    for name, t in (("super_pred", super_pred), ("sub_pred", sub_pred), ("q_super", q_super), ("q_sub", q_sub)):
        if tuple(t.shape) != (n,):
            raise SupersubError(f"with_novel_column: {name} has shape {tuple(t.shape)}, expected ({n},)")
    if sub_probs.shape[0] != n or len(sub_to_super) != n_sub:
        raise SupersubError(
            f"with_novel_column: sub_probs has shape {tuple(sub_probs.shape)}; expected {n} rows "
            f"and {len(sub_to_super)} columns (one per entry of sub_to_super)"
        )
    if n_sub == 0:
        raise SupersubError("with_novel_column: the taxonomy has no subclass")
    owner = torch.as_tensor(list(sub_to_super), dtype=torch.long).reshape(-1)
    if bool(((owner < 0) | (owner >= n_super)).any()):
        raise SupersubError(f"with_novel_column: sub_to_super has a superclass outside 0..{n_super - 1}")
    device = super_probs.device
    super_pred, sub_pred = super_pred.long().cpu(), sub_pred.long().cpu()
    _check_decision(super_pred, sub_pred, owner, n_super, n_sub)
    dtype = torch.promote_types(super_probs.dtype, sub_probs.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float32
    member = torch.nn.functional.one_hot(owner, n_super).double()

    def f64(x: torch.Tensor) -> torch.Tensor:
        return x.detach().cpu().double()

    tree = _calibrated_leaves(f64(super_probs), f64(sub_probs), f64(q_super), f64(q_sub), owner, member)
    u_super, u_sub, eps = _floor_pair(member)
    # step 3 comes last: (1 - eps) * x + eps * u scales a difference by 1 - eps and moves it by at most eps
    gap = (DECISION_MARGIN + eps) / (1 - eps)
    target = (0.5 + NOVEL_MARGIN) / (1 - eps)
    p_super, p_sub = _agree(tree, super_pred, sub_pred, owner, member, gap, target).levels(member)
    p_super = (1 - eps) * p_super + eps * u_super
    p_sub = (1 - eps) * p_sub + eps * u_sub
    return p_super.to(device=device, dtype=dtype), p_sub.to(device=device, dtype=dtype)
