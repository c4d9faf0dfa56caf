"""What a training stage shows while it runs: a rich bar on a terminal, one log line per epoch elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger("supersub")


class StageProgressBar(RichProgressBar):
    """Lightning's rich bar, naming the stage and counting epochs from 1 (``final 1/1``, not ``Epoch 0/0``)."""

    def __init__(self, stage: str) -> None:
        super().__init__(leave=True)
        self.stage = stage

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"{self.stage} epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            text += f"/{self.trainer.max_epochs}"
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version is the stage name, clipped: noise
        return items


class EpochLines(L.Callback):
    """One log line per finished epoch (for log files and pipes, where a redrawn bar wraps into many lines)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        values = " ".join(f"{k}={float(metrics[k]):.4g}" for k in ("train_loss", "val_loss", "val_acc_super",
                                                                   "val_acc_sub") if k in metrics)
        log.info("%s epoch %d/%d: %s (%.1fs)", self.stage, trainer.current_epoch + 1, trainer.max_epochs, values,
                 time.perf_counter() - self._start)


def progress_callback(stage: str, enabled: bool, tty: bool | None = None) -> L.Callback | None:
    """The bar on a terminal, epoch lines when stderr is not one, nothing when progress is off."""
    if not enabled:
        return None
    tty = sys.stderr.isatty() if tty is None else tty
    return StageProgressBar(stage) if tty else EpochLines(stage)
