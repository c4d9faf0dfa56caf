import torch

from supersub.config import ModelConfig
from supersub.data.splits import holdout_subclasses, stratified_split
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.models.scratch_cnn import ScratchCNN
from supersub.taxonomy import Taxonomy


def test_scratch_cnn_shapes_and_widths():
    net = ScratchCNN(width=8, depth=[1, 2, 1])
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 32) and net.num_features == 32


def test_classifier_accepts_uint8_and_float_identically():
    torch.manual_seed(0)
    m = HierarchicalClassifier(ModelConfig(width=8, depth=[1], bottleneck=16), n_super=3, n_sub=7).eval()
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    s1, b1, f1 = m(img)
    s2, b2, f2 = m(img.float() / 255)
    assert s1.shape == (2, 3) and b1.shape == (2, 7) and f1.shape == (2, 16)
    assert torch.allclose(s1, s2, atol=1e-5) and torch.allclose(b1, b2, atol=1e-5)


def test_holdout_takes_share_of_each_superclass_but_never_all():
    t = Taxonomy(("a", "b", "c"), tuple(f"s{i}" for i in range(13)), (0,) * 10 + (1, 1) + (2,))
    held = holdout_subclasses(t, 0.15, seed=0)
    assert sum(t.sub_to_super[j] == 0 for j in held) == 2  # round(1.5)
    assert sum(t.sub_to_super[j] == 1 for j in held) == 1  # at least one, not both
    assert 12 not in held  # a lone subclass is kept
    assert held == holdout_subclasses(t, 0.15, seed=0) and holdout_subclasses(t, 0.0, 0) == []


def test_stratified_split_is_per_label_and_deterministic():
    labels = [0] * 10 + [1] * 20 + [2]
    tr, va = stratified_split(labels, 0.2, seed=1)
    assert sorted(tr + va) == list(range(31))
    assert sum(labels[i] == 0 for i in va) == 2 and sum(labels[i] == 1 for i in va) == 4
    assert 30 in tr
    assert (tr, va) == stratified_split(labels, 0.2, seed=1)
