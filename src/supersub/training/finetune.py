"""Fine-tuning regimes (seed 003): which parameters train, at which learning rate, from which epoch.

* ``frozen`` - the backbones never change: their features are computed once
  (:func:`cached_rows`, cached on disk) and the heads train on those rows, so an epoch
  costs a few matrix products instead of a backbone forward and backward pass per image.
* ``partial`` - the stem and early stages frozen with their activations computed once (and cached on
  disk), the last ``optim.trainable_stages`` stages plus the backbone's final conv trained at
  ``optim.lr / optim.head_lr_mult`` and the new layers at ``optim.lr`` (:mod:`supersub.models.trunk_split`).
* ``full`` - every parameter at ``optim.lr``.
* ``discriminative`` - the backbones at ``optim.lr``, the new layers (necks, heads) at
  ``optim.head_lr_mult`` x ``optim.lr``.
* ``gradual`` - as discriminative, but the backbones stay frozen until epoch ``optim.unfreeze_epoch``
  (:class:`GradualUnfreeze`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from timm.optim import param_groups_weight_decay

from ..config import OptimConfig, TrainConfig
from .. import inference
from ..inference import Outputs
from ..data.mapped import release
from ..models.feature_cache import default_cache_dir, extract_features
from ..models.ensemble import BaggingEnsemble
from ..models.hierarchical import HierarchicalClassifier
from ..models.trunk_split import StageSplit

CACHED_REGIMES = ("frozen", "partial")  # regimes whose batches hold cached backbone outputs, not images

log = logging.getLogger(__name__)


def parameter_groups(model: HierarchicalClassifier, o: OptimConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the regime, each split into a decayed and a ``-no-decay`` half.

    Norms, biases and scalars (the cosine head's scale) get no weight decay, as timm's
    ``param_groups_weight_decay`` decides. Groups are named so the LR monitor logs each group's rate.
    ``gradual`` lists the backbone group from the start (its parameters frozen until the unfreeze epoch,
    so they get no gradient and the optimizer skips them): every LR scheduler, one-cycle included, then
    schedules that group too, and a resumed run restores the optimizer exactly.
    """
    exempt = _exempt_from_decay(model)
    return [half for group in _regime_groups(model, o) for half in _split_decay(group, exempt)]


def _exempt_from_decay(model: HierarchicalClassifier) -> set[int]:
    """Ids of the parameters timm's ``param_groups_weight_decay`` puts in its no-decay group.

    timm skips frozen parameters, and a regime's backbone may be frozen when the optimizer is built
    (gradual), so every parameter is asked about as if it trained.
    """
    trains = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.requires_grad_(True)
        groups = param_groups_weight_decay(model, weight_decay=1.0)
    finally:
        for p, flag in trains:
            p.requires_grad_(flag)
    return {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}


def _split_decay(group: dict[str, Any], exempt: set[int]) -> list[dict[str, Any]]:
    decayed = [p for p in group["params"] if id(p) not in exempt]
    free = [p for p in group["params"] if id(p) in exempt]
    halves = [{**group, "params": decayed}, {**group, "params": free, "weight_decay": 0.0,
                                             "name": f"{group['name']}-no-decay"}]
    return [h for h in halves if h["params"]]


def _regime_groups(model: HierarchicalClassifier, o: OptimConfig) -> list[dict[str, Any]]:
    """The regime's parameter groups and learning rates (see the module docstring)."""
    new = list(model.new_parameters())
    backbone = [p for b in model.backbones() for p in b.parameters()]
    if o.finetune == "frozen":
        return [{"params": new, "lr": o.lr, "name": "heads"}]
    if o.finetune == "full":
        return [{"params": backbone + new, "lr": o.lr, "name": "all"}]
    if o.finetune == "partial":
        top = [p for s in model.stage_splits(o.trainable_stages) for p in s.top.parameters()]
        return [{"params": new, "lr": o.lr, "name": "heads"},
                {"params": top, "lr": o.lr / o.head_lr_mult, "name": "backbone-top"}]
    return [{"params": new, "lr": o.lr * o.head_lr_mult, "name": "heads"},
            {"params": backbone, "lr": o.lr, "name": "backbone"}]


def freeze_backbones(model: HierarchicalClassifier) -> None:
    for backbone in model.backbones():
        backbone.requires_grad_(False)


class GradualUnfreeze(BaseFinetuning):
    """Backbones frozen (batch-norm included) before training; trainable from ``unfreeze_epoch`` on.

    Hand-written on Lightning's ``BaseFinetuning`` rather than its ``BackboneFinetuning``, which adds the
    backbone's parameter group at the unfreeze epoch: one-cycle (the default scheduler) cannot schedule a
    group added mid-run, and BackboneFinetuning wants a single ``pl_module.backbone`` (two-model approaches
    have two).

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


def cache_dir(cfg: TrainConfig) -> Path | None:
    """Where frozen outputs are cached: ``data.cache_dir``, else the user cache (``data.feature_cache`` off: nowhere)."""
    if not cfg.data.feature_cache:
        return None
    return cfg.data.cache_dir or default_cache_dir()


def cached_rows(model: HierarchicalClassifier | BaggingEnsemble, images: torch.Tensor, cfg: TrainConfig, device: torch.device,
                views: Sequence[str] = ("identity",)) -> torch.Tensor:
    """What a cached regime trains on, one slice per augmentation view: ``(N, V, ...)``.

    ``frozen``: the backbone features (both backbones side by side for two-model approaches, each distinct
    backbone of an ensemble side by side);
    ``partial``: the trunk activations (float16, they are large), shared by both tops. Each view is one
    cache entry, keyed by the weights and the (mirrored) pixels, so the calibration and final stages,
    ``calibrate`` and later runs with the same frozen network reuse them.
    """
    home = next(model.parameters()).device
    model.to(device)
    try:
        per_view = [_rows_of_view(model, _view(images, v), cfg, device) for v in views]
    finally:
        model.to(home)
    # one view: a view of the rows, not a second copy of the feature matrix
    return per_view[0].unsqueeze(1) if len(per_view) == 1 else torch.stack(per_view, dim=1)


def _view(images: torch.Tensor, view: str) -> torch.Tensor:
    if view == "identity":
        return images
    if view == "hflip":
        return images.flip(-1)
    raise ValueError(f"unknown cached view {view!r}")


# images per forward pass of a frozen network on a CPU. Why not the training batch: on 2 cores, predicting 3,000
# photos with the default recipe (Lite0 at 224 px) peaked at 2,239 MiB with batch 64, 1,627 with 32 and 1,320 with
# 16, and took 43.9 / 39.3 / 38.7 s (the activations of a big batch only cost memory on a CPU); same CSV bytes.
CPU_EXTRACT_BATCH = 16


def extraction_batch(cfg: TrainConfig, device: torch.device) -> int:
    """Images per forward pass when filling the frozen cache: at most :data:`CPU_EXTRACT_BATCH` on a CPU, the
    training batch on an accelerator (which wants large batches)."""
    return min(cfg.optim.batch_size, CPU_EXTRACT_BATCH) if device.type == "cpu" else cfg.optim.batch_size


def _rows_of_view(model: HierarchicalClassifier | BaggingEnsemble, images: torch.Tensor, cfg: TrainConfig,
                  device: torch.device) -> torch.Tensor:
    where, bs = cache_dir(cfg), extraction_batch(cfg, torch.device(device))
    if cfg.optim.finetune == "partial":
        trunk = model.stage_splits(cfg.optim.trainable_stages)[0].trunk
        return extract_features(trunk, images, model.prepare, batch_size=bs, device=device, cache_dir=where,
                                dtype=torch.float16)
    extractors = model.feature_extractors() if isinstance(model, HierarchicalClassifier) else model.backbones()
    parts = [extract_features(b, images, model.prepare, batch_size=bs, device=device, cache_dir=where)
             for b in extractors]
    if len(parts) == 1 and (not isinstance(model, HierarchicalClassifier) or model.sub_backbone is None):
        return parts[0]  # already [features | tapped layers]: arranging would only copy it
    return model.arrange_rows(parts) if isinstance(model, HierarchicalClassifier) else torch.cat(parts, dim=1)


def forward_cached(model: HierarchicalClassifier, rows: torch.Tensor, splits: Sequence[StageSplit] | None) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's outputs from one view of cached rows: heads on features, or tops then heads on trunk outputs."""
    rows = rows.float()
    return model.head_forward(rows) if splits is None else model.top_forward(rows, splits)


@torch.no_grad()
def cached_outputs(model: HierarchicalClassifier | BaggingEnsemble, images: torch.Tensor, cfg: TrainConfig, device: torch.device,
                   batch_size: int | None = None) -> Outputs:
    """Outputs of a trained model of a cached regime on ``images`` (a classifier or an ensemble), from the cache
    (the backbone runs only on a miss): what calibration collects as evidence, identical to ``run_model`` up to
    float16 trunk storage."""
    rows = cached_rows(model, images, cfg, device)[:, 0]
    batch_size = batch_size or inference.BATCH
    splits = model.stage_splits(cfg.optim.trainable_stages) if cfg.optim.finetune == "partial" else None
    # features that are columns of the (float32) rows are those columns, not a copy: a large run holds its
    # feature matrix once (supersub.models.feature_cache.held_for_the_run shares the rows across stages)
    columns = model.feature_columns() if isinstance(model, HierarchicalClassifier) and splits is None \
        and rows.dtype == torch.float32 else None
    was_training = model.training
    model.to(device).eval()
    try:
        chunks = (_outputs_of_chunk(model, rows, i, batch_size, device, splits, columns is None)
                  for i in range(0, len(rows), batch_size))
        out = Outputs.gather(chunks, len(rows))
    finally:
        model.train(was_training)
    if columns is not None:
        assert isinstance(model, HierarchicalClassifier)
        out = replace(out, features=rows[:, columns], layers=model.layers_of_rows(rows))
    return out


def _outputs_of_chunk(model: HierarchicalClassifier | BaggingEnsemble, rows: torch.Tensor, start: int, size: int,
                      device: torch.device, splits: Sequence[StageSplit] | None, with_features: bool) -> Outputs:
    out = model.outputs_from_rows(rows[start:start + size].to(device).float(), splits).cpu_float()
    release(rows)  # a run's mapped rows: the pages read leave memory again
    # without its features (one empty column kept for the shape gather allocates): the caller points at the rows
    return out if with_features else replace(out, features=out.features[:, :0], layers=None)
