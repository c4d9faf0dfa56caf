"""One pretraining (or fine-tuning) run on a class folder: decode, fit with Lightning, test, save atomically.

``OUT`` is the portable checkpoint ``train --weights OUT`` reads; Lightning's checkpoints and logs live in
``OUT.d/`` (``checkpoints/last.ckpt`` is what ``--resume`` continues) and the summary in ``OUT.json``.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from torchmetrics.functional.classification import multiclass_accuracy

from ..config import TrainConfig, config_to_dict
from ..data.cache import decode_images
from ..data.module import TensorDataModule
from ..data.splits import stratified_split
from ..errors import SupersubError
from ..io import load_checkpoint, write_json_atomic
from ..run_config import resolve_config
from ..models.feature_cache import extract_features
from ..training.distributed import local_device
from ..training.finetune import cache_dir, extraction_batch
from ..training.lightning_fit import (
    EpochTimer, build_trainer, check_resumable, fit_interruptibly, in_scoped_process_state, quiet_lightning,
)
from ..training.loggers import keep_csv_history
from .folder import folder_classes, read_class_folder, read_class_list
from .partition_network import save_pretrained
from .module import PretrainModule

log = logging.getLogger("supersub")

PRETRAIN_REGIMES = ("full", "discriminative", "partial")


def work_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.d"


def summary_path(out: Path) -> Path:
    return out.parent / f"{out.name}.json"


def resolve_regime(cfg: TrainConfig, chosen: bool) -> None:
    """``chosen`` (the user set optim.finetune): it must be full or discriminative. Else full from scratch,
    discriminative (seed 002: transferred layers slower than the new head) from starting weights."""
    if chosen:
        if cfg.optim.finetune not in PRETRAIN_REGIMES:
            raise SupersubError(f"optim.finetune: pretrain trains the backbone: use full, discriminative or partial, "
                                f"not {cfg.optim.finetune}")
        if cfg.optim.finetune == "partial" and not (cfg.model.pretrained or cfg.model.weights is not None):
            raise SupersubError("optim.finetune=partial keeps the early stages as they are: start from weights "
                                "(--pretrained or --weights), not from random ones")
        return
    starts_from_weights = bool(cfg.model.pretrained) or cfg.model.weights is not None
    cfg.optim.finetune = "discriminative" if starts_from_weights else "full"


def load_images(root: Path, classes: list[str], cfg: TrainConfig, per_class: int | None,
                missing_ok: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    records = read_class_folder(root, classes, per_class, cfg.seed, missing_ok)
    decoded = decode_images(records, cfg.data.image_size, skip_bad=cfg.data.skip_bad_images,
                            cache_dir=cfg.data.cache_dir)
    if decoded.bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(decoded.bad), decoded.bad[0])
    labels = torch.tensor([records[i].sub_index for i in decoded.kept], dtype=torch.long)
    return decoded.images, labels


def model_inputs(module: PretrainModule, images: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """What the module trains on: the images, or with finetune=partial the frozen trunk's outputs (computed once,
    float16, in the feature cache that train's partial regime shares)."""
    if module.split is None:
        return images
    device = local_device(cfg.trainer.accelerator)
    log.info("finetune=partial: the trunk's outputs are computed once; augmentation is off")
    return extract_features(module.split.trunk, images, module.net.prepare, batch_size=extraction_batch(cfg, device),
                            device=device, cache_dir=cache_dir(cfg), dtype=torch.float16)


@torch.no_grad()
def accuracy(module: PretrainModule, inputs: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of the class head on ``inputs`` (what :func:`model_inputs` gives)."""
    module = module.to(device).eval()
    logits = torch.cat([module(inputs[i:i + batch_size].to(device))[0].cpu()
                        for i in range(0, len(inputs), batch_size)])
    n = module.net.classifier[-1].out_features
    return 100.0 * float(multiclass_accuracy(logits, labels, num_classes=n, average="micro"))


def pretrain_run(data: str | Path, out: str | Path, config: TrainConfig | dict[str, Any] | str | Path | None = None,
                 *, test_data: str | Path | None = None, overwrite: bool = False, resume: bool = False,
                 **overrides: Any) -> dict[str, Any]:
    """:func:`supersub.api.pretrain`: the configuration from ``config`` and dotted ``overrides``, then :func:`pretrain`."""
    cfg = resolve_config(config, **overrides)
    short = {"epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size"}
    chosen = finetune_chosen(config, {short.get(k, k): v for k, v in overrides.items()})
    return pretrain(Path(data), Path(out), cfg, Path(test_data) if test_data is not None else None,
                    overwrite=overwrite, resume=resume, finetune_chosen=chosen)


def finetune_chosen(config: TrainConfig | dict[str, Any] | str | Path | None, overrides: dict[str, Any]) -> bool:
    """Did the caller pick optim.finetune? (The config resolves 'auto' to a regime, so ask the raw inputs.)"""
    if overrides.get("optim.finetune", "auto") != "auto":
        return True
    if isinstance(config, TrainConfig):
        return config.optim.finetune != "frozen"  # frozen is what 'auto' becomes with starting weights
    if isinstance(config, (str, Path)):
        config = yaml.safe_load(Path(config).read_text(encoding="utf-8")) if Path(config).is_file() else None
    optim = config.get("optim") if isinstance(config, dict) else None
    return isinstance(optim, dict) and optim.get("finetune", "auto") != "auto"


@in_scoped_process_state
def pretrain(data: Path, out: Path, cfg: TrainConfig, test_data: Path | None = None, overwrite: bool = False,
             resume: bool = False, finetune_chosen: bool = False) -> dict[str, Any]:
    """Train ``cfg.model``'s backbone on ``data``'s classes; save it to ``out``; returns the summary."""
    quiet_lightning()
    t0 = time.perf_counter()
    resolve_regime(cfg, finetune_chosen)
    work = work_dir(out)
    if out.exists() and not (overwrite or resume):
        raise SupersubError(f"{out}: exists (use --overwrite to replace it, --resume to continue its run)")
    classes = read_class_list(cfg.pretrain.classes) if cfg.pretrain.classes else folder_classes(data)
    images, labels = load_images(data, classes, cfg, cfg.pretrain.per_class)
    test = load_images(test_data, classes, cfg, None, missing_ok=True) if test_data is not None else None
    log.info("%s: %d images of %d classes%s", data, len(labels), len(classes),
             f"; binary heads: B={cfg.pretrain.binary_partition}, K={cfg.pretrain.partitions}"
             if cfg.pretrain.binary_partition > 0 else "")
    if overwrite and not resume and work.exists():
        shutil.rmtree(work)
    train_idx, val_idx = stratified_split(labels.tolist(), cfg.data.val_fraction, cfg.seed)
    last = work / "checkpoints" / "last.ckpt"
    resuming = resume and last.is_file()
    torch.manual_seed(cfg.seed)
    module = PretrainModule(config_to_dict(cfg), classes, load_weights=not resuming)
    if resuming:  # loaded now, not only at fit start: the trunk's outputs depend on the run's weights
        checkpoint = load_checkpoint(last)
        check_resumable(checkpoint, cfg, last)
        module.load_state_dict(checkpoint["state_dict"])
    inputs = model_inputs(module, images, cfg)
    test_inputs = (model_inputs(module, test[0], cfg), test[1]) if test is not None else None
    dm = TensorDataModule(inputs, labels, labels, train_idx, val_idx, cfg.optim.batch_size, cfg.seed,
                          cfg.data.num_workers)
    monitor = "val_loss" if val_idx else "train_loss"
    ckpt = ModelCheckpoint(dirpath=work / "checkpoints", filename="best", monitor=monitor, mode="min", save_last=True)
    timer = EpochTimer()
    callbacks: list[Any] = [ckpt, EarlyStopping(monitor=monitor, mode="min", patience=cfg.optim.patience),
                            LearningRateMonitor(logging_interval="epoch"), timer]
    if cfg.trainer.progress:
        callbacks.append(RichProgressBar(leave=True))
    try:
        trainer = build_trainer(cfg, work, "pretrain", cfg.optim.epochs, callbacks)
    except (ValueError, TypeError, MisconfigurationException) as e:
        raise SupersubError(f"trainer: {str(e).strip().splitlines()[0]}") from None
    with keep_csv_history(work, "pretrain", resuming and trainer.is_global_zero):
        fit_interruptibly(trainer, module, datamodule=dm, ckpt_path=str(last) if resuming else None)
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    if best is not None and best.is_file():
        module.load_state_dict(load_checkpoint(best)["state_dict"])
    device = local_device(cfg.trainer.accelerator)
    summary: dict[str, Any] = {
        "data": str(data), "n_images": len(labels), "n_classes": len(classes), "epochs_run": int(trainer.current_epoch),
        "finetune": cfg.optim.finetune, "binary_partition": cfg.pretrain.binary_partition,
        "partitions": cfg.pretrain.partitions if cfg.pretrain.binary_partition > 0 else 0,
        "seconds_per_epoch": round(sum(timer.seconds) / len(timer.seconds), 2) if timer.seconds else None,
    }
    if val_idx:
        idx = torch.as_tensor(val_idx)
        summary["val_acc"] = round(accuracy(module, inputs[idx], labels[idx], device), 2)
    if test_inputs is not None:
        summary["test_data"], summary["n_test_images"] = str(test_data), len(test_inputs[1])
        summary["test_acc"] = round(accuracy(module, *test_inputs, device), 2)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    net = module.net.cpu().eval()
    partitions = module.partitions.tolist() if module.partitions is not None else []
    save_pretrained(net, out, {"config": config_to_dict(cfg), "classes": classes, "partitions": partitions,
                               "summary": summary})
    write_json_atomic(summary_path(out), summary)
    return summary
