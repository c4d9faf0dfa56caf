"""What a Lightning run changes for the whole process, and how supersub scopes it (fits and predict loops alike).

Lightning sets logger levels, warning filters, torch's deterministic flags, the global random states and some
environment variables; a library call must leave the process as it found it. ``--devices`` values are parsed here
too, for every Trainer supersub builds.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.utils.deterministic  # the fill flag of torch.use_deterministic_algorithms

from ..errors import SupersubError
from ..memory import freed_memory_kept


LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
PROCESS_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")  # what seed_everything/Trainer set


@contextmanager
def scoped_process_state() -> Iterator[None]:
    """Run a fit and put back what it changes for the whole process: warning filters, Lightning's logger levels,
    torch's deterministic-algorithm flags and NaN fill, cuDNN flags, the global RNGs seeded by
    ``seed_everything``, the environment variables Lightning sets, and glibc's malloc settings.

    A library call (``supersub.api.train``, a notebook cell) must leave the process as it found it.
    """
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    env = {name: os.environ.get(name) for name in PROCESS_ENV}
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        with warnings.catch_warnings(), freed_memory_kept(), global_rng_kept():
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


@contextmanager
def global_rng_kept() -> Iterator[None]:
    """Put Python's, NumPy's and torch's global random states back after the block: supersub seeds and draws
    from its own seeds (``seed_everything``, model initialisation), never from the caller's stream."""
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def quiet_lightning() -> None:
    """Lightning's tips about workers and summaries are noise for in-memory tensor datasets (call it inside
    :func:`scoped_process_state`: the logger levels and warning filters are process-wide)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", ".*directory .* exists and is not empty.*")  # expected when resuming


def _devices(value: str) -> int | str | list[int]:
    if value.isdigit():
        return int(value)
    if "," in value:
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise SupersubError(f"trainer.devices: {value!r} is not a list of device indices like 0,1") from None
    return value
