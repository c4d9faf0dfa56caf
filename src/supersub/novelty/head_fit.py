"""Fitting a run's open-set head from its models' evidence: thresholds chosen on the calibration folds (and LOSO
models), transferred to the final model, its detectors and temperatures fitted.

Thresholds are chosen on a calibration model and *transferred* to the final model, whose scores live on another
scale: ``quantile`` keeps the same share of seen validation images, ``absolute`` copies tau. The threshold search,
slope fit and temperature are :mod:`.calibrate`, :mod:`.probs` and :mod:`.temperature`; this module decides which
images stand for seen and novel at each level. Pure: evidence (tensors) and the novelty config in, an
:class:`~.open_set.OpenSetHead` out (:func:`calibrate_run`); where it is saved is the pipeline's business.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import mannwhitneyu

from ..config import FINAL_MODEL_PROTOCOLS, NoveltyConfig
from ..errors import SupersubError
from ..score_catalog import AUTO, AUTO_CANDIDATES, PAIR_SEPARATOR, level_scores
from ..taxonomy import Taxonomy
from ..threads import dense_threads
from .threshold_search import choose_threshold, kept_share, sweep, transfer_threshold
from .decide import decide
from .ood_metrics import open_set_metrics
from .open_set import OpenSetHead
from .probs import fit_slope
from .level_scorer import (FALLBACK_SCORE, LEVELS, Confidences, Head, LevelFitError, NoveltyScorer, SeenView,
                           with_fallback)
from .score_choice import ScoreChoice, choose_score
from .bank_cut import bank_cut
from .detectors import KNNScore
from .temperature import fit_temperature
from .thresholds import Thresholds

log = logging.getLogger("supersub")


@dataclass
class Evidence:
    """One model's outputs on its stage's images, restricted to its seen classes, with stage labels: what fitting
    a head reads (:func:`supersub.pipeline.evidence.collect_evidence` runs a model to make it)."""

    taxonomy: Taxonomy
    train: SeenView
    train_y_super: torch.Tensor
    train_y_sub: torch.Tensor
    val: SeenView | None
    val_y_super: torch.Tensor
    val_y_sub: torch.Tensor
    held: SeenView | None = None
    held_y_super: torch.Tensor | None = None
    novel: SeenView | None = None
    # each level's linear read-out (W, b) of the model, restricted to the seen classes (None: not affine)
    heads: dict[str, Head | None] = field(default_factory=dict)


# one-sided p-value of the Mann-Whitney U test (seen confidences above the novel ones) at or above which a level's
# calibration evidence shows no separation, and its cut is the recall target's: a calibration AUROC of 0.52 on 90 seen
# and 180 held-out images (the demo's CNN under torch 2.14) let the balanced objective flag 98% of seen subclasses
NO_SEPARATION_P = 0.05
DEFAULT_Z_SLOPE = 3.0  # novel-probability slope per standard deviation of seen confidences, when not fitted


@dataclass
class Calibration:
    """The final model's open-set head (detectors + thresholds), the sweeps behind it and a summary for metrics.json."""

    head: OpenSetHead
    sweeps: dict[str, pd.DataFrame]
    summary: dict[str, Any]

    @property
    def thresholds(self) -> Thresholds:
        return self.head.thresholds

    @property
    def scorer(self) -> NoveltyScorer:
        return self.head.scorer


def _scale(conf: torch.Tensor) -> float:
    """Spread of seen confidences, the unit of the logistic slope (feature scores span hundreds)."""
    std = float(conf.double().std()) if len(conf) > 1 else 0.0
    return std if std > 1e-12 else max(1e-6, 1e-6 * float(conf.abs().max()) if len(conf) else 1e-6)


def _z_slope(seen: torch.Tensor, novel: torch.Tensor | None, tau: float) -> float:
    """The maximum-likelihood slope per standard deviation of the seen confidences."""
    if novel is None or len(novel) == 0:
        return DEFAULT_Z_SLOPE
    s = _scale(seen)
    return fit_slope(seen / s, novel / s, tau / s)


def _correct(view: SeenView, conf: Confidences, y_super: torch.Tensor, y_sub: torch.Tensor, tax: Taxonomy) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Whether the closed-set decision is right at each level (seen accuracy counts only those)."""
    d = decide(view.outputs.super_probs, view.outputs.sub_probs, list(tax.sub_to_super), -np.inf, -np.inf,
               conf.super_conf, conf.sub_conf)
    return (d.super_pred == y_super).float(), (d.sub_pred == y_sub).float()


@dataclass
class _LevelChoice:
    """A threshold chosen on some model: its value there, the seen share it keeps, its slope per std."""

    tau: float
    share: float
    z_slope: float
    sweep: pd.DataFrame | None = None
    metrics: dict[str, float] | None = None
    separates: bool = True  # False: the score could not tell novel from seen here (see :func:`separates`)


def _choose(
    seen: torch.Tensor, novel: torch.Tensor | None, correct: torch.Tensor, cfg: NoveltyConfig, objective: str,
    level: str,
) -> _LevelChoice:
    if level == "super":
        recall, share = cfg.super_recall, cfg.novel_share_super
    else:
        recall, share = cfg.sub_recall, cfg.sub_novel_share_within_seen_super()
    metrics = open_set_metrics(seen, novel) if novel is not None and len(novel) else None
    apart = metrics is None or (metrics["auroc"] > 0.5 and separates(seen, novel))
    tau = choose_threshold(seen, novel if apart else None, objective=objective if apart else "recall",
                           correct_seen=correct, target_recall=recall, novel_share=share)
    # a score that cannot tell the (pseudo-)novel images from seen ones gives no trade-off to optimise: keep the
    # recall target's share of seen images instead of a cut the noise placed (it flagged 93% of seen images once)
    return _LevelChoice(tau, kept_share(seen, tau), _z_slope(seen, novel, tau), sweep(seen, novel, correct), metrics,
                        apart)


def separates(seen: torch.Tensor, novel: torch.Tensor) -> bool:
    """Whether seen confidences lie above the novel ones beyond chance: the one-sided Mann-Whitney U test (the AUROC's
    own statistic, ties counted half) at p < :data:`NO_SEPARATION_P`. Why a test and not an AUROC floor: 0.55 is
    noise on 90 images and a real signal on 9,000."""
    if len(seen) < 2 or len(novel) < 2:
        return True  # too few to test: the AUROC alone decides
    p = mannwhitneyu(seen.double().numpy(), novel.double().numpy(), alternative="greater").pvalue
    return bool(p < NO_SEPARATION_P)


def _loso_choice(score: str, loso: Sequence[Evidence], cfg: NoveltyConfig) -> _LevelChoice:
    """tau_super from the pooled LOSO models, each standardised by its seen validation confidences."""
    seen_z, novel_z, correct = _loso_confidences(score, loso, cfg)
    return _choose(seen_z, novel_z, correct, cfg, cfg.objective, "super")


def _loso_confidences(score: str, loso: Sequence[Evidence], cfg: NoveltyConfig) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]:
    """The LOSO models' superclass confidences, pooled: seen (validation + held-out) and left-out (novel) images,
    each model's z-scored by its own seen ones, and whether each seen image's superclass is decided right."""
    seen_z, novel_z, correct = [], [], []
    for ev in loso:
        scorer = NoveltyScorer.fit(score, ev.train, ev.train_y_super, ev.train_y_sub, ev.heads, options=cfg.options_for(score),
                               layers=cfg.layers)
        pairs = [(v, y) for v, y in ((ev.val, ev.val_y_super), (ev.held, ev.held_y_super)) if v is not None]
        views, labels = [v for v, _ in pairs], [y for _, y in pairs]
        confs = [scorer.confidences(v, ev.taxonomy.sub_to_super) for v in views]
        seen = torch.cat([c.super_conf for c in confs])
        mu, s = float(seen.double().mean()), _scale(seen)
        assert ev.novel is not None
        novel = scorer.confidences(ev.novel, ev.taxonomy.sub_to_super).super_conf
        seen_z.append((seen - mu) / s)
        novel_z.append((novel - mu) / s)
        correct.append(torch.cat([
            _correct(v, c, y, torch.zeros_like(y), ev.taxonomy)[0] for v, c, y in zip(views, confs, labels)
        ]))
    return torch.cat(seen_z), torch.cat(novel_z), torch.cat(correct)


def _as_folds(calibration: Evidence | Sequence[Evidence] | None) -> Sequence[Evidence]:
    """The calibration folds as a sequence, not copied into a list: a lazy sequence (the pipeline's ``Stages``)
    makes each fold's evidence when it is read, so only the fold in use is held."""
    return [calibration] if isinstance(calibration, Evidence) else (calibration or ())


@dense_threads()  # detector fits, confidences and sweeps are small dense ops: one thread (see supersub.threads)
def calibrate_run(
    score: str, cfg: NoveltyConfig, final: Evidence, calibration: Evidence | Sequence[Evidence] | None = None,
    loso: Sequence[Evidence] = (),
) -> Calibration:
    """Choose thresholds (hand-set values in ``cfg`` win) on the calibration folds, transfer them to the final
    model, fit its detectors and temperatures.

    A level whose detector cannot be fitted on some model's features (:class:`LevelFitError`: rank-deficient or
    constant features, too few images) is scored with :data:`FALLBACK_SCORE` on every model instead, after one
    warning line naming the reason: the thresholds' ``score`` and the summary (``score_requested``,
    ``<level>_score_fallback``) record what was used, and predict reads the thresholds' score. A hand-set
    threshold of that level is in the requested score's units, so there it stays an error.
    """
    requested, reasons = score, {}
    folds = _as_folds(calibration)
    score, choices = _resolve_auto(score, cfg, final, folds, loso)
    while True:
        # the configured score's options follow it to its fallback name (another score keeps its defaults)
        scored = cfg.model_copy(update={"score": score}) if requested == cfg.score else cfg
        try:
            cal = _calibrate_run(score, scored, final, calibration, loso)
            break
        except LevelFitError as e:
            if e.detector == FALLBACK_SCORE or e.level in reasons:
                raise
            if getattr(cfg, f"tau_{e.level}") is not None:
                raise SupersubError(f"{e}; tau_{e.level} was set by hand in units of {e.detector}, so "
                                    f"{FALLBACK_SCORE} cannot stand in: calibrate the run with another score "
                                    "(supersub calibrate RUN --score ...)") from None
            reasons[e.level] = str(e)
            score = with_fallback(score, e.level)
            log.warning("%s score %s cannot be fitted on this run's features (%s): the %s level uses %s instead "
                        "(recorded as score %s in the open-set head)", LEVEL_NAMES[e.level], e.detector, e,
                        LEVEL_NAMES[e.level], FALLBACK_SCORE, score)
    if reasons or choices:
        cal.summary["score_requested"] = requested
        cal.summary.update({f"{level}_score_fallback": reason for level, reason in reasons.items()})
    for choice in choices:
        cal.summary.update(choice.summary())
    return cal


def _resolve_auto(score: str, cfg: NoveltyConfig, final: Evidence, folds: Sequence[Evidence],
                  loso: Sequence[Evidence]) -> tuple[str, list[ScoreChoice]]:
    """``score`` with each ``auto`` level replaced by the detector :func:`.score_choice.choose_score` picks on the
    evidence (one log line per level: a warning when no candidate separates)."""
    levels = list(level_scores(score))
    if AUTO not in levels:
        return score, []
    choices = []
    for i, level in enumerate(LEVELS):
        if levels[i] != AUTO:
            continue
        aurocs, why_none = _evidence_aurocs(level, cfg, final, folds, loso)
        choice = choose_score(level, AUTO_CANDIDATES[level], aurocs, why_none)
        (log.info if choice.separates else log.warning)("%s", choice.message)
        levels[i] = choice.detector
        choices.append(choice)
    return (levels[0] if levels[0] == levels[1] else PAIR_SEPARATOR.join(levels)), choices


def _evidence_aurocs(level: str, cfg: NoveltyConfig, final: Evidence, folds: Sequence[Evidence],
                     loso: Sequence[Evidence]) -> tuple[dict[str, float], str]:
    """Each candidate's AUROC on the level's evidence (candidates that cannot be fitted are left out), or why there
    is none. Superclass: the pooled LOSO models, each left-out superclass against the others' validation and
    held-out images (what _loso_choice cuts on); subclass: held-out subclasses against validation images, the mean
    over the calibration folds."""
    if level == "super":
        if final.taxonomy.n_super < 3:
            return {}, "leaving a superclass out to stand for a new family needs >= 3 superclasses"
        if not loso:
            return {}, "this run has no LOSO models: train it with novelty.score auto to have them"
    elif not any(ev.val is not None and ev.held is not None for ev in folds):
        return {}, "this run has no calibration model with held-out subclasses"
    aurocs = {}
    for candidate in AUTO_CANDIDATES[level]:
        try:
            if level == "super":  # the AUROC _loso_choice would report, without its threshold search
                seen_z, novel_z, _ = _loso_confidences(f"{candidate}+{FALLBACK_SCORE}", loso, cfg)
                aurocs[candidate] = float(open_set_metrics(seen_z, novel_z)["auroc"]) if len(novel_z) else float("nan")
            else:
                aurocs[candidate] = float(np.mean([_held_out_auroc(f"{FALLBACK_SCORE}+{candidate}", cfg, ev)
                                                   for ev in folds if ev.val is not None and ev.held is not None]))
        except LevelFitError as e:
            log.info("score auto: %s cannot be fitted on this run's features (%s); not a candidate", candidate, e)
    return {k: v for k, v in aurocs.items() if np.isfinite(v)}, "no candidate could be fitted"


def _held_out_auroc(score: str, cfg: NoveltyConfig, ev: Evidence) -> float:
    """AUROC of ``score``'s subclass confidence: validation images (seen) against held-out subclasses (novel)."""
    assert ev.val is not None and ev.held is not None
    scorer = NoveltyScorer.fit(score, ev.train, ev.train_y_super, ev.train_y_sub, ev.heads, layers=cfg.layers)
    tax = ev.taxonomy.sub_to_super
    return float(open_set_metrics(scorer.confidences(ev.val, tax).sub_conf,
                                  scorer.confidences(ev.held, tax).sub_conf)["auroc"])


LEVEL_NAMES = {"super": "superclass", "sub": "subclass"}


def _calibrate_run(
    score: str, cfg: NoveltyConfig, final: Evidence, calibration: Evidence | Sequence[Evidence] | None,
    loso: Sequence[Evidence],
) -> Calibration:
    """:func:`calibrate_run` with one score throughout."""
    folds = _as_folds(calibration)
    if not folds and (cfg.tau_super is None or cfg.tau_sub is None):
        raise SupersubError(
            "this run has no calibration model (it was trained with hand-set thresholds): set both "
            "tau_super and tau_sub"
        )
    log.info("fitting the %s detectors of the final model", score)
    scorer = NoveltyScorer.fit(score, final.train, final.train_y_super, final.train_y_sub, final.heads, options=cfg.options_for(score),
                               layers=cfg.layers)
    # without a validation split (hand-set thresholds only) the training images give the score's scale
    f_val = scorer.confidences(final.val or final.train, final.taxonomy.sub_to_super)
    scale_f = {"super": _scale(f_val.super_conf), "sub": _scale(f_val.sub_conf)}
    summary: dict[str, Any] = {"score": score, "objective": cfg.objective, "transfer": cfg.transfer,
                               "super_layer": scorer.layers[0], "sub_layer": scorer.layers[1]}
    # one choice per fold; fold 0's figures and sweeps stand for all in the summary
    # the LOSO models do not depend on the fold: their choice is made once and shared by every fold
    by_loso = _loso_choice(score, loso, cfg) if loso and cfg.super_protocol == "loso" and cfg.tau_super is None else None
    per_fold = []
    for k, ev in enumerate(folds, 1):
        log.info("fitting thresholds, calibration model %d/%d", k, len(folds))
        per_fold.append(_calibrate_levels(score, cfg, ev, by_loso))
    chosen = per_fold[0][0] if per_fold else {}
    if per_fold:
        summary.update(per_fold[0][1])
        summary["calibration_folds"] = len(folds)
        if "super_outliers_set_tau" in summary:  # in how many folds the outliers made the cut stricter
            summary["super_outliers_set_tau"] = sum(bool(f[1].get("super_outliers_set_tau")) for f in per_fold)
    taus, slopes = {}, {}
    for level, hand in (("super", cfg.tau_super), ("sub", cfg.tau_sub)):
        f_conf = getattr(f_val, f"{level}_conf")
        if hand is not None or level not in chosen:
            taus[level] = float(hand) if hand is not None else 0.0
            slopes[level] = DEFAULT_Z_SLOPE / scale_f[level]
            summary[f"{level}_hand_set"] = hand is not None
            continue
        # each fold's threshold on the final model's scale, then their mean: the bagged estimate of one cut
        # (not the cut of the pooled folds, whose tail the most novel-looking held-out subclasses decide)
        on_final = [_on_final_model(c[level], f_conf, scale_f[level], fold_summary[f"{level}_scale_calibration"], cfg)
                    for c, fold_summary in per_fold]
        taus[level] = float(np.mean([tau for tau, _ in on_final]))
        slopes[level] = float(np.mean([slope for _, slope in on_final]))
        if len(folds) > 1:
            summary[f"{level}_tau_per_fold"] = [round(tau, 4) for tau, _ in on_final]
        summary[f"final_{level}_seen_kept"] = round(100 * kept_share(f_conf, taus[level]), 2)
    if cfg.tau_super is None and cfg.super_protocol in FINAL_MODEL_PROTOCOLS:  # the folds left tau_super to these
        taus["super"] = (_cut_on_bank(scorer, final, cfg, summary) if cfg.super_protocol == "bank"
                         else _cut_on_final_validation(f_val.super_conf, final, cfg))
        summary["super_protocol"] = cfg.super_protocol
        summary["final_super_seen_kept"] = round(100 * kept_share(f_val.super_conf, taus["super"]), 2)
    t_super = t_sub = 1.0
    if cfg.temperature_scaling and final.val is not None:
        t_super = fit_temperature(final.val.outputs.super_logits, final.val_y_super)
        t_sub = fit_temperature(final.val.outputs.sub_logits, final.val_y_sub)
        summary["temperatures"] = [round(t_super, 4), round(t_sub, 4)]
    thresholds = Thresholds(
        tau_super=taus["super"], tau_sub=taus["sub"], slope_super=float(slopes["super"]),
        slope_sub=float(slopes["sub"]), score=score, temperature_super=t_super, temperature_sub=t_sub,
    )
    sweeps = {level: c.sweep for level, c in chosen.items() if c.sweep is not None}
    head = OpenSetHead(scorer, thresholds, final.taxonomy.sub_to_super, final.taxonomy.n_super)
    return Calibration(head, sweeps, summary)


def _cut_on_bank(scorer: NoveltyScorer, final: Evidence, cfg: NoveltyConfig, summary: dict[str, Any]) -> float:
    """tau_super from the final kNN bank (:mod:`.bank_cut`); its kept shares go into ``summary``."""
    if not isinstance(scorer.super_detector, KNNScore):  # the config refuses other scores; a fallback lands here
        raise SupersubError(f"novelty.super_protocol: bank needs the knn superclass score, not "
                            f"{scorer.super_detector.name}")
    cut = bank_cut(scorer.super_detector, final.train_y_sub[final.train_y_super >= 0], cfg.super_recall)
    summary.update(cut.summary())
    return cut.tau


def _cut_on_final_validation(val_conf: torch.Tensor, final: Evidence, cfg: NoveltyConfig) -> float:
    """tau_super keeping ``super_recall`` of the final model's validation images. Why: a calibration model's cut
    is set where its few held-out subclasses fall and moved by the share of validation images it keeps; when it
    keeps them all (held-out subclasses far below them, as on a CNN trained from scratch) that share carries no
    distance and the final cut lands under every validation image (built-in shapes: 15% of a new family flagged
    at 96% seen; docs/results/novelty-suite.md, "From scratch: 30 epochs and a cut on the final model's
    validation images")."""
    if final.val is None:
        raise SupersubError("novelty.super_protocol: val needs the final model's validation images (data.val_fraction "
                            "above 0)")
    return transfer_threshold(cfg.super_recall, val_conf)


def _on_final_model(
    choice: _LevelChoice, final_conf: torch.Tensor, final_scale: float, calibration_scale: float, cfg: NoveltyConfig
) -> tuple[float, float]:
    """A threshold chosen on a calibration model, moved to the final model: ``(tau, slope)``."""
    if cfg.transfer == "quantile":
        return transfer_threshold(choice.share, final_conf), choice.z_slope / final_scale
    return choice.tau, choice.z_slope / calibration_scale


def _calibrate_levels(
    score: str, cfg: NoveltyConfig, ev: Evidence, by_loso: _LevelChoice | None
) -> tuple[dict[str, _LevelChoice], dict[str, Any]]:
    """Thresholds on one calibration model (LOSO models for tau_super when there are any)."""
    if ev.val is None or ev.held is None or ev.held_y_super is None:
        raise SupersubError("calibration model: needs validation and held-out subclass images to calibrate on")
    scorer = NoveltyScorer.fit(score, ev.train, ev.train_y_super, ev.train_y_sub, ev.heads, options=cfg.options_for(score),
                               layers=cfg.layers)
    tax = ev.taxonomy.sub_to_super
    c_val, c_held = scorer.confidences(ev.val, tax), scorer.confidences(ev.held, tax)
    c_novel = scorer.confidences(ev.novel, tax) if ev.novel is not None else None
    ok_super_val, ok_sub = _correct(ev.val, c_val, ev.val_y_super, ev.val_y_sub, ev.taxonomy)
    ok_super_held, _ = _correct(ev.held, c_held, ev.held_y_super, torch.zeros_like(ev.held_y_super), ev.taxonomy)
    # at the superclass level a held-out subclass is a *seen* superclass: its images belong on the seen side
    super_seen = torch.cat([c_val.super_conf, c_held.super_conf])
    ok_super = torch.cat([ok_super_val, ok_super_held])
    chosen: dict[str, _LevelChoice] = {}
    if cfg.tau_sub is None:
        chosen["sub"] = _choose(c_val.sub_conf, c_held.sub_conf, ok_sub, cfg, cfg.objective, "sub")
    protocol = _super_protocol(cfg, c_novel is not None, by_loso is not None)
    outliers_used: bool | None = None
    if cfg.tau_super is None and cfg.super_protocol not in FINAL_MODEL_PROTOCOLS:  # set in calibrate_run
        if protocol == "loso":
            assert by_loso is not None
            pooled = by_loso
            tau = transfer_threshold(pooled.share, super_seen)
            chosen["super"] = _LevelChoice(tau, pooled.share, pooled.z_slope, pooled.sweep, pooled.metrics)
        elif protocol == "outliers":
            assert c_novel is not None
            chosen["super"] = _choose(super_seen, c_novel.super_conf, ok_super, cfg, cfg.objective, "super")
        elif protocol == "auto+outliers":
            # the outliers may only make the cut stricter: a cut chosen against images unlike the user's (photos
            # against generated images) lands low and would let a new family of the user's own kind through
            assert c_novel is not None
            by_outliers = _choose(super_seen, c_novel.super_conf, ok_super, cfg, cfg.objective, "super")
            by_recall = _choose(super_seen, c_novel.super_conf, ok_super, cfg, "recall", "super")
            chosen["super"] = by_outliers if by_outliers.tau > by_recall.tau else by_recall
            outliers_used = by_outliers.tau > by_recall.tau
        else:
            chosen["super"] = _choose(super_seen, None, ok_super, cfg, "recall", "super")
        # tau_super was chosen with held-out subclasses on the seen side, but the final model's validation
        # split holds seen subclasses only: transfer the share of *those* images it keeps, like for like (the
        # share over both would put the final threshold above the novel subclasses' scores)
        chosen["super"] = replace(chosen["super"], share=kept_share(c_val.super_conf, chosen["super"].tau))
    summary: dict[str, Any] = {
        "super_protocol": protocol, "n_seen_val": len(ev.val_y_sub), "n_held_out": len(ev.held_y_super),
        "super_scale_calibration": _scale(super_seen), "sub_scale_calibration": _scale(c_val.sub_conf),
    }
    if c_novel is not None:
        summary["n_novel_calibration"] = len(c_novel.super_conf)
    if outliers_used is not None:
        summary["super_outliers_set_tau"] = outliers_used
    for level, c in chosen.items():
        summary[f"{level}_tau_calibration"] = c.tau
        if not c.separates:
            summary[f"{level}_no_separation"] = True
        summary[f"{level}_seen_kept_calibration"] = round(100 * c.share, 2)
        if c.metrics is not None:
            summary.update({f"{level}_{k}_calibration": round(v, 4) for k, v in c.metrics.items()
                            if k in ("auroc", "fpr95", "aupr")})
    if "sub" in chosen:
        summary["sub_seen_acc_at_tau"] = round(100 * float(((c_val.sub_conf >= chosen["sub"].tau) * ok_sub).mean()), 2)
        summary["sub_unseen_acc_at_tau"] = round(100 * float((c_held.sub_conf < chosen["sub"].tau).float().mean()), 2)
    if "super" in chosen:
        summary["super_held_out_kept_calibration"] = round(100 * kept_share(c_held.super_conf, chosen["super"].tau), 2)
    if "super" in chosen and c_novel is not None:
        flagged = (c_novel.super_conf < chosen["super"].tau).float().mean()
        summary["super_unseen_acc_at_tau"] = round(100 * float(flagged), 2)
    return chosen, summary


def _super_protocol(cfg: NoveltyConfig, has_outliers: bool, has_loso: bool) -> str:
    """What tau_super is calibrated on: LOSO models, held-back outliers, or a recall target."""
    if cfg.super_protocol == "loso":
        if not has_loso:
            raise SupersubError("novelty.super_protocol: loso, but the run has no LOSO models (train with it set)")
        return "loso"
    if cfg.super_protocol == "outliers":
        if not has_outliers:
            raise SupersubError("novelty.super_protocol: outliers, but the run has no held-back outlier images "
                                "(train with data.novel_data)")
        return "outliers"
    if cfg.super_protocol == "auto" and has_outliers:
        return "auto+outliers"
    return "recall"

