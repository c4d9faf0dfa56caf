"""Mixture of experts (seed 000): the superclass head gates one subclass expert per superclass.

Expert ``k`` classifies among the subclasses of superclass ``k`` only; the gate is the superclass head. The
model's subclass distribution is the mixture's joint ``p(j) = p_gate(k(j)) * p_expert_k(j)`` (Jacobs et al.,
"Adaptive Mixtures of Local Experts", 1991, with the gate routing by the known hierarchy), so the ordinary
subclass cross-entropy is ``-log p_gate(k) - log p_expert_k(j)``: gate and experts train end to end.

Logits carry a per-row shift on top of the joint log-probabilities (a softmax ignores it): in the block of the
superclass the gate picks, the subclass logits are exactly that expert's raw logits. The decision rule reads
the subclass within the predicted superclass, so every logit score at the subclass level (``maxlogit``,
``energy``, ...) reads the routed expert's confidence, and every superclass score the gate's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .heads import create_head


class ExpertHeads(nn.Module):
    """One head per superclass with subclasses; (N, D) features -> (N, M) raw expert logits in subclass order."""

    def __init__(self, kind: str, in_features: int, sub_to_super: Sequence[int], n_super: int, dropout: float,
                 bottleneck: int) -> None:
        super().__init__()
        owner = torch.as_tensor(list(sub_to_super), dtype=torch.long)
        blocks = [torch.nonzero(owner == k).flatten() for k in range(n_super)]
        self.experts = nn.ModuleDict({
            str(k): create_head(kind, in_features, len(idx), dropout, bottleneck) for k, idx in enumerate(blocks) if len(idx)
        })
        # experts' outputs side by side follow superclass order; this permutation puts them in subclass order
        self.register_buffer("inverse", torch.argsort(torch.cat(blocks)), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([expert(features) for expert in self.experts.values()], dim=1)[:, self.inverse]


def mixture_sub_logits(gate_logits: torch.Tensor, expert_logits: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Subclass logits whose softmax is the mixture's joint, equal to the routed expert's raw logits in its block.

    ``owner[j]`` is subclass j's superclass. ``log p(j) = log_softmax(gate)[k] + expert_logits[j] - lse_k``
    (a softmax over the subclasses renormalises away the gate's mass on a superclass without subclasses), with
    ``lse_k`` the log-sum-exp of expert k's logits; the detached shift ``lse_r - log p_gate(r)`` for the gate's
    argmax ``r`` makes block ``r`` read ``expert_logits`` unchanged (a superclass without subclasses gets no shift).
    """
    n_super = gate_logits.shape[1]
    lse = torch.stack([
        expert_logits[:, owner == k].logsumexp(dim=1) if bool((owner == k).any())
        else expert_logits.new_full((len(expert_logits),), -torch.inf)
        for k in range(n_super)
    ], dim=1)
    log_gate = gate_logits.log_softmax(dim=1)
    joint = log_gate[:, owner] + expert_logits - lse[:, owner]
    routed = gate_logits.argmax(dim=1, keepdim=True)
    shift = (lse.gather(1, routed) - log_gate.gather(1, routed)).detach()
    return joint + torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
