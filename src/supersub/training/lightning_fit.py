"""One training stage: build the Lightning Trainer from the config, fit, restore the best weights."""

from __future__ import annotations

import functools
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
import torch
import torch.utils.deterministic  # the fill flag of torch.use_deterministic_algorithms
from torch import nn
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar

from ..config import TrainConfig, config_to_dict
from ..data.module import TensorDataModule
from ..errors import SupersubError
from ..io import load_checkpoint
from ..memory import keep_freed_memory
from ..taxonomy import Taxonomy
from .distributed import local_device
from .extract import extract_on_devices
from .finetune import GradualUnfreeze, cached_rows
from .loggers import build_loggers, end_stage_runs, keep_csv_history
from .module import HierarchicalModule
from .process import (  # noqa: F401 - fit's own names, still importable from here
    LIGHTNING_LOGGERS, PROCESS_ENV, _devices, global_rng_kept, quiet_lightning, scoped_process_state,
)
from .progress import progress_callback

log = logging.getLogger(__name__)



@dataclass
class FitResult:
    model: nn.Module  # a HierarchicalClassifier, or a BaggingEnsemble of them; on the CPU, in eval mode
    best_checkpoint: Path | None
    epochs_run: int
    best_score: float | None
    monitor: str
    seconds_per_epoch: float | None = None  # mean wall time of an epoch (training and its validation)
    feature_seconds: float | None = None  # finetune=frozen: the one-off backbone feature extraction
    details: dict[str, Any] = field(default_factory=dict)  # what else the fitter reports (trees, members)


class EpochTimer(L.Callback):
    """Wall time of every epoch (training and its validation), logged as ``epoch_seconds``."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        pl_module.log("epoch_seconds", self.seconds[-1], on_epoch=True, sync_dist=True)


def check_resumable(checkpoint: dict[str, Any], cfg: TrainConfig, last: Path) -> None:
    """One-cycle fixes its total number of steps when it starts: a resumed run must keep what sets it."""
    if cfg.optim.scheduler != "onecycle":
        return
    saved = checkpoint.get("hyper_parameters", {}).get("config", {})
    current = config_to_dict(cfg)
    for section, key in (("optim", "epochs"), ("optim", "batch_size"), ("novelty", "calibration_epochs")):
        before, now = saved.get(section, {}).get(key), current[section][key]
        if before != now:
            raise SupersubError(f"{last}: --resume with optim.scheduler=onecycle needs the interrupted run's "
                                f"{section}.{key} ({before}), not {now}")


def build_trainer(cfg: TrainConfig, run_path: Path, stage: str, epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
    """The Lightning Trainer for one stage; bad accelerator/devices/precision values surface as ValueErrors.

    ``trainer.deterministic`` turns on torch's deterministic algorithms (Lightning does, for the whole process),
    which also fill every new tensor with NaN, a guard against code that reads uninitialised memory. supersub
    writes every tensor it allocates, and the fill made a full fine-tuning step on a CPU 22% slower (measured
    with benchmarks/speed.py's workers, docs/results/speed.md), so it is turned off; the algorithms stay
    deterministic. Freed memory stays in the process for the next batch (:mod:`supersub.memory`).
    """
    keep_freed_memory()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=cfg.trainer.accelerator,
        devices=_devices(cfg.trainer.devices),
        strategy=cfg.trainer.strategy,
        num_nodes=cfg.trainer.num_nodes,
        precision=cfg.trainer.precision,
        deterministic="warn" if cfg.trainer.deterministic else False,
        callbacks=callbacks,
        logger=build_loggers(cfg.trainer.loggers, run_path, stage),
        gradient_clip_val=cfg.optim.grad_clip,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        default_root_dir=run_path,
    )
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return trainer


def fit_interruptibly(trainer: L.Trainer, module: L.LightningModule, **kwargs: Any) -> None:
    """``trainer.fit``, with a Ctrl-C raised again as :class:`KeyboardInterrupt` instead of Lightning's ``exit(1)``.

    Lightning catches the interrupt, tears down, ignores SIGINT from then on and calls ``sys.exit(1)``: the
    process would end with no message and code 1, and a library caller would lose Ctrl-C for good. Here the
    SIGINT handler is put back and the interrupt goes on up to the caller (the CLI: one line, exit 130).
    """
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        trainer.fit(module, **kwargs)
    except SystemExit:
        if not trainer.interrupted:
            raise
        if main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt from None


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``None``: unchanged), then restore the previous count.

    Heads on cached frozen features are tiny matrix products: one thread does them as fast as two, and on a
    shared CPU it avoids the OpenMP barrier waits that otherwise dominate each step (measured: a linear
    head's backward pass took 0.15 s instead of microseconds on a loaded 2-core machine).
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# a @contextmanager is a decorator too (contextlib.ContextDecorator); each call enters a fresh scope
in_scoped_process_state = scoped_process_state()


def _collects_its_garbage(fit: Callable[..., FitResult]) -> Callable[..., FitResult]:
    """Run ``fit``, then a full garbage collection: Lightning's trainer, the module and the data module refer to one
    another, so a finished fit's copies of the feature rows (a matrix of every image) would wait for Python's rarely
    run full collection; every stage's stayed in memory until the run ended (40-70 KB an image over its stages)."""

    @functools.wraps(fit)
    def collected(*args: Any, **kwargs: Any) -> FitResult:
        try:
            return fit(*args, **kwargs)
        finally:
            gc.collect()

    return collected


@_collects_its_garbage
@in_scoped_process_state
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
    extra_callbacks: Sequence[L.Callback] = (),
) -> FitResult:
    """Train on ``train_idx`` (early stopping on ``val_idx``) and return the model at its best epoch.

    Checkpoints go to ``run_path/checkpoints/<stage>/`` (best.ckpt, last.ckpt), the epoch logs under
    ``run_path/logs/`` (``<stage>/metrics.csv`` for CSV). With ``resume`` an existing last.ckpt is
    continued, and its weights, not the hub's, are the starting point. With ``optim.finetune=frozen`` the
    backbone features of all ``images`` are computed once here and the trainer only sees those rows.
    ``extra_callbacks`` are added to the trainer's own (benchmarks/speed.py times the steps with one).
    """
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    epochs = epochs or cfg.optim.epochs
    ckpt_dir = run_path / "checkpoints" / stage
    last = ckpt_dir / "last.ckpt"
    resuming = resume and last.is_file()
    module = HierarchicalModule(config_to_dict(cfg), taxonomy.to_dict(), load_weights=not resuming)
    if resuming:
        checkpoint = load_checkpoint(last)
        check_resumable(checkpoint, cfg, last)
        module.load_state_dict(checkpoint["state_dict"])
        done = int(checkpoint.get("epoch", -1)) + 1  # Lightning saves the 0-based index of the epoch just ended
        log.info("resuming: stage %s from epoch %d of %d (%d done, %s)", stage, done + 1, epochs, done, last)
    inputs, feature_seconds = images, None
    if module.on_cache:
        views = ("identity", "hflip") if cfg.augment.cached_hflip else ("identity",)
        log.info("%s: finetune=%s: frozen outputs computed once per view (%s); other augmentation is off", stage,
                 cfg.optim.finetune, ", ".join(views))
        start = time.perf_counter()
        extract_on_devices(module.model, images, cfg, views)  # several devices: each rank a shard, into the cache
        inputs = cached_rows(module.model, images, cfg, local_device(cfg.trainer.accelerator), views)
        feature_seconds = time.perf_counter() - start
    dm = TensorDataModule(
        inputs, y_super, y_sub, train_idx, val_idx, cfg.optim.batch_size, cfg.seed, cfg.data.num_workers
    )
    monitor = "val_loss" if len(val_idx) > 0 else "train_loss"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_last=True)
    timer = EpochTimer()
    callbacks: list[L.Callback] = [
        ckpt,
        EarlyStopping(monitor=monitor, mode="min", patience=cfg.optim.patience),
        LearningRateMonitor(logging_interval="epoch"),
        timer,
    ]
    if cfg.optim.finetune == "gradual":
        callbacks.append(GradualUnfreeze(cfg.optim.unfreeze_epoch))
    progress = progress_callback(stage, cfg.trainer.progress)
    if progress is not None:
        callbacks.append(progress)
    try:
        trainer = build_trainer(cfg, run_path, stage, epochs, [*callbacks, *extra_callbacks])
    except (ValueError, TypeError, MisconfigurationException) as e:
        raise SupersubError(f"trainer: {str(e).strip().splitlines()[0]}") from None
    if cfg.optim.finetune == "gradual" and trainer.world_size > 1:
        raise SupersubError("optim.finetune=gradual cannot run on several processes (DDP fixes the trained "
                            "parameters when it wraps the model); use finetune=discriminative or one device")
    with keep_csv_history(run_path, stage, resuming and trainer.is_global_zero), \
            cpu_threads(1 if cfg.optim.finetune == "frozen" and trainer.world_size == 1 else None):
        try:
            fit_interruptibly(trainer, module, datamodule=dm, ckpt_path=str(last) if resuming else None)
        finally:
            end_stage_runs(trainer.loggers)  # the next stage opens its own tracking run
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    if best is not None and best.is_file():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    if trainer.world_size > 1:
        # rank 0 deletes the stage's Lightning checkpoints once the stage is done: not before every rank has read
        # best.ckpt (a rank that found it gone kept its last epoch's weights, or failed, under load)
        trainer.strategy.barrier("supersub: best weights restored")
    score = ckpt.best_model_score
    return FitResult(
        model=module.model.cpu().eval(),
        best_checkpoint=best,
        epochs_run=int(trainer.current_epoch),
        best_score=float(score) if score is not None else None,
        monitor=monitor,
        seconds_per_epoch=sum(timer.seconds) / len(timer.seconds) if timer.seconds else None,
        feature_seconds=feature_seconds,
    )
