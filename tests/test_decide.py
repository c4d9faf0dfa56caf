"""The hierarchical decision rule against a per-row reference, plus its invariants."""

from __future__ import annotations

import itertools

import pytest
import torch

from supersub.errors import SupersubError
from supersub.novelty.decide import conditional_sub_probs, decide

K, M = 2, 4
MAPS = [(0, 0, 1, 1), (0, 1, 1, 1), (1, 1, 1, 1), (0, 1, 0, 1)]  # (1,1,1,1): superclass 0 has no subclass
TAUS = [0.0, 0.3, 0.5, 0.6, 0.75, 1.0, 1.1]


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of a 2-class vector from a 5-point grid and a 4-class vector with quarter steps."""
    supers = [(p, 1.0 - p) for p in (0.0, 0.2, 0.5, 0.7, 1.0)]
    subs = [tuple(c / 4 for c in v) for v in itertools.product(range(5), repeat=4) if sum(v) == 4]
    pairs = list(itertools.product(supers, subs))
    return (torch.tensor([a for a, _ in pairs], dtype=torch.float64),
            torch.tensor([b for _, b in pairs], dtype=torch.float64))


def _first_argmax(values: list[float], among: list[int]) -> int:
    best = among[0]
    for i in among[1:]:
        if values[i] > values[best]:
            best = i
    return best


def _reference(ps: list[float], pb: list[float], s2s: tuple[int, ...], ts: float, tb: float) -> tuple:
    """The rule written out for one image, as the docstring states it."""
    k = _first_argmax(ps, list(range(len(ps))))
    s_conf = ps[k]
    subs = [j for j in range(len(pb)) if s2s[j] == k]
    if subs:
        j = _first_argmax(pb, subs)
        b_conf = pb[j]  # the subclass head's probability, not renormalised within the superclass
    else:
        j, b_conf = -1, 0.0
    if s_conf < ts:
        return len(ps), len(pb), s_conf, b_conf
    if not subs or b_conf < tb:
        return k, len(pb), s_conf, b_conf
    return k, j, s_conf, b_conf


def test_exhaustive_grid_matches_reference() -> None:
    sp, bp = _grid()
    rows_sp, rows_bp = sp.tolist(), bp.tolist()
    n_novel_sub = 0
    for s2s, ts, tb in itertools.product(MAPS, TAUS, TAUS):
        d = decide(sp, bp, s2s, ts, tb)
        got = list(zip(d.super_pred.tolist(), d.sub_pred.tolist(), d.super_conf.tolist(), d.sub_conf.tolist()))
        want = [_reference(a, b, s2s, ts, tb) for a, b in zip(rows_sp, rows_bp)]
        assert got == want, (s2s, ts, tb)
        n_novel_sub += int((d.sub_pred == M).sum())
    assert 0 < n_novel_sub < len(MAPS) * len(TAUS) ** 2 * len(rows_sp)  # both outcomes occur


def _random_probs(seed: int, n: int = 200, k: int = 3, m: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g).mul(2).softmax(1), torch.randn(n, m, generator=g).mul(2).softmax(1)


@pytest.mark.parametrize("tau_super, tau_sub", [(0.5, 0.5), (0.7, 0.3), (0.45, 0.9)])
def test_invariants(tau_super: float, tau_sub: float) -> None:
    sp, bp = _random_probs(0)
    s2s = [0, 0, 1, 1, 1, 2, 2]
    d = decide(sp, bp, s2s, tau_super, tau_sub)
    novel_super = d.super_pred == 3
    novel_sub = d.sub_pred == 7
    assert 0 < int(novel_super.sum()) < len(sp)
    assert bool(novel_sub[novel_super].all())  # novel super => novel sub
    seen = ~novel_sub
    owner = torch.tensor(s2s)[d.sub_pred[seen]]
    assert torch.equal(owner, d.super_pred[seen])  # predicted sub belongs to predicted super
    assert bool(((d.sub_conf >= 0) & (d.sub_conf <= 1)).all())


def test_tau_zero_never_novel_and_above_one_always_novel() -> None:
    sp, bp = _random_probs(1)
    s2s = [0, 0, 1, 1, 1, 2, 2]
    never = decide(sp, bp, s2s, 0.0, 0.0)
    assert bool((never.super_pred < 3).all()) and bool((never.sub_pred < 7).all())
    assert torch.equal(never.super_pred, sp.argmax(1))
    assert bool((decide(sp, bp, s2s, 1.01, 0.0).super_pred == 3).all())
    only_sub = decide(sp, bp, s2s, 0.0, 1.01)
    assert bool((only_sub.sub_pred == 7).all()) and bool((only_sub.super_pred < 3).all())


def test_hand_example_subclass_restricted_to_predicted_superclass() -> None:
    # superclass 1 wins; subclass 1 has the largest raw probability but belongs to superclass 0
    sp = torch.tensor([[0.3, 0.7]])
    bp = torch.tensor([[0.1, 0.5, 0.3, 0.1]])
    d = decide(sp, bp, [0, 0, 1, 1], 0.5, 0.25)
    assert d.super_pred.tolist() == [1] and d.sub_pred.tolist() == [2]
    assert d.sub_conf.tolist() == pytest.approx([0.3])  # p_sub(2), not 0.3 / (0.3 + 0.1)
    assert decide(sp, bp, [0, 0, 1, 1], 0.5, 0.35).sub_pred.tolist() == [4]  # novel subclass of superclass 1
    assert decide(sp, bp, [0, 0, 1, 1], 0.75, 0.0).sub_pred.tolist() == [4]  # novel super => novel sub


def test_caller_confidences_override_defaults() -> None:
    sp = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    bp = torch.tensor([[0.9, 0.05, 0.05, 0.0], [0.9, 0.05, 0.05, 0.0]])
    d = decide(sp, bp, [0, 0, 1, 1], 0.5, 0.5, super_conf=torch.tensor([0.2, 0.8]), sub_conf=torch.tensor([5.0, 0.1]))
    assert d.super_pred.tolist() == [2, 0]
    assert d.sub_pred.tolist() == [4, 4]
    assert d.super_conf.tolist() == pytest.approx([0.2, 0.8]) and d.sub_conf.tolist() == pytest.approx([5.0, 0.1])


def test_superclass_without_subclasses_means_novel_subclass() -> None:
    d = decide(torch.tensor([[0.8, 0.2]]), torch.tensor([[0.1, 0.9]]), [1, 1], 0.0, 0.0)
    assert d.super_pred.tolist() == [0] and d.sub_pred.tolist() == [2]
    assert d.sub_conf.tolist() == [0.0]


@pytest.mark.parametrize("tau_sub", [0.3, 0.5, 0.9])
def test_a_superclass_with_one_subclass_can_hold_a_novel_subclass(tau_sub: float) -> None:
    # superclass 0 owns subclass 0 only: renormalised within it, its confidence would always be 1
    sp = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    bp = torch.tensor([[0.2, 0.5, 0.3], [0.95, 0.03, 0.02]])
    d = decide(sp, bp, [0, 1, 1], 0.5, tau_sub)
    assert d.super_pred.tolist() == [0, 0] and d.sub_conf.tolist() == pytest.approx([0.2, 0.95])
    assert d.sub_pred.tolist() == [3, 0]  # the doubtful image is a novel subclass of superclass 0


def test_subclass_confidence_is_comparable_across_superclass_sizes() -> None:
    # the same subclass-head probability (0.3) for the chosen subclass is the same confidence, whether its
    # superclass has 1 subclass or 3; renormalised, it was 1.0 for the first and 0.3 / 0.7 for the second
    sp = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    bp = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]])
    d = decide(sp, bp, [0, 1, 1, 1], 0.5, 0.0)
    assert d.sub_pred.tolist() == [0, 1] and d.sub_conf.tolist() == pytest.approx([0.3, 0.3])


def test_conditional_sub_probs() -> None:
    bp = torch.tensor([[0.1, 0.5, 0.3, 0.1]] * 3)
    got = conditional_sub_probs(bp, [0, 0, 1, 1], torch.tensor([0, 1, 2]))  # 2 = novel superclass
    want = torch.tensor([[1 / 6, 5 / 6, 0, 0], [0, 0, 0.75, 0.25], [0, 0, 0, 0]])
    assert torch.allclose(got, want)


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((torch.ones(2, 2), torch.ones(2, 3), [0, 1]), "sub_to_super has 2 entries"),
        ((torch.ones(2, 2), torch.ones(2, 2), [0, 2]), "subclass 1 maps to superclass 2"),
        ((torch.ones(2, 2), torch.ones(3, 2), [0, 1]), "expected \\(N, K\\) and \\(N, M\\)"),
    ],
)
def test_bad_input(args: tuple, fragment: str) -> None:
    with pytest.raises(SupersubError, match=fragment):
        decide(*args, 0.5, 0.5)


def test_bad_confidence_shape() -> None:
    with pytest.raises(SupersubError, match="super_conf has shape"):
        decide(torch.ones(2, 2), torch.ones(2, 2), [0, 1], 0.5, 0.5, super_conf=torch.ones(3))
