"""The training objective of each approach, and its mixup/cutmix form.

* two-heads: ``CE_super + CE_sub + alpha * KL + outlier terms`` (:class:`supersub.losses.HierarchicalLoss`).
* two-models / cosine: the same with ``alpha = 0``: with no shared parameter and no interaction term, the
  sum separates into two independent single-level trainings.
* moe: the same with ``alpha = 0``: its subclass distribution already sums to the gate's per superclass, so
  the KL term is zero; ``CE_sub`` on the mixture is ``-log p_gate(k) - log p_expert(j)``.
* sub-only: ``CE_sub`` + the uniform-target term on the subclass head only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data.augment import Mix
from ..losses import HierarchicalLoss, LossParts, uniform_outlier_loss
from ..models.hierarchical import APPROACHES
from ..taxonomy import Taxonomy


class SubOnlyLoss(nn.Module):
    """Subclass cross-entropy only: the single-level baseline never fits the (derived) superclass scores."""

    def __init__(self, label_smoothing: float, outlier_weight: float) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.outlier_weight = outlier_weight

    def forward(self, super_logits: torch.Tensor, sub_logits: torch.Tensor, y_super: torch.Tensor,
                y_sub: torch.Tensor) -> LossParts:
        known = (y_super >= 0) & (y_sub >= 0)
        zero = sub_logits.new_zeros(())
        ce_sub = zero
        if known.any():
            ce_sub = F.cross_entropy(sub_logits[known], y_sub[known], label_smoothing=self.label_smoothing)
        outlier = uniform_outlier_loss(sub_logits[~known])
        return LossParts(ce_sub + self.outlier_weight * outlier, zero, ce_sub, zero, outlier)


def build_loss(cfg: TrainConfig, taxonomy: Taxonomy) -> nn.Module:
    """The loss module of ``cfg.model.approach`` (same call signature and :class:`LossParts` for all)."""
    approach = APPROACHES[cfg.model.base_approach]
    if not approach.super_head:
        return SubOnlyLoss(cfg.loss.label_smoothing, cfg.loss.outlier_weight)
    loss_cfg = cfg.loss
    if not approach.interaction:
        loss_cfg = loss_cfg.model_copy(update={"alpha": 0.0})
    return HierarchicalLoss(loss_cfg, taxonomy.membership())


def mixed_loss(loss: nn.Module, super_logits: torch.Tensor, sub_logits: torch.Tensor, y_super: torch.Tensor,
               y_sub: torch.Tensor, mix: Mix | None) -> LossParts:
    """``loss`` on a plain batch, or on a mixed one: the same-lambda mixture of both label sets' losses."""
    own = loss(super_logits, sub_logits, y_super, y_sub)
    if mix is None:
        return own
    other = loss(super_logits, sub_logits, y_super[mix.partner], y_sub[mix.partner])
    lam = mix.lam
    return LossParts(*(lam * a + (1.0 - lam) * b for a, b in zip(_fields(own), _fields(other))))


def _fields(parts: LossParts) -> tuple[torch.Tensor, ...]:
    return parts.total, parts.ce_super, parts.ce_sub, parts.kl, parts.outlier
