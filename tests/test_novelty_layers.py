"""Per-level novelty features (tapped blocks) and the subclass score on the decided subclass (issue 22)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supersub.config import ModelConfig, NoveltyConfig
from supersub.errors import SupersubError
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.models.taps import TappedBackbone, tap_widths
from supersub.novelty.outputs import Outputs
from supersub.novelty.level_scorer import NoveltyScorer, SeenView, decided_subclass_logits, layer_features

# two superclasses: subclasses 0, 1 belong to superclass 0; 2, 3 to superclass 1
SUB_TO_SUPER = [0, 0, 1, 1]


def _outputs(super_logits, sub_logits, features=None, layers=None) -> Outputs:
    s, b = torch.tensor(super_logits, dtype=torch.float32), torch.tensor(sub_logits, dtype=torch.float32)
    f = torch.zeros(len(s), 2) if features is None else features
    return Outputs(s, b, f, layers=layers)


def test_maxlogit_scores_the_decided_subclass_not_the_global_maximum():
    # row 0: superclass 0 is predicted, but the largest subclass logit (9) is subclass 2 of superclass 1
    out = _outputs([[3.0, 0.0], [0.0, 3.0]], [[1.0, 2.0, 9.0, 0.0], [5.0, 0.0, 1.0, 4.0]])
    y = torch.tensor([0, 1]), torch.tensor([0, 2])
    scorer = NoveltyScorer.fit("maxlogit", SeenView(out), *y)
    conf = scorer.confidences(SeenView(out), SUB_TO_SUPER)
    assert conf.sub_conf.tolist() == [2.0, 4.0]  # j* = subclass 1 (logit 2) and subclass 3 (logit 4)
    assert conf.super_conf.tolist() == [3.0, 3.0]


def test_class_conditional_knn_uses_the_decided_subclass():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    train = _outputs([[3, 0], [3, 0], [0, 3], [0, 3]], [[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]], feats)
    scorer = NoveltyScorer.fit("knn-class", SeenView(train), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]),
                               options={"k": 1})
    # a query on subclass 0's feature, predicted superclass 0, whose global top subclass logit is subclass 2's
    query = _outputs([[3.0, 0.0]], [[4.0, 0.0, 9.0, 0.0]], torch.tensor([[1.0, 0.0]]))
    conf = scorer.confidences(SeenView(query), SUB_TO_SUPER)
    assert conf.sub_conf.item() == pytest.approx(0.0, abs=1e-6)  # at distance 0 from subclass 0's bank


def test_decided_subclass_logits_keeps_members_shape():
    members = torch.randn(3, 4, 4)
    masked = decided_subclass_logits(members, torch.tensor([[1.0, 0.0]] * 3), SUB_TO_SUPER)
    assert masked.shape == members.shape and torch.equal(masked[..., :2], members[..., :2])
    assert (masked[..., 2:] < members.min()).all()


def test_layer_features_normalise_and_join_and_name_what_is_missing():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])
    out = _outputs([[1.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]], torch.tensor([[10.0, 0.0]]), {"block-1": a, "block-2": b})
    assert torch.equal(layer_features(out, "final"), out.features)  # final stays on the head's scale
    assert torch.allclose(layer_features(out, "block-1"), torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(layer_features(out, "block-1+final"), torch.tensor([[0.6, 0.8, 1.0, 0.0]]))
    with pytest.raises(SupersubError, match="'block-3'.*available: final, block-1, block-2"):
        layer_features(out, "block-3")


def test_scorer_reads_each_levels_layer_and_saves_it():
    g = torch.Generator().manual_seed(0)
    n = 40
    layers = {"block-1": torch.randn(n, 6, generator=g), "block-2": torch.randn(n, 3, generator=g)}
    train = _outputs(torch.randn(n, 2, generator=g).tolist(), torch.randn(n, 4, generator=g).tolist(),
                     torch.randn(n, 5, generator=g), layers)
    y_sub = torch.arange(n) % 4
    y_super = torch.tensor([SUB_TO_SUPER[j] for j in y_sub])
    scorer = NoveltyScorer.fit("knn+knn", SeenView(train), y_super, y_sub, layers=("block-1", "final"),
                               options={"k": 2})
    assert scorer.super_detector.bank.shape[1] == 6 and scorer.sub_detector.bank.shape[1] == 5
    again = NoveltyScorer.from_state(scorer.state_dict())
    assert again.layers == ("block-1", "final")
    c1, c2 = scorer.confidences(SeenView(train), SUB_TO_SUPER), again.confidences(SeenView(train), SUB_TO_SUPER)
    assert torch.equal(c1.super_conf, c2.super_conf)


def test_layer_names_are_validated_by_the_config():
    assert NoveltyConfig(super_layer="block-1+final").layers == ("block-1+final", "final")
    with pytest.raises(ValueError):
        NoveltyConfig(super_layer="penultimate")


def test_tapped_backbone_returns_final_features_then_pooled_blocks_in_one_pass():
    import timm

    net = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    widths = tap_widths(net, 2, 64)
    assert widths == [192, 320]
    with torch.no_grad():
        rows = TappedBackbone(net, 2)(x)
        assert torch.allclose(rows[:, :1280], net(x), atol=1e-5)
        last = net.blocks(net.bn1(net.conv_stem(x))).mean(dim=(2, 3))
    assert torch.allclose(rows[:, -320:], last, atol=1e-5)


def test_model_outputs_carry_the_layers_and_heads_ignore_them():
    cfg = ModelConfig(backbone="efficientnet_lite0", pretrained=False, tap_blocks=2)
    model = HierarchicalClassifier(cfg, 2, 4, SUB_TO_SUPER).eval()
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = model.outputs(images)
        plain = model(images)
    assert set(out.layers) == {"block-1", "block-2"} and out.layers["block-1"].shape == (2, 320)
    assert torch.allclose(out.super_logits, plain[0], atol=1e-5) and torch.allclose(out.features, plain[2], atol=1e-5)
    no_taps = HierarchicalClassifier(cfg.model_copy(update={"tap_blocks": 0}), 2, 4, SUB_TO_SUPER)
    assert no_taps.feature_extractors()[0] is no_taps.backbone
    assert isinstance(model.feature_extractors()[0], nn.Module) and model.feature_extractors()[0] is not model.backbone


def test_averaged_score_is_the_mean_of_standardised_parts_and_round_trips():
    from supersub.novelty.detectors import create_detector, detector_from_state

    g = torch.Generator().manual_seed(0)
    x, logits, y = torch.randn(60, 5, generator=g), torch.randn(60, 4, generator=g), torch.arange(60) % 4
    avg = create_detector("maxlogit,knn", k=3).fit(logits, x, y)
    ml, kn = create_detector("maxlogit").fit(logits, x, y), create_detector("knn", k=3).fit(logits, x, y)
    # the knn part is standardised with leave-one-out training confidences (the 4th neighbour on the bank)
    loo = create_detector("knn", k=4).fit(logits, x, y).confidence(logits, x).double()
    base = ml.confidence(logits, x).double()
    q, ql = torch.randn(7, 5, generator=g), torch.randn(7, 4, generator=g)
    expected = ((ml.confidence(ql, q) - base.mean()) / base.std() + (kn.confidence(ql, q) - loo.mean()) / loo.std()) / 2
    assert torch.allclose(avg.confidence(ql, q), expected.float(), atol=1e-5)
    again = detector_from_state(avg.state_dict())
    assert torch.equal(again.confidence(ql, q), avg.confidence(ql, q))


@pytest.mark.parametrize("name", ["msp,knn", "knn,knn", "knn,", "knn,nosuch"])
def test_bad_averages_are_one_line_errors(name):
    with pytest.raises(ValueError):
        NoveltyConfig(score=name)


def test_auto_layer_is_the_last_block_where_the_model_has_it_else_final():
    g = torch.Generator().manual_seed(1)
    n = 30
    y_sub = torch.arange(n) % 4
    y_super = torch.tensor([SUB_TO_SUPER[j] for j in y_sub])
    logits = (torch.randn(n, 2, generator=g).tolist(), torch.randn(n, 4, generator=g).tolist())
    tapped = _outputs(*logits, torch.randn(n, 5, generator=g), {"block-1": torch.randn(n, 3, generator=g)})
    plain = _outputs(*logits, torch.randn(n, 5, generator=g))
    assert NoveltyScorer.fit("knn", SeenView(tapped), y_super, y_sub, layers=("auto", "auto")).layers == ("block-1", "final")
    assert NoveltyScorer.fit("knn", SeenView(plain), y_super, y_sub, layers=("auto", "auto")).layers == ("final", "final")


def test_vim_caps_its_subspace_at_the_features_numerical_rank():
    """Issue 28: one backbone's 8 features twice (16 columns of rank 8) left no residual outside the default 8
    dimensions; the subspace now stops below the rank."""
    from supersub.novelty.detectors import create_detector

    g = torch.Generator().manual_seed(0)
    half = torch.randn(200, 8, generator=g)
    x = torch.cat([half, half], dim=1)
    logits = x[:, :3] @ torch.randn(3, 3, generator=g)
    vim = create_detector("vim").fit(logits, x)
    assert vim.dim == 7 and vim.basis.shape == (16, 7)
    assert torch.isfinite(vim.confidence(logits[:5], x[:5])).all()
    with pytest.raises(SupersubError, match="span 1 direction"):
        create_detector("vim").fit(logits, torch.ones(200, 1) @ torch.randn(1, 16, generator=g))


def test_logit_scores_read_no_features_of_a_row_selection():
    """A logit score (max logit, energy) reads no features: fitting or scoring it on a run's row selection must not
    gather the rows (a whole training matrix, for nothing); a feature score still reads them."""
    from supersub.novelty.outputs import RowSelection

    g = torch.Generator().manual_seed(1)
    n = 40
    source = _outputs(torch.randn(n, 2, generator=g).tolist(), torch.randn(n, 4, generator=g).tolist(),
                      torch.randn(n, 5, generator=g), {"block-1": torch.randn(n, 6, generator=g)})
    y_sub = torch.arange(30) % 4
    y_super = torch.tensor([SUB_TO_SUPER[j] for j in y_sub])
    for score, reads in (("maxlogit+energy", False), ("knn+maxlogit", True)):
        gathers: list[int] = []
        selection = RowSelection.pick(source, range(30), after_read=lambda m: gathers.append(len(m)))
        scorer = NoveltyScorer.fit(score, SeenView(selection), y_super, y_sub, layers=("block-1", "final"),
                                   options={"k": 2} if reads else None)
        conf = scorer.confidences(SeenView(selection), SUB_TO_SUPER)
        assert conf.super_conf.shape == (30,) and conf.sub_conf.shape == (30,)
        assert bool(gathers) == reads, (score, gathers)
