"""ViM gets the real linear read-out (W, b) of the model's heads, from the protocol down to the detector."""

from __future__ import annotations

import pytest
import torch

from supersub.config import ModelConfig, build_config
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.novelty.head_fit import calibrate_run
from supersub.pipeline.evidence import collect_evidence
from supersub.pipeline.stage_plan import Pool, Stage
from supersub.novelty.detectors import ViMScore
from supersub.novelty.level_scorer import NoveltyScorer, linear_heads
from supersub.taxonomy import Taxonomy

TAX = Taxonomy(("bird", "dog"), ("a", "b", "c"), (0, 0, 1))


def _model(n_super: int = 2, n_sub: int = 3, **kw: object) -> HierarchicalClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(**{"backbone": "cnn", "width": 4, "depth": [1], "bottleneck": 16, **kw})
    return HierarchicalClassifier(cfg, n_super, n_sub, (0, 0, 1)[:n_sub] + (1,) * max(0, n_sub - 3)).eval()


def _evidence(model: HierarchicalClassifier):
    """8 labelled training images: fewer than the 16 feature dimensions, so least squares cannot recover W, b."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    y_sub = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    y_super = torch.tensor([TAX.sub_to_super[j] for j in y_sub.tolist()])
    pool = Pool(images, y_super, y_sub, 8)
    return collect_evidence(model, pool, TAX, Stage("final", [0, 1], [0, 1, 2], list(range(8)), []), "cpu")


def _vim_with(ev, level: str, head) -> ViMScore:
    out = ev.train.outputs
    logits, labels = (out.super_logits, ev.train_y_super) if level == "super" else (out.sub_logits, ev.train_y_sub)
    w, b = head if head is not None else (None, None)
    return ViMScore().fit(logits, out.features, labels, head_weight=w, head_bias=b)


def _same_state(a: ViMScore, b: ViMScore) -> bool:
    return all(torch.allclose(getattr(a, k).double(), getattr(b, k).double(), atol=1e-6) for k in a.fitted)


def test_calibrate_run_fits_vim_on_the_true_linear_heads() -> None:
    model = _model()
    ev = _evidence(model)
    cfg = build_config({"data": {"val_fraction": 0.25}, "novelty": {"score": "vim", "tau_super": 0.0, "tau_sub": 0.0}})
    scorer = calibrate_run("vim", cfg.novelty, ev).scorer
    for level, detector in (("super", scorer.super_detector), ("sub", scorer.sub_detector)):
        true = _vim_with(ev, level, model.linear_readout(level))
        fallback = _vim_with(ev, level, None)
        assert not _same_state(true, fallback)  # the check can tell: least squares gives another origin here
        assert _same_state(detector, true)
        w, b = (t.double() for t in model.linear_readout(level))
        assert torch.allclose(detector.origin, -(torch.linalg.pinv(w) @ b))  # ViM's origin of the real head
        assert torch.equal(ev.heads[level][0], w.float()) and torch.equal(ev.heads[level][1], b.float())


def test_scorer_fit_without_heads_keeps_the_least_squares_fallback() -> None:
    ev = _evidence(_model())
    scorer = NoveltyScorer.fit("vim", ev.train, ev.train_y_super, ev.train_y_sub)
    assert _same_state(scorer.sub_detector, _vim_with(ev, "sub", None))


@pytest.mark.parametrize(
    "kw, linear",
    [({"approach": "two-heads"}, {"super", "sub"}), ({"approach": "two-models"}, {"super", "sub"}),
     ({"approach": "cosine"}, {"super"}), ({"head": "mlp"}, set()), ({"approach": "sub-only"}, {"sub"})],
)
def test_linear_heads_only_for_affine_read_outs(kw: dict, linear: set[str]) -> None:
    model = _model(**kw)
    heads = linear_heads(model, TAX.n_super, TAX.n_sub)
    assert {level for level, head in heads.items() if head is not None} == linear
    ev = _evidence(model)
    scorer = NoveltyScorer.fit("vim", ev.train, ev.train_y_super, ev.train_y_sub, ev.heads)
    for level, detector in (("super", scorer.super_detector), ("sub", scorer.sub_detector)):
        assert _same_state(detector, _vim_with(ev, level, heads[level]))  # cosine / MLP: the fallback


def test_linear_heads_drop_the_explicit_novel_class() -> None:
    model = _model(n_super=3, n_sub=4)  # novelty.oe: class adds one output per head
    heads = linear_heads(model, 2, 3)
    for level, n in (("super", 2), ("sub", 3)):
        w, b = model.linear_readout(level)
        assert torch.equal(heads[level][0], w[:n]) and torch.equal(heads[level][1], b[:n])


@pytest.mark.parametrize("n, d, duplicate", [(40, 6, False), (40, 6, True), (4, 9, False)])
def test_the_blockwise_least_squares_head_is_the_pseudo_inverse_solution(monkeypatch: pytest.MonkeyPatch, n: int,
                                                                         d: int, duplicate: bool) -> None:
    """ViM's head without (W, b): R updated a few rows at a time gives ``pinv([x, 1]) @ logits`` (the SVD of the
    whole matrix it replaces), full rank, with a repeated column (rank-deficient) and with fewer rows than columns."""
    from supersub.novelty import detectors

    monkeypatch.setattr(detectors, "LSQ_BLOCK", 7)  # several updates, the last one short
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g)
    if duplicate:
        x[:, -1] = x[:, 0]
    logits = torch.randn(n, 5, generator=g, dtype=torch.float64)
    expected = torch.linalg.pinv(torch.cat([x.double(), torch.ones(n, 1, dtype=torch.float64)], dim=1)) @ logits
    assert torch.allclose(detectors._least_squares(x, logits), expected, atol=1e-9)
