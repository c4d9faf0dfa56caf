"""supersub's from-scratch CNN (seed 000/001): residual blocks, batch norm, dropout, global pooling.

A compact ResNet for small inputs (64x64 by default): a 3x3 stem, then stages of pre-activation
residual blocks, each stage doubling the width and halving the resolution. ``num_features`` follows the
timm convention so heads do not care which backbone they sit on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv x2) with a projection shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(x))
        shortcut = self.shortcut(out) if not isinstance(self.shortcut, nn.Identity) else x
        out = self.conv1(out)
        out = self.conv2(self.drop(self.act(self.bn2(out))))
        return out + shortcut


class ScratchCNN(nn.Module):
    """Feature extractor: (B,3,H,W) float -> (B, num_features)."""

    def __init__(self, width: int = 32, depth: Sequence[int] = (1, 1, 1), block_dropout: float = 0.05) -> None:
        super().__init__()
        # conv + max-pool stem: halves the resolution at once, which makes a 64x64 CNN ~4x cheaper
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        stages: list[nn.Module] = []
        ch = width
        for i, n_blocks in enumerate(depth):
            out_ch = width * 2**i
            for b in range(n_blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                stages.append(ResidualBlock(ch, out_ch, stride, block_dropout))
                ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.stages(self.stem(x)))
