"""Seed 002's auxiliary task: random balanced splits of the source classes and the (1-B) CE + B BCE loss.

Each of the K partitions assigns every class to side 0 or 1, half of the classes to each (one more on
side 1 when the count is odd); it is fixed by the seed, so a run and its resumption see the same splits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_partitions(n_classes: int, k: int, seed: int) -> torch.Tensor:
    """(k, n_classes) 0/1 float tensor: row j is the j-th random balanced split of the classes."""
    if n_classes < 2:
        raise ValueError(f"a binary partition needs at least 2 classes, got {n_classes}")
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(k, n_classes)
    for j in range(k):
        rows[j, torch.randperm(n_classes, generator=g)[: n_classes - n_classes // 2]] = 1.0
    return rows


def partition_targets(partitions: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, k) binary targets: the side of each image's class in every partition."""
    return partitions[:, y].T


def binary_partition_loss(logits: torch.Tensor, binary_logits: torch.Tensor | None, y: torch.Tensor,
                          partitions: torch.Tensor | None, weight: float,
                          label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, CE, BCE) with ``total = (1 - weight) * CE + weight * BCE``; BCE is the mean over the k heads.

    Without binary heads (``weight`` 0) the total is the plain cross-entropy.
    """
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if binary_logits is None or partitions is None or weight == 0:
        return ce, ce, ce.new_zeros(())
    bce = F.binary_cross_entropy_with_logits(binary_logits, partition_targets(partitions, y).to(binary_logits.dtype))
    return (1.0 - weight) * ce + weight * bce, ce, bce
