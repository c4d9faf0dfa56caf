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

    ``membership`` is the (n_sub, n_super) 0/1 matrix of :meth:`Taxonomy.membership`. A superclass with no
    subclass gets ``-inf`` (probability 0) and no gradient: the logsumexp runs on the member columns only,
    since its backward pass over an all ``-inf`` column would be NaN.
    """
    log_p_sub = F.log_softmax(sub_logits / temperature, dim=1)  # (B, n_sub)
    member = membership.to(device=log_p_sub.device, dtype=torch.bool)
    has_members = member.any(dim=0)  # (n_super,)
    mask = torch.zeros(member.shape, dtype=log_p_sub.dtype, device=log_p_sub.device)
    mask = mask.masked_fill(~member, float("-inf"))[:, has_members]  # 0 where member, -inf elsewhere
    out = log_p_sub.new_full((log_p_sub.shape[0], member.shape[1]), float("-inf"))
    out[:, has_members] = torch.logsumexp(log_p_sub.unsqueeze(2) + mask.unsqueeze(0), dim=1)
    return out


def interaction_kl(
    super_logits: torch.Tensor,
    sub_logits: torch.Tensor,
    membership: torch.Tensor,
    temperature: float = 1.0,
    direction: str = "implied||head",
    t2_scaling: bool = False,
) -> torch.Tensor:
    """Batch-mean KL between the superclass head and the superclass distribution implied by the subclass head.

    ``"implied||head"`` is KL(p_hat_super || p_super) as written in seed 001; ``"head||implied"`` is the
    opposite direction. Both distributions are softmaxes at ``temperature``.

    Gradient: neither side is detached, so both heads (and a backbone they share) receive the gradient of
    the KL whatever the direction: it pulls the two distributions towards each other. This differs from
    distillation, where the teacher side is a fixed target. ``t2_scaling`` multiplies the KL by
    ``temperature ** 2`` (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015): the gradient
    of a KL between softmaxes at temperature T shrinks like 1/T^2, so the scaling keeps the term's weight
    ``loss.alpha`` comparable across temperatures.

    A superclass without subclasses has implied probability 0 and cannot be matched by the subclass head,
    so both distributions are compared over the superclasses that have subclasses, the head's softmax
    renormalised over them (its mass on an empty superclass is left to the cross-entropy). With no empty
    superclass this is exactly the KL above.
    """
    if direction not in ("implied||head", "head||implied"):
        raise ValueError(f"unknown KL direction {direction!r}")
    has_members = membership.to(torch.bool).any(dim=0).to(super_logits.device)
    log_implied = implied_super_log_probs(sub_logits, membership, temperature)[:, has_members]
    log_head = F.log_softmax(super_logits[:, has_members] / temperature, dim=1)
    log_p, log_q = (log_implied, log_head) if direction == "implied||head" else (log_head, log_implied)
    # with the empty superclasses left out every log-probability is finite: no 0 * log 0 case, whose masked
    # branch (torch.where) would still send NaN through the backward pass
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
    return kl * temperature**2 if t2_scaling else kl


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
                    self.cfg.kl_direction, self.cfg.kl_t2_scaling,
                )
        outlier = uniform_outlier_loss(super_logits[~super_known]) + uniform_outlier_loss(sub_logits[~known])
        total = ce_super + ce_sub + self.cfg.alpha * kl + self.cfg.outlier_weight * outlier
        return LossParts(total, ce_super, ce_sub, kl, outlier)
