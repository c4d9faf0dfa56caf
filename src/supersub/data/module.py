"""LightningDataModule over in-memory rows: uint8 images decoded once, or cached backbone features."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class TensorDataModule(L.LightningDataModule):
    """Serves (inputs, super label, sub label) batches from index subsets of one tensor of rows.

    ``inputs`` is the decoded uint8 image tensor, or the backbone features of ``optim.finetune=frozen``.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        y_super: torch.Tensor,
        y_sub: torch.Tensor,
        train_idx: Sequence[int],
        val_idx: Sequence[int],
        batch_size: int,
        seed: int,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.inputs, self.y_super, self.y_sub = inputs, y_super, y_sub
        self.train_idx = torch.as_tensor(list(train_idx), dtype=torch.long)
        self.val_idx = torch.as_tensor(list(val_idx), dtype=torch.long)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def _subset(self, idx: torch.Tensor) -> TensorDataset:
        return TensorDataset(self.inputs[idx], self.y_super[idx], self.y_sub[idx])

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        ds = self._subset(self.train_idx)
        # drop_last keeps BatchNorm away from a final batch of one image, unless a process's share of the
        # images (under DDP each process sees 1 / world_size of them) would then give no batch at all
        world = self.trainer.world_size if self.trainer is not None else 1
        drop_last = len(ds) // world > self.batch_size
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=drop_last,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_idx) == 0:
            return []
        return DataLoader(self._subset(self.val_idx), batch_size=self.batch_size * 2, num_workers=self.num_workers)
