"""Seed 001's threshold calibration: thresholds chosen on a model that never saw some subclasses.

tau_sub separates validation images of seen subclasses from images of the held-out (pseudo-novel)
subclasses. tau_super separates validation images from held-back outlier-exposure images when the user
gave some (``--novel-data``); otherwise it keeps a target share (default 95%) of seen validation images,
since a held-out subclass still belongs to a known superclass and cannot stand in for a novel superclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..config import NoveltyConfig
from ..inference import Outputs
from ..run import Thresholds
from ..taxonomy import Taxonomy
from .calibrate import choose_threshold, save_sweep, sweep
from .decide import decide
from .probs import fit_slope

DEFAULT_SLOPE = 20.0


@dataclass
class Calibration:
    thresholds: Thresholds
    sweep_sub: pd.DataFrame
    sweep_super: pd.DataFrame
    summary: dict[str, Any]


def calibrate_thresholds(
    seen: Outputs,
    seen_y_super: torch.Tensor,
    seen_y_sub: torch.Tensor,
    held: Outputs,
    novel: Outputs | None,
    taxonomy: Taxonomy,
    cfg: NoveltyConfig,
) -> Calibration:
    """Pick (tau_super, tau_sub) from a calibration model's outputs; hand-set values in ``cfg`` win."""
    sub_to_super = list(taxonomy.sub_to_super)
    d_seen = decide(seen.super_probs, seen.sub_probs, sub_to_super, 0.0, 0.0)
    d_held = decide(held.super_probs, held.sub_probs, sub_to_super, 0.0, 0.0)
    d_novel = decide(novel.super_probs, novel.sub_probs, sub_to_super, 0.0, 0.0) if novel is not None else None
    correct_sub = (d_seen.sub_pred == seen_y_sub).float()
    correct_super = (d_seen.super_pred == seen_y_super).float()

    tau_super = cfg.tau_super
    slope_super = DEFAULT_SLOPE
    if tau_super is None and d_novel is not None:
        tau_super = choose_threshold(
            d_seen.super_conf, d_novel.super_conf, objective=cfg.objective, correct_seen=correct_super,
            target_recall=cfg.super_recall,
        )
    elif tau_super is None:
        tau_super = choose_threshold(d_seen.super_conf, None, objective="recall", target_recall=cfg.super_recall)
    if d_novel is not None:
        slope_super = fit_slope(d_seen.super_conf, d_novel.super_conf, tau_super)
    tau_sub = cfg.tau_sub
    if tau_sub is None:
        tau_sub = choose_threshold(
            d_seen.sub_conf, d_held.sub_conf, objective=cfg.objective, correct_seen=correct_sub,
            target_recall=cfg.super_recall,
        )
    slope_sub = fit_slope(d_seen.sub_conf, d_held.sub_conf, tau_sub) if len(d_held.sub_conf) else DEFAULT_SLOPE
    thresholds = Thresholds(
        tau_super=float(tau_super), tau_sub=float(tau_sub), slope_super=float(slope_super), slope_sub=float(slope_sub)
    )
    sweep_sub = sweep(d_seen.sub_conf, d_held.sub_conf, correct_seen=correct_sub)
    super_novel = d_novel.super_conf if d_novel is not None else d_held.super_conf
    sweep_super = sweep(d_seen.super_conf, super_novel, correct_seen=correct_super)
    kept_seen = float((d_seen.sub_conf >= tau_sub).float().mul(correct_sub).mean())
    flagged_held = float((d_held.sub_conf < tau_sub).float().mean())
    summary = {
        "n_seen_val": int(len(seen_y_sub)),
        "n_held_out": int(len(d_held.sub_conf)),
        "sub_seen_acc_at_tau": round(100 * kept_seen, 2),
        "sub_unseen_acc_at_tau": round(100 * flagged_held, 2),
        "super_seen_kept_at_tau": round(100 * float((d_seen.super_conf >= tau_super).float().mean()), 2),
    }
    if d_novel is not None:
        summary["n_novel_calibration"] = int(len(d_novel.super_conf))
        summary["super_unseen_acc_at_tau"] = round(100 * float((d_novel.super_conf < tau_super).float().mean()), 2)
    return Calibration(thresholds, sweep_sub, sweep_super, summary)


def save_calibration(cal: Calibration, folder: Path) -> None:
    t = cal.thresholds
    save_sweep(cal.sweep_sub, folder / "sweep_sub.csv", folder / "sweep_sub.png",
               f"subclass: seen vs held-out subclasses (tau_sub = {t.tau_sub:.3f})", t.tau_sub)
    save_sweep(cal.sweep_super, folder / "sweep_super.csv", folder / "sweep_super.png",
               f"superclass: seen validation vs novel (tau_super = {t.tau_super:.3f})", t.tau_super)
