"""Backbone registry: a name -> a feature extractor with ``num_features`` and its input normalisation.

"cnn" is supersub's from-scratch network; any other name is handed to ``timm.create_model(...,
num_classes=0)`` so every timm architecture works as a feature extractor.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..errors import SupersubError
from .scratch_cnn import ScratchCNN

# ImageNet statistics: a sensible default for RGB photos when the backbone does not say otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def create_backbone(cfg: ModelConfig) -> tuple[nn.Module, Normalization]:
    """Build the configured backbone; unknown names are a one-line error."""
    if cfg.backbone == "cnn":
        return ScratchCNN(cfg.width, cfg.depth, cfg.block_dropout), Normalization()
    import timm

    if not timm.is_model(cfg.backbone):
        raise SupersubError(f"model.backbone: unknown backbone {cfg.backbone!r} (use 'cnn' or a timm model name)")
    model = timm.create_model(cfg.backbone, pretrained=False, num_classes=0)
    pc = getattr(model, "pretrained_cfg", {}) or {}
    norm = Normalization(tuple(pc.get("mean", IMAGENET_MEAN)), tuple(pc.get("std", IMAGENET_STD)))
    return model, norm
