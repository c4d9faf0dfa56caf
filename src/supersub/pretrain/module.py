"""The pretraining LightningModule: class CE, plus seed 002's (1-B) CE + B BCE when binary heads are on.

With ``optim.finetune=partial`` its batches are the frozen trunk's cached outputs, not images (as in ``train``):
only the backbone's last ``optim.trainable_stages`` stages and final conv train, at ``lr / head_lr_mult``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from ..config import TrainConfig
from ..data.augment import augment_uint8, build_augmentation
from ..data.module import epoch_seed
from ..training.module import configure_optimizer
from .partition_network import PretrainNet
from .partitions import binary_partition_loss, random_partitions


class PretrainModule(L.LightningModule):
    """Trains a :class:`PretrainNet` on ``classes``; the partitions are a buffer (saved, resumed, fixed by seed)."""

    def __init__(self, config: dict[str, Any], classes: list[str], load_weights: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config, "classes": classes})  # plain data: weights_only loads
        self.cfg = TrainConfig.model_validate(config)
        p = self.cfg.pretrain
        k = p.partitions if p.binary_partition > 0 else 0
        self.net = PretrainNet(self.cfg.model, len(classes), k, load_weights)
        self.on_cache = self.cfg.optim.finetune == "partial"
        self.split = self.net.stage_split(self.cfg.optim.trainable_stages) if self.on_cache else None
        if self.split is not None:
            self.split.trunk.requires_grad_(False)
        self.register_buffer("partitions", random_partitions(len(classes), k, self.cfg.seed) if k else None)
        self.augment = build_augmentation(self.cfg.augment, self.cfg.data.image_size)
        self.val_acc = MulticlassAccuracy(len(classes), average="micro")
        self._seeded_epoch: int | None = None

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Images, or with finetune=partial the trunk's cached outputs (float16 on disk, float here)."""
        if self.split is None:
            return self.net(inputs)
        return self.net.heads(self.split.top(inputs.float()))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, y, _ = batch
        if self.trainer is not None and self.trainer.training and not self.on_cache:
            if self._seeded_epoch != self.current_epoch:  # as HierarchicalModule: resumable random draws
                L.seed_everything(epoch_seed(self.cfg.seed, self.current_epoch, self.global_rank), verbose=False)
                self._seeded_epoch = self.current_epoch
            images = augment_uint8(self.augment, images)
        return images, y

    def _losses(self, images: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, binary, _ = self(images)
        total, ce, bce = binary_partition_loss(logits, binary, y, self.partitions, self.cfg.pretrain.binary_partition,
                                               self.cfg.loss.label_smoothing)
        return total, ce, bce, logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, y = batch
        total, ce, bce, _ = self._losses(images, y)
        self.log_dict({"train_loss": total, "train_ce": ce, "train_bce": bce}, prog_bar=True, on_step=False,
                      on_epoch=True, batch_size=len(y), sync_dist=True)
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, y = batch
        total, ce, bce, logits = self._losses(images, y)
        self.val_acc(logits, y)
        # early stopping and the best checkpoint follow the class CE: the source task being transferred
        self.log_dict({"val_loss": ce, "val_total": total, "val_bce": bce}, prog_bar=True, on_epoch=True,
                      batch_size=len(y), sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True, on_epoch=True, batch_size=len(y))

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        new = self.net.new_parameters()
        if o.finetune == "discriminative":  # seed 002's fine-tuning: transferred layers slower than new ones
            groups = [{"params": new, "lr": o.lr * o.head_lr_mult, "name": "heads"},
                      {"params": list(self.net.backbone.parameters()), "lr": o.lr, "name": "backbone"}]
        elif self.split is not None:  # the rates of train's partial regime (supersub.training.finetune)
            groups = [{"params": new, "lr": o.lr, "name": "heads"},
                      {"params": list(self.split.top.parameters()), "lr": o.lr / o.head_lr_mult, "name": "backbone-top"}]
        else:
            groups = [{"params": list(self.net.parameters()), "lr": o.lr, "name": "all"}]
        return configure_optimizer(groups, o, self.trainer)
