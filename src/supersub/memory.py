"""Keep freed memory in the process for the next batch, instead of handing it back to the operating system.

Why: a training step or a batched forward pass allocates the same large activation tensors batch after batch.
glibc's malloc serves blocks above its mmap threshold (at most 32 MB) straight from the kernel and unmaps them
when they are freed, so every batch faults its memory in again page by page, and the kernel zeroes each page.
On a 2-core VM that was more than half of a full fine-tuning step and about 40% of an inference batch
(docs/results/speed.md). With mmap off and a trim threshold of 1 GB, freed blocks stay in the heap and the next
batch reuses them: a step then costs its arithmetic only, and the process keeps its peak resident set (about
15% above the default's peak in that measurement) until it exits.

Process-wide and lasting, like the allocator settings of PyTorch's CUDA caching allocator; supersub turns it
on when it starts heavy tensor work (training, feature extraction, batched inference). It does nothing on
other C libraries, and ``SUPERSUB_KEEP_FREED_MEMORY=0`` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

ENV = "SUPERSUB_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap beyond this goes back to the system
_applied: bool | None = None  # None: not tried yet in this process


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (once per process); True when the settings are in force."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False  # musl's mallopt does nothing, macOS and Windows have none
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    if ok:
        log.debug("glibc malloc keeps freed memory (mmap off, trim threshold %d bytes)", TRIM_THRESHOLD)
    return ok
