"""What a model hands the novelty maths: each level's logits and the shared features, plain tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Outputs:
    """A model's outputs on N images: ``(N, C_super)`` and ``(N, C_sub)`` logits, ``(N, D)`` features."""

    super_logits: torch.Tensor
    sub_logits: torch.Tensor
    features: torch.Tensor

    @property
    def super_probs(self) -> torch.Tensor:
        return self.super_logits.softmax(dim=1)

    @property
    def sub_probs(self) -> torch.Tensor:
        return self.sub_logits.softmax(dim=1)
