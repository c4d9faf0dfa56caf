"""Images to predict as a dataset of chunks: each item decodes one run of consecutive records, never the whole list.

A chunk (not an image) is the unit a rank takes under several devices, so each chunk is forwarded with the same
batch boundaries however many processes share the work: the predictions of N processes are those of one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import SupersubError
from .cache import decode_images
from .images import load_image
from .mapped import release
from .records import ImageRecord

# records per chunk: a multiple of run_model's batch (supersub.inference.BATCH, 256), so chunked prediction forwards
# exactly the batches that the whole set in memory did. Why not 1,024
# (the cache's block, until 2026-12-07): with chunks of 1,024 the heap crept up over the first ten chunks (predicting
# 10,000 photos peaked 222 MiB above 1,000, then flat), with 256 it stays at the first chunk's level.
# $SUPERSUB_CHUNK sets another size (tests use it to make several chunks of a few images).
CHUNK = 256
ENV = "SUPERSUB_CHUNK"


def chunk_size(default: int | None = None) -> int:
    """``default`` (else :data:`CHUNK`, read when called), or ``$SUPERSUB_CHUNK`` when set (a positive whole number)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return CHUNK if default is None else default
    if not text.isdigit() or int(text) < 1:
        raise SupersubError(f"${ENV}: {text!r} is not a positive number of images")
    return int(text)


class _Chunks(Dataset):
    """``n_rows`` rows in chunks of ``chunk``: the count and the row range of each chunk, shared by both datasets."""

    chunk: int
    n_rows: int

    def __len__(self) -> int:
        return math.ceil(self.n_rows / self.chunk)

    def span(self, k: int) -> range:
        """The row indices of chunk ``k``."""
        return range(k * self.chunk, min((k + 1) * self.chunk, self.n_rows))


class ChunkImages(_Chunks):
    """Item k: ``{"chunk", "images" (kept, uint8), "kept" (bool per record), "bad" (messages)}`` of records
    ``k * chunk`` .. ``(k + 1) * chunk - 1``; unreadable images are reported, never raised, here."""

    def __init__(self, records: Sequence[ImageRecord], size: int, chunk: int | None = None) -> None:
        chunk = chunk_size() if chunk is None else chunk
        if chunk < 1:
            raise SupersubError(f"chunk size must be >= 1, got {chunk}")
        self.records, self.size, self.chunk = list(records), size, chunk
        self.n_rows = len(self.records)

    def __getitem__(self, k: int) -> dict[str, Any]:
        span = self.span(k)
        with torch.inference_mode(False):  # fetched inside the predict loop: decoding fills tensors in place
            decoded = decode_images(self.records[span.start:span.stop], self.size, skip_bad=True)
        kept = torch.zeros(len(span), dtype=torch.bool)
        kept[decoded.kept] = True
        return {"chunk": torch.tensor(k), "images": decoded.images, "kept": kept, "bad": decoded.bad}


class ChunkRows(_Chunks):
    """Chunks of rows of an already decoded (memory-mapped) image tensor, in the item format of
    :class:`ChunkImages`: what feature extraction shards over several devices."""

    def __init__(self, images: torch.Tensor, chunk: int | None = None) -> None:
        self.images, self.chunk = images, chunk_size() if chunk is None else chunk
        self.records: Sequence[int] = range(len(images))  # nothing to name: a row is its index
        self.size = int(images.shape[-1]) if images.ndim == 4 else 0
        self.n_rows = len(images)

    def __getitem__(self, k: int) -> dict[str, Any]:
        span = self.span(k)
        with torch.inference_mode(False):
            rows = self.images[span.start:span.stop].clone()
        release(self.images)
        return {"chunk": torch.tensor(k), "images": rows, "kept": torch.ones(len(span), dtype=torch.bool), "bad": []}


def unreadable(record: ImageRecord, size: int) -> str:
    """The message of an image that failed to decode (re-read on the rank that reports it)."""
    try:
        load_image(record.path, size)
    except SupersubError as e:
        return str(e)
    return f"{record.path}: cannot read image"
