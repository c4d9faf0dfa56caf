"""Loss terms: per-level cross-entropy and seed 001's KL interaction loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LossConfig

OUTLIER = -1  # label of an outlier-exposure image at both levels
NOVEL_SUB = -2  # subclass label of a novel-subclass image whose (known) superclass label is kept


def implied_super_log_probs(sub_logits: torch.Tensor, membership: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p_hat_super[k] = log sum_{i in S_k} p_sub[i], computed stably with logsumexp.

    ``membership`` is the (n_sub, n_super) 0/1 matrix of :meth:`Taxonomy.membership`.
    """
    log_p_sub = F.log_softmax(sub_logits / temperature, dim=1)  # (B, n_sub)
    mask = torch.log(membership.to(log_p_sub))  # 0 where member, -inf elsewhere
    return torch.logsumexp(log_p_sub.unsqueeze(2) + mask.unsqueeze(0), dim=1)  # (B, n_super)


def interaction_kl(
    super_logits: torch.Tensor,
    sub_logits: torch.Tensor,
    membership: torch.Tensor,
    temperature: float = 1.0,
    direction: str = "implied||head",
) -> torch.Tensor:
    """Batch-mean KL between the superclass head and the superclass distribution implied by the subclass head.

    ``"implied||head"`` is KL(p_hat_super || p_super) as written in seed 001; ``"head||implied"`` is the
    opposite direction. Both heads receive gradients.
    """
    log_implied = implied_super_log_probs(sub_logits, membership, temperature)
    log_head = F.log_softmax(super_logits / temperature, dim=1)
    if direction == "implied||head":
        p, log_p, log_q = log_implied.exp(), log_implied, log_head
    elif direction == "head||implied":
        p, log_p, log_q = log_head.exp(), log_head, log_implied
    else:
        raise ValueError(f"unknown KL direction {direction!r}")
    # p * (log p - log q) with 0 * log 0 = 0
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=1).mean()


def uniform_outlier_loss(logits: torch.Tensor) -> torch.Tensor:
    """Outlier exposure (Hendrycks et al., ICLR 2019): cross-entropy from the logits to the uniform target.

    Minimal when an outlier's softmax is flat, so max-softmax confidence drops on unseen kinds of images.
    """
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    return -F.log_softmax(logits, dim=1).mean(dim=1).mean()


@dataclass
class LossParts:
    total: torch.Tensor
    ce_super: torch.Tensor
    ce_sub: torch.Tensor
    kl: torch.Tensor
    outlier: torch.Tensor


class HierarchicalLoss(torch.nn.Module):
    """CE_super + CE_sub + alpha * KL (approach A) + outlier_weight * uniform-target outlier exposure.

    Negative labels mark exposure images: :data:`OUTLIER` at both levels (novel superclass) takes part only
    in the uniform-target term of both heads; a known superclass with subclass :data:`NOVEL_SUB` (seed 000's
    novel-subclass exposure) takes part in the superclass cross-entropy and in the uniform-target term of
    the subclass head. The KL term only sees rows labelled at both levels.
    """

    def __init__(self, cfg: LossConfig, membership: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("membership", membership, persistent=False)

    def forward(
        self, super_logits: torch.Tensor, sub_logits: torch.Tensor, y_super: torch.Tensor, y_sub: torch.Tensor
    ) -> LossParts:
        ls = self.cfg.label_smoothing
        super_known = y_super >= 0
        known = super_known & (y_sub >= 0)
        zero = super_logits.new_zeros(())
        ce_super = ce_sub = kl = zero
        if super_known.any():
            ce_super = F.cross_entropy(super_logits[super_known], y_super[super_known], label_smoothing=ls)
        if known.any():
            ce_sub = F.cross_entropy(sub_logits[known], y_sub[known], label_smoothing=ls)
            if self.cfg.alpha > 0:
                kl = interaction_kl(
                    super_logits[known], sub_logits[known], self.membership, self.cfg.temperature,
                    self.cfg.kl_direction,
                )
        outlier = uniform_outlier_loss(super_logits[~super_known]) + uniform_outlier_loss(sub_logits[~known])
        total = ce_super + ce_sub + self.cfg.alpha * kl + self.cfg.outlier_weight * outlier
        return LossParts(total, ce_super, ce_sub, kl, outlier)
