"""The hierarchical classifier (seed 001, approach A): one backbone, a superclass and a subclass head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..taxonomy import Taxonomy
from .backbones import create_backbone


class HierarchicalClassifier(nn.Module):
    """uint8 or float images -> (super_logits, sub_logits, features).

    Normalisation lives inside the model so a checkpoint is self-contained: callers feed raw 0..255
    images (or 0..1 floats) and never need to remember the backbone's mean/std.
    """

    def __init__(self, cfg: ModelConfig, n_super: int, n_sub: int) -> None:
        super().__init__()
        self.backbone, norm = create_backbone(cfg)
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)
        feat = int(self.backbone.num_features)
        neck: list[nn.Module] = []
        if cfg.bottleneck:
            neck = [nn.Linear(feat, cfg.bottleneck), nn.BatchNorm1d(cfg.bottleneck), nn.ReLU(inplace=True)]
            feat = cfg.bottleneck
        self.neck = nn.Sequential(*neck)
        self.dropout = nn.Dropout(cfg.dropout)
        self.super_head = nn.Linear(feat, n_super)
        self.sub_head = nn.Linear(feat, n_sub)
        self.num_features = feat

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(self.normalize(images)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(images)
        h = self.dropout(f)
        return self.super_head(h), self.sub_head(h), f


def build_model(cfg: ModelConfig, taxonomy: Taxonomy) -> HierarchicalClassifier:
    return HierarchicalClassifier(cfg, taxonomy.n_super, taxonomy.n_sub)


def model_spec(cfg: ModelConfig, taxonomy: Taxonomy) -> dict[str, Any]:
    """Plain-data description saved beside the weights so a checkpoint rebuilds without pickle."""
    return {"model": cfg.model_dump(mode="json"), "taxonomy": taxonomy.to_dict()}
