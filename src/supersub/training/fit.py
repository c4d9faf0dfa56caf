"""One training stage: build the Lightning Trainer from the config, fit, restore the best weights."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger

from ..config import TrainConfig, config_to_dict
from ..data.module import TensorDataModule
from ..models.model import HierarchicalClassifier
from ..run import load_checkpoint
from ..taxonomy import Taxonomy
from .module import HierarchicalModule


@dataclass
class FitResult:
    model: HierarchicalClassifier
    best_checkpoint: Path | None
    epochs_run: int
    best_score: float | None
    monitor: str


def _quiet_lightning() -> None:
    """Lightning's tips about workers and summaries are noise for in-memory tensor datasets."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer`.*")


def _devices(value: str) -> int | str | list[int]:
    if value.isdigit():
        return int(value)
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return value


def fit_stage(
    images: torch.Tensor,
    y_super: torch.Tensor,
    y_sub: torch.Tensor,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    taxonomy: Taxonomy,
    cfg: TrainConfig,
    run_path: Path,
    stage: str,
    epochs: int | None = None,
    resume: bool = False,
) -> FitResult:
    """Train on ``train_idx`` (early stopping on ``val_idx``) and return the model at its best epoch.

    Checkpoints go to ``run_path/checkpoints/<stage>/`` (best.ckpt, last.ckpt), the epoch log to
    ``run_path/logs/<stage>/metrics.csv``. With ``resume`` an existing last.ckpt is continued.
    """
    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    epochs = epochs or cfg.optim.epochs
    module = HierarchicalModule(config_to_dict(cfg), taxonomy.to_dict())
    dm = TensorDataModule(
        images, y_super, y_sub, train_idx, val_idx, cfg.optim.batch_size, cfg.seed, cfg.data.num_workers
    )
    monitor = "val_loss" if len(val_idx) > 0 else "train_loss"
    ckpt_dir = run_path / "checkpoints" / stage
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_last=True)
    callbacks: list[L.Callback] = [
        ckpt,
        EarlyStopping(monitor=monitor, mode="min", patience=cfg.optim.patience),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if cfg.trainer.progress:
        callbacks.append(RichProgressBar(leave=True))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=cfg.trainer.accelerator,
        devices=_devices(cfg.trainer.devices),
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        deterministic="warn" if cfg.trainer.deterministic else False,
        callbacks=callbacks,
        logger=CSVLogger(run_path, name="logs", version=stage),
        gradient_clip_val=cfg.optim.grad_clip,
        enable_progress_bar=cfg.trainer.progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        default_root_dir=run_path,
    )
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume and last.is_file() else None)
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    if best is not None and best.is_file():
        state = load_checkpoint(best)["state_dict"]
        module.load_state_dict(state)
    score = ckpt.best_model_score
    return FitResult(
        model=module.model.cpu().eval(),
        best_checkpoint=best,
        epochs_run=int(trainer.current_epoch),
        best_score=float(score) if score is not None else None,
        monitor=monitor,
    )
