"""Novel probabilities: logistic centred on the threshold, fitted slope, full distributions.

The full distributions are checked row by row against every invariant :func:`with_novel_column` promises
(:func:`assert_consistent`), on random rows through the real prediction path (:meth:`OpenSetHead.decide`),
with random taxonomies (one subclass per superclass, superclasses without subclasses, 500 subclasses).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from supersub.errors import SupersubError
from supersub.inference import Outputs
from supersub.novelty.decide import Decision, decide
from supersub.novelty.open_set import OpenSetDecision, OpenSetHead
from supersub.novelty.probs import NOVEL_MARGIN, PROB_FLOOR, fit_slope, novel_probability, with_novel_column
from supersub.novelty.level_scorer import Confidences, NoveltyScorer
from supersub.novelty.detectors import create_detector
from supersub.run_dir import Thresholds
from supersub.taxonomy import Taxonomy

EXAMPLES = int(os.environ.get("SUPERSUB_FUZZ_EXAMPLES", "100"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True)


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


def assert_consistent(p_super: torch.Tensor, p_sub: torch.Tensor, d: Decision | OpenSetDecision, sub_to_super: Sequence[int]) -> None:
    """Every row: sums to 1, floored, argmax = decision at both levels (hence a seen subclass lies in the
    decided superclass), decided novel <=> novel column > 0.5 (with the margin), P(novel sub) >= P(novel
    super), and the subclasses of superclass k hold no more than P(super k)."""
    n, n_super, n_sub = p_super.shape[0], p_super.shape[1] - 1, p_sub.shape[1] - 1
    tol = 1e-6 if p_super.dtype == torch.float32 else 1e-12
    assert p_super.shape == (n, n_super + 1) and p_sub.shape == (n, n_sub + 1)
    for p, pred in ((p_super, d.super_pred), (p_sub, d.sub_pred)):
        assert bool(torch.isfinite(p).all()) and bool((p >= PROB_FLOOR * (1 - 1e-4)).all())
        assert float((p.double().sum(1) - 1).abs().max()) <= 10 * tol
        assert torch.equal(p.argmax(dim=1), pred)
        decided = p.gather(1, pred.unsqueeze(1)).squeeze(1)
        assert bool((decided > p.scatter(1, pred.unsqueeze(1), -1.0).max(dim=1).values).all())  # a strict argmax
    novel_super, novel_sub = d.super_pred == n_super, d.sub_pred == n_sub
    assert torch.equal(p_super[:, n_super] > 0.5, novel_super) and torch.equal(p_sub[:, n_sub] > 0.5, novel_sub)
    assert bool((p_super[novel_super, n_super] >= 0.5 + NOVEL_MARGIN - tol).all())
    assert bool((p_sub[novel_sub, n_sub] >= 0.5 + NOVEL_MARGIN - tol).all())
    assert bool((p_sub[:, n_sub] >= p_super[:, n_super] - tol).all())
    member = torch.nn.functional.one_hot(torch.tensor(list(sub_to_super)), n_super).double()
    assert bool((p_sub[:, :n_sub].double() @ member <= p_super[:, :n_super].double() + tol).all())
    seen = ~novel_sub
    assert torch.equal(torch.tensor(list(sub_to_super))[d.sub_pred[seen]], d.super_pred[seen])


class _GivenConfidences:
    """A scorer stand-in returning fixed confidences, as a feature-space detector would (any scale)."""

    name = "msp"  # what the thresholds say; the confidences are a feature detector's

    def __init__(self, super_conf: torch.Tensor, sub_conf: torch.Tensor) -> None:
        self.conf = Confidences(super_conf, sub_conf)

    def confidences(self, view: object, sub_to_super: Sequence[int]) -> Confidences:
        return self.conf


MSP = NoveltyScorer("msp", create_detector("msp"), create_detector("msp"))


def _apply(
    seed: int, n: int, sub_to_super: Sequence[int], n_super: int, *, scale: float = 3.0, tau_super: float = 0.6,
    tau_sub: float = 0.4, slope: float = 20.0, temperature: float = 1.5, detector: bool = False,
    dtype: torch.dtype = torch.float32, ties: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, Decision]:
    """Random logits through the real prediction path (msp, or random detector-like confidences)."""
    g = torch.Generator().manual_seed(seed)
    sup = torch.randn(n, n_super, generator=g, dtype=torch.float64) * scale
    sub = torch.randn(n, len(sub_to_super), generator=g, dtype=torch.float64) * scale
    if ties:  # coarse logits: equal scores, and zero rows
        sup, sub = sup.round().clamp_min(0), sub.round().clamp_min(0)
    outputs = Outputs(sup.to(dtype), sub.to(dtype), torch.zeros(n, 1, dtype=dtype))
    names = tuple(f"s{k}" for k in range(n_super)), tuple(f"b{j}" for j in range(len(sub_to_super)))
    taxonomy = Taxonomy(names[0], names[1], tuple(sub_to_super))
    thresholds = Thresholds(tau_super, tau_sub, slope, slope * 2, "msp", temperature, 1 / temperature)
    scorer = MSP
    if detector:  # confidences unrelated to the probabilities, around the thresholds
        scorer = _GivenConfidences((torch.rand(n, generator=g) - 0.5).to(dtype) + tau_super,
                                   (torch.rand(n, generator=g) - 0.5).to(dtype) + tau_sub)
    a = OpenSetHead(scorer, thresholds, taxonomy.sub_to_super, taxonomy.n_super).decide(outputs)  # type: ignore[arg-type]
    return a.super_probs, a.sub_probs, a


@st.composite
def taxonomies(draw: st.DrawFn) -> tuple[int, list[int]]:
    """(K, sub_to_super): any map, including superclasses with no subclass and with exactly one."""
    n_super = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["any", "one each", "some empty"]))
    if kind == "one each":
        return n_super, list(range(n_super))
    top = n_super - 1 if kind == "some empty" and n_super > 1 else n_super  # the last superclass stays empty
    return n_super, draw(st.lists(st.integers(0, top - 1), min_size=1, max_size=12))


@PROPERTY
@given(
    tax=taxonomies(), seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40),
    scale=st.sampled_from([0.1, 1.0, 3.0, 30.0]),
    tau_super=st.floats(0.0, 1.0), tau_sub=st.floats(0.0, 1.0), slope=st.sampled_from([1.0, 20.0, 1000.0]),
    temperature=st.sampled_from([0.5, 1.0, 3.0]), detector=st.booleans(), ties=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_random_rows_are_consistent_with_the_decision(
    tax: tuple[int, list[int]], seed: int, n: int, scale: float, tau_super: float, tau_sub: float, slope: float,
    temperature: float, detector: bool, ties: bool, dtype: torch.dtype,
) -> None:
    n_super, s2s = tax
    p_super, p_sub, d = _apply(seed, n, s2s, n_super, scale=scale, tau_super=tau_super, tau_sub=tau_sub,
                               slope=slope, temperature=temperature, detector=detector, dtype=dtype, ties=ties)
    assert p_super.dtype == dtype
    assert_consistent(p_super, p_sub, d, s2s)


@pytest.mark.parametrize("detector", [False, True])
def test_one_subclass_per_superclass(detector: bool) -> None:
    s2s = list(range(5))
    p_super, p_sub, d = _apply(0, 2000, s2s, 5, tau_super=0.5, tau_sub=0.6, detector=detector)
    assert 0 < int((d.sub_pred == 5).sum()) < 2000
    assert_consistent(p_super, p_sub, d, s2s)


@pytest.mark.parametrize("detector", [False, True])
def test_a_superclass_without_subclasses(detector: bool) -> None:
    s2s = [0, 0, 1, 1, 1]  # superclass 2 has none (possible after a holdout)
    p_super, p_sub, d = _apply(1, 2000, s2s, 3, tau_super=0.45, tau_sub=0.3, detector=detector)
    assert int((d.super_pred == 2).sum()) > 0  # decided: the subclass is novel whatever its confidence
    assert_consistent(p_super, p_sub, d, s2s)


@pytest.mark.parametrize("detector", [False, True])
def test_500_subclasses(detector: bool) -> None:
    g = torch.Generator().manual_seed(2)
    s2s = torch.randint(0, 4, (500,), generator=g).tolist()
    p_super, p_sub, d = _apply(3, 500, s2s, 4, scale=6.0, tau_super=0.7, tau_sub=0.5, detector=detector)
    assert 0 < int((d.sub_pred == 500).sum()) < 500
    assert_consistent(p_super, p_sub, d, s2s)


@pytest.mark.parametrize("seed", range(4))
def test_novel_probabilities_that_contradict_the_decision_are_reconciled(seed: int) -> None:
    # q's drawn independently of the decision (a caller's own calibration): every invariant still holds
    g = torch.Generator().manual_seed(seed)
    s2s = [0, 0, 0, 1, 2, 2, 3]  # superclass 4 has no subclass
    sp, bp = torch.randn(3000, 5, generator=g).mul(3).softmax(1), torch.randn(3000, 7, generator=g).mul(3).softmax(1)
    d = decide(sp, bp, s2s, 0.5, 0.3)
    q_super, q_sub = torch.rand(3000, generator=g), torch.rand(3000, generator=g)
    p_super, p_sub = with_novel_column(sp, bp, d.super_pred, d.sub_pred, q_super, q_sub, s2s)
    assert_consistent(p_super, p_sub, d, s2s)


def test_novel_margin_survives_the_floor_with_500_subclasses() -> None:
    # confidences a hair below tau: q is exactly 0.5 + NOVEL_MARGIN, and hundreds of floored subclasses
    # must not take the novel column back to 0.5
    n, s2s = 6, [j % 4 for j in range(500)]
    sp = torch.full((n, 4), 0.25)
    bp = torch.nn.functional.one_hot(torch.arange(n), 500).double() * 0.999 + 0.001 / 500
    conf = torch.full((n,), 0.5 - 1e-9, dtype=torch.float64)
    d = decide(sp.double(), bp, s2s, 0.5, 0.5, super_conf=conf, sub_conf=conf)
    q = novel_probability(conf, 0.5, 1.0)
    assert bool((q == 0.5 + NOVEL_MARGIN).all()) and bool((d.super_pred == 4).all())
    p_super, p_sub = with_novel_column(sp, bp.float(), d.super_pred, d.sub_pred, q.float(), q.float(), s2s)
    assert bool((p_sub[:, 500] > 0.5).all()) and bool((p_super[:, 4] > 0.5).all())
    assert_consistent(p_super, p_sub, d, s2s)


def test_msp_can_say_novel_subclass_for_a_superclass_with_one_subclass() -> None:
    # superclass 0 owns subclass 0 only; the subclass head gives it 0.2 and the rest to superclass 1's
    s2s, tax = [0, 1, 1], Taxonomy(("a", "b"), ("a0", "b0", "b1"), (0, 1, 1))
    sup = torch.tensor([[3.0, 0.0]])
    sub = torch.tensor([[0.2, 0.5, 0.3]]).log()
    a = OpenSetHead(MSP, Thresholds(0.5, 0.5), tax.sub_to_super, tax.n_super).decide(Outputs(sup, sub, torch.zeros(1, 1)))
    assert a.super_pred.tolist() == [0] and a.sub_pred.tolist() == [3]
    assert a.sub_conf.tolist() == pytest.approx([0.2])
    assert a.sub_probs.argmax(1).tolist() == [3] and float(a.sub_probs[0, 3]) > 0.5
    assert_consistent(a.super_probs, a.sub_probs, a, s2s)


def test_hand_computed_distributions() -> None:
    sp = torch.tensor([[0.7, 0.3]], dtype=torch.float64)
    bp = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    zero, s2s = torch.tensor([0]), [0, 0, 1]
    p_super, p_sub = with_novel_column(sp, bp, zero, zero, torch.tensor([0.2]), torch.tensor([0.1]), s2s)
    assert p_super.tolist()[0] == pytest.approx([0.56, 0.24, 0.2], abs=1e-5)
    # superclass 0 keeps 0.9 of its 0.56 for its subclasses, split 2:1 as within it; superclass 1 its 0.24 * 0.9;
    # P(novel sub) = 0.2 + 0.1 * (0.56 + 0.24)
    assert p_sub.tolist()[0] == pytest.approx([0.336, 0.168, 0.216, 0.28], abs=1e-5)


def test_a_seen_decision_pools_just_the_entries_that_beat_it() -> None:
    # as above with q_sub = 0.3: P(subclass 0) = 0.56 * 0.7 * 2/3 < P(novel sub) = 0.2 + 0.8 * 0.3 = 0.44, yet
    # the decision is "subclass 0": the two are pooled at their average (+ the margin), the rest is untouched,
    # and the mass comes from superclass 0's own novel subclass (0.56 * 0.3), so the superclasses do not move
    sp, bp = torch.tensor([[0.7, 0.3]], dtype=torch.float64), torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    zero = torch.tensor([0])
    p_super, p_sub = with_novel_column(sp, bp, zero, zero, torch.tensor([0.2]), torch.tensor([0.3]), [0, 0, 1])
    assert p_sub.argmax(1).tolist() == [0] and 1e-4 <= float(p_sub[0, 0] - p_sub[0, 3]) < 1.1e-4
    pooled = (0.56 * 0.7 * 2 / 3 + 0.44) / 2
    assert p_sub.tolist()[0] == pytest.approx([pooled + 5e-5, 0.56 * 0.7 / 3, 0.24 * 0.7, pooled - 5e-5], abs=1e-5)
    assert p_super.tolist()[0] == pytest.approx([0.56, 0.24, 0.2], abs=1e-5)


def test_a_seen_decision_takes_the_novel_share_it_needs_from_the_novel_superclass() -> None:
    # (1 - q) * 0.55 < q = 0.4 at the superclass level, and P(subclass 0) = 0.6 * 0.55 * 0.9 < P(novel sub) = 0.4;
    # superclass 0 has no novel-subclass mass (q_sub = 0), so pooling subclass 0 with the novel subclass takes
    # the mass from the novel superclass, which also puts superclass 0 on top
    sp, bp = torch.tensor([[0.55, 0.45]], dtype=torch.float64), torch.tensor([[0.9, 0.1, 0.5]], dtype=torch.float64)
    zero = torch.tensor([0])
    p_super, p_sub = with_novel_column(sp, bp, zero, zero, torch.tensor([0.4]), torch.tensor([0.0]), [0, 0, 1])
    pooled = (0.297 + 0.4) / 2
    assert p_sub.tolist()[0] == pytest.approx([pooled + 5e-5, 0.033, 0.27, pooled - 5e-5], abs=1e-5)
    assert p_super.tolist()[0] == pytest.approx([0.33 + 0.4 - pooled + 5e-5, 0.27, pooled - 5e-5], abs=1e-5)


def test_superclass_argmax_agrees_when_the_novel_share_beats_the_winner() -> None:
    # (1 - q) * max p < q <= 0.5: the old column put "novel" on top of a seen decision
    sp = torch.tensor([[0.4, 0.35, 0.25]])
    d = decide(sp, torch.tensor([[1.0, 0.0, 0.0]]), [0, 1, 2], 0.3, 0.0)
    q = torch.tensor([0.4])
    p_super, p_sub = with_novel_column(sp, torch.tensor([[1.0, 0.0, 0.0]]), d.super_pred, d.sub_pred, q,
                                       torch.tensor([0.0]), [0, 1, 2])
    assert d.super_pred.tolist() == [0] and p_super.argmax(1).tolist() == [0]
    assert_consistent(p_super, p_sub, d, [0, 1, 2])


def _random_case(seed: int, n: int = 300) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g).mul(3).softmax(1), torch.randn(n, 6, generator=g).mul(3).softmax(1), [
        0, 0, 1, 1, 2, 2
    ]


def test_rows_sum_to_one_and_agree_with_the_decision() -> None:
    sp, bp, s2s = _random_case(0)
    d = decide(sp, bp, s2s, 0.6, 0.7)
    q_super, q_sub = novel_probability(d.super_conf, 0.6, 20.0), novel_probability(d.sub_conf, 0.7, 20.0)
    p_super, p_sub = with_novel_column(sp, bp, d.super_pred, d.sub_pred, q_super, q_sub, s2s)
    assert p_super.shape == (300, 4) and p_sub.shape == (300, 7)
    assert 0 < int((d.super_pred == 3).sum()) < int((d.sub_pred == 6).sum()) < 300
    assert_consistent(p_super, p_sub, d, s2s)


def test_novel_columns_are_monotone_in_confidence() -> None:
    sp = torch.tensor([[0.7, 0.2, 0.1]]).repeat(101, 1)
    bp = torch.tensor([[0.1, 0.3, 0.2, 0.2, 0.1, 0.1]]).repeat(101, 1)
    conf = torch.linspace(0, 1, 101)
    s2s = [0, 0, 1, 1, 2, 2]
    d = decide(sp, bp, s2s, 0.5, 0.5, super_conf=conf, sub_conf=conf)
    q = novel_probability(conf, 0.5, 10.0)
    p_super, p_sub = with_novel_column(sp, bp, d.super_pred, d.sub_pred, q, q, s2s)
    assert bool((p_super[:, 3].diff() < 0).all()) and bool((p_sub[:, 6].diff() < 0).all())


def test_floor_keeps_cross_entropy_finite() -> None:
    sp = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    bp = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    p_super, p_sub = with_novel_column(sp, bp, torch.tensor([3]), torch.tensor([6]), torch.tensor([1.0]),
                                       torch.tensor([1.0]), [0, 0, 1, 1, 2, 2])
    for p in (p_super, p_sub):
        assert bool((p >= PROB_FLOOR * (1 - 1e-9)).all()) and torch.allclose(p.sum(1), torch.ones(1, dtype=p.dtype))
        assert math.isfinite(float(-p.log().sum()))
    # Z = 6 + 3 + 1 = 10 columns' worth of floor: every seen subclass gets exactly PROB_FLOOR, superclass k
    # PROB_FLOOR * (|S_k| + 1), the novel columns the rest
    assert p_sub[0, :6].tolist() == pytest.approx([PROB_FLOOR] * 6, rel=1e-9)
    assert p_super[0, :3].tolist() == pytest.approx([3 * PROB_FLOOR] * 3, rel=1e-9)
    assert p_super[0, 3].item() == pytest.approx(1 - 9 * PROB_FLOOR, abs=1e-12)


def test_decided_superclass_without_subclasses_gets_a_novel_subclass() -> None:
    sp = torch.tensor([[0.8, 0.2]])
    bp = torch.tensor([[0.6, 0.4]])
    d = decide(sp, bp, [1, 1], 0.5, 0.5, sub_conf=torch.tensor([0.99]))
    assert d.sub_pred.tolist() == [2]
    q_sub = novel_probability(d.sub_conf, 0.5, 20.0)  # tiny: the caller's confidence says "seen"
    p_super, p_sub = with_novel_column(sp, bp, d.super_pred, d.sub_pred, torch.tensor([0.0]), q_sub, [1, 1])
    # all of superclass 0's mass is a novel subclass, superclass 1's stays with its subclasses
    assert p_sub[0, 2].item() == pytest.approx(0.8, abs=1e-4)
    assert p_sub[0, :2].sum().item() == pytest.approx(0.2, abs=1e-4)
    assert_consistent(p_super, p_sub, d, [1, 1])


def test_shape_and_decision_errors() -> None:
    sp, bp, s2s = _random_case(1, n=4)
    zeros = torch.zeros(4, dtype=torch.long)
    with pytest.raises(SupersubError, match="q_sub has shape"):
        with_novel_column(sp, bp, zeros, zeros, torch.zeros(4), torch.zeros(3), s2s)
    with pytest.raises(SupersubError, match="one per entry of sub_to_super"):
        with_novel_column(sp, bp, zeros, zeros, torch.zeros(4), torch.zeros(4), s2s[:5])
    with pytest.raises(SupersubError, match="novel superclass but a seen subclass"):
        with_novel_column(sp, bp, torch.full((4,), 3), zeros, torch.zeros(4), torch.zeros(4), s2s)
    with pytest.raises(SupersubError, match="does not belong to the decided superclass"):
        with_novel_column(sp, bp, zeros, torch.full((4,), 2), torch.zeros(4), torch.zeros(4), s2s)
