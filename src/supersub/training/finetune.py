"""Fine-tuning regimes (seed 003): which parameters train, at which learning rate, from which epoch.

* ``frozen`` - the backbones never change: their features are computed once
  (:func:`frozen_features`, optionally cached on disk) and the heads train on those rows, so an epoch
  costs a few matrix products instead of a backbone forward and backward pass per image.
* ``full`` - every parameter at ``optim.lr``.
* ``discriminative`` - the backbones at ``optim.lr``, the new layers (necks, heads) at
  ``optim.head_lr_mult`` x ``optim.lr``.
* ``gradual`` - as discriminative, but the backbones stay frozen until epoch ``optim.unfreeze_epoch``
  (:class:`GradualUnfreeze`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning

from ..config import OptimConfig, TrainConfig
from ..models.feature_cache import extract_features
from ..models.model import HierarchicalClassifier

log = logging.getLogger(__name__)


def parameter_groups(model: HierarchicalClassifier, o: OptimConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the regime; named so the LR monitor logs each group's rate.

    ``gradual`` lists the backbone group from the start (its parameters frozen until the unfreeze epoch,
    so they get no gradient and the optimizer skips them): every LR scheduler, one-cycle included, then
    schedules that group too, and a resumed run restores the optimizer exactly.
    """
    new = list(model.new_parameters())
    backbone = [p for b in model.backbones() for p in b.parameters()]
    if o.finetune == "frozen":
        return [{"params": new, "lr": o.lr, "name": "heads"}]
    if o.finetune == "full":
        return [{"params": backbone + new, "lr": o.lr, "name": "all"}]
    return [{"params": new, "lr": o.lr * o.head_lr_mult, "name": "heads"},
            {"params": backbone, "lr": o.lr, "name": "backbone"}]


def freeze_backbones(model: HierarchicalClassifier) -> None:
    for backbone in model.backbones():
        backbone.requires_grad_(False)


class GradualUnfreeze(BaseFinetuning):
    """Backbones frozen (batch-norm included) before training; trainable from ``unfreeze_epoch`` on.

    ``>=`` rather than ``==`` so that a run resumed after the unfreeze epoch trains its backbones again.
    The backbone parameter group already exists (see :func:`parameter_groups`), so nothing is added to
    the optimizer and there is no optimizer metadata to save or restore.
    """

    def __init__(self, unfreeze_epoch: int) -> None:
        super().__init__()
        self.unfreeze_epoch = unfreeze_epoch

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.model.backbones(), train_bn=False)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        backbones = pl_module.model.backbones()
        if epoch >= self.unfreeze_epoch and not all(p.requires_grad for b in backbones for p in b.parameters()):
            self.make_trainable(backbones)
            log.info("epoch %d: backbone unfrozen", epoch)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """No parameter groups are ever added, so there are none to restore."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Stateless: the epoch alone says whether the backbone trains."""


def frozen_features(model: HierarchicalClassifier, images: torch.Tensor, cfg: TrainConfig,
                    device: torch.device) -> torch.Tensor:
    """Backbone features of every image, computed once in eval mode (the same path inference takes).

    With ``data.cache_dir`` the rows are also cached on disk, keyed by the weights and pixels, so the
    calibration and final stages (and later runs) with the same frozen backbone reuse them.
    """
    home = next(model.parameters()).device
    model.to(device)
    try:
        parts = [
            extract_features(b, images, model.prepare, batch_size=cfg.optim.batch_size, device=device,
                             cache_dir=cfg.data.cache_dir)
            for b in model.backbones()
        ]
    finally:
        model.to(home)
    return torch.cat(parts, dim=1)
