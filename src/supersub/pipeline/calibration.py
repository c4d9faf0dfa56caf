"""Choosing a run's thresholds from its models' evidence, and saving them with the fitted detectors.

Thresholds are chosen on the calibration model and *transferred* to the final model, whose scores live on
another scale: ``quantile`` keeps the same share of seen validation images, ``absolute`` copies tau. The
threshold search, slope fit and temperature are the maths of :mod:`supersub.novelty`; this module decides
which images stand for seen and novel at each level and where the results go.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import NoveltyConfig, TrainConfig, build_config, warn_ignored_options
from ..errors import SupersubError
from ..io import load_checkpoint
from ..novelty.calibrate import choose_threshold, kept_share, sweep, transfer_threshold
from ..novelty.decide import decide
from ..novelty.ood_metrics import open_set_metrics
from ..novelty.probs import fit_slope
from ..novelty.scores import create_detector
from ..novelty.scoring import FALLBACK_SCORE, Confidences, LevelFitError, NoveltyScorer, SeenView, with_fallback
from ..novelty.temperature import fit_temperature
from ..reporting import save_sweep
from ..run import RunDir, Thresholds
from ..threads import dense_threads
from ..taxonomy import Taxonomy
from .evidence import Evidence, SharedRows, collect_evidence, load_stage_model
from .inputs import load_labelled, training_pool
from .stages import calibration_stage_names, load_split, needs_calibration_model

log = logging.getLogger("supersub")

DETECTORS_FILE = "detectors.pt"
MIN_SEPARATION = 0.5  # calibration AUROC at or below which (chance, or inverted) a level's cut is the recall target
DEFAULT_Z_SLOPE = 3.0  # novel-probability slope per standard deviation of seen confidences, when not fitted


@dataclass
class Calibration:
    """The final model's thresholds and detectors, the sweeps behind them and a summary for metrics.json."""

    thresholds: Thresholds
    scorer: NoveltyScorer
    sweeps: dict[str, pd.DataFrame]
    summary: dict[str, Any]


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
    separates: bool = True  # False: the score could not tell novel from seen here (AUROC <= MIN_SEPARATION)


def _choose(
    seen: torch.Tensor, novel: torch.Tensor | None, correct: torch.Tensor, cfg: NoveltyConfig, objective: str,
    level: str,
) -> _LevelChoice:
    if level == "super":
        recall, share = cfg.super_recall, cfg.novel_share_super
    else:
        recall, share = cfg.sub_recall, cfg.sub_novel_share_within_seen_super()
    metrics = open_set_metrics(seen, novel) if novel is not None and len(novel) else None
    separates = metrics is None or metrics["auroc"] > MIN_SEPARATION
    tau = choose_threshold(seen, novel if separates else None, objective=objective if separates else "recall",
                           correct_seen=correct, target_recall=recall, novel_share=share)
    # a score that cannot tell the (pseudo-)novel images from seen ones gives no trade-off to optimise: keep the
    # recall target's share of seen images instead of a cut the noise placed (it flagged 93% of seen images once)
    return _LevelChoice(tau, kept_share(seen, tau), _z_slope(seen, novel, tau), sweep(seen, novel, correct), metrics,
                        separates)


def _loso_choice(score: str, loso: list[Evidence], cfg: NoveltyConfig) -> _LevelChoice:
    """tau_super from the pooled LOSO models, each standardised by its seen validation confidences."""
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
    return _choose(torch.cat(seen_z), torch.cat(novel_z), torch.cat(correct), cfg, cfg.objective, "super")


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
                        "(recorded as score %s in thresholds.json)", LEVEL_NAMES[e.level], e.detector, e,
                        LEVEL_NAMES[e.level], FALLBACK_SCORE, score)
    if reasons:
        cal.summary["score_requested"] = requested
        cal.summary.update({f"{level}_score_fallback": reason for level, reason in reasons.items()})
    return cal


LEVEL_NAMES = {"super": "superclass", "sub": "subclass"}


def _calibrate_run(
    score: str, cfg: NoveltyConfig, final: Evidence, calibration: Evidence | Sequence[Evidence] | None,
    loso: Sequence[Evidence],
) -> Calibration:
    """:func:`calibrate_run` with one score throughout."""
    folds = [calibration] if isinstance(calibration, Evidence) else list(calibration or ())
    if not folds and needs_calibration_model(cfg):
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
    by_loso = _loso_choice(score, list(loso), cfg) if loso and cfg.super_protocol == "loso" and cfg.tau_super is None else None
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
    return Calibration(thresholds, scorer, sweeps, summary)


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
    if cfg.tau_super is None:
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


def save_calibration(cal: Calibration, run_path: Path) -> None:
    """detectors.pt, and the threshold sweeps (CSV + PNG) in ``calibration/``."""
    cal.scorer.save(run_path / DETECTORS_FILE)
    folder = run_path / "calibration"
    titles = {"sub": "subclass: seen vs held-out subclasses", "super": "superclass: seen vs novel"}
    folds = cal.summary.get("calibration_folds", 1)
    for level, df in cal.sweeps.items():
        tau = cal.summary.get(f"{level}_tau_calibration")
        unit = " (z-scores of LOSO models)" if level == "super" and cal.summary.get("super_protocol") == "loso" else ""
        title = titles[level] if df["unseen_acc"].notna().any() else f"{titles[level].split(':')[0]}: seen images only"
        # the sweep is calibration model 1's, on its own scale: its cut, not the run's (the folds' mean, moved to
        # the final model's scale), is what belongs on it
        where = f" (calibration model 1 of {folds})" if folds > 1 else ""
        save_sweep(df, folder / f"sweep_{level}.csv", folder / f"sweep_{level}.png",
                   f"{title}, {cal.summary['score']}{unit}{where}", tau if not unit else None,
                   "its cut" if folds > 1 else "tau")


def load_scorer(run_path: Path, score: str) -> NoveltyScorer:
    """The final model's detectors (``weights_only`` loading); ``msp`` needs none, so a run without the
    file still predicts with it."""
    path = run_path / DETECTORS_FILE
    if score == "msp" and not path.exists():
        return NoveltyScorer("msp", create_detector("msp"), create_detector("msp"))
    scorer = NoveltyScorer.from_state(load_checkpoint(path), str(path))
    if scorer.name != score:
        raise SupersubError(f"{path}: holds score {scorer.name!r} but thresholds.json says {score!r}")
    return scorer


def calibrate_and_save(run: RunDir, cfg: TrainConfig, evidence: dict[str, Evidence]) -> Any:
    """Choose and save thresholds, detectors and sweeps from the stages' outputs."""
    loso = [ev for name, ev in sorted(evidence.items()) if name.startswith("loso-")]
    folds = [evidence[name] for name in calibration_stage_names(evidence)]
    cal = calibrate_run(cfg.novelty.score, cfg.novelty, evidence["final"], folds, loso)
    for level, name in LEVEL_NAMES.items():
        if cal.summary.get(f"{level}_no_separation"):
            log.warning("%s score %s does not separate novel from seen images on the calibration evidence (AUROC "
                        "%.2f): tau_%s keeps %.0f%% of seen images instead", name, cal.summary["score"],
                        cal.summary.get(f"{level}_auroc_calibration", float("nan")), level,
                        100 * getattr(cfg.novelty, f"{level}_recall"))
    if cal.summary.get("super_protocol") == "auto+outliers":
        used, n = cal.summary.get("super_outliers_set_tau", 0), cal.summary.get("calibration_folds", 1)
        log.info("tau_super: the held-back outlier images made the cut stricter than the %.0f%% recall rule in %d of "
                 "%d calibration folds; elsewhere they would have loosened it (outliers unlike your images), so the "
                 "recall cut was kept", 100 * cfg.novelty.super_recall, used, n)
    run.save_thresholds(cal.thresholds)
    save_calibration(cal, run.path)
    t = cal.thresholds
    log.info("%s thresholds (features: %s / %s): tau_super=%.4g tau_sub=%.4g", t.score, *cal.scorer.layers,
             t.tau_super, t.tau_sub)
    return cal


def calibration_evidence(run_dir: str | Path, cfg: TrainConfig | None = None) -> dict[str, Evidence]:
    """The outputs ``calibrate`` works from: every saved model of the run on its stage's images.

    Re-reads the training data recorded in ``calibration/split.json`` and re-runs the final, calibration
    and LOSO models (no training). Compute it once to try several scores (``calibrate(..., evidence=)``).
    """
    run = RunDir.open(run_dir)
    cfg = cfg or run.load_config()
    taxonomy = run.load_taxonomy()
    data, n_images, n_labelled, stages = load_split(run.calibration_dir)
    pool = training_pool(load_labelled(data, cfg), cfg, {})
    if (len(pool.y_super), pool.n_labelled) != (n_images, n_labelled):
        raise SupersubError(
            f"{data}: now gives {pool.n_labelled} labelled + {len(pool.y_super) - pool.n_labelled} exposure images, "
            f"but the run was trained on {n_labelled} + {n_images - n_labelled}; the data changed since training"
        )
    wanted = {"final"} | (set(calibration_stage_names(stages)) if needs_calibration_model(cfg.novelty) else set())
    if cfg.novelty.super_protocol == "loso" and cfg.novelty.tau_super is None:
        wanted |= {name for name in stages if name.startswith("loso-")}
    evidence: dict[str, Evidence] = {}
    shared = SharedRows()  # the frozen features every stage's evidence reads, held once
    for name, stage in stages.items():
        if name not in wanted:
            continue
        model = run.load_model()[0] if name == "final" else load_stage_model(run.path, name)
        evidence[name] = collect_evidence(model, pool, taxonomy, stage, cfg.trainer.accelerator, cfg, shared)
    return evidence


def recalibrate(
    run_dir: str | Path, *, evidence: dict[str, Evidence] | None = None, **novelty: Any
) -> dict[str, Any]:
    """:func:`supersub.api.calibrate`: new novelty options on the run's config, thresholds re-chosen and saved
    (also in metrics.json)."""
    trained = sorted({"calibration_folds", "calibration_epochs"} & set(novelty))
    if trained:
        raise SupersubError(f"calibrate: novelty.{trained[0]} is fixed when the models are trained; train again to change it")
    run = RunDir.open(run_dir)
    cfg = run.load_config()
    current = {**cfg.novelty.model_dump(), "tau_super": None, "tau_sub": None}
    if novelty.get("score", cfg.novelty.score) != cfg.novelty.score:
        current["score_options"] = {}  # the old score's detector options do not apply to the new one
    cfg = build_config({**cfg.model_dump(mode="json"), "novelty": {**current, **novelty}}, "calibrate")
    warn_ignored_options(cfg, {f"novelty.{key}" for key in novelty})
    evidence = evidence if evidence is not None else calibration_evidence(run.path, cfg)
    cal = calibrate_and_save(run, cfg, evidence)
    run.save_config(cfg)
    metrics = json.loads(run.metrics_file.read_text(encoding="utf-8")) if run.metrics_file.is_file() else {}
    metrics["novelty"] = cal.summary
    metrics["thresholds"] = cal.thresholds.to_dict()
    run.save_metrics(metrics)
    return {**cal.summary, "thresholds": cal.thresholds.to_dict()}
