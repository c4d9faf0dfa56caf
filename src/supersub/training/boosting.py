"""Fitting ``model.head: xgboost``: backbone features once (cached, as for ``finetune: frozen``), then one
XGBoost booster per level on them, early-stopped on the validation rows.

Every cached view of a training image (original and, with ``augment.cached_hflip``, mirrored) is one training
row, the trees' counterpart of a network seeing a random view per epoch; validation rows use the original view.
Rows without a label at a level (outlier-exposure images under ``novelty.oe: uniform``, novel-subclass images at
the subclass level) are left out there: trees have no uniform-target loss. Seeded by ``seed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from ..config import TrainConfig
from ..models.boosted import XGBoostHead
from ..models.hierarchical import HierarchicalClassifier, build_model
from ..taxonomy import Taxonomy
from .distributed import local_device
from .finetune import cached_rows, freeze_backbones
from .lightning_fit import FitResult

log = logging.getLogger(__name__)


def fit_boosted(images: torch.Tensor, y_super: torch.Tensor, y_sub: torch.Tensor, train_idx: Sequence[int],
                val_idx: Sequence[int], taxonomy: Taxonomy, cfg: TrainConfig, run_path: Path, stage: str,
                epochs: int | None = None, resume: bool = False) -> FitResult:
    """Train the trees of every XGBoost head of the model ``cfg`` describes (same signature as ``fit_stage``;
    ``epochs`` and ``resume`` do not apply: boosting stops on validation and takes seconds to redo)."""
    L.seed_everything(cfg.seed, verbose=False)
    model = build_model(cfg.model, taxonomy, load_weights=True)
    assert isinstance(model, HierarchicalClassifier)
    freeze_backbones(model)
    model.eval()
    views = ("identity", "hflip") if cfg.augment.cached_hflip else ("identity",)
    start = time.perf_counter()
    rows = cached_rows(model, images, cfg, local_device(cfg.trainer.accelerator), views)
    feature_seconds = time.perf_counter() - start
    train, val = torch.as_tensor(list(train_idx), dtype=torch.long), torch.as_tensor(list(val_idx), dtype=torch.long)
    with torch.no_grad():
        train_inputs = [model.head_inputs(rows[train, v].float()) for v in range(rows.shape[1])]
        val_inputs = model.head_inputs(rows[val, 0].float()) if len(val) else None
    details: dict[str, dict[str, float | int | None]] = {}
    for level, side, labels in (("super", 0, y_super), ("sub", 1, y_sub)):
        head = model.super_head if level == "super" else model.sub_head
        if not isinstance(head, XGBoostHead):
            continue  # sub-only derives its superclass scores
        keep = labels[train] >= 0
        x = torch.cat([inputs[side][keep] for inputs in train_inputs])
        y = labels[train][keep].repeat(len(train_inputs))
        x_val = y_val = None
        if val_inputs is not None:
            keep_val = labels[val] >= 0
            x_val, y_val = val_inputs[side][keep_val], labels[val][keep_val]
        t0 = time.perf_counter()
        details[level] = {**head.fit(x, y, x_val, y_val, cfg.boost, cfg.seed), "rows": len(y),
                          "seconds": round(time.perf_counter() - t0, 1)}
        log.info("%s: xgboost %s head: %s", stage, level, details[level])
    losses = [d["val_mlogloss"] for d in details.values() if d["val_mlogloss"] is not None]
    rounds = [int(d["rounds"] or 0) for d in details.values()]
    return FitResult(model=model.cpu().eval(), best_checkpoint=None, epochs_run=max(rounds, default=0),
                     best_score=sum(losses) if losses else None, monitor="val_mlogloss",
                     feature_seconds=feature_seconds, details={"trees": details})
