"""Calibration protocols: which models are trained on which images, and how thresholds are chosen.

A run trains up to three kinds of model on one pool of decoded images (labelled images first, then
outlier-exposure images labelled :data:`~supersub.losses.OUTLIER`, then novel-subclass images labelled
with their superclass and :data:`~supersub.losses.NOVEL_SUB`):

* ``final``: every seen class; the model that predicts.
* ``calibration`` (seed 001): a share of every superclass's subclasses held out as pseudo-novel. tau_sub
  separates its validation images from the held-out subclasses; tau_super separates validation plus
  held-out images (a held-out subclass is still a *seen superclass*) from held-back outlier images.
* ``loso-<k>`` (``novelty.super_protocol: loso``, optional because it trains one more model per
  superclass): the calibration split without superclass k, whose images then stand in for a novel
  superclass; the pooled result sets tau_super when there are no outlier images to calibrate on.

Thresholds are chosen on the calibration model and *transferred* to the final model, whose scores live on
another scale: ``quantile`` keeps the same share of seen validation images, ``absolute`` copies tau.
Every index list is saved in ``calibration/split.json`` so ``supersub calibrate`` can re-score a trained
run with another score or objective without retraining.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import NoveltyConfig, TrainConfig
from ..data.splits import holdout_subclasses, stratified_split
from ..errors import SupersubError
from ..inference import Outputs, pick_device, run_model
from ..io import write_json_atomic
from ..losses import NOVEL_SUB, OUTLIER
from ..models.ensemble import BaggingEnsemble
from ..models.model import HierarchicalClassifier
from ..run import Thresholds
from ..taxonomy import Taxonomy
from .calibrate import choose_threshold, kept_share, save_sweep, sweep, transfer_threshold
from .decide import decide
from .ood_metrics import open_set_metrics
from .probs import fit_slope
from .scores import create_detector
from .scoring import Confidences, Head, NoveltyScorer, SeenView, linear_heads, seen_view
from .temperature import fit_temperature

log = logging.getLogger("supersub")

SPLIT_FILE = "split.json"
DETECTORS_FILE = "detectors.pt"
EXTRA_CLASS = "__novel__"  # name of the explicit novel class of ``novelty.oe: class`` at both levels
DEFAULT_Z_SLOPE = 3.0  # novel-probability slope per standard deviation of seen confidences, when not fitted
UNUSED = -100  # label of a labelled image that a stage does not train on (never reaches a loss)


# ---- the image pool and the stages ---------------------------------------------------------------


@dataclass
class Pool:
    """Decoded images of a run and their labels; ``n_labelled`` labelled images come first."""

    images: torch.Tensor
    y_super: torch.Tensor
    y_sub: torch.Tensor
    n_labelled: int

    @property
    def outliers(self) -> list[int]:
        return torch.nonzero(self.y_super == OUTLIER).flatten().tolist()

    @property
    def novel_sub(self) -> list[int]:
        return torch.nonzero((self.y_super >= 0) & (self.y_sub == NOVEL_SUB)).flatten().tolist()


@dataclass
class Stage:
    """One model's share of the pool: its classes (original indices) and image index lists.

    ``held`` are images of held-out subclasses of seen superclasses, ``novel`` images of a novel
    superclass (held-back outliers, or the left-out superclass of a LOSO model).
    """

    name: str
    keep_super: list[int]
    keep_sub: list[int]
    train: list[int]
    val: list[int]
    held: list[int] = field(default_factory=list)
    novel: list[int] = field(default_factory=list)


def stage_taxonomy(taxonomy: Taxonomy, stage: Stage) -> tuple[Taxonomy, dict[int, int], dict[int, int]]:
    """The stage's taxonomy and the original -> stage index maps of both levels."""
    super_map = {k: i for i, k in enumerate(stage.keep_super)}
    sub_map = {j: i for i, j in enumerate(stage.keep_sub)}
    tax = Taxonomy(
        tuple(taxonomy.super_names[k] for k in stage.keep_super),
        tuple(taxonomy.sub_names[j] for j in stage.keep_sub),
        tuple(super_map[taxonomy.sub_to_super[j]] for j in stage.keep_sub),
        taxonomy.source,
    )
    return tax, super_map, sub_map


def with_extra_class(taxonomy: Taxonomy) -> Taxonomy:
    """The taxonomy plus an explicit novel superclass owning one novel subclass (``novelty.oe: class``).

    Training on it gives each head one more output, and its membership matrix is exactly
    ``membership(with_novel=True)``, so the KL interaction loss covers the novel class too.
    """
    return Taxonomy(
        (*taxonomy.super_names, EXTRA_CLASS), (*taxonomy.sub_names, EXTRA_CLASS),
        (*taxonomy.sub_to_super, taxonomy.n_super), taxonomy.source,
    )


def stage_labels(
    pool: Pool, taxonomy: Taxonomy, stage: Stage, oe: str
) -> tuple[Taxonomy, torch.Tensor, torch.Tensor]:
    """Training taxonomy and labels of a stage: remapped indices; exposure labels as ``oe`` needs them."""
    tax, super_map, sub_map = stage_taxonomy(taxonomy, stage)
    y_super = torch.tensor([super_map.get(int(k), UNUSED) if k >= 0 else int(k) for k in pool.y_super.tolist()])
    y_sub = torch.tensor([sub_map.get(int(j), UNUSED) if j >= 0 else int(j) for j in pool.y_sub.tolist()])
    if oe == "class":
        outlier = pool.y_super == OUTLIER
        y_super[outlier], y_sub[outlier] = tax.n_super, tax.n_sub
        tax = with_extra_class(tax)
    return tax, y_super, y_sub


def needs_calibration_model(cfg: NoveltyConfig) -> bool:
    return cfg.tau_super is None or cfg.tau_sub is None


def plan_stages(pool: Pool, taxonomy: Taxonomy, cfg: TrainConfig) -> dict[str, Stage]:
    """Every stage of a run (final, and calibration / LOSO models when thresholds are to be calibrated)."""
    labelled_sub = pool.y_sub[: pool.n_labelled].tolist()
    all_super, all_sub = list(range(taxonomy.n_super)), list(range(taxonomy.n_sub))
    train, val = stratified_split(labelled_sub, cfg.data.val_fraction, cfg.seed)
    outliers, novel_sub = pool.outliers, pool.novel_sub
    stages = {"final": Stage("final", all_super, all_sub, train + outliers + novel_sub, val)}
    if not needs_calibration_model(cfg.novelty):
        return stages
    held = holdout_subclasses(taxonomy, cfg.data.holdout_fraction, cfg.seed)
    if not held or cfg.data.val_fraction <= 0:
        raise SupersubError(
            "novelty: calibration needs data.holdout_fraction > 0, data.val_fraction > 0 and a superclass with "
            "two or more subclasses; otherwise set novelty.tau_super and novelty.tau_sub by hand"
        )
    held_set = set(held)
    keep_sub = [j for j in all_sub if j not in held_set]
    is_held = [j in held_set for j in labelled_sub]
    seen_rows = [i for i, h in enumerate(is_held) if not h]
    tr, va = stratified_split([labelled_sub[i] for i in seen_rows], cfg.data.val_fraction, cfg.seed)
    if not va:
        raise SupersubError(
            f"novelty: data.val_fraction = {cfg.data.val_fraction} leaves no validation image to calibrate on "
            "(too few images per subclass); raise it or set novelty.tau_super and novelty.tau_sub by hand"
        )
    n_cal = int(round(cfg.data.novel_calibration_fraction * len(outliers)))
    cal = Stage(
        "calibration", all_super, keep_sub, [seen_rows[i] for i in tr] + outliers[n_cal:] + novel_sub,
        [seen_rows[i] for i in va], [i for i, h in enumerate(is_held) if h], outliers[:n_cal],
    )
    stages["calibration"] = cal
    if cfg.novelty.super_protocol == "loso" and cfg.novelty.tau_super is None:
        stages.update(_loso_stages(pool, taxonomy, cal))
    return stages


def _loso_stages(pool: Pool, taxonomy: Taxonomy, cal: Stage) -> dict[str, Stage]:
    """One stage per superclass k: the calibration split without k; all labelled images of k are novel."""
    if taxonomy.n_super < 2:
        raise SupersubError("novelty.super_protocol: loso needs at least two superclasses")
    sup = pool.y_super.tolist()
    n = pool.n_labelled
    stages: dict[str, Stage] = {}
    for k in range(taxonomy.n_super):
        keep_super = [c for c in range(taxonomy.n_super) if c != k]
        keep_sub = [j for j in cal.keep_sub if taxonomy.sub_to_super[j] != k]
        others = [i for i in cal.train if sup[i] != k]  # drops k's labelled and novel-subclass images
        stages[f"loso-{k}"] = Stage(
            f"loso-{k}", keep_super, keep_sub, others, [i for i in cal.val if sup[i] != k],
            [i for i in cal.held if sup[i] != k], [i for i in range(n) if sup[i] == k],
        )
    return stages


# ---- split file ------------------------------------------------------------------------------------


def save_split(folder: Path, data: str, pool: Pool, stages: dict[str, Stage]) -> None:
    """Record the data source and every stage's index lists (what ``supersub calibrate`` needs)."""
    write_json_atomic(
        folder / SPLIT_FILE,
        {"data": data, "n_images": len(pool.y_super), "n_labelled": pool.n_labelled,
         "stages": {name: asdict(stage) for name, stage in stages.items()}},
    )


def load_split(folder: Path) -> tuple[str, int, int, dict[str, Stage]]:
    """``(data, n_images, n_labelled, stages)`` as :func:`save_split` wrote them."""
    path = folder / SPLIT_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        stages = {name: Stage(**s) for name, s in d["stages"].items()}
        return str(d["data"]), int(d["n_images"]), int(d["n_labelled"]), stages
    except FileNotFoundError:
        raise SupersubError(f"{path}: missing (the run was trained before 'supersub calibrate' existed)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SupersubError(f"{path}: unreadable split file ({type(e).__name__}: {e})") from None


# ---- evidence: the outputs calibration needs ------------------------------------------------------


@dataclass
class Evidence:
    """One model's outputs on its stage's images, restricted to its seen classes, with stage labels."""

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


def collect_evidence(
    model: HierarchicalClassifier | BaggingEnsemble, pool: Pool, taxonomy: Taxonomy, stage: Stage, accelerator: str = "auto",
    cfg: TrainConfig | None = None,
) -> Evidence:
    """Run ``model`` on the stage's labelled training, validation, held-out and novel images.

    With a cached regime (``cfg.optim.finetune`` frozen/partial) the frozen part's outputs come from the
    cache that training filled, so the backbone does not run again.
    """
    from ..training.finetune import CACHED_REGIMES, cached_outputs

    tax, y_super, y_sub = stage_labels(pool, taxonomy, stage, "uniform")
    device = pick_device(accelerator)
    everything: Outputs | None = None
    if cfg is not None and cfg.optim.finetune in CACHED_REGIMES:
        everything = cached_outputs(model, pool.images, cfg, device)

    def view(idx: Sequence[int]) -> SeenView | None:
        if not idx:
            return None
        if everything is not None:
            out = everything.select(idx)
        else:
            out = run_model(model, pool.images[list(idx)], device=device)
        return seen_view(out, tax.n_super, tax.n_sub)

    train = [i for i in stage.train if y_super[i] >= 0 and y_sub[i] >= 0]
    trained = view(train)
    if trained is None:
        raise SupersubError(f"{stage.name} model: no labelled training images")
    return Evidence(
        tax, trained, y_super[train], y_sub[train], view(stage.val), y_super[stage.val], y_sub[stage.val],
        view(stage.held), y_super[stage.held] if stage.held else None, view(stage.novel),
        linear_heads(model, tax.n_super, tax.n_sub),
    )


STAGE_MODEL_FILE = "model.pt"  # checkpoints/<stage>/model.pt: a stage's trained model, in the format of RUN/model.pt


def load_stage_model(run_path: Path, stage: str) -> HierarchicalClassifier | BaggingEnsemble:
    """A calibration or LOSO model: ``checkpoints/<stage>/model.pt`` (any approach: networks, ensembles, trees),
    else, for runs made before that file existed, its best Lightning checkpoint (``weights_only`` loading)."""
    from ..io import load_checkpoint
    from ..run import load_model_file
    from ..training.module import HierarchicalModule

    saved = run_path / "checkpoints" / stage / STAGE_MODEL_FILE
    if saved.is_file():
        return load_model_file(saved)[0]
    path = run_path / "checkpoints" / stage / "best.ckpt"
    ckpt = load_checkpoint(path)
    try:
        module = HierarchicalModule(ckpt["hyper_parameters"]["config"], ckpt["hyper_parameters"]["taxonomy"])
        module.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise SupersubError(f"{path}: not a checkpoint of this run's {stage} model ({type(e).__name__})") from None
    return module.model.eval()


# ---- choosing thresholds --------------------------------------------------------------------------


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


def _choose(
    seen: torch.Tensor, novel: torch.Tensor | None, correct: torch.Tensor, cfg: NoveltyConfig, objective: str,
    level: str,
) -> _LevelChoice:
    if level == "super":
        recall, share = cfg.super_recall, cfg.novel_share_super
    else:
        recall, share = cfg.sub_recall, cfg.sub_novel_share_within_seen_super()
    tau = choose_threshold(seen, novel, objective=objective, correct_seen=correct, target_recall=recall,
                           novel_share=share)
    metrics = open_set_metrics(seen, novel) if novel is not None and len(novel) else None
    return _LevelChoice(tau, kept_share(seen, tau), _z_slope(seen, novel, tau), sweep(seen, novel, correct), metrics)


def _loso_choice(score: str, loso: list[Evidence], cfg: NoveltyConfig) -> _LevelChoice:
    """tau_super from the pooled LOSO models, each standardised by its seen validation confidences."""
    seen_z, novel_z, correct = [], [], []
    for ev in loso:
        scorer = NoveltyScorer.fit(score, ev.train, ev.train_y_super, ev.train_y_sub, ev.heads, options=cfg.options_for(score))
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


def calibrate_run(
    score: str, cfg: NoveltyConfig, final: Evidence, calibration: Evidence | None = None,
    loso: Sequence[Evidence] = (),
) -> Calibration:
    """Choose thresholds (hand-set values in ``cfg`` win), transfer them to the final model, fit its
    detectors and temperatures."""
    if calibration is None and needs_calibration_model(cfg):
        raise SupersubError(
            "this run has no calibration model (it was trained with hand-set thresholds): set both "
            "tau_super and tau_sub"
        )
    scorer = NoveltyScorer.fit(score, final.train, final.train_y_super, final.train_y_sub, final.heads, options=cfg.options_for(score))
    # without a validation split (hand-set thresholds only) the training images give the score's scale
    f_val = scorer.confidences(final.val or final.train, final.taxonomy.sub_to_super)
    scale_f = {"super": _scale(f_val.super_conf), "sub": _scale(f_val.sub_conf)}
    chosen: dict[str, _LevelChoice] = {}
    summary: dict[str, Any] = {"score": score, "objective": cfg.objective, "transfer": cfg.transfer}
    if calibration is not None:
        chosen, cal_summary = _calibrate_levels(score, cfg, calibration, list(loso))
        summary.update(cal_summary)
    taus, slopes = {}, {}
    for level, hand in (("super", cfg.tau_super), ("sub", cfg.tau_sub)):
        f_conf = getattr(f_val, f"{level}_conf")
        if hand is not None or level not in chosen:
            taus[level] = float(hand) if hand is not None else 0.0
            slopes[level] = DEFAULT_Z_SLOPE / scale_f[level]
            summary[f"{level}_hand_set"] = hand is not None
        elif cfg.transfer == "quantile":
            taus[level] = transfer_threshold(chosen[level].share, f_conf)
            slopes[level] = chosen[level].z_slope / scale_f[level]
        else:
            taus[level] = chosen[level].tau
            slopes[level] = chosen[level].z_slope / summary[f"{level}_scale_calibration"]
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


def _calibrate_levels(
    score: str, cfg: NoveltyConfig, ev: Evidence, loso: list[Evidence]
) -> tuple[dict[str, _LevelChoice], dict[str, Any]]:
    """Thresholds on the calibration model (LOSO models for tau_super when there are any)."""
    if ev.val is None or ev.held is None or ev.held_y_super is None:
        raise SupersubError("calibration model: needs validation and held-out subclass images to calibrate on")
    scorer = NoveltyScorer.fit(score, ev.train, ev.train_y_super, ev.train_y_sub, ev.heads, options=cfg.options_for(score))
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
    protocol = _super_protocol(cfg, c_novel is not None, bool(loso))
    if cfg.tau_super is None:
        if protocol == "loso":
            pooled = _loso_choice(score, loso, cfg)
            tau = transfer_threshold(pooled.share, super_seen)
            chosen["super"] = _LevelChoice(tau, pooled.share, pooled.z_slope, pooled.sweep, pooled.metrics)
        elif protocol == "outliers":
            assert c_novel is not None
            chosen["super"] = _choose(super_seen, c_novel.super_conf, ok_super, cfg, cfg.objective, "super")
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
    for level, c in chosen.items():
        summary[f"{level}_tau_calibration"] = c.tau
        summary[f"{level}_seen_kept_calibration"] = round(100 * c.share, 2)
        if c.metrics is not None:
            summary.update({f"{level}_{k}_calibration": round(v, 4) for k, v in c.metrics.items()
                            if k in ("auroc", "fpr95", "aupr")})
    if "sub" in chosen:
        summary["sub_seen_acc_at_tau"] = round(100 * float(((c_val.sub_conf >= chosen["sub"].tau) * ok_sub).mean()), 2)
        summary["sub_unseen_acc_at_tau"] = round(100 * float((c_held.sub_conf < chosen["sub"].tau).float().mean()), 2)
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
    if cfg.super_protocol == "auto" and has_outliers:
        return "outliers"
    return "recall"


def save_calibration(cal: Calibration, run_path: Path) -> None:
    """detectors.pt, and the threshold sweeps (CSV + PNG) in ``calibration/``."""
    cal.scorer.save(run_path / DETECTORS_FILE)
    folder = run_path / "calibration"
    titles = {"sub": "subclass: seen vs held-out subclasses", "super": "superclass: seen vs novel"}
    for level, df in cal.sweeps.items():
        tau = cal.summary.get(f"{level}_tau_calibration")
        unit = " (z-scores of LOSO models)" if level == "super" and cal.summary.get("super_protocol") == "loso" else ""
        save_sweep(df, folder / f"sweep_{level}.csv", folder / f"sweep_{level}.png",
                   f"{titles[level]}, {cal.summary['score']}{unit}", tau if not unit else None)


def load_scorer(run_path: Path, score: str) -> NoveltyScorer:
    """The final model's detectors (``weights_only`` loading); ``msp`` needs none, so a run without the
    file still predicts with it."""
    from ..io import load_checkpoint

    path = run_path / DETECTORS_FILE
    if score == "msp" and not path.exists():
        return NoveltyScorer("msp", create_detector("msp"), create_detector("msp"))
    scorer = NoveltyScorer.from_state(load_checkpoint(path), str(path))
    if scorer.name != score:
        raise SupersubError(f"{path}: holds score {scorer.name!r} but thresholds.json says {score!r}")
    return scorer
