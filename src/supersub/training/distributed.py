"""Which process of a multi-process (DDP) run this is, read where Lightning and the launchers put it.

Under ``--strategy ddp`` Lightning starts the other ranks by re-running the same command line with
``LOCAL_RANK`` (and ``NODE_RANK``) set; ``torchrun`` and SLURM set ``RANK`` / ``SLURM_PROCID``. Every
rank runs the whole training command so that all of them reach each ``Trainer.fit`` together, but only
global rank 0 writes the run directory. Before the first fit no trainer exists yet, so the launcher's
environment is the only place the rank can come from; Lightning's ``rank_zero_only.rank`` is the same
information once a trainer has set it.
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.utilities import rank_zero_only

from ..inference import pick_device

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_global_zero() -> bool:
    """True in a single-process run and in global rank 0 of a distributed one."""
    if getattr(rank_zero_only, "rank", 0) != 0:
        return False
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


def local_device(accelerator: str) -> torch.device:
    """The device for this process's own work outside the trainer (its GPU under DDP: cuda:LOCAL_RANK)."""
    device = pick_device(accelerator)
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device
