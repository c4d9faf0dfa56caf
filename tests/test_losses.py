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
