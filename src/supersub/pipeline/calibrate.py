"""A run's calibration on disk: its models' evidence collected (``train`` passes it in, ``supersub calibrate``
re-runs the saved models), the open-set head fitted from it (:mod:`supersub.novelty.head_fit`) and saved with the
threshold sweeps, and ``supersub calibrate``'s new options on the run's config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from ..config import TrainConfig, build_config, warn_ignored_options
from ..errors import SupersubError
from ..models.feature_cache import held_for_the_run
from ..novelty.head_fit import LEVEL_NAMES, Calibration, calibrate_run
from ..reporting import save_sweep
from ..run_dir import RunDir
from .evidence import Evidence, SharedRows, Stages, collect_evidence, load_stage_model
from .inputs import load_labelled, training_pool
from .stage_plan import calibration_stage_names, load_split, needs_calibration_model, needs_loso_models

log = logging.getLogger("supersub")

def save_sweeps(cal: Calibration, run_path: Path) -> None:
    """The threshold sweeps (CSV + PNG) in ``calibration/``."""
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


def calibrate_and_save(run: RunDir, cfg: TrainConfig, evidence: Mapping[str, Evidence]) -> Any:
    """Choose and save thresholds, detectors and sweeps from the stages' outputs (the folds and LOSO models are
    read one at a time: a :class:`StageEvidence` makes each when it is read)."""
    loso = Stages(evidence, sorted(name for name in evidence if name.startswith("loso-")))
    folds = Stages(evidence, calibration_stage_names(evidence))
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
    if cal.summary.get("super_protocol") == "bank":
        log.info("tau_super: kNN cut on the final bank keeps %.1f%% of its rows scored with themselves left out and "
                 "%.1f%% scored with their subclass left out (new subclasses of known superclasses)",
                 cal.summary["super_bank_seen_kept"], cal.summary["super_bank_new_subclass_kept"])
    if cal.summary.get("super_protocol") == "val":
        log.info("tau_super: keeps %.0f%% of the final model's own validation images", 100 * cfg.novelty.super_recall)
    run.save_open_set_head(cal.head)
    save_sweeps(cal, run.path)
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
    if needs_loso_models(cfg.novelty, taxonomy.n_super):
        wanted |= {name for name in stages if name.startswith("loso-")}
    evidence: dict[str, Evidence] = {}
    shared = SharedRows()  # the frozen features every stage's evidence reads, held once
    with held_for_the_run():  # ... and read from the cache once
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
