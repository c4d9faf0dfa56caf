"""The LightningModule: step logic and optimiser set-up only; the Trainer owns loops and devices."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from ..config import OptimConfig, TrainConfig
from ..data.augment import BatchMixer, augment_uint8, build_augmentation
from ..data.module import epoch_seed
from ..models.hierarchical import build_model
from ..taxonomy import Taxonomy
from .finetune import CACHED_REGIMES, forward_cached, freeze_backbones, parameter_groups
from .objective import build_loss, mixed_loss
from .ptr import PseudoTaskRegressor, ptr_active

PTR_SEED_OFFSET = 7919  # the pseudo task's targets: a stream of their own, apart from the global RNG's


class HierarchicalModule(L.LightningModule):
    """Trains a :class:`HierarchicalClassifier` with its approach's objective (see :mod:`.objective`).

    With ``optim.finetune=frozen`` batches hold cached backbone features instead of images, with ``partial``
    cached trunk activations (see :func:`.finetune.cached_rows`), one slice per augmentation view: a training
    row shows a random view, validation the first (unaugmented) one, and only the layers after the cached
    part run. ``load_weights`` reads the configured starting weights; it is off when a checkpoint is loaded next.
    """

    def __init__(self, config: dict[str, Any], taxonomy: dict[str, Any], load_weights: bool = False) -> None:
        super().__init__()
        # plain dicts only, so Lightning checkpoints stay loadable with weights_only=True
        self.save_hyperparameters({"config": config, "taxonomy": taxonomy})
        self.cfg = TrainConfig.model_validate(config)
        self.taxonomy = Taxonomy.from_dict(taxonomy)
        self.model = build_model(self.cfg.model, self.taxonomy, load_weights)
        self.on_cache = self.cfg.optim.finetune in CACHED_REGIMES
        self.splits = None
        if self.on_cache:
            freeze_backbones(self.model)
        if self.cfg.optim.finetune == "partial":
            self.splits = self.model.stage_splits(self.cfg.optim.trainable_stages)
            for split in self.splits:
                split.top.requires_grad_(True)
        self.loss = build_loss(self.cfg, self.taxonomy)
        self.augment = build_augmentation(self.cfg.augment, self.cfg.data.image_size)
        self.mixer = BatchMixer(self.cfg.augment)
        # at least 2 classes: a leave-one-superclass-out model of a 2-superclass taxonomy keeps only one
        # (torchmetrics refuses num_classes=1); updated with argmax labels, which any class count accepts
        self.val_acc_super = MulticlassAccuracy(max(2, self.taxonomy.n_super), average="micro")
        self.val_acc_sub = MulticlassAccuracy(max(2, self.taxonomy.n_sub), average="micro")
        self._seeded_epoch: int | None = None
        # seed 004's pseudo task sits on the pooled backbone outputs; it is not part of the saved model
        self.ptr = PseudoTaskRegressor(self.model.num_backbone_features, self.cfg.ptr) if self.cfg.ptr.enabled else None

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return forward_cached(self.model, inputs, self.splits) if self.on_cache else self.model(inputs)

    def representation(self, inputs: torch.Tensor) -> torch.Tensor:
        """The pooled backbone outputs (both backbones side by side for two-model approaches): what PtR regresses."""
        if not self.on_cache:
            return self.model.backbone_features(inputs)
        rows = inputs.float()
        return rows if self.splits is None else torch.cat([s.top(rows) for s in self.splits], dim=1)

    def _reseed_at_epoch_start(self) -> None:
        """Augmentation, mixing and dropout draw from the global RNGs: reseed them from (seed, epoch, rank)
        at an epoch's first batch, so a run resumed from its last checkpoint continues exactly as the
        uninterrupted run would have (the batch order is seeded the same way, see EpochShuffleSampler)."""
        if self._seeded_epoch != self.current_epoch:
            seed = epoch_seed(self.cfg.seed, self.current_epoch, self.global_rank)
            L.seed_everything(seed, verbose=False)
            if self.ptr is not None:
                self.ptr.reseed(seed + PTR_SEED_OFFSET)
            self._seeded_epoch = self.current_epoch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        inputs, y_super, y_sub = batch
        training = self.trainer is not None and self.trainer.training
        if training:
            self._reseed_at_epoch_start()  # this hook runs before every other per-batch step of training
            if not self.on_cache:
                inputs = augment_uint8(self.augment, inputs)
        if self.on_cache:  # (B, V, ...) views: a random one per row in training, the original otherwise
            view = torch.randint(inputs.shape[1], (inputs.shape[0],), device=inputs.device) if training else 0
            inputs = inputs[torch.arange(inputs.shape[0], device=inputs.device), view] if training else inputs[:, 0]
        return inputs, y_super, y_sub

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, y_super, y_sub = batch
        mix = None if self.on_cache else self.mixer(inputs)
        rep = self.representation(inputs if mix is None else mix.images)
        super_logits, sub_logits, _ = self.model.head_forward(rep)
        parts = mixed_loss(self.loss, super_logits, sub_logits, y_super, y_sub, mix)
        bs = inputs.shape[0]
        self.log("train_loss", parts.total, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs,
                 sync_dist=True)
        self.log_dict(
            {"train_ce_super": parts.ce_super, "train_ce_sub": parts.ce_sub, "train_kl": parts.kl,
             "train_outlier": parts.outlier},
            on_step=False, on_epoch=True, batch_size=bs, sync_dist=True,
        )
        if self.ptr is not None:
            return parts.total + self._ptr_term(parts.total, rep, bs)
        return parts.total

    def _ptr_term(self, ce: torch.Tensor, rep: torch.Tensor, bs: int) -> torch.Tensor:
        """Seed 004: ``w * PtR`` once the switch-on rule holds (else 0); w and both gradient norms are logged."""
        assert self.ptr is not None
        p = self.cfg.ptr
        on = ptr_active(self.current_epoch, float(ce.detach()), p.warmup_epochs, p.ce_below) and rep.requires_grad
        self.log("ptr_on", float(on), on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        if not on:
            return ce.new_zeros(())
        step = self.ptr.step(ce, rep)
        self.log_dict({"ptr_w": step.weight, "ptr_grad_ce": step.grad_ce, "ptr_grad_ptr": step.grad_ptr},
                      on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return step.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        inputs, y_super, y_sub = batch
        super_logits, sub_logits, _ = self(inputs)
        parts = self.loss(super_logits, sub_logits, y_super, y_sub)
        known_super = y_super >= 0
        known_sub = known_super & (y_sub >= 0)
        self.val_acc_super(super_logits[known_super].argmax(dim=1), y_super[known_super])
        self.val_acc_sub(sub_logits[known_sub].argmax(dim=1), y_sub[known_sub])
        bs = inputs.shape[0]
        self.log("val_loss", parts.total, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        self.log_dict(
            {"val_acc_super": self.val_acc_super, "val_acc_sub": self.val_acc_sub},
            prog_bar=True, on_epoch=True, batch_size=bs,
        )

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Two-model approaches clip each level's network on its own, so clipping does not couple them."""
        if gradient_clip_val is None or self.model.sub_backbone is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        for params in self.model.level_parameters():
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        groups = parameter_groups(self.model, o)
        if self.ptr is not None:  # the pseudo task's regressor is a new layer: the rate of the new layers
            groups.append({"params": list(self.ptr.parameters()), "lr": groups[0]["lr"], "name": "ptr"})
        return configure_optimizer(groups, o, self.trainer)


def configure_optimizer(groups: list[dict[str, Any]], o: OptimConfig, trainer: L.Trainer) -> Any:
    """The configured optimizer over ``groups`` and its LR schedule, in Lightning's return format."""
    if o.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    elif o.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(groups, lr=o.lr, weight_decay=o.weight_decay, momentum=0.9, nesterov=True)
    if o.scheduler == "none":
        return opt
    if o.scheduler == "cosine":
        sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(trainer.max_epochs or o.epochs)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    if o.scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    total = int(trainer.estimated_stepping_batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=max(1, total))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
