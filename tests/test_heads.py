import pytest
import torch
from torch import nn

from supersub.errors import SupersubError
from supersub.models.heads import HEADS, CosineClassifier, create_head


@pytest.mark.parametrize("name,bottleneck", [("linear", 0), ("cosine", 0), ("mlp", 8)])
def test_every_head_maps_features_to_logits_and_trains(name, bottleneck):
    torch.manual_seed(0)
    head = create_head(name, in_features=12, n_classes=5, dropout=0.2, bottleneck=bottleneck)
    x = torch.randn(4, 12)
    logits = head(x)
    assert logits.shape == (4, 5)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    head.eval()
    assert torch.equal(head(x), head(x))  # dropout off in eval mode


def test_linear_head_is_an_affine_map():
    torch.manual_seed(0)
    head = create_head("linear", 3, 2).eval()
    lin = head[-1]
    x = torch.tensor([[1.0, -2.0, 0.5]])
    expected = x @ lin.weight.t() + lin.bias
    assert torch.allclose(head(x), expected)


def test_cosine_logits_hand_computed():
    cls = CosineClassifier(2, 3, scale=16.0)
    with torch.no_grad():
        cls.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))  # unit, long, opposite
    x = torch.tensor([[3.0, 4.0]])  # |x| = 5 -> (0.6, 0.8)
    assert torch.allclose(cls(x), torch.tensor([[16 * 0.6, 16 * 0.8, -16 * 0.6]]))
    # only the direction of features and weights matters, and logits never exceed the scale
    assert torch.allclose(cls(7 * x), cls(x))
    assert cls(torch.randn(64, 2)).abs().max() <= 16.0 + 1e-4


def test_cosine_scale_is_learnable_from_its_initial_value():
    head = create_head("cosine", 4, 3)
    cls = head[-1]
    assert isinstance(cls, CosineClassifier) and cls.scale.item() == 16.0 and cls.scale.requires_grad
    head(torch.randn(2, 4)).sum().backward()
    assert cls.scale.grad is not None
    frozen = CosineClassifier(4, 3, scale=10.0, learn_scale=False)
    assert not frozen.scale.requires_grad and frozen.scale.item() == 10.0
    with pytest.raises(SupersubError, match="scale must be positive"):
        CosineClassifier(4, 3, scale=0.0)


def test_mlp_head_is_seed_000_bottleneck():
    head = create_head("mlp", 10, 4, dropout=0.3, bottleneck=6)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[-1].out_features) == (10, 6, 4)
    assert head[3].p == 0.3


def test_bad_names_and_sizes_are_one_line_errors():
    assert set(HEADS) == {"linear", "cosine", "mlp", "xgboost"}
    with pytest.raises(SupersubError, match=r"unknown head 'arcface' \(choose from cosine, linear, mlp, xgboost\)"):
        create_head("arcface", 8, 2)
    with pytest.raises(SupersubError, match="needs a bottleneck"):
        create_head("mlp", 8, 2, bottleneck=0)
    with pytest.raises(SupersubError, match="no hidden layer"):
        create_head("linear", 8, 2, bottleneck=16)
    with pytest.raises(SupersubError, match="dropout"):
        create_head("cosine", 8, 2, dropout=1.0)
    with pytest.raises(SupersubError, match="n_classes must be >= 1"):
        create_head("linear", 8, 0)
