"""Batched image augmentation with kornia: random parameters per image, run on the batch's device.

It runs in the LightningModule's ``on_after_batch_transfer`` so a GPU does the work and no DataLoader
worker ever touches a JPEG.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from ..config import AugmentConfig


def build_augmentation(cfg: AugmentConfig) -> nn.Module:
    """An ``nn.Sequential`` of kornia ops for 0..1 float batches; ``Identity`` when everything is off."""
    ops: list[nn.Module] = []
    if cfg.hflip:
        ops.append(K.RandomHorizontalFlip())
    if cfg.vflip:
        ops.append(K.RandomVerticalFlip())
    if cfg.rotation > 0 or cfg.translate > 0 or tuple(cfg.scale) != (1.0, 1.0):
        ops.append(
            K.RandomAffine(
                degrees=cfg.rotation,
                translate=(cfg.translate, cfg.translate) if cfg.translate > 0 else None,
                scale=tuple(cfg.scale) if tuple(cfg.scale) != (1.0, 1.0) else None,
                padding_mode="reflection",
                p=0.9,
            )
        )
    if cfg.color_jitter > 0:
        s = cfg.color_jitter
        ops.append(K.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4), p=0.8))
    if cfg.noise_std > 0:
        ops.append(K.RandomGaussianNoise(mean=0.0, std=cfg.noise_std, p=0.5))
    return nn.Sequential(*ops) if ops else nn.Identity()


def augment_uint8(aug: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Apply ``aug`` to uint8 (B,3,H,W) images and return 0..1 floats clamped to the valid range."""
    x = images.float() / 255.0
    if isinstance(aug, nn.Identity):
        return x
    return aug(x).clamp_(0.0, 1.0)
