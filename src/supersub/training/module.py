"""The LightningModule: step logic and optimiser set-up only; the Trainer owns loops and devices."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from ..config import TrainConfig
from ..data.augment import augment_uint8, build_augmentation
from ..losses import HierarchicalLoss
from ..models.model import build_model
from ..taxonomy import Taxonomy


class HierarchicalModule(L.LightningModule):
    """Trains a :class:`HierarchicalClassifier` with CE_super + CE_sub + alpha * KL."""

    def __init__(self, config: dict[str, Any], taxonomy: dict[str, Any]) -> None:
        super().__init__()
        # plain dicts only, so Lightning checkpoints stay loadable with weights_only=True
        self.save_hyperparameters({"config": config, "taxonomy": taxonomy})
        self.cfg = TrainConfig.model_validate(config)
        self.taxonomy = Taxonomy.from_dict(taxonomy)
        self.model = build_model(self.cfg.model, self.taxonomy)
        self.loss = HierarchicalLoss(self.cfg.loss, self.taxonomy.membership())
        self.augment = build_augmentation(self.cfg.augment)
        self.val_acc_super = MulticlassAccuracy(self.taxonomy.n_super, average="micro")
        self.val_acc_sub = MulticlassAccuracy(self.taxonomy.n_sub, average="micro")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(images)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, y_super, y_sub = batch
        if self.trainer is not None and self.trainer.training:
            images = augment_uint8(self.augment, images)
        return images, y_super, y_sub

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, y_super, y_sub = batch
        super_logits, sub_logits, _ = self.model(images)
        parts = self.loss(super_logits, sub_logits, y_super, y_sub)
        bs = images.shape[0]
        self.log("train_loss", parts.total, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        self.log_dict(
            {"train_ce_super": parts.ce_super, "train_ce_sub": parts.ce_sub, "train_kl": parts.kl,
             "train_outlier": parts.outlier},
            on_step=False, on_epoch=True, batch_size=bs,
        )
        return parts.total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, y_super, y_sub = batch
        super_logits, sub_logits, _ = self.model(images)
        parts = self.loss(super_logits, sub_logits, y_super, y_sub)
        known = y_super >= 0
        self.val_acc_super(super_logits[known], y_super[known])
        self.val_acc_sub(sub_logits[known], y_sub[known])
        bs = images.shape[0]
        self.log("val_loss", parts.total, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log_dict(
            {"val_acc_super": self.val_acc_super, "val_acc_sub": self.val_acc_sub},
            prog_bar=True, on_epoch=True, batch_size=bs,
        )

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        params = [p for p in self.parameters() if p.requires_grad]
        if o.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        elif o.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=0.9, nesterov=True)
        if o.scheduler == "none":
            return opt
        if o.scheduler == "cosine":
            sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if o.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=max(1, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
