"""Fitting ``model.approach: bagging``: ``model.members`` networks of ``model.member_approach``, each on its own
resample of the stage's training images (Breiman, "Bagging Predictors", 1996), then one
:class:`~supersub.models.ensemble.BaggingEnsemble`.

Member ``k`` trains like any single model (``fit_member``: :func:`supersub.training.fit_by_approach.fit_model`, so
members may have XGBoost heads too) with seed ``1000 * seed + k`` (its own initialisation and batch order) on a sample of
``round(subsample * n)`` training images, drawn with replacement when ``model.with_replacement``. All members
early-stop on the same validation images. With ``finetune: frozen`` the backbone features come from the disk cache
the first member filled, so K members cost K heads' trainings, not K feature extractions. Checkpoints and logs
of member k go to ``checkpoints/<stage>/member-<k>/`` and ``logs/<stage>/member-<k>/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import NoveltyConfig, TrainConfig
from ..models.ensemble import BaggingEnsemble
from ..taxonomy import Taxonomy
from .lightning_fit import FitResult

log = logging.getLogger(__name__)


def member_config(cfg: TrainConfig, k: int) -> TrainConfig:
    """Member k's config: the member approach, its own seed, and no novelty settings (the ensemble is
    calibrated as a whole; only the calibration epochs, which a resumed stage checks, are kept)."""
    return cfg.model_copy(update={
        "seed": member_seed(cfg.seed, k),
        "model": cfg.model.model_copy(update={"approach": cfg.model.member_approach}),
        "novelty": NoveltyConfig(calibration_epochs=cfg.novelty.calibration_epochs),
    })


def member_seed(seed: int, k: int) -> int:
    return 1000 * seed + k


def member_indices(train_idx: Sequence[int], k: int, cfg: TrainConfig) -> list[int]:
    """Member k's training images: a seeded draw of ``round(subsample * n)`` of ``train_idx``."""
    n = len(train_idx)
    size = max(1, int(round(cfg.model.subsample * n)))
    rng = np.random.default_rng([cfg.seed, k])
    pick = np.sort(rng.choice(n, size=size, replace=cfg.model.with_replacement))
    return [int(train_idx[i]) for i in pick]


def fit_bagging(images: torch.Tensor, y_super: torch.Tensor, y_sub: torch.Tensor, train_idx: Sequence[int],
                val_idx: Sequence[int], taxonomy: Taxonomy, cfg: TrainConfig, run_path: Path, stage: str,
                epochs: int | None = None, resume: bool = False, *, fit_member: Callable[..., FitResult]) -> FitResult:
    """Train every member with ``fit_member`` (the routine a single model of its config gets,
    :func:`supersub.training.fit_by_approach.fit_model`), then assemble the ensemble (otherwise ``fit_stage``'s signature)."""
    results: list[FitResult] = []
    for k in range(cfg.model.members):
        idx = member_indices(train_idx, k, cfg)
        log.info("%s: member %d of %d: %d training images (%d distinct)", stage, k + 1, cfg.model.members,
                 len(idx), len(set(idx)))
        results.append(fit_member(images, y_super, y_sub, idx, val_idx, taxonomy, member_config(cfg, k), run_path,
                                 f"{stage}/member-{k}", epochs, resume))
    scores = [r.best_score for r in results if r.best_score is not None]
    per_epoch = [r.seconds_per_epoch for r in results if r.seconds_per_epoch is not None]
    members = [{"epochs_run": r.epochs_run, r.monitor: r.best_score, **r.details} for r in results]
    return FitResult(
        model=BaggingEnsemble.from_members([r.model for r in results]), best_checkpoint=None,
        epochs_run=max(r.epochs_run for r in results), best_score=float(np.mean(scores)) if scores else None,
        monitor=f"mean member {results[0].monitor}",
        seconds_per_epoch=float(np.mean(per_epoch)) if per_epoch else None,
        feature_seconds=sum(r.feature_seconds or 0.0 for r in results), details={"members": members},
    )
