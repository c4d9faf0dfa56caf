"""Batched augmentation: random resized crop, and mixup / cutmix with targets mixed at both levels."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F

from supersub.config import AugmentConfig, LossConfig, build_config
from supersub.data.augment import BatchMixer, Mix, augment_uint8, build_augmentation
from supersub.errors import SupersubError
from supersub.losses import HierarchicalLoss
from supersub.taxonomy import Taxonomy
from supersub.training.objective import mixed_loss

OFF = {"hflip": False, "rotation": 0.0, "translate": 0.0}


def _batch(n: int = 6, size: int = 8) -> torch.Tensor:
    """Image i is filled with the value i, so a mixed pixel tells exactly which images went into it."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


def test_random_resized_crop_is_built_and_keeps_the_size():
    off = build_augmentation(AugmentConfig(**OFF), 16)
    assert isinstance(off, torch.nn.Identity)
    aug = build_augmentation(AugmentConfig(**OFF, crop_scale=(0.3, 0.6)), 16)
    assert isinstance(aug[0], K.RandomResizedCrop)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    out = augment_uint8(aug, images)
    assert out.shape == (4, 3, 16, 16) and 0.0 <= out.min() and out.max() <= 1.0
    assert not torch.allclose(out, images.float() / 255)
    with pytest.raises(SupersubError, match="crop_scale is a share of the image area"):
        build_config({"augment": {"crop_scale": [0.5, 1.5]}})


def test_mixup_blends_each_image_with_its_partner():
    torch.manual_seed(0)
    mixer = BatchMixer(AugmentConfig(mixup_alpha=0.4))
    x = _batch()
    mix = mixer(x)
    assert mix is not None and 0.0 <= mix.lam <= 1.0 and sorted(mix.partner.tolist()) == list(range(6))
    expected = mix.lam * torch.arange(6.0) + (1 - mix.lam) * mix.partner.float()
    assert torch.allclose(mix.images[:, 0, 0, 0], expected)


def test_cutmix_pastes_a_box_whose_area_sets_lambda():
    torch.manual_seed(3)
    mixer = BatchMixer(AugmentConfig(cutmix_alpha=1.0))
    x = _batch(size=10)
    mix = mixer(x)
    assert mix is not None
    for i in range(6):
        if mix.partner[i] == i:
            continue
        pasted = (mix.images[i] == mix.partner[i].float()).all(0).float().mean()
        assert pasted == pytest.approx(1 - mix.lam)  # the share of pixels taken from the partner


def test_mixing_can_be_off_or_rare():
    assert not BatchMixer(AugmentConfig()).enabled and BatchMixer(AugmentConfig())(_batch()) is None
    assert BatchMixer(AugmentConfig(mixup_alpha=1.0, mix_prob=0.0))(_batch()) is None


def test_mixed_loss_is_cross_entropy_against_mixed_one_hot_targets_at_both_levels():
    torch.manual_seed(0)
    taxonomy = Taxonomy(("bird", "dog"), ("a", "b", "c"), (0, 0, 1))
    loss = HierarchicalLoss(LossConfig(alpha=0.0, label_smoothing=0.1), taxonomy.membership())
    sup, sub = torch.randn(4, 2), torch.randn(4, 3)
    y_super, y_sub = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 2])
    mix = Mix(torch.empty(0), torch.tensor([2, 0, 3, 1]), 0.7)
    parts = mixed_loss(loss, sup, sub, y_super, y_sub, mix)

    def soft(y: torch.Tensor, n: int) -> torch.Tensor:
        return 0.7 * F.one_hot(y, n).float() + 0.3 * F.one_hot(y[mix.partner], n).float()

    expected = (F.cross_entropy(sup, soft(y_super, 2), label_smoothing=0.1)
                + F.cross_entropy(sub, soft(y_sub, 3), label_smoothing=0.1))
    assert torch.allclose(parts.total, expected, atol=1e-6)
    assert torch.allclose(mixed_loss(loss, sup, sub, y_super, y_sub, None).total,
                          loss(sup, sub, y_super, y_sub).total)
