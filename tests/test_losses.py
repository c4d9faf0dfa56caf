import math

import pytest
import torch

from supersub.config import LossConfig
from supersub.losses import HierarchicalLoss, implied_super_log_probs, interaction_kl

# subclasses 0,1 -> superclass 0; subclass 2 -> superclass 1
MEMBERSHIP = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def test_implied_distribution_sums_subclass_probabilities():
    sub_logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    implied = implied_super_log_probs(sub_logits, MEMBERSHIP, 1.0).exp()
    assert torch.allclose(implied, torch.tensor([[0.8, 0.2]]), atol=1e-6)


def test_kl_matches_hand_computed_value():
    # p_sub = softmax(0,0,0) = 1/3 each -> implied = (2/3, 1/3); super head softmax(0,0) = (1/2, 1/2)
    kl = interaction_kl(torch.zeros(1, 2), torch.zeros(1, 3), MEMBERSHIP)
    expected = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert kl.item() == pytest.approx(expected, rel=1e-5)


def test_kl_opposite_direction_and_temperature():
    super_logits = torch.tensor([[2.0, 0.0]])
    sub_logits = torch.tensor([[1.0, 0.0, 0.5]])
    for t in (1.0, 2.0):
        ps = torch.softmax(super_logits / t, 1)[0]
        pb = torch.softmax(sub_logits / t, 1)[0]
        ph = torch.stack([pb[0] + pb[1], pb[2]])
        fwd = float((ph * (ph / ps).log()).sum())
        rev = float((ps * (ps / ph).log()).sum())
        assert interaction_kl(super_logits, sub_logits, MEMBERSHIP, t, "implied||head").item() == pytest.approx(fwd, rel=1e-5)
        assert interaction_kl(super_logits, sub_logits, MEMBERSHIP, t, "head||implied").item() == pytest.approx(rev, rel=1e-5)


def test_kl_is_zero_when_heads_agree_and_positive_otherwise():
    sub_logits = torch.log(torch.tensor([[0.6, 0.2, 0.2]]))
    agree = torch.log(torch.tensor([[0.8, 0.2]]))
    disagree = torch.log(torch.tensor([[0.2, 0.8]]))
    assert interaction_kl(agree, sub_logits, MEMBERSHIP).item() == pytest.approx(0.0, abs=1e-6)
    assert interaction_kl(disagree, sub_logits, MEMBERSHIP).item() > 0.5


def test_total_loss_is_ce_plus_alpha_kl_and_gradients_reach_both_heads():
    torch.manual_seed(0)
    sup = torch.randn(4, 2, requires_grad=True)
    sub = torch.randn(4, 3, requires_grad=True)
    ys, yb = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 2, 1, 2])
    loss = HierarchicalLoss(LossConfig(alpha=0.5), MEMBERSHIP)
    parts = loss(sup, sub, ys, yb)
    ce = torch.nn.functional.cross_entropy
    assert parts.total.item() == pytest.approx((ce(sup, ys) + ce(sub, yb) + 0.5 * parts.kl).item(), rel=1e-6)
    parts.total.backward()
    assert sup.grad.abs().sum() > 0 and sub.grad.abs().sum() > 0


def test_alpha_zero_disables_kl():
    loss = HierarchicalLoss(LossConfig(alpha=0.0), MEMBERSHIP)
    parts = loss(torch.randn(2, 2), torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 2]))
    assert parts.kl.item() == 0.0


# subclasses 0,1 -> superclass 0; subclass 2 -> superclass 2; superclass 1 has no subclass (readers allow it)
EMPTY_SUPER = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("direction", ["implied||head", "head||implied"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_with_an_empty_superclass_has_finite_value_and_gradients(direction, temperature):
    torch.manual_seed(0)
    sup = torch.randn(5, 3, requires_grad=True)
    sub = torch.randn(5, 3, requires_grad=True)
    kl = interaction_kl(sup, sub, EMPTY_SUPER, temperature, direction)
    kl.backward()
    assert torch.isfinite(kl) and kl.item() >= 0
    assert torch.isfinite(sup.grad).all() and torch.isfinite(sub.grad).all()
    assert sup.grad.abs().sum() > 0 and sub.grad.abs().sum() > 0
    # the empty superclass takes no part: the same KL as with the taxonomy that does not list it
    without = interaction_kl(sup.detach()[:, [0, 2]], sub.detach(), EMPTY_SUPER[:, [0, 2]], temperature, direction)
    assert kl.item() == pytest.approx(without.item(), rel=1e-6)


def test_hierarchical_loss_with_an_empty_superclass_trains():
    torch.manual_seed(0)
    sup = torch.randn(4, 3, requires_grad=True)
    sub = torch.randn(4, 3, requires_grad=True)
    loss = HierarchicalLoss(LossConfig(alpha=0.5), EMPTY_SUPER)
    parts = loss(sup, sub, torch.tensor([0, 2, 0, 2]), torch.tensor([0, 2, 1, 2]))
    parts.total.backward()
    assert torch.isfinite(parts.total) and torch.isfinite(parts.kl)
    assert torch.isfinite(sup.grad).all() and torch.isfinite(sub.grad).all()
    implied = implied_super_log_probs(sub.detach(), EMPTY_SUPER, 1.0)
    assert torch.isneginf(implied[:, 1]).all() and torch.allclose(implied.exp().sum(1), torch.ones(4))


def test_t2_scaling_multiplies_the_tempered_kl_and_its_gradients_by_t_squared():
    # hand-built: p_sub = softmax((ln .5, ln .3, ln .2) / 2); super head softmax((ln .7, ln .3) / 2)
    sub = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    sup = torch.log(torch.tensor([[0.7, 0.3]]))
    t = 2.0
    pb = torch.tensor([0.5, 0.3, 0.2]).sqrt()
    pb = pb / pb.sum()
    ph = torch.stack([pb[0] + pb[1], pb[2]])
    ps = torch.tensor([0.7, 0.3]).sqrt()
    ps = ps / ps.sum()
    expected = float((ph * (ph / ps).log()).sum())
    grads = []
    for scaling in (False, True):
        s = sup.clone().requires_grad_(True)
        kl = interaction_kl(s, sub, MEMBERSHIP, t, "implied||head", t2_scaling=scaling)
        assert kl.item() == pytest.approx(expected * (t**2 if scaling else 1.0), rel=1e-5)
        kl.backward()
        grads.append(s.grad)
    assert torch.allclose(grads[1], t**2 * grads[0])
    # at T = 1 the option changes nothing
    assert interaction_kl(sup, sub, MEMBERSHIP, 1.0, t2_scaling=True).item() == pytest.approx(
        interaction_kl(sup, sub, MEMBERSHIP, 1.0).item())


def test_loss_config_passes_t2_scaling_to_the_kl_term():
    sup, sub = torch.log(torch.tensor([[0.7, 0.3]])), torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    ys, yb = torch.tensor([0]), torch.tensor([0])
    plain = HierarchicalLoss(LossConfig(alpha=1.0, temperature=3.0), MEMBERSHIP)(sup, sub, ys, yb)
    scaled = HierarchicalLoss(LossConfig(alpha=1.0, temperature=3.0, kl_t2_scaling=True), MEMBERSHIP)(sup, sub, ys, yb)
    assert scaled.kl.item() == pytest.approx(9.0 * plain.kl.item(), rel=1e-6)
    assert (scaled.total - plain.total).item() == pytest.approx(8.0 * plain.kl.item(), rel=1e-5)


@pytest.mark.parametrize("direction", ["implied||head", "head||implied"])
def test_the_kl_gradient_reaches_both_heads_in_either_direction(direction):
    """Neither side is detached (the docstring's promise): each head alone gets a non-zero gradient."""
    sup = torch.log(torch.tensor([[0.2, 0.8]])).requires_grad_(True)
    sub = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).requires_grad_(True)
    interaction_kl(sup, sub, MEMBERSHIP, 1.0, direction).backward()
    assert sup.grad.abs().sum() > 1e-3 and sub.grad.abs().sum() > 1e-3
