"""Batched image augmentation with kornia (random parameters per image) and batch-level mixup / cutmix.

It runs in the LightningModule after the batch reached its device, so a GPU does the work and no
DataLoader worker ever touches a JPEG. With ``optim.finetune=frozen`` none of it runs: the heads train on
features computed once from the un-augmented images.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn

from ..config import AugmentConfig


def build_augmentation(cfg: AugmentConfig, image_size: int) -> nn.Module:
    """An ``nn.Sequential`` of kornia ops for 0..1 float batches; ``Identity`` when everything is off."""
    ops: list[nn.Module] = []
    if tuple(cfg.crop_scale) != (1.0, 1.0):
        ops.append(K.RandomResizedCrop((image_size, image_size), scale=tuple(cfg.crop_scale),
                                       ratio=tuple(cfg.crop_ratio)))
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


@dataclass
class Mix:
    """A mixed batch: image i is ``lam`` parts image i and ``1 - lam`` parts image ``partner[i]``.

    The matching target mixes both levels' one-hot labels with the same ``lam``; since cross-entropy is
    linear in its target, the loss is ``lam * loss(labels) + (1 - lam) * loss(labels[partner])``. Exposure
    rows (negative labels) mix like any other: their share of the target is their uniform target.
    """

    images: torch.Tensor
    partner: torch.Tensor
    lam: float


class BatchMixer:
    """Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) with one lambda per batch.

    Hand-written: timm's ``Mixup`` mixes one label set and needs an even batch; here both levels mix, any size.

    When both are on, each mixed batch uses one of them at random (as timm's Mixup does). Random numbers
    come from torch's global generator, which the trainer seeds.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.kinds = [k for k, a in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha)) if a > 0]
        self.alpha = {"mixup": cfg.mixup_alpha, "cutmix": cfg.cutmix_alpha}
        self.prob = cfg.mix_prob

    @property
    def enabled(self) -> bool:
        return bool(self.kinds) and self.prob > 0

    def __call__(self, images: torch.Tensor) -> Mix | None:
        """A mixed copy of the float batch ``images``, or None when this batch stays unmixed."""
        if not self.enabled or len(images) < 2 or float(torch.rand(())) >= self.prob:
            return None
        kind = self.kinds[int(torch.randint(len(self.kinds), ()))]
        a = self.alpha[kind]
        lam = float(torch.distributions.Beta(a, a).sample())
        partner = torch.randperm(len(images)).to(images.device)
        if kind == "mixup":
            return Mix(lam * images + (1.0 - lam) * images[partner], partner, lam)
        return _cutmix(images, partner, lam)


def _cutmix(images: torch.Tensor, partner: torch.Tensor, lam: float) -> Mix:
    """Paste a box of area ~(1 - lam) from the partner images; lam is corrected to the box actually pasted."""
    h, w = images.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    bh, bw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    out = images.clone()
    out[..., y0:y1, x0:x1] = images[partner][..., y0:y1, x0:x1]
    return Mix(out, partner, 1.0 - (y1 - y0) * (x1 - x0) / (h * w))
