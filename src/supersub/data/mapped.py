"""uint8 image rows in a file, seen as one torch tensor through a numpy memory map: RAM holds what is read.

Training's decoded images live here instead of in one in-memory tensor (12 KB an image at 64 px, 150 KB at
224), so a dataset larger than RAM trains. The tensor is an ordinary ``torch.Tensor`` (indexing copies only the
rows asked for); a scan over all of it (feature extraction, evidence) calls :func:`release` after each block,
which drops the pages read so far from the process (``MADV_DONTNEED``: the file stays in the page cache, so a
second read is not a disk read), keeping the resident set at a block instead of growing to the whole file.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import SupersubError
from .cache_limit import default_cache_dir

# rows of a mapped tensor by the address of its storage (weak: a mapping lives as long as its tensors)
_MAPPINGS: weakref.WeakValueDictionary[int, np.memmap] = weakref.WeakValueDictionary()
BLOCK = 1024  # rows copied at a time when writing a file


def map_rows(path: Path, rows: int, row_shape: Sequence[int]) -> torch.Tensor:
    """The uint8 ``(rows, *row_shape)`` array stored raw in ``path`` as a tensor over a copy-on-write map (writes
    to the tensor never reach the file)."""
    if rows == 0:
        return torch.empty((0, *row_shape), dtype=torch.uint8)
    array = np.memmap(path, dtype=np.uint8, mode="c", shape=(rows, *row_shape))
    tensor = torch.from_numpy(array)
    _MAPPINGS[tensor.untyped_storage().data_ptr()] = array
    return tensor


def writable_rows(rows: int, row_shape: Sequence[int], dtype: torch.dtype, cache_dir: Path | None = None) -> torch.Tensor:
    """A new ``(rows, *row_shape)`` tensor of ``dtype`` over an unnamed file (shared map: what is written goes to the
    file, and :func:`release` drops it from the process's memory once written or read).

    Why: a training run holds its frozen feature matrix (7 KB an image for the default recipe) from extraction to
    calibration; in a file, the process's memory holds the blocks being used, not the matrix, and a second read
    comes from the page cache (memory the kernel may reclaim), not the disk."""
    shape = (rows, *row_shape)
    if rows == 0:
        return torch.empty(shape, dtype=dtype)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    fd, path = anonymous_file(cache_dir, prefix=".supersub-rows-", suffix=".bin")
    try:
        os.ftruncate(fd, int(np.prod(shape)) * np_dtype.itemsize)
    except OSError as e:
        raise SupersubError(f"{path}: cannot hold the run's feature rows ({e.strerror or e})") from None
    finally:
        os.close(fd)
    try:
        array = np.memmap(path, dtype=np_dtype, mode="r+", shape=shape)
    finally:
        Path(path).unlink(missing_ok=True)
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        # no read-around on a fault: after a sequential pass the kernel mapped ~70 MB around the first random read
        # (a fit's shuffled batches) until the next release
        handle.madvise(mmap.MADV_RANDOM)
    tensor = torch.from_numpy(array)
    _MAPPINGS[tensor.untyped_storage().data_ptr()] = array
    return tensor


def release(tensor: torch.Tensor) -> None:
    """Drop the pages of ``tensor``'s mapping from the process's memory (a no-op for an ordinary tensor)."""
    array = _MAPPINGS.get(tensor.untyped_storage().data_ptr()) if tensor.numel() else None
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise"):
        handle.madvise(mmap.MADV_DONTNEED)


def is_mapped(tensor: torch.Tensor) -> bool:
    return tensor.numel() > 0 and tensor.untyped_storage().data_ptr() in _MAPPINGS


def scratch_dir(cache_dir: Path | None) -> Path:
    """Where an unnamed image file goes: ``cache_dir``, else ``$SUPERSUB_CACHE_DIR`` or the user cache (a disk,
    where ``/tmp`` may be memory)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError:
        return Path(tempfile.gettempdir())


def anonymous_file(cache_dir: Path | None, prefix: str = ".supersub-images-", suffix: str = ".u8") -> tuple[int, Path]:
    """A new file that disappears with the process: created, to be unlinked once mapped (see :func:`unlinked`)."""
    folder = scratch_dir(cache_dir)
    try:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        return fd, Path(path)
    except OSError as e:
        raise SupersubError(f"{folder}: cannot hold the decoded images ({e.strerror or e})") from None


def unlinked(path: Path, rows: int, row_shape: Sequence[int]) -> torch.Tensor:
    """Map ``path``, then unlink it: the mapping keeps the data until the last tensor over it is gone."""
    try:
        return map_rows(path, rows, row_shape)
    finally:
        path.unlink(missing_ok=True)


def cat_rows(parts: Sequence[torch.Tensor], cache_dir: Path | None = None) -> torch.Tensor:
    """``torch.cat(parts)`` without holding the result in RAM when a part is mapped: written block by block into
    a new unnamed file and mapped (one part is returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    if not any(is_mapped(p) for p in parts):
        return torch.cat(list(parts))
    fd, path = anonymous_file(cache_dir)
    with os.fdopen(fd, "wb") as fh:
        for part in parts:
            for start in range(0, len(part), BLOCK):
                fh.write(part[start:start + BLOCK].contiguous().numpy().tobytes())
            release(part)
    return unlinked(Path(path), sum(len(p) for p in parts), tuple(parts[0].shape[1:]))
