"""Novelty pieces with hand-computed answers: transfer, temperature, ECE, confusion, stages, exposure readers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from supersub.config import LossConfig, build_config
from supersub.errors import SupersubError
from supersub.inference import Outputs
from supersub.losses import NOVEL_SUB, OUTLIER, HierarchicalLoss
from supersub.metrics import confusion_matrix, expected_calibration_error, open_set_report
from supersub.novelty.threshold_search import kept_share, transfer_threshold
from supersub.data.exposure import read_novel_sub
from supersub.data.tiny_imagenet import write_tin_novel_sub, write_tin_outliers, write_tin_source
from supersub.novelty.head_fit import calibrate_run
from supersub.pipeline.evidence import collect_evidence
from supersub.pipeline.stage_plan import EXTRA_CLASS, UNUSED, Pool, plan_stages, stage_targets, with_extra_class
from supersub.novelty.level_scorer import NoveltyScorer, SeenView, seen_view
from supersub.novelty.temperature import fit_temperature, nll
from supersub.run_dir import Thresholds
from supersub.taxonomy import Taxonomy

# superclass 0 owns subclasses 0, 1, 2; superclass 1 owns 3, 4
TAX = Taxonomy(("a", "b"), ("a0", "a1", "a2", "b0", "b1"), (0, 0, 0, 1, 1))


# ---- threshold transfer ----------------------------------------------------------------------------


def test_kept_share_counts_confidences_at_or_above_tau() -> None:
    assert kept_share([0.1, 0.2, 0.3, 0.4], 0.25) == 0.5
    assert kept_share([0.1, 0.2, 0.3, 0.4], 0.2) == 0.75  # seen iff conf >= tau


def test_quantile_transfer_keeps_the_same_share_on_another_scale() -> None:
    cal = np.arange(10) / 10  # 0.0 .. 0.9
    share = kept_share(cal, 0.35)  # 0.4..0.9 kept
    assert share == pytest.approx(0.6)
    final = np.arange(100, 120, 2.0)  # 100, 102, .., 118: another model, another scale
    tau = transfer_threshold(share, final)
    assert 106.0 < tau <= 108.0  # 108..118 kept: exactly 6 of 10
    assert kept_share(final, tau) == pytest.approx(0.6)


def test_quantile_transfer_edge_shares() -> None:
    final = [3.0, 1.0, 2.0]
    assert kept_share(final, transfer_threshold(1.0, final)) == 1.0
    assert kept_share(final, transfer_threshold(0.0, final)) == 0.0
    # a share between two achievable ones keeps at least that share
    assert kept_share(final, transfer_threshold(0.5, final)) == pytest.approx(2 / 3)
    with pytest.raises(SupersubError, match="share must be in"):
        transfer_threshold(1.5, final)


# ---- temperature scaling, ECE, confusion --------------------------------------------------------------


def test_temperature_scaling_recovers_the_generating_temperature_and_lowers_nll() -> None:
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 2
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
    overconfident = true_logits * 3  # a model 3x too sure of itself
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(overconfident, labels, t) < nll(overconfident, labels) - 0.1
    assert fit_temperature(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)) == 1.0


def test_expected_calibration_error_hand_computed() -> None:
    # top-label confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right) in two bins:
    # bin 0.9: |0.9 - 0.5| * 2/4 = 0.2; bin 0.6: |0.6 - 1.0| * 2/4 = 0.2 -> ECE 0.4
    probs = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]]
    assert expected_calibration_error(probs, [0, 1, 1, 1]) == pytest.approx(0.4, abs=1e-6)
    assert expected_calibration_error([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == pytest.approx(0.0, abs=1e-6)


def test_confusion_matrix_rows_are_truth() -> None:
    m = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 2, 1, 2, 2, 0], 3)
    assert (confusion_matrix([], [], 3) == 0).all() and confusion_matrix([], [], 3).shape == (3, 3)
    assert m.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(SupersubError, match="0..2"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_open_set_report_ranks_each_level_on_its_own_images() -> None:
    tax = Taxonomy(("a",), ("a0", "a1"), (0, 0))
    # truth: seen a0, seen a1, novel subclass, novel superclass (novel indices: super 1, sub 2)
    ys, yb = [0, 0, 0, 1], [0, 1, 2, 2]
    super_conf = torch.tensor([0.9, 0.8, 0.7, 0.1])  # the novel superclass ranks last: AUROC 1
    sub_conf = torch.tensor([0.9, 0.2, 0.5, 0.99])  # novel subclass above one seen: AUROC 0.5 on known supers
    probs_super = torch.tensor([[0.9, 0.1]] * 4)
    probs_sub = torch.tensor([[0.5, 0.3, 0.2]] * 4)
    r = open_set_report(ys, yb, [0, 0, 0, 1], [0, 1, 2, 2], probs_super, probs_sub, super_conf, sub_conf, tax)
    assert r.metrics["super_auroc"] == 1.0 and r.metrics["super_fpr95"] == 0.0
    assert r.metrics["sub_auroc"] == 0.5  # the 0.99 of the novel-superclass image does not count here
    assert r.confusion["super"].tolist() == [[3, 0], [0, 1]]
    assert r.class_names["sub"] == ["a0", "a1", "novel"]


# ---- losses with exposure labels ---------------------------------------------------------------------


def test_novel_subclass_rows_train_the_superclass_and_flatten_the_subclass_head() -> None:
    membership = TAX.membership()
    sup, sub = torch.randn(3, 2), torch.randn(3, 5)
    ys, yb = torch.tensor([0, 1, OUTLIER]), torch.tensor([NOVEL_SUB, 3, OUTLIER])
    parts = HierarchicalLoss(LossConfig(alpha=0.0, outlier_weight=1.0), membership)(sup, sub, ys, yb)
    assert parts.ce_super.item() == pytest.approx(F.cross_entropy(sup[:2], ys[:2]).item(), rel=1e-6)
    assert parts.ce_sub.item() == pytest.approx(F.cross_entropy(sub[1:2], yb[1:2]).item(), rel=1e-6)
    uniform = -F.log_softmax(sup[2:], 1).mean() - F.log_softmax(sub[[0, 2]], 1).mean(1).mean()
    assert parts.outlier.item() == pytest.approx(uniform.item(), rel=1e-6)


# ---- stages -------------------------------------------------------------------------------------------


def _pool(per_class: int = 10, n_outliers: int = 10, n_novel_sub: int = 4) -> Pool:
    y_sub = torch.arange(TAX.n_sub).repeat_interleave(per_class)
    y_super = torch.tensor(TAX.sub_to_super)[y_sub]
    y_super = torch.cat([y_super, torch.full((n_outliers,), OUTLIER), torch.zeros(n_novel_sub, dtype=torch.long)])
    y_sub = torch.cat([y_sub, torch.full((n_outliers,), OUTLIER), torch.full((n_novel_sub,), NOVEL_SUB)])
    return Pool(torch.zeros(len(y_sub), 3, 4, 4, dtype=torch.uint8), y_super, y_sub, per_class * TAX.n_sub)


def test_stages_partition_the_images() -> None:
    pool = _pool()
    cfg = build_config({"data": {"val_fraction": 0.2, "holdout_fraction": 0.3},
                        "novelty": {"super_protocol": "loso", "calibration_folds": 1}})
    stages = plan_stages(pool, TAX, cfg)
    assert sorted(stages) == ["calibration", "final", "loso-0", "loso-1"]
    final, cal = stages["final"], stages["calibration"]
    assert sorted(final.train + final.val) == list(range(len(pool.y_sub)))
    assert len(final.val) == 2 * TAX.n_sub  # 20% of 10 per subclass
    held_subs = set(range(TAX.n_sub)) - set(cal.keep_sub)
    assert len(held_subs) == 2  # one subclass of each superclass
    assert {int(pool.y_sub[i]) for i in cal.held} == held_subs
    assert set(cal.novel) | set(cal.train) >= set(pool.outliers) and len(cal.novel) == 2  # 20% held back
    assert not set(cal.novel) & set(cal.train)
    assert sorted(cal.train + cal.val + cal.held + cal.novel) == list(range(len(pool.y_sub)))
    loso = stages["loso-1"]
    assert loso.keep_super == [0] and all(TAX.sub_to_super[j] == 0 for j in loso.keep_sub)
    assert {int(pool.y_super[i]) for i in loso.novel} == {1} and len(loso.novel) == 20
    assert all(int(pool.y_super[i]) != 1 for i in loso.train + loso.val + loso.held)


def test_hand_set_thresholds_need_only_the_final_stage() -> None:
    cfg = build_config({"novelty": {"score": "msp", "tau_super": 0.9, "tau_sub": 0.5}})
    assert list(plan_stages(_pool(), TAX, cfg)) == ["final"]


def test_class_exposure_adds_an_explicit_novel_class_at_both_levels() -> None:
    pool = _pool()
    cfg = build_config({"data": {"holdout_fraction": 0.3}})
    stage = plan_stages(pool, TAX, cfg)["calibration"]
    t = stage_targets(pool, TAX, stage, "class")
    tax, y_super, y_sub = t.fit_taxonomy, t.fit_y_super, t.fit_y_sub
    assert tax.super_names[-1] == EXTRA_CLASS and tax.n_super == 3 and tax.n_sub == 3 + 1
    outliers = pool.outliers
    assert set(y_super[outliers].tolist()) == {2} and set(y_sub[outliers].tolist()) == {3}
    assert torch.equal(tax.membership(), with_extra_class(t.taxonomy).membership())
    assert torch.equal(t.taxonomy.membership(), stage_targets(pool, TAX, stage, "uniform").fit_taxonomy.membership())
    assert set(t.y_super[outliers].tolist()) == {OUTLIER}  # the evidence's labels keep outliers apart
    assert torch.equal(tax.membership()[:-1, :-1], TAX.subset(stage.keep_sub)[0].membership())
    assert tax.membership()[-1].tolist() == [0.0, 0.0, 1.0]
    held = stage.held[0]
    assert y_sub[held] == UNUSED  # a held-out subclass is never a training label
    assert set(y_sub[pool.novel_sub].tolist()) == {NOVEL_SUB}


def test_seen_view_drops_the_extra_output_and_keeps_the_seen_mass() -> None:
    logits_super = torch.tensor([[2.0, 0.0, 1.0]])  # last column = explicit novel class
    out = Outputs(logits_super, torch.zeros(1, 4), torch.zeros(1, 2))
    view = seen_view(out, 2, 3)
    assert view.outputs.super_logits.shape == (1, 2) and view.outputs.sub_logits.shape == (1, 3)
    p = logits_super.softmax(1)[0]
    assert view.super_seen_mass.item() == pytest.approx(float(p[0] + p[1]))
    assert view.sub_seen_mass.item() == pytest.approx(0.75)
    assert seen_view(out, 3, 4).super_seen_mass is None
    with pytest.raises(SupersubError, match="taxonomy has"):
        seen_view(out, 1, 3)


# ---- end to end on synthetic features: calibration, transfer, decisions ---------------------------------


class _Affine(torch.nn.Module):
    """A 'model' whose features are the image's first channel means: logits are affine in them."""

    def __init__(self, n_super: int, n_sub: int, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.ws, self.wb = torch.randn(n_super, 8, generator=g) * scale, torch.randn(n_sub, 8, generator=g) * scale

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = images.float().flatten(1)[:, :8]
        return f @ self.ws.T, f @ self.wb.T, f


def _feature_pool() -> Pool:
    """Images whose 8 'features' cluster by subclass within superclass clusters; outliers sit far away."""
    g = torch.Generator().manual_seed(0)
    pool = _pool(per_class=12, n_outliers=20, n_novel_sub=0)
    # subclasses of one superclass sit near each other (a real hierarchy): a held-out subclass is novel to
    # the subclass head but still close to its superclass, as the LOSO protocol assumes
    super_centers = torch.rand(TAX.n_super, 8, generator=g) * 160 + 60
    centers = super_centers[list(TAX.sub_to_super)] + torch.randn(TAX.n_sub, 8, generator=g) * 10
    x = torch.zeros(len(pool.y_sub), 8)
    known = pool.y_sub >= 0
    x[known] = centers[pool.y_sub[known]] + torch.randn(int(known.sum()), 8, generator=g) * 5
    x[~known] = torch.rand(int((~known).sum()), 8, generator=g) * 20
    images = torch.zeros(len(x), 3, 4, 4, dtype=torch.uint8)
    images.view(len(x), -1)[:, :8] = x.clamp(0, 255).round().to(torch.uint8)
    return Pool(images, pool.y_super, pool.y_sub, pool.n_labelled)


@pytest.mark.parametrize("transfer", ["quantile", "absolute"])
def test_calibrate_run_transfers_the_calibration_share(transfer: str) -> None:
    pool = _feature_pool()
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                        "novelty": {"score": "knn", "transfer": transfer}})
    stages = plan_stages(pool, TAX, cfg)
    cal_tax = TAX.subset(stages["calibration"].keep_sub)[0]
    ev_cal = collect_evidence(_Affine(2, cal_tax.n_sub), pool, TAX, stages["calibration"], "cpu")
    ev_final = collect_evidence(_Affine(2, TAX.n_sub, scale=5.0), pool, TAX, stages["final"], "cpu")
    cal = calibrate_run("knn", cfg.novelty, ev_final, ev_cal)
    t, s = cal.thresholds, cal.summary
    assert t.score == "knn" and s["super_protocol"] == "auto+outliers" and s["super_auroc_calibration"] > 0.9
    final_val = cal.scorer.confidences(ev_final.val, TAX.sub_to_super)
    if transfer == "quantile":
        for level in ("super", "sub"):
            share = s[f"{level}_seen_kept_calibration"] / 100
            got = kept_share(getattr(final_val, f"{level}_conf"), getattr(t, f"tau_{level}"))
            assert got >= share - 1e-9 and got - share < 1 / len(ev_final.val_y_sub) + 1e-9
    else:
        assert t.tau_super == pytest.approx(s["super_tau_calibration"])
        assert t.tau_sub == pytest.approx(s["sub_tau_calibration"])
    # slopes are per standard deviation of the final model's confidences: feature scores are not probabilities
    assert t.slope_super * float(final_val.super_conf.double().std()) >= 1.0 - 1e-6
    applied = cal.head.decide(run_outputs(ev_final.val))
    assert torch.equal(applied.super_probs[:, -1] > 0.5, applied.super_pred == TAX.n_super)
    assert torch.allclose(applied.sub_probs.sum(1), torch.ones(len(applied.sub_probs)))



class _OnALine(_Affine):
    """Features on one line through the origin (a dead backbone's, say): ViM has no second direction to fit."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = images.float().flatten(1)[:, :1] * torch.linspace(1.0, 2.0, 8)
        return f @ self.ws.T, f @ self.wb.T, f


def test_a_level_whose_detector_cannot_be_fitted_falls_back_to_maxlogit(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 28: the run used to die after training; now that level scores with max logit on every model, one
    warning line says why, and the thresholds (what predict reads) and the summary record it."""
    pool = _feature_pool()
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                        "novelty": {"score": "vim+knn", "score_options": {"k": 3}}})
    stages = plan_stages(pool, TAX, cfg)
    cal_tax = TAX.subset(stages["calibration"].keep_sub)[0]
    ev_cal = collect_evidence(_OnALine(2, cal_tax.n_sub), pool, TAX, stages["calibration"], "cpu")
    ev_final = collect_evidence(_OnALine(2, TAX.n_sub), pool, TAX, stages["final"], "cpu")
    with caplog.at_level("WARNING", logger="supersub"):
        cal = calibrate_run("vim+knn", cfg.novelty, ev_final, ev_cal)
    reason = "score 'vim': the training features span 1 direction(s); ViM needs at least 2"
    assert [r.getMessage() for r in caplog.records if "cannot be fitted" in r.getMessage()] == [
        f"superclass score vim cannot be fitted on this run's features ({reason}): the superclass level uses maxlogit "
        "instead (recorded as score maxlogit+knn in the open-set head)"]
    assert cal.thresholds.score == cal.scorer.name == cal.summary["score"] == "maxlogit+knn"
    assert cal.summary["score_requested"] == "vim+knn" and cal.summary["super_score_fallback"] == reason
    assert "sub_score_fallback" not in cal.summary and cal.scorer.sub_detector.k == 3  # the other level as asked
    applied = cal.head.decide(run_outputs(ev_final.val))
    assert len(applied.super_pred) == len(ev_final.val_y_super)
    # a hand-set tau_super is in ViM's units: max logit cannot stand in for it
    hand = build_config({"novelty": {"score": "vim+knn", "tau_super": 1.0, "tau_sub": -0.5}}).novelty
    with pytest.raises(SupersubError, match=r"^score 'vim': the training features span 1 direction\(s\); ViM needs at "
                       "least 2; tau_super was set by hand in units of vim"):
        calibrate_run("vim+knn", hand, ev_final)


def run_outputs(view: SeenView | None) -> Outputs:
    assert view is not None
    return view.outputs


def test_hand_set_thresholds_are_used_as_given() -> None:
    pool = _feature_pool()
    cfg = build_config({"data": {"val_fraction": 0.25}, "novelty": {"score": "energy", "tau_super": -3.0,
                                                                     "tau_sub": 2.5}})
    ev = collect_evidence(_Affine(2, TAX.n_sub), pool, TAX, plan_stages(pool, TAX, cfg)["final"], "cpu")
    t = calibrate_run("energy", cfg.novelty, ev).thresholds
    assert (t.tau_super, t.tau_sub, t.score) == (-3.0, 2.5, "energy")
    with pytest.raises(SupersubError, match="no calibration model"):
        calibrate_run("energy", build_config({}).novelty, ev)


@pytest.mark.parametrize("score, options, tau", [("energy", {"temperature": 4.0}, 0.0), ("knn", {"k": 3}, -0.5),
                                                  ("vim", {"dim": 2}, 0.0)])
def test_score_options_reach_both_levels_detectors(score: str, options: dict, tau: float) -> None:
    pool = _feature_pool()
    cfg = build_config({"data": {"val_fraction": 0.25},
                        "novelty": {"score": score, "score_options": options, "tau_super": tau, "tau_sub": tau}})
    ev = collect_evidence(_Affine(2, TAX.n_sub), pool, TAX, plan_stages(pool, TAX, cfg)["final"], "cpu")
    scorer = calibrate_run(score, cfg.novelty, ev).scorer
    for detector in (scorer.super_detector, scorer.sub_detector):
        assert {key: getattr(detector, key) for key in options} == options
    # another score than the configured one keeps its own defaults
    other = calibrate_run("energy" if score != "energy" else "maxlogit", cfg.novelty, ev).scorer
    assert getattr(other.super_detector, "temperature", 1.0) == 1.0


def test_scorer_state_round_trips_through_weights_only_loading(tmp_path: Path) -> None:
    pool = _feature_pool()
    cfg = build_config({"data": {"val_fraction": 0.25}, "novelty": {"tau_super": 0.0, "tau_sub": 0.0}})
    ev = collect_evidence(_Affine(2, TAX.n_sub), pool, TAX, plan_stages(pool, TAX, cfg)["final"], "cpu")
    for name in ("mahalanobis", "knn", "vim"):
        scorer = NoveltyScorer.fit(name, ev.train, ev.train_y_super, ev.train_y_sub)
        scorer.save(tmp_path / "d.pt")
        back = NoveltyScorer.from_state(torch.load(tmp_path / "d.pt", weights_only=True))
        a, b = scorer.confidences(ev.val, TAX.sub_to_super), back.confidences(ev.val, TAX.sub_to_super)
        assert back.name == name and torch.equal(a.super_conf, b.super_conf) and torch.equal(a.sub_conf, b.sub_conf)
    with pytest.raises(SupersubError, match="not a supersub detectors file"):
        NoveltyScorer.from_state({"score": "knn"})


def test_thresholds_file_validates_temperatures() -> None:
    t = Thresholds.from_dict({"tau_super": 0.5, "tau_sub": 0.5, "temperature_super": 2.0})
    assert t.temperature_super == 2.0 and t.temperature_sub == 1.0
    with pytest.raises(SupersubError, match="temperature_sub must be positive"):
        Thresholds.from_dict({"tau_super": 0.5, "tau_sub": 0.5, "temperature_sub": 0})


def test_msp_thresholds_must_be_probabilities_but_feature_scores_are_free() -> None:
    assert build_config({"novelty": {"score": "mahalanobis", "tau_super": -250.0}}).novelty.tau_super == -250.0
    with pytest.raises(SupersubError, match="novelty.tau_super"):
        build_config({"novelty": {"score": "msp", "tau_super": 1.5}})
    # a max-softmax threshold given for a kNN level without --score msp is refused, with the fix
    with pytest.raises(SupersubError, match=r"novelty.tau_super: .*knn threshold .*\[-2, 0\].*--score msp"):
        build_config({"novelty": {"score": "knn", "tau_super": 0.99}})
    assert build_config({"novelty": {"score": "knn", "tau_super": -0.3}}).novelty.tau_super == -0.3
    # a level pair checks each threshold against its own level's score
    assert build_config({"novelty": {"score": "vim+knn", "tau_super": 7.5}}).novelty.tau_super == 7.5  # unbounded
    with pytest.raises(SupersubError, match=r"novelty.tau_sub: .*knn threshold"):
        build_config({"novelty": {"score": "vim+knn", "tau_sub": 0.85}})


# ---- exposure readers ---------------------------------------------------------------------------------


def _jpeg(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 0, 0)).save(path)


def test_novel_sub_folders_and_csv(tmp_path: Path) -> None:
    _jpeg(tmp_path / "nested" / "b" / "wolf" / "1.jpg")
    _jpeg(tmp_path / "nested" / "a" / "x" / "y" / "2.png")
    ds = read_novel_sub(tmp_path / "nested", TAX)
    assert [(r.name, r.super_index) for r in ds.records] == [("a/x/y/2.png", 0), ("b/wolf/1.jpg", 1)]
    _jpeg(tmp_path / "extra" / "c" / "3.jpg")
    with pytest.raises(SupersubError, match="'c' is not a known superclass"):
        read_novel_sub(tmp_path / "extra", TAX)
    _jpeg(tmp_path / "novel_sub_images" / "p.jpg")
    csv_path = tmp_path / "novel_sub_data.csv"
    csv_path.write_text("image,superclass_index,note\np.jpg,1,x\n")
    assert [(r.name, r.super_index) for r in read_novel_sub(csv_path, TAX).records] == [("p.jpg", 1)]
    csv_path.write_text("image,superclass_index\np.jpg,2\n")
    with pytest.raises(SupersubError, match="row 1, column 'superclass_index'"):
        read_novel_sub(csv_path, TAX)


def test_tiny_imagenet_helpers(tmp_path: Path) -> None:
    tin = tmp_path / "tin"
    classes = [("n1", "cat", "", ""), ("n2", "goldfish", "fish", "no"), ("n3", "robin", "bird", "yes"),
               ("n4", "husky", "dog", "no"), ("n5", "newt", "reptile", "no")]
    (tin).mkdir()
    (tin / "classes.csv").write_text("wnid,name,overlaps,in_competition\n" + "".join(f"{w},{n},{o},{c}\n" for w, n, o, c in classes))
    for w, *_ in classes:
        for i in range(3):
            _jpeg(tin / "train" / w / f"{w}_{i}.JPEG")
    assert write_tin_outliers(tin, tmp_path / "out") == 6  # cat + fish
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:2] == ["n1_0.JPEG", "n1_1.JPEG"]
    assert write_tin_outliers(tin, tmp_path / "out4", count=4) == 4
    assert write_tin_novel_sub(tin, tmp_path / "sub", ["bird", "dog"]) == 3  # husky only (robin is in it)
    assert sorted(p.relative_to(tmp_path / "sub").as_posix() for p in (tmp_path / "sub").rglob("*.JPEG"))[0] == \
        "dog/n4/n4_0.JPEG"
    with pytest.raises(SupersubError, match="not empty"):
        write_tin_outliers(tin, tmp_path / "out")
    # the transfer source: every class the competition lacks (robin is in it), under its superclass or "other"
    assert write_tin_source(tin, tmp_path / "src", per_class=2) == 8
    written = sorted(p.relative_to(tmp_path / "src").parent.as_posix() for p in (tmp_path / "src").rglob("*.JPEG"))
    assert sorted(set(written)) == ["dog/n4", "fish/n2", "other/n1", "reptile/n5"]
    again = tmp_path / "src-again"
    assert write_tin_source(tin, again, per_class=2, link=True) == 8  # the same seeded sample, linked
    assert sorted(p.relative_to(again).as_posix() for p in again.rglob("*.JPEG")) == \
        sorted(p.relative_to(tmp_path / "src").as_posix() for p in (tmp_path / "src").rglob("*.JPEG"))
    assert all(p.is_symlink() for p in again.rglob("*.JPEG"))


def test_leave_one_superclass_out_sets_tau_super_without_outliers() -> None:
    pool = _feature_pool()
    pool = Pool(pool.images[: pool.n_labelled], pool.y_super[: pool.n_labelled], pool.y_sub[: pool.n_labelled],
                pool.n_labelled)  # no outlier images: only LOSO can calibrate tau_super against a novel superclass
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                        "novelty": {"score": "knn", "super_protocol": "loso"}})
    stages = plan_stages(pool, TAX, cfg)

    def evidence(name: str):
        stage = stages[name]
        return collect_evidence(_Affine(len(stage.keep_super), len(stage.keep_sub)), pool, TAX, stage, "cpu")

    final, cal = evidence("final"), evidence("calibration")
    loso = [evidence("loso-0"), evidence("loso-1")]
    assert loso[1].taxonomy.super_names == ("a",) and len(loso[1].novel.outputs.features) == 24
    result = calibrate_run("knn", cfg.novelty, final, cal, loso)
    s = result.summary
    assert s["super_protocol"] == "loso" and s["super_auroc_calibration"] > 0.9
    # the pooled LOSO operating point is carried to the final model as a share of seen validation images
    kept = kept_share(result.scorer.confidences(final.val, TAX.sub_to_super).super_conf, result.thresholds.tau_super)
    assert kept == pytest.approx(s["super_seen_kept_calibration"] / 100, abs=1 / len(final.val_y_super) + 1e-9)
    recall = calibrate_run("mahalanobis", build_config({"novelty": {"score": "mahalanobis"}}).novelty, final, cal)
    assert recall.summary["super_protocol"] == "recall" and recall.summary["super_seen_kept_calibration"] >= 95


def _fold_and_final_without_outliers(cfg: Any) -> tuple[Any, Any, Any]:
    """The final model's and the calibration model's evidence on the feature pool without its outlier images,
    and the calibration model's taxonomy."""
    pool = _feature_pool()
    pool = Pool(pool.images[: pool.n_labelled], pool.y_super[: pool.n_labelled], pool.y_sub[: pool.n_labelled],
                pool.n_labelled)
    stages = plan_stages(pool, TAX, cfg)
    cal_tax = TAX.subset(stages["calibration"].keep_sub)[0]
    ev_cal = collect_evidence(_Affine(2, cal_tax.n_sub), pool, TAX, stages["calibration"], "cpu")
    ev_final = collect_evidence(_Affine(2, TAX.n_sub), pool, TAX, stages["final"], "cpu")
    return ev_final, ev_cal, cal_tax


def test_tau_super_transfers_the_share_of_seen_subclass_validation_images() -> None:
    """tau_super is chosen with held-out subclasses on the seen side, but the final model's validation split
    has seen subclasses only: the transferred share must be the calibration model's share of *those* images."""
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3}, "novelty": {"score": "knn"}})
    ev_final, ev_cal, cal_tax = _fold_and_final_without_outliers(cfg)  # tau_super from the recall protocol
    result = calibrate_run("knn", cfg.novelty, ev_final, ev_cal)
    s = result.summary
    scorer = NoveltyScorer.fit("knn", ev_cal.train, ev_cal.train_y_super, ev_cal.train_y_sub)
    val = scorer.confidences(ev_cal.val, cal_tax.sub_to_super).super_conf
    held = scorer.confidences(ev_cal.held, cal_tax.sub_to_super).super_conf
    tau = s["super_tau_calibration"]
    assert kept_share(torch.cat([val, held]), tau) == pytest.approx(cfg.novelty.super_recall, abs=0.05)
    assert kept_share(held, tau) < kept_share(val, tau)  # held-out subclasses score lower: the shares differ
    assert s["super_seen_kept_calibration"] / 100 == pytest.approx(kept_share(val, tau), abs=1e-6)


def test_outliers_can_only_make_tau_super_stricter_than_the_recall_rule() -> None:
    """Outliers far from the training images (photos against drawings) would set a lax cut: auto keeps the recall
    cut then, and uses the outliers' cut only where it is stricter; protocol ``outliers`` uses it regardless."""
    pool = _feature_pool()  # its outliers sit far below every seen cluster

    def tau(protocol: str, recall: float = 0.95) -> tuple[float, dict]:
        cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                            "novelty": {"score": "knn", "super_protocol": protocol, "super_recall": recall}})
        stages = plan_stages(pool, TAX, cfg)
        cal_tax = TAX.subset(stages["calibration"].keep_sub)[0]
        ev_cal = collect_evidence(_Affine(2, cal_tax.n_sub), pool, TAX, stages["calibration"], "cpu")
        ev_final = collect_evidence(_Affine(2, TAX.n_sub, scale=5.0), pool, TAX, stages["final"], "cpu")
        cal = calibrate_run("knn", cfg.novelty, ev_final, ev_cal)
        return cal.thresholds.tau_super, cal.summary

    t_auto, s_auto = tau("auto", recall=0.8)
    t_recall, _ = tau("recall", recall=0.8)
    t_outliers, _ = tau("outliers", recall=0.8)
    assert t_outliers < t_recall  # the far outliers' own cut is the laxer one here
    assert t_auto == pytest.approx(t_recall) and s_auto["super_outliers_set_tau"] == 0
    assert s_auto["super_protocol"] == "auto+outliers"


def test_a_level_separates_only_beyond_chance() -> None:
    """The recall cut replaces the objective's when the calibration evidence shows no separation beyond noise: an
    AUROC of 0.52 on 90 seen / 180 novel images is noise (the demo once flagged 98% of seen subclasses on it), 0.55
    on 9,000 is a signal, and a clean split of 5 against 5 is one too."""
    from supersub.novelty.head_fit import separates
    from supersub.novelty.ood_metrics import open_set_metrics

    def pair(n_seen: int, n_novel: int, shift: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n_seen, generator=g) + shift, torch.randn(n_novel, generator=g)

    seen, novel = pair(90, 180, 0.03)
    assert 0.5 < open_set_metrics(seen, novel)["auroc"] < 0.56 and not separates(seen, novel)
    seen, novel = pair(4500, 4500, 0.15)
    assert open_set_metrics(seen, novel)["auroc"] < 0.56 and separates(seen, novel)
    assert separates(torch.arange(5.0, 10.0), torch.arange(0.0, 5.0))
    assert not separates(torch.arange(0.0, 5.0), torch.arange(5.0, 10.0))  # inverted


def test_knn_left_out_confidence_is_a_refit_without_the_rows() -> None:
    """Each bank row scored with itself left out, and with its whole group left out, equals a kNN refit on the
    bank without those rows; k is capped by the rows left, and a row with none left scores NaN."""
    from supersub.novelty.detectors import KNNScore

    gen = torch.Generator().manual_seed(0)
    features = torch.randn(40, 6, generator=gen)
    groups = torch.tensor([0] * 12 + [1] * 12 + [2] * 14 + [3] * 2)
    knn = KNNScore(k=5).fit(torch.zeros(40, 2), features, torch.zeros(40, dtype=torch.long))
    alone, others = knn.left_out_confidence(groups, chunk=7)  # chunks that cut across groups
    for i in (0, 13, 30, 39):
        rest = torch.arange(40) != i
        refit = KNNScore(k=5).fit(torch.zeros(39, 2), features[rest], torch.zeros(39, dtype=torch.long))
        assert alone[i] == pytest.approx(float(refit.confidence(torch.zeros(1, 2), features[i:i + 1])), abs=1e-5)
        other = groups != groups[i]
        refit = KNNScore(k=5).fit(torch.zeros(int(other.sum()), 2), features[other],
                                  torch.zeros(int(other.sum()), dtype=torch.long))
        assert others[i] == pytest.approx(float(refit.confidence(torch.zeros(1, 2), features[i:i + 1])), abs=1e-5)
    assert bool((others <= alone + 1e-6).all())  # leaving more rows out never brings a neighbour closer
    two = KNNScore(k=5).fit(torch.zeros(3, 2), features[:3], torch.zeros(3, dtype=torch.long))
    a2, o2 = two.left_out_confidence(torch.tensor([0, 0, 1]))
    far = KNNScore(k=5).fit(torch.zeros(2, 2), features[:2], torch.zeros(2, dtype=torch.long))
    assert o2[2] == pytest.approx(float(far.confidence(torch.zeros(1, 2), features[2:3])), abs=1e-5)  # k capped: 2
    assert bool(torch.isnan(KNNScore(k=3).fit(torch.zeros(3, 2), features[:3], torch.zeros(3, dtype=torch.long))
                            .left_out_confidence(torch.zeros(3, dtype=torch.long))[1]).all())
    with pytest.raises(SupersubError, match="40 bank rows"):
        knn.left_out_confidence(groups[:10])


def test_val_protocol_sets_tau_super_on_the_final_models_validation_images() -> None:
    """``super_protocol: val``: tau_super keeps super_recall of the final model's own validation images, whatever
    the calibration model's cut (no fold chooses one); refused without validation images."""
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                        "novelty": {"score": "energy", "super_protocol": "val", "super_recall": 0.8}})
    ev_final, ev_cal, _ = _fold_and_final_without_outliers(cfg)
    result = calibrate_run("energy", cfg.novelty, ev_final, ev_cal)
    s = result.summary
    val = result.scorer.confidences(ev_final.val, TAX.sub_to_super).super_conf
    tau = result.thresholds.tau_super
    assert s["super_protocol"] == "val" and "super_tau_calibration" not in s
    assert kept_share(val, tau) == pytest.approx(0.8, abs=1 / len(val) + 1e-9)
    assert s["final_super_seen_kept"] / 100 == pytest.approx(kept_share(val, tau), abs=1e-6)
    assert "sub_tau_calibration" in s  # the folds still choose tau_sub
    recall = calibrate_run("energy", build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                                                   "novelty": {"score": "energy", "super_recall": 0.8}}).novelty,
                           ev_final, ev_cal)
    assert recall.summary["super_protocol"] == "recall" and recall.thresholds.tau_super != pytest.approx(tau)
    with pytest.raises(SupersubError, match="val needs the final model's validation images"):
        calibrate_run("energy", cfg.novelty, replace(ev_final, val=None), ev_cal)


def test_bank_protocol_sets_tau_super_on_the_final_bank() -> None:
    """``super_protocol: bank``: tau_super keeps super_recall of the final bank's rows, half the weight on rows
    scored with themselves left out and half on rows scored with their subclass left out; only with kNN."""
    from supersub.novelty.bank_cut import bank_cut

    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                        "novelty": {"score": "knn", "super_protocol": "bank", "super_recall": 0.8}})
    ev_final, ev_cal, _ = _fold_and_final_without_outliers(cfg)
    result = calibrate_run("knn", cfg.novelty, ev_final, ev_cal)
    s = result.summary
    alone, others = result.scorer.super_detector.left_out_confidence(ev_final.train_y_sub)
    tau = result.thresholds.tau_super
    assert s["super_protocol"] == "bank" and s["super_bank_rows"] == len(ev_final.train_y_sub)
    assert s["super_bank_seen_kept"] / 100 == pytest.approx(kept_share(alone, tau), abs=1e-6)
    assert s["super_bank_new_subclass_kept"] / 100 == pytest.approx(kept_share(others, tau), abs=1e-6)
    kept = (kept_share(alone, tau) + kept_share(others, tau)) / 2
    assert kept == pytest.approx(0.8, abs=1 / len(alone) + 1e-9)
    assert kept_share(others, tau) < kept_share(alone, tau)  # a left-out subclass lies farther from the bank
    folds = calibrate_run("knn", build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.3},
                                               "novelty": {"score": "knn", "super_recall": 0.8}}).novelty,
                          ev_final, ev_cal)
    assert folds.summary["super_protocol"] == "recall" and folds.thresholds.tau_super != pytest.approx(tau)
    # all weight on one kind of row: the plain recall cut of that kind
    cut = bank_cut(result.scorer.super_detector, ev_final.train_y_sub, 0.8, new_subclass_weight=0.0)
    assert kept_share(alone, cut.tau) == pytest.approx(0.8, abs=1 / len(alone) + 1e-9)
    with pytest.raises(SupersubError, match="bank needs the knn superclass score"):
        build_config({"novelty": {"score": "vim+probe", "super_protocol": "bank"}})
