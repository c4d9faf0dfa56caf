"""The pretraining network: a supersub backbone, a class head and (seed 002) K binary-partition heads.

The backbone is built exactly as :class:`supersub.models.hierarchical.HierarchicalClassifier` builds it (same
registry, normalisation and input size), so the saved ``backbone.*`` tensors load with ``train --weights``
and give the same features. Only the backbone and class head are saved: the binary heads are dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..io import torch_save_atomic
from ..models.backbones import create_backbone
from ..models.hierarchical import prepare_images
from ..models.trunk_split import StageSplit, split_backbone

PRETRAIN_FORMAT = "supersub-pretrain-1"


class PretrainNet(nn.Module):
    """uint8 or 0..1 float images -> (class logits, binary logits or None, pooled features)."""

    def __init__(self, cfg: ModelConfig, n_classes: int, n_binary: int = 0, load_weights: bool = False) -> None:
        super().__init__()
        main = create_backbone(cfg, load_weights)
        self.input_size = main.input_size
        self.register_buffer("mean", torch.tensor(main.norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(main.norm.std).view(1, 3, 1, 1), persistent=False)
        self.backbone = main.module
        feat = int(self.backbone.num_features)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(feat, n_classes))
        self.binary = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(feat, n_binary)) if n_binary else None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's input, exactly as the hierarchical model prepares it (so cached trunk outputs are shared)."""
        return prepare_images(images, self.mean, self.std, self.input_size)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(images))

    def stage_split(self, trainable_stages: int) -> StageSplit:
        """finetune=partial: the frozen trunk (its outputs cached once) and the trained top, views over the backbone."""
        return split_backbone(self.backbone, trainable_stages)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        return self.heads(self.features(images))

    def heads(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Pooled features -> (class logits, binary logits or None, the features)."""
        return self.classifier(f), (self.binary(f) if self.binary is not None else None), f

    def new_parameters(self) -> list[nn.Parameter]:
        """The heads: the layers a fine-tuning run starts fresh."""
        inside = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in inside]


def save_pretrained(net: PretrainNet, target: Path, meta: dict[str, Any]) -> None:
    """Backbone and class head (not the binary heads), plain data only, written atomically."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items() if not k.startswith("binary.")}
    torch_save_atomic({"format": PRETRAIN_FORMAT, "state_dict": state, **meta}, target)
