"""Pooled outputs of a backbone's last blocks, beside its final features: what per-level novelty scores read.

A novel *superclass* is often told apart best a little before the final features (which the ImageNet head
shaped for ImageNet's classes): on the competition's own test images a kNN score on the last block's pooled
output (320 channels for EfficientNet-Lite0) ranked a new family better than on the final 1280 features.
:class:`TappedBackbone` returns both from ONE pass, through timm's ``forward_intermediates`` (every timm
model family implements it), so the frozen feature cache stores them together and nothing runs twice.
Layer names: ``final`` (the backbone's features), ``block-1`` (the last block), ``block-2`` (the one
before it), ...; a score may read a concatenation such as ``block-1+final`` (each piece L2-normalised).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

FINAL = "final"


def supports_taps(backbone: nn.Module) -> bool:
    """timm models expose their blocks' outputs; supersub's scratch CNN and arbitrary modules do not."""
    return callable(getattr(backbone, "forward_intermediates", None)) and callable(getattr(backbone, "forward_head", None))


def tap_names(n_blocks: int) -> list[str]:
    """The tapped layers' names in the order their columns follow the final features: ``block-n .. block-1``."""
    return [f"block-{i}" for i in range(n_blocks, 0, -1)]


class TappedBackbone(nn.Module):
    """``backbone`` -> ``[final features | pooled block-n | ... | pooled block-1]`` from one forward pass.

    Built on the fly around a model's backbone for extraction (not a registered submodule: state-dict keys stay
    those of the backbone); its repr names the number of taps, so the feature cache keys it apart from the
    bare backbone.
    """

    def __init__(self, backbone: nn.Module, n_blocks: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_blocks = n_blocks
        self.num_features = int(getattr(backbone, "num_features", 0))

    def extra_repr(self) -> str:
        return f"taps={self.n_blocks}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final, blocks = _intermediates(self.backbone, x, self.n_blocks)
        pooled = [_pool(t) for t in blocks[-self.n_blocks:]]
        return torch.cat([self.backbone.forward_head(final), *pooled], dim=1)


def _intermediates(backbone: nn.Module, x: torch.Tensor, n_blocks: int) -> Any:
    """timm's ``forward_intermediates``; EfficientNets list every block (not only stage ends) with ``extra_blocks``."""
    extra = {"extra_blocks": True} if "extra_blocks" in inspect.signature(backbone.forward_intermediates).parameters else {}
    return backbone.forward_intermediates(x, indices=n_blocks, **extra)


def _pool(t: torch.Tensor) -> torch.Tensor:
    """Global average of a feature map (N, C, H, W), or of a token sequence (N, L, C)."""
    return t.mean(dim=(2, 3)) if t.ndim == 4 else t.mean(dim=1)


def tap_widths(backbone: nn.Module, n_blocks: int, input_size: int | None) -> list[int]:
    """Channels of each tapped block, from one tiny dry run (the architectures differ too much to read them)."""
    if n_blocks == 0:
        return []
    size = input_size or 64
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters(), None)
            x = torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu")
            _, blocks = _intermediates(backbone, x, n_blocks)
    finally:
        backbone.train(was_training)
    return [int(_pool(t).shape[1]) for t in blocks[-n_blocks:]]
