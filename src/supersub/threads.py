"""Small dense linear algebra on one CPU thread, the caller's thread counts restored afterwards.

A detector fit is a handful of small dense operations (a 1280x1280 covariance, its ``eigh``, a ``pinv`` of the
head, scikit-learn's Ledoit-Wolf and PCA). With two or more threads on a shared CPU each of them spends most of
its time in OpenMP/BLAS barrier waits: on a loaded 2-core machine one float64 1280x1280 ``eigh`` took 5.6-16 s
with 2 threads and 0.6-3 s with 1, and a run's threshold fitting (one ViM fit per calibration model) was 88 of
its 101 s. One thread loses little on an idle machine (these operations are too small to split well), so the
limit is set in the code rather than left to ``OMP_NUM_THREADS``. threadpoolctl covers numpy's and scipy's BLAS
and OpenMP pools (what scikit-learn uses); torch's own intra-op pool is set with ``torch.set_num_threads``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def dense_threads(n: int = 1) -> Iterator[None]:
    """Run the block with at most ``n`` CPU threads in torch and in numpy/scipy's BLAS and OpenMP pools; the
    previous counts come back on exit (also on an exception): a library call leaves process state as found."""
    before = torch.get_num_threads()
    limits = threadpool_limits(limits=n)  # records every pool's current count, restored by restore_original_limits
    try:
        if before > n:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)
        limits.restore_original_limits()
