"""LightningDataModule over rows: uint8 images decoded once (memory-mapped), or cached backbone features."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .mapped import release


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """One 32-bit seed per (run seed, epoch, process): what an epoch draws depends on nothing else."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % 2**32


class EpochShuffleSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on (seed, epoch), not on how many epochs this process
    has run: a run resumed from a checkpoint draws the same order as an uninterrupted one. Lightning sets
    the epoch through :meth:`set_epoch` before every epoch (as it does for ``DistributedSampler``)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class Rows(Dataset):
    """Rows ``idx`` of ``inputs`` with their labels, read when a batch asks for them (``TensorDataset`` over a
    copy of the subset would hold every training image in memory; memory-mapped images stay on disk)."""

    def __init__(self, inputs: torch.Tensor, idx: torch.Tensor, y_super: torch.Tensor, y_sub: torch.Tensor) -> None:
        self.inputs, self.idx, self.y_super, self.y_sub = inputs, idx, y_super[idx], y_sub[idx]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One read for a whole batch (the DataLoader's fetcher calls this), then the mapped pages are let go."""
        rows = self.inputs[self.idx[items]]
        release(self.inputs)
        return list(zip(rows, self.y_super[items], self.y_sub[items]))


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

    def _subset(self, idx: torch.Tensor) -> Rows:
        return Rows(self.inputs, idx, self.y_super, self.y_sub)

    def train_dataloader(self) -> DataLoader:
        ds = self._subset(self.train_idx)
        # drop_last keeps BatchNorm away from a final batch of one image, unless a process's share of the
        # images (under DDP each process sees 1 / world_size of them) would then give no batch at all
        world = self.trainer.world_size if self.trainer is not None else 1
        drop_last = len(ds) // world > self.batch_size
        return DataLoader(
            ds, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(ds), self.seed), drop_last=drop_last,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_idx) == 0:
            return []
        return DataLoader(self._subset(self.val_idx), batch_size=self.batch_size * 2, num_workers=self.num_workers)
