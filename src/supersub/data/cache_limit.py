"""The disk caches' housekeeping: a size limit with least-recently-used eviction, and what ``supersub cache``
shows and clears.

Both caches (decoded images ``images-*.pt``, frozen backbone outputs ``features-*.pt``) only save time, so they
must not grow without bound: after every write the folder is trimmed to :func:`limit_bytes` by deleting the
files used longest ago (a hit refreshes a file's modification time; a deletion is one ``unlink``, so a reader
sees a whole file or none). Only files named like supersub's are ever counted or deleted.

The limit is ``data.cache_max_gb``, else ``$SUPERSUB_CACHE_MAX_GB``, else :data:`DEFAULT_MAX_GB`; 0 turns
the limit off. Whether a call writes at all is the current :class:`CachePolicy` (``predict`` keeps the features
of the images it predicts only with ``--cache``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from ..errors import SupersubError

log = logging.getLogger(__name__)

ENV = "SUPERSUB_CACHE_MAX_GB"
DEFAULT_MAX_GB = 5.0  # the full competition set's frozen features take about 32 MB per view, partial's trunk ~1 GB
PATTERNS = ("features-*.pt", "images-*.u8", "images-*.pt")  # .pt: images of cache format 1


@dataclass(frozen=True)
class CachePolicy:
    write: bool = True  # False: read hits, keep misses in memory only
    max_gb: float | None = None  # None: $SUPERSUB_CACHE_MAX_GB, else DEFAULT_MAX_GB


_POLICY: ContextVar[CachePolicy] = ContextVar("supersub_cache_policy", default=CachePolicy())


@contextmanager
def cache_policy(write: bool = True, max_gb: float | None = None) -> Iterator[None]:
    """Run the block with this cache policy (the calls inside read it; nested blocks override)."""
    token = _POLICY.set(CachePolicy(write, max_gb))
    try:
        yield
    finally:
        _POLICY.reset(token)


def default_cache_dir() -> Path:
    """``$SUPERSUB_CACHE_DIR``, else ``$XDG_CACHE_HOME/supersub``, else ``~/.cache/supersub``."""
    if os.environ.get("SUPERSUB_CACHE_DIR"):
        return Path(os.environ["SUPERSUB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "supersub"


def writes_enabled() -> bool:
    return _POLICY.get().write


def limit_bytes() -> int | None:
    """The current limit in bytes (None: unlimited)."""
    gb = _POLICY.get().max_gb
    if gb is None:
        text = os.environ.get(ENV, "").strip()
        try:
            gb = float(text) if text else DEFAULT_MAX_GB
        except ValueError:
            raise SupersubError(f"${ENV}: {text!r} is not a number of gigabytes (0 = no limit)") from None
        if gb < 0:
            raise SupersubError(f"${ENV}: {text!r} must be 0 (no limit) or more")
    return None if gb == 0 else int(gb * 1e9)


def cache_files(folder: Path) -> list[Path]:
    """supersub's cache files in ``folder`` (nothing else is ever counted or deleted), oldest use first."""
    if not folder.is_dir():
        return []
    files = {p for pattern in PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted(files, key=_mtime)


def touch(path: Path) -> None:
    """Mark a cache file as just used (what least-recently-used eviction goes by); a read-only cache is fine."""
    try:
        os.utime(path)
    except OSError:
        pass


def enforce_limit(folder: Path, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used cache files until the folder fits the limit; ``keep`` (the file just
    written) goes last of all. Returns the deleted files."""
    limit = limit_bytes()
    if limit is None:
        return []
    files = [p for p in cache_files(folder) if p != keep] + ([keep] if keep is not None and keep.is_file() else [])
    sizes = {p: _size(p) for p in files}
    total, deleted = sum(sizes.values()), []
    for path in files:
        if total <= limit:
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass  # another process evicted it first
        except OSError:
            continue
        total -= sizes[path]
        deleted.append(path)
    if deleted:
        log.info("cache %s: removed %d least recently used file(s) to stay under %.3g GB", folder, len(deleted),
                 limit / 1e9)
    return deleted


def cache_info(folder: Path) -> dict[str, object]:
    """What ``supersub cache info`` prints: files, bytes, oldest and newest use, the limit."""
    files = cache_files(folder)
    limit = limit_bytes()
    return {"folder": str(folder), "files": len(files), "bytes": sum(_size(p) for p in files),
            "oldest_use": _mtime(files[0]) if files else None, "newest_use": _mtime(files[-1]) if files else None,
            "limit_bytes": limit}


def clear_cache(folder: Path, older_than_days: float | None = None) -> tuple[int, int]:
    """Delete supersub's cache files (only those not used for ``older_than_days``); (files, bytes) removed."""
    if older_than_days is not None and older_than_days < 0:
        raise SupersubError(f"--older-than: {older_than_days} days is negative")
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = freed = 0
    for path in cache_files(folder):
        if cutoff is not None and _mtime(path) >= cutoff:
            continue
        size = _size(path)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise SupersubError(f"{path}: cannot delete ({e.strerror or e})") from None
        removed, freed = removed + 1, freed + size
    return removed, freed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
