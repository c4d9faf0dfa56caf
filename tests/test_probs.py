"""Novel probabilities: logistic centred on the threshold, fitted slope, full distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supersub.errors import SupersubError
from supersub.novelty.decide import decide
from supersub.novelty.probs import PROB_FLOOR, fit_slope, novel_probability, with_novel_column


def test_novel_probability_values() -> None:
    q = novel_probability(torch.tensor([0.0, 0.5, 1.0]), 0.5, 2.0)
    assert q.tolist() == pytest.approx([1 / (1 + math.exp(-1)), 0.5, 1 / (1 + math.exp(1))])
    assert novel_probability(torch.tensor([0.3]), 0.3, 1000.0).item() == 0.5  # exactly 0.5 at tau
    assert novel_probability(torch.tensor([1]), 0.0, 1.0).dtype.is_floating_point


def test_a_confidence_just_below_tau_is_novel_in_the_probabilities_too() -> None:
    # slope * (tau - conf) ~ 5e-9: sigmoid rounds that to exactly 0.5, but the rule says novel
    conf = torch.tensor([-0.1055634, -0.1055633], dtype=torch.float32)
    tau = float(torch.nextafter(conf[0], torch.tensor(1.0)))  # the next float32 above conf[0]
    q = novel_probability(conf, tau, 4.8)
    assert q[0] > 0.5 and bool((conf[0] < tau)) and q[1] <= 0.5


def test_novel_probability_is_decreasing_in_confidence() -> None:
    q = novel_probability(torch.linspace(0, 1, 101), 0.4, 15.0)
    assert bool((q.diff() < 0).all())
    assert bool((q[:40] > 0.5).all()) and bool((q[41:] < 0.5).all())


def _logistic_sample(seed: int, slope: float, tau: float, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0, 1, n)
    novel = rng.random(n) < 1 / (1 + np.exp(-slope * (tau - conf)))
    return conf[~novel], conf[novel]


def _nll(slope: float, seen: np.ndarray, novel: np.ndarray, tau: float) -> float:
    return float(np.logaddexp(0, slope * (tau - seen)).sum() + np.logaddexp(0, -slope * (tau - novel)).sum())


@pytest.mark.parametrize("slope, tau", [(10.0, 0.5), (40.0, 0.7)])
def test_fit_slope_recovers_the_generating_slope(slope: float, tau: float) -> None:
    seen, novel = _logistic_sample(0, slope, tau)
    fitted = fit_slope(seen, novel, tau)
    assert fitted == pytest.approx(slope, rel=0.1)
    best = _nll(fitted, seen, novel, tau)  # a local minimum of the likelihood, not just "close"
    assert best < _nll(fitted * 0.98, seen, novel, tau) and best < _nll(fitted * 1.02, seen, novel, tau)


def test_fit_slope_is_clamped() -> None:
    assert fit_slope([0.6, 0.9], [0.1, 0.4], 0.5) == pytest.approx(1000.0)  # separable: hard 0/1
    assert fit_slope([0.1, 0.4], [0.6, 0.9], 0.5) == 1.0  # wrong side of tau: slope would be negative
    with pytest.raises(SupersubError, match="fit_slope: needs seen and novel"):
        fit_slope([0.5], [], 0.5)


def test_hand_computed_distributions() -> None:
    sp = torch.tensor([[0.6, 0.4]])
    bp = torch.tensor([[0.5, 0.25, 0.25]])
    p_super, p_sub = with_novel_column(sp, bp, torch.tensor([0]), torch.tensor([0.2]), torch.tensor([0.5]), [0, 0, 1])
    assert p_super.tolist()[0] == pytest.approx([0.48, 0.32, 0.2])
    # P(novel sub) = 0.2 + 0.8 * 0.5 = 0.6; the other 0.4 split 2:1:1
    assert p_sub.tolist()[0] == pytest.approx([0.2, 0.1, 0.1, 0.6])


def _random_case(seed: int, n: int = 300) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g).mul(3).softmax(1), torch.randn(n, 6, generator=g).mul(3).softmax(1), [
        0, 0, 1, 1, 2, 2
    ]


def test_rows_sum_to_one_and_agree_with_the_decision() -> None:
    sp, bp, s2s = _random_case(0)
    d = decide(sp, bp, s2s, 0.6, 0.7)
    q_super, q_sub = novel_probability(d.super_conf, 0.6, 20.0), novel_probability(d.sub_conf, 0.7, 20.0)
    p_super, p_sub = with_novel_column(sp, bp, d.super_pred, q_super, q_sub, s2s)
    assert p_super.shape == (300, 4) and p_sub.shape == (300, 7)
    assert torch.allclose(p_super.sum(1), torch.ones(300)) and torch.allclose(p_sub.sum(1), torch.ones(300))
    assert torch.equal(p_super[:, 3] > 0.5, d.super_pred == 3)
    assert bool((p_sub[:, 6][d.sub_pred == 6] > 0.5).all())  # decided novel => novel most likely
    assert bool((p_sub[:, 6] >= p_super[:, 3] - 1e-6).all())  # a novel superclass implies a novel subclass


def test_novel_columns_are_monotone_in_confidence() -> None:
    sp = torch.tensor([[0.7, 0.2, 0.1]]).repeat(101, 1)
    bp = torch.tensor([[0.1, 0.3, 0.2, 0.2, 0.1, 0.1]]).repeat(101, 1)
    conf = torch.linspace(0, 1, 101)
    q = novel_probability(conf, 0.5, 10.0)
    p_super, p_sub = with_novel_column(sp, bp, torch.zeros(101, dtype=torch.long), q, q, [0, 0, 1, 1, 2, 2])
    assert bool((p_super[:, 3].diff() < 0).all()) and bool((p_sub[:, 6].diff() < 0).all())


def test_floor_keeps_cross_entropy_finite() -> None:
    sp = torch.tensor([[1.0, 0.0, 0.0]])
    bp = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    p_super, p_sub = with_novel_column(sp, bp, torch.tensor([0]), torch.tensor([1.0]), torch.tensor([1.0]),
                                       [0, 0, 1, 1, 2, 2])
    for p in (p_super, p_sub):
        assert bool((p >= PROB_FLOOR * 0.999).all()) and torch.allclose(p.sum(1), torch.ones(1))
        assert math.isfinite(float(-p.log().sum()))
    assert p_super[0, 3].item() == pytest.approx(1 / (1 + 3e-6), abs=1e-7)  # 3 floored seen entries


def test_decided_superclass_without_subclasses_gets_a_novel_subclass() -> None:
    sp = torch.tensor([[0.8, 0.2]])
    bp = torch.tensor([[0.6, 0.4]])
    d = decide(sp, bp, [1, 1], 0.5, 0.5, sub_conf=torch.tensor([0.99]))
    assert d.sub_pred.tolist() == [2]
    q_sub = novel_probability(d.sub_conf, 0.5, 20.0)  # tiny: the caller's confidence says "seen"
    _, p_sub = with_novel_column(sp, bp, d.super_pred, torch.tensor([0.0]), q_sub, [1, 1])
    assert p_sub[0, 2].item() == pytest.approx(1.0, abs=1e-5)


def test_shape_errors() -> None:
    sp, bp, s2s = _random_case(1, n=4)
    with pytest.raises(SupersubError, match="q_sub has shape"):
        with_novel_column(sp, bp, torch.zeros(4, dtype=torch.long), torch.zeros(4), torch.zeros(3), s2s)
    with pytest.raises(SupersubError, match="one per entry of sub_to_super"):
        with_novel_column(sp, bp, torch.zeros(4, dtype=torch.long), torch.zeros(4), torch.zeros(4), s2s[:5])
