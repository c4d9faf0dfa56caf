"""Decode a list of records into one uint8 tensor, in parallel, optionally cached on disk.

Training decodes every image once per run into a file that its tensor reads through a memory map
(:mod:`.mapped`), so RAM holds the batches being read, not the dataset; the disk cache makes that once per change
of the files rather than once per run. Prediction decodes a chunk at a time (:mod:`.chunks`), in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import SupersubError
from ..io import atomic_path
from .cache_limit import enforce_limit, touch, writes_enabled
from .mapped import BLOCK, anonymous_file, map_rows, unlinked
from .images import load_image
from .records import ImageRecord

CACHE_FORMAT = 2  # 1: one torch file of the whole tensor, loaded into RAM

log = logging.getLogger("supersub")


@dataclass
class DecodedImages:
    """``images[i]`` is record ``kept[i]``; ``bad`` holds one message per unreadable (dropped) image."""

    images: torch.Tensor
    kept: list[int]
    bad: list[str]


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def decode_images(
    records: Sequence[ImageRecord],
    size: int,
    skip_bad: bool = False,
    workers: int | None = None,
    cache_dir: Path | None = None,
    mapped: bool = False,
) -> DecodedImages:
    """Decode ``records`` to a ``(N, 3, size, size)`` uint8 tensor in record order.

    With ``skip_bad`` unreadable images are dropped and reported in ``bad``; otherwise the first one (in
    record order) raises its SupersubError. With ``cache_dir`` the result is a file there, reused while no
    file's path, size or mtime has changed, and the tensor reads it through a memory map
    (:mod:`.mapped`); ``mapped`` alone does the same with an unnamed file that goes with the process. Either way
    decoding holds :data:`~.mapped.BLOCK` images at a time, so training data need not fit in RAM.
    """
    workers = workers or default_workers()
    if cache_dir is None:
        if mapped:
            return _raise_unless_skipping(_decode_unnamed(records, size, workers, None), skip_bad)
        return _raise_unless_skipping(_decode(records, size, workers), skip_bad)
    target = Path(cache_dir) / f"images-{size}px-{_identity(records, size)}.u8"
    fingerprint = _fingerprint(records, size)
    decoded = _load_cache(target, fingerprint, size)
    if decoded is None:
        decoded = _save_cache(target, fingerprint, records, size, workers)
    if decoded is None:
        decoded = _decode_unnamed(records, size, workers, cache_dir)
    return _raise_unless_skipping(decoded, skip_bad)


def _raise_unless_skipping(decoded: DecodedImages, skip_bad: bool) -> DecodedImages:
    if decoded.bad and not skip_bad:
        raise SupersubError(decoded.bad[0])
    return decoded


def _decode(records: Sequence[ImageRecord], size: int, workers: int) -> DecodedImages:
    """Decode all records in a thread pool (PIL releases the GIL); each worker fills its own slot."""
    out = torch.empty((len(records), 3, size, size), dtype=torch.uint8)

    def fill(i: int) -> str | None:
        try:
            out[i] = load_image(records[i].path, size)
        except SupersubError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(pool.map(fill, range(len(records))))
    kept = [i for i, err in enumerate(errors) if err is None]
    bad = [err for err in errors if err is not None]
    images = out if len(kept) == len(records) else out[kept]
    return DecodedImages(images, kept, bad)


def _decode_to(fh: BinaryIO, records: Sequence[ImageRecord], size: int, workers: int) -> tuple[list[int], list[str]]:
    """Append the readable images' rows to ``fh`` a block at a time; (kept record indices, messages of the bad)."""
    kept: list[int] = []
    bad: list[str] = []
    for start in range(0, len(records), BLOCK):
        part = _decode(records[start:start + BLOCK], size, workers)
        fh.write(part.images.numpy().tobytes())
        kept += [start + i for i in part.kept]
        bad += part.bad
    return kept, bad


def _decode_unnamed(records: Sequence[ImageRecord], size: int, workers: int, cache_dir: Path | None) -> DecodedImages:
    """Decode into a file no one else sees (unlinked once mapped) and map it."""
    fd, path = anonymous_file(cache_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            kept, bad = _decode_to(fh, records, size, workers)
    except OSError as e:
        Path(path).unlink(missing_ok=True)
        raise SupersubError(f"{path}: cannot write the decoded images ({e.strerror or e})") from None
    return DecodedImages(unlinked(Path(path), len(kept), (3, size, size)), kept, bad)


# ---- disk cache ------------------------------------------------------------------------------------
# one file per (images, size): the rows (uint8, row-major), then a JSON trailer (format, fingerprint, shape, kept,
# bad), then the trailer's length (8 bytes, little-endian) and MAGIC; the rows are mapped, never loaded
MAGIC = b"SSIMAGES"
FORMAT = f"supersub-images-{CACHE_FORMAT}"


def _identity(records: Sequence[ImageRecord], size: int) -> str:
    """Names the cache file: which images at which size. A change of content overwrites the same file."""
    h = hashlib.sha256(f"supersub-images-v{CACHE_FORMAT}\0{size}".encode())
    for r in records:
        h.update(f"\0{os.path.abspath(r.path)}".encode())
    return h.hexdigest()[:32]


def _fingerprint(records: Sequence[ImageRecord], size: int) -> str:
    """sha256 of (size, each path, file size, mtime_ns): any edited, replaced or deleted file changes it."""
    h = hashlib.sha256(f"supersub-images-v{CACHE_FORMAT}\0{size}".encode())
    for r in records:
        try:
            st = os.stat(r.path)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{os.path.abspath(r.path)}\0{stamp}".encode())
    return h.hexdigest()


def _load_cache(target: Path, fingerprint: str, size: int) -> DecodedImages | None:
    """The cached rows (mapped) if ``target`` is intact and matches ``fingerprint``; None means rebuild."""
    if not target.is_file():
        return None
    try:
        with target.open("rb") as fh:
            total = fh.seek(0, os.SEEK_END)
            fh.seek(total - 16)
            tail = fh.read(16)
            length = int.from_bytes(tail[:8], "little")
            if tail[8:] != MAGIC or length > total - 16:
                return None
            fh.seek(total - 16 - length)
            meta: Any = json.loads(fh.read(length))
    except (OSError, ValueError):  # a corrupt or foreign cache file is rebuilt, never fatal
        return None
    if not _valid_meta(meta, fingerprint, size, total - 16 - length):
        return None
    touch(target)  # least-recently-used eviction goes by the last use
    return DecodedImages(map_rows(target, len(meta["kept"]), (3, size, size)), list(meta["kept"]), list(meta["bad"]))


def _valid_meta(meta: Any, fingerprint: str, size: int, row_bytes: int) -> bool:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
        return False
    kept, bad = meta.get("kept"), meta.get("bad")
    return isinstance(kept, list) and isinstance(bad, list) and row_bytes == len(kept) * 3 * size * size


def _save_cache(target: Path, fingerprint: str, records: Sequence[ImageRecord], size: int,
                workers: int) -> DecodedImages | None:
    """Decode into the cache file (atomically) and map it; None when the cache cannot be written (read-only
    policy, unwritable folder): the caller decodes into an unnamed file instead."""
    if not writes_enabled():
        return None
    try:
        with atomic_path(target) as tmp, tmp.open("wb") as fh:
            kept, bad = _decode_to(fh, records, size, workers)
            meta = json.dumps({"format": FORMAT, "fingerprint": fingerprint, "kept": kept, "bad": bad}).encode()
            fh.write(meta + len(meta).to_bytes(8, "little") + MAGIC)
        enforce_limit(target.parent, keep=target)
    except SupersubError as e:
        log.warning("image cache not saved: %s", e)
        return None
    return DecodedImages(map_rows(target, len(kept), (3, size, size)), kept, bad)
