"""Frozen backbone outputs computed by several devices at once: each rank a shard of the images, through Lightning.

Under ``--devices N --strategy ddp`` every rank runs the whole training command and needs every row of the
feature matrix (its DistributedSampler draws from all of them). Rather than each rank running the backbone on
every image, each takes every N-th chunk in Lightning's predict loop and writes those rows to the shared feature
cache (:mod:`supersub.models.feature_cache`: content-addressed shards, so the ranks never write the same file);
after the loop every rank reads the whole matrix from the cache, in image order. One device: nothing happens
here, and :func:`~.finetune.cached_rows` computes the rows as it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..config import TrainConfig
from ..data.chunks import ChunkRows, chunk_size
from ..models.feature_cache import CACHE_BLOCK, not_held
from .stream import Devices, Discard, run_chunks
from .finetune import cache_dir, cached_rows


def extract_on_devices(model: torch.nn.Module, images: torch.Tensor, cfg: TrainConfig, views: Sequence[str]) -> bool:
    """Fill the feature cache with every rank computing a shard; False (nothing done) on a single device or
    without ``data.feature_cache`` (no shared place to put the rows)."""
    if cache_dir(cfg) is None:
        return False

    def rows(net: torch.nn.Module, chunk: torch.Tensor, device: torch.device) -> torch.Tensor:
        with not_held():  # a shard goes to the cache; the run holds the whole matrix, read back afterwards
            return cached_rows(net, chunk, cfg, device, views)  # computes the misses and saves them, shard by shard

    def nothing(_: Any) -> dict[str, torch.Tensor]:
        return {}

    devices = Devices(cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.num_nodes)
    # chunks of the cache's block: each rank's chunk becomes one shard file
    done = run_chunks(model, ChunkRows(images, chunk_size(CACHE_BLOCK)), rows, nothing, Discard(), devices, skip_bad=False, progress=False,
                      several_only=True)
    return done is not None
