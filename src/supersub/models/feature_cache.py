"""Outputs of a frozen network, computed once: backbone features (``frozen``) or trunk activations (``partial``).

With the backbone (or its trunk, see :mod:`.stages`) frozen, its outputs never change between epochs, so
extracting them once turns each epoch into a few matrix products (or the last stages' passes). The disk
cache makes that once per (network and weights, image, augmentation view, input size, normalisation)
rather than once per run: it is content-addressed per image (shards of up to :data:`CACHE_BLOCK` images), so a
second ``train`` or ``calibrate``, another split or subset of the same images in any order, or a grown pool never
runs the network on an image it has seen: the key hashes the actual tensors, so changing a single weight or
pixel (or mirroring the images) is a miss, never a stale hit. The cache lives in :func:`default_cache_dir` unless
``data.cache_dir`` says otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.cache_limit import default_cache_dir, enforce_limit, touch, writes_enabled  # noqa: F401 - re-exported
from ..data.mapped import release, writable_rows
from ..errors import SupersubError
from ..io import torch_save_atomic
from ..memory import keep_freed_memory

FEATURES_FORMAT = "supersub-features-2"
# images per cache shard (the misses of one call are saved in shards of this size)
CACHE_BLOCK = 1024
log = logging.getLogger(__name__)

Normalize = Callable[[torch.Tensor], torch.Tensor]


def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    normalize: Normalize,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    input_size: int | None = None,
    cache_dir: Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> (N, ...) CPU outputs of ``backbone`` in eval mode, stored as ``dtype``.

    ``normalize`` receives each uint8 batch on ``device`` and returns the float input the backbone
    expects (e.g. ``HierarchicalClassifier.normalize``); batches are then resized to ``input_size``
    (bilinear, antialiased) when given. The backbone's mode and device are restored afterwards.
    """
    _check_images(images)
    if batch_size < 1:
        raise SupersubError(f"feature extraction: batch_size must be >= 1, got {batch_size}")
    if cache_dir is None and _HELD is None:
        return _compute(backbone, images, normalize, batch_size, torch.device(device), input_size, dtype)
    network = network_digest(backbone, normalize, input_size, dtype)
    keys = image_keys(images)
    held_as = (network, hashlib.sha256("\0".join(keys).encode()).hexdigest())
    if _HELD is not None and held_as in _HELD:
        return _HELD[held_as]
    # a run's rows live in an unnamed file (mapped; released after each block written or read), not in RAM
    new_rows = partial(writable_rows, cache_dir=cache_dir) if _HELD is not None else _in_memory
    rows = (_compute(backbone, images, normalize, batch_size, torch.device(device), input_size, dtype)
            if cache_dir is None else _read_or_compute(backbone, images, normalize, batch_size, device, input_size,
                                                       dtype, cache_dir, network, keys, new_rows))
    if _HELD is not None:
        _HELD[held_as] = rows
    return rows


NewRows = Callable[[int, Any, torch.dtype], torch.Tensor]  # (rows, row shape, dtype) -> an uninitialised matrix


def _in_memory(rows: int, row_shape: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty((rows, *row_shape), dtype=dtype)


# while a run holds its rows (held_for_the_run): {(network digest, digest of the image keys): rows}
_HELD: dict[tuple[str, str], torch.Tensor] | None = None


@contextmanager
def held_for_the_run() -> Iterator[None]:
    """Within this context :func:`extract_features` returns the same tensor for the same network and images.

    Why: a run's stages (final, calibration folds, LOSO models) and their evidence read the same frozen rows;
    reading each from the cache into its own matrix held two or three copies of the feature matrix at once.
    Callers treat the rows as read-only (they index and copy them, never write into them).
    """
    global _HELD
    if _HELD is not None:  # nested: the outer run's rows stay shared
        yield
        return
    _HELD = {}
    try:
        yield
    finally:
        _HELD = None


@contextmanager
def not_held() -> Iterator[None]:
    """Within a run that holds its rows, calls whose rows are not worth holding (the shards several devices write
    into the cache, read back whole afterwards) keep nothing."""
    global _HELD
    held, _HELD = _HELD, None
    try:
        yield
    finally:
        _HELD = held


def _read_or_compute(backbone: nn.Module, images: torch.Tensor, normalize: Normalize, batch_size: int,
                     device: torch.device | str, input_size: int | None, dtype: torch.dtype, cache_dir: Path,
                     network: str, keys: list[str], new_rows: NewRows = _in_memory) -> torch.Tensor:
    """The rows of ``images`` from the disk cache, computing (and saving) the misses."""
    store = _ShardIndex(Path(cache_dir), network)
    missing = [i for i, key in enumerate(keys) if key not in store]
    out: torch.Tensor | None = None
    # the misses are computed in blocks of CACHE_BLOCK, each block saved as one shard and put in place at once:
    # memory holds the output matrix and one block, never a second copy of the features
    for start in range(0, len(missing), CACHE_BLOCK):
        rows = missing[start : start + CACHE_BLOCK]
        computed = _compute(backbone, images[rows], normalize, batch_size, torch.device(device), input_size, dtype)
        release(images)
        store.save([keys[i] for i in rows], computed)
        if out is None:
            out = new_rows(len(keys), computed.shape[1:], computed.dtype)
        out[rows] = computed
        release(out)
    # a model that only reads (calibrate re-runs eight models on the same images) says so at debug level only
    log.log(logging.INFO if missing else logging.DEBUG, "backbone outputs of %d images: %d read from the cache in %s, "
            "%d computed", len(images), len(images) - len(missing), cache_dir, len(missing))
    done = set(missing)
    return store.gather(keys, [i for i in range(len(keys)) if i not in done], out, new_rows)


def image_keys(images: torch.Tensor) -> list[str]:
    """sha256 of each image's shape and pixels: the cache is content-addressed per image, so any subset or
    order of already-seen images (another split of the same photos, a grown pool) is a hit."""
    shape = f"{tuple(images.shape[1:])}\0".encode()
    keys: list[str] = []
    for start in range(0, len(images), CACHE_BLOCK):  # a block at a time: memory-mapped images stay on disk
        keys += [hashlib.sha256(shape + _tensor_bytes(image)).hexdigest() for image in images[start:start + CACHE_BLOCK]]
        release(images)
    return keys


class _ShardIndex:
    """The cached rows of one network: shard files ``features-<network>-<id>.pt`` of up to
    :data:`CACHE_BLOCK` images, each holding its images' keys and their outputs, memory-mapped (a shard's rows
    take memory only while they are copied out)."""

    def __init__(self, folder: Path, network: str) -> None:
        self.folder, self.network = folder, network
        self.where: dict[str, tuple[int, int]] = {}
        self.shards: list[torch.Tensor | None] = []
        self.paths: list[Path] = []
        for path in sorted(folder.glob(f"features-{network[:16]}-*.pt")) if folder.is_dir() else ():
            payload = _load(path, network)
            if payload is None:
                continue
            keys, rows = payload
            shard = len(self.shards)
            self.shards.append(rows)
            self.paths.append(path)
            for row, key in enumerate(keys):
                self.where.setdefault(key, (shard, row))

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def save(self, keys: list[str], rows: torch.Tensor) -> None:
        """Write one shard (nothing stays in memory: the caller puts ``rows`` in place)."""
        digest = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
        _save(self.folder / f"features-{self.network[:16]}-{digest}.pt", self.network, keys, rows)

    def gather(self, keys: list[str], wanted: list[int], out: torch.Tensor | None,
               new_rows: NewRows = _in_memory) -> torch.Tensor:
        """``out`` (allocated here when None) with rows ``wanted`` filled from the shards of their keys, one shard at
        a time (each shard is dropped, unmapped, once read); every shard read counts as used now
        (least-recently-used eviction goes by the last use, :mod:`supersub.data.cache_limit`)."""
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for i in wanted:
            shard, row = self.where[keys[i]]
            by_shard.setdefault(shard, []).append((i, row))
        for shard in sorted(by_shard):
            rows = self.shards[shard]
            assert rows is not None
            if out is None:
                out = new_rows(len(keys), rows.shape[1:], rows.dtype)
            pairs = by_shard[shard]
            out[[i for i, _ in pairs]] = rows[[r for _, r in pairs]]
            release(out)
            self.shards[shard] = None
            touch(self.paths[shard])
        assert out is not None
        return out


def network_digest(backbone: nn.Module, normalize: Normalize, input_size: int | None,
                   dtype: torch.dtype = torch.float32) -> str:
    """sha256 of what the outputs depend on besides the pixels: architecture, weights, size, normalisation.

    ``normalize`` cannot be hashed as code, so its output on a fixed probe batch is hashed instead:
    different mean/std give different bytes.
    """
    h = hashlib.sha256(f"{FEATURES_FORMAT}\0{input_size}\0{dtype}\0{backbone!r}".encode())
    for name, tensor in backbone.state_dict().items():
        h.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(_tensor_bytes(tensor))
    probe = torch.arange(3 * 2 * 2, dtype=torch.uint8).mul_(21).view(1, 3, 2, 2)
    h.update(_tensor_bytes(normalize(probe.to(_device_of(backbone))).float()))
    return h.hexdigest()


def cache_key(backbone: nn.Module, images: torch.Tensor, normalize: Normalize, input_size: int | None) -> str:
    """The key of ``images`` as one cache block: the network's digest and the pixels (float32 outputs)."""
    network = network_digest(backbone, normalize, input_size)
    return hashlib.sha256("\0".join([network, *image_keys(images)]).encode()).hexdigest()


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise SupersubError(f"feature extraction: images must be a uint8 (N, C, H, W) tensor, got {got}")
    if len(images) == 0:
        raise SupersubError("feature extraction: no images given")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw bytes of any dtype (bfloat16 included) by viewing the memory as uint8."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _device_of(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextmanager
def _evaluating(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Eval mode on ``device`` in channels-last layout for the duration, then the caller's mode, device and
    layout again (channels-last convolutions are ~1.6x faster on CPU for EfficientNet-Lite at 224 px)."""
    was_training, home = module.training, _device_of(module)
    module.eval().to(device, memory_format=torch.channels_last)
    try:
        yield module
    finally:
        module.train(was_training).to(home, memory_format=torch.contiguous_format)


def _compute(backbone: nn.Module, images: torch.Tensor, normalize: Normalize, batch_size: int,
             device: torch.device, input_size: int | None, dtype: torch.dtype) -> torch.Tensor:
    keep_freed_memory()  # every batch reuses the previous batch's activation memory
    chunks: list[torch.Tensor] = []
    with _evaluating(backbone, device), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device))
            if input_size is not None and tuple(x.shape[-2:]) != (input_size, input_size):
                x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                                  antialias=True)
            chunks.append(backbone(x.contiguous(memory_format=torch.channels_last)).to(dtype).cpu().contiguous())
    return torch.cat(chunks)


def _load(target: Path, network: str) -> tuple[list[str], torch.Tensor] | None:
    """A shard's keys and rows if the file is intact and made by ``network``; anything else is a miss."""
    try:
        payload: Any = torch.load(target, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign cache file is recomputed, never fatal
        log.warning("%s: unreadable feature cache, recomputing (%s)", target, type(e).__name__)
        return None
    if not isinstance(payload, dict) or payload.get("network") != network:
        return None
    keys, features = payload.get("keys"), payload.get("features")
    if not isinstance(keys, list) or not isinstance(features, torch.Tensor) or features.ndim < 2 \
            or len(features) != len(keys):
        return None
    return keys, features


_UNWRITABLE: set[Path] = set()  # cache folders already warned about in this process


def _save(target: Path, network: str, keys: list[str], features: torch.Tensor) -> None:
    """Save a shard; a folder that cannot be written (read-only, a file in its place, disk full) only costs the
    reuse: the outputs stay in memory for this call, with one warning per folder, as the image cache does. Under
    a read-only cache policy (``predict`` without ``--cache``) nothing is written; after a write the folder is
    trimmed to its size limit (:mod:`supersub.data.cache_limit`)."""
    if not writes_enabled():
        return
    try:
        torch_save_atomic({"format": FEATURES_FORMAT, "network": network, "keys": keys, "features": features}, target)
        enforce_limit(target.parent, keep=target)
    except (OSError, SupersubError) as e:
        if target.parent not in _UNWRITABLE:
            _UNWRITABLE.add(target.parent)
            log.warning("feature cache not saved (outputs kept in memory, recomputed next time): %s",
                        e.strerror if isinstance(e, OSError) else e)
