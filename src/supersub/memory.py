"""Keep freed memory in the process for the next batch, instead of handing it back to the operating system.

Why: a training step or a batched forward pass allocates the same large activation tensors batch after batch.
glibc's malloc serves blocks above its mmap threshold (at most 32 MB) straight from the kernel and unmaps them
when they are freed, so every batch faults its memory in again page by page, and the kernel zeroes each page.
On a 2-core VM that was more than half of a full fine-tuning step and about 40% of an inference batch
(docs/results/speed.md). With mmap off and a trim threshold of 1 GB, freed blocks stay in the heap and the next
batch reuses them: a step then costs its arithmetic only, and the process keeps its peak resident set (about
15% above the default's peak in that measurement) until it exits.

The setting is process-wide, so it is scoped: supersub turns it on when it starts heavy tensor work (training,
feature extraction, batched inference) inside :func:`freed_memory_kept`, and the outermost such block puts
glibc's default values back when it ends (a library call leaves the process as it found it; glibc's dynamic
mmap threshold, which any mallopt call fixes, stays at its default value). A bare :func:`keep_freed_memory`
outside any block lasts, as before. It does nothing on other C libraries, and ``SUPERSUB_KEEP_FREED_MEMORY=0``
keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

ENV = "SUPERSUB_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap beyond this goes back to the system
GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}  # DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD
_on = False  # the settings are in force
_depth = 0  # nesting of freed_memory_kept blocks
_on_outside = False  # they were in force when the outermost block began (then it leaves them on)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; True when the settings are in force."""
    global _on
    if not _on:
        _on = _apply()
    return _on


@contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Keep freed memory during the block (see the module docstring); the outermost block restores glibc's
    defaults unless the settings were already on when it began."""
    global _depth, _on_outside, _on
    if _depth == 0:
        _on_outside = _on
    _depth += 1
    try:
        yield keep_freed_memory()
    finally:
        _depth -= 1
        if _depth == 0 and _on and not _on_outside:
            _mallopt(GLIBC_DEFAULTS)
            _on = False


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel now (glibc's ``malloc_trim``); True if any went back.

    Why: with freed memory kept, a long stream of chunks fragments the heap a little more chunk after chunk, so
    the resident set creeps up for the first ten or so chunks; trimming between chunks keeps it at one chunk's
    working set, while the batches inside a chunk still reuse each other's memory. Does nothing off glibc or with
    ``SUPERSUB_KEEP_FREED_MEMORY=0`` (glibc trims by itself then).
    """
    if not _on:
        return False
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded once (mallopt, malloc_trim)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False  # musl's mallopt does nothing, macOS and Windows have none
    ok = _mallopt({_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: TRIM_THRESHOLD})
    if ok:
        log.debug("glibc malloc keeps freed memory (mmap off, trim threshold %d bytes)", TRIM_THRESHOLD)
    return ok


def _mallopt(settings: dict[int, int]) -> bool:
    try:
        libc = _libc()
        return all(libc.mallopt(param, value) == 1 for param, value in settings.items())
    except (OSError, AttributeError):
        return False
