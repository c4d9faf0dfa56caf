"""Decode a list of records into one uint8 tensor, in parallel, optionally cached on disk.

Training keeps every image in memory as uint8 (the real set is ~77 MB at 64 px), so images are decoded
exactly once per run; the disk cache makes that once per change of the files rather than once per run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SupersubError
from ..io import torch_save_atomic
from .cache_limit import enforce_limit, touch, writes_enabled
from .images import load_image
from .records import ImageRecord

CACHE_FORMAT = 1

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
) -> DecodedImages:
    """Decode ``records`` to a ``(N, 3, size, size)`` uint8 tensor in record order.

    With ``skip_bad`` unreadable images are dropped and reported in ``bad``; otherwise the first one (in
    record order) raises its SupersubError. With ``cache_dir`` the result is reused while no file's path,
    size or mtime has changed.
    """
    if cache_dir is None:
        return _raise_unless_skipping(_decode(records, size, workers or default_workers()), skip_bad)
    target = Path(cache_dir) / f"images-{size}px-{_identity(records, size)}.pt"
    fingerprint = _fingerprint(records, size)
    decoded = _load_cache(target, fingerprint, size)
    if decoded is None:
        decoded = _decode(records, size, workers or default_workers())
        _save_cache(target, fingerprint, decoded)
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


# ---- disk cache ------------------------------------------------------------------------------------
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
    """The cached result if ``target`` is intact and matches ``fingerprint``; None means rebuild."""
    if not target.is_file():
        return None
    try:
        payload: Any = torch.load(target, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt or foreign cache file is rebuilt, never fatal
        return None
    if not _valid_payload(payload, fingerprint, size):
        return None
    touch(target)  # least-recently-used eviction goes by the last use
    return DecodedImages(payload["images"], list(payload["kept"]), list(payload["bad"]))


def _valid_payload(payload: Any, fingerprint: str, size: int) -> bool:
    if not isinstance(payload, dict) or payload.get("fingerprint") != fingerprint:
        return False
    images, kept, bad = payload.get("images"), payload.get("kept"), payload.get("bad")
    return (
        isinstance(images, torch.Tensor)
        and isinstance(kept, list)
        and isinstance(bad, list)
        and images.dtype == torch.uint8
        and tuple(images.shape) == (len(kept), 3, size, size)
    )


def _save_cache(target: Path, fingerprint: str, decoded: DecodedImages) -> None:
    """Best effort: the images are already decoded, so an unwritable cache only costs the next run time."""
    if not writes_enabled():
        return
    payload = {"fingerprint": fingerprint, "images": decoded.images, "kept": decoded.kept, "bad": decoded.bad}
    try:
        torch_save_atomic(payload, target)
        enforce_limit(target.parent, keep=target)
    except SupersubError as e:
        log.warning("image cache not saved: %s", e)
