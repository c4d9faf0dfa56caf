"""The measured sides of benchmarks/speed.py. Each runs in its own worker process (:mod:`_speed.workers`):
``side(gate, **kwargs)`` sets itself up, then calls ``gate.step(images)`` before every unit of work it times.

supersub's sides go through the code its commands run (``fit_stage`` for ``supersub train``'s stages,
``api.predict`` for ``supersub predict``); the reference sides are what a plain PyTorch user would write for
the same model, batch size, augmentation and input.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from _speed.gate import Gate
from harness import open_run
from supersub import api
from supersub.config import TrainConfig, load_config
from supersub.data.augment import augment_uint8, build_augmentation
from supersub.data.cache import decode_images
from supersub.data.formats import read_images
from supersub.memory import keep_freed_memory
from supersub.models.hierarchical import build_model
from supersub.training.lightning_fit import fit_stage
from supersub.training.objective import build_loss

UNBOUNDED_EPOCHS = 10_000  # gated training runs until the driver says stop


def training_rows(n: int, val_fraction: float, seed: int, limit: int | None = None) -> list[int]:
    """The rows a stage trains on: a seeded ``1 - val_fraction`` share of the ``n`` images (at most ``limit``)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    rows = order[: max(1, round(n * (1.0 - val_fraction)))]
    return sorted(rows[:limit] if limit else rows)


def _labelled(data: str, overrides: dict[str, Any]) -> tuple[TrainConfig, Any, list[int]]:
    """The config, the decoded labelled images (read from the driver's image cache) and the training rows."""
    cfg = load_config(None, overrides)
    labelled = api.load_labelled(data, cfg)
    return cfg, labelled, training_rows(len(labelled.images), cfg.data.val_fraction, cfg.seed)


class _GateCallback(L.Callback):
    """Puts the gate between two of Lightning's batches (after the batch's transfer and augmentation hooks)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.gate.step(len(batch[0])):
            trainer.should_stop = True  # this batch still runs (untimed), then the fit ends


def supersub_training(gate: Gate, data: str, overrides: dict[str, Any]) -> None:
    """supersub's training step: ``fit_stage`` (the HierarchicalModule, TensorDataModule and the Trainer of
    ``supersub train``) on the decoded images, no validation rows; one gate step per batch."""
    cfg, labelled, rows = _labelled(data, overrides)
    with tempfile.TemporaryDirectory(prefix="speed-fit-") as tmp:
        fit_stage(labelled.images, labelled.y_super, labelled.y_sub, rows, [], labelled.dataset.taxonomy, cfg,
                  Path(tmp), "speed", epochs=UNBOUNDED_EPOCHS, extra_callbacks=[_GateCallback(gate)])


def plain_training(gate: Gate, data: str, overrides: dict[str, Any], keep_memory: bool = False) -> None:
    """The reference: a plain PyTorch loop over the same model, loss, optimizer, schedule, batch size and
    augmentation (same rows; DataLoader over a TensorDataset; zero_grad / backward / step). With ``keep_memory``
    it runs with supersub's allocator setting (:mod:`supersub.memory`), else with glibc's defaults."""
    if keep_memory:
        keep_freed_memory()
    cfg, labelled, rows = _labelled(data, overrides)
    taxonomy = labelled.dataset.taxonomy
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, taxonomy, load_weights=True).train()
    loss_fn = build_loss(cfg, taxonomy)
    augment = build_augmentation(cfg.augment, cfg.data.image_size)
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    loader = DataLoader(TensorDataset(labelled.images[rows], labelled.y_super[rows], labelled.y_sub[rows]),
                        batch_size=o.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=UNBOUNDED_EPOCHS * len(loader))
    while True:
        for images, y_super, y_sub in loader:
            if not gate.step(len(images)):
                return
            super_logits, sub_logits, _ = model(augment_uint8(augment, images))
            loss = loss_fn(super_logits, sub_logits, y_super, y_sub).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


class _EpochClock(L.Callback):
    """Each epoch's wall time, split into its batches (first batch start to last batch end) and the rest
    (the epoch's start, the checkpoints and logging at its end, up to the next epoch or the end of training),
    so an epoch of more rows can be extrapolated: the rest is paid once per epoch, the batches per batch."""

    def __init__(self) -> None:
        self.marks: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        if self.marks:
            self.marks[-1]["next"] = now
        self.marks.append({"start": now, "batches": 0})

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.marks[-1].setdefault("first", time.perf_counter())
        self.marks[-1]["batches"] += 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.marks[-1]["last"] = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks[-1]["next"] = time.perf_counter()

    def epochs(self) -> list[dict[str, float]]:
        """Per epoch: ``seconds`` in all, ``batch_seconds`` of its ``batches``, ``other_seconds`` (the rest)."""
        out = []
        for m in self.marks:
            batch = m["last"] - m["first"]
            out.append({"seconds": m["next"] - m["start"], "batch_seconds": batch, "batches": m["batches"],
                        "other_seconds": m["next"] - m["start"] - batch})
        return out


def cached_regime(gate: Gate, data: str, overrides: dict[str, Any], feature_dir: str, limit: int) -> None:
    """A cached regime (frozen or partial) through ``fit_stage``, as ``supersub train`` runs it, on ``limit``
    training rows with an empty feature cache: one gate step; extras are the one-off fill and each epoch."""
    cfg, labelled, rows = _labelled(data, overrides)
    rows = rows[:limit]
    fit_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_dir": Path(feature_dir)})})
    clock = _EpochClock()
    if not gate.step(len(rows)):
        return
    with tempfile.TemporaryDirectory(prefix="speed-fit-") as tmp:
        result = fit_stage(labelled.images[rows], labelled.y_super[rows], labelled.y_sub[rows],
                           list(range(len(rows))), [], labelled.dataset.taxonomy, fit_cfg, Path(tmp), "speed",
                           extra_callbacks=[clock])
    gate.extra = {"fill_seconds": result.feature_seconds or 0.0, "epochs": clock.epochs(), "rows": len(rows)}


def supersub_predict(gate: Gate, run: str, folder: str, warmup_folder: str, work: str) -> None:
    """``supersub predict RUN FOLDER --out CSV`` (``api.predict``, the CLI's twin), one gate step per call.

    Every call gets an empty feature cache (``SUPERSUB_CACHE_DIR``), as new images would: the backbone runs
    on every image. A call on ``warmup_folder`` first warms everything up (untimed).
    """
    n = len(read_images(Path(folder)).records)
    calls = 0

    def predict(images: str) -> None:
        nonlocal calls
        os.environ["SUPERSUB_CACHE_DIR"] = str(Path(work) / f"cache-{calls}")
        api.predict(run, images, out=Path(work) / f"predictions-{calls}.csv")
        calls += 1

    predict(warmup_folder)
    while gate.step(n):
        predict(folder)


def pure_forward(gate: Gate, run: str, folder: str, batch_size: int, pool: int, keep_memory: bool = False) -> None:
    """The reference: the run's backbone alone on pre-loaded tensors (decoded, normalised and resized to the
    backbone's input size beforehand), eval mode, ``torch.inference_mode``, channels-last; one gate step per
    batch of ``batch_size``, cycling through ``pool`` images. ``keep_memory``: as in :func:`plain_training`."""
    if keep_memory:
        keep_freed_memory()
    model, cfg, _ = open_run(run).load_model()
    records = read_images(Path(folder)).records[:pool]
    images = decode_images(records, cfg.data.image_size).images
    with torch.inference_mode():
        batches = [model.prepare(images[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
                   for i in range(0, len(images) - batch_size + 1, batch_size)]
    backbone = model.backbone.eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for x in batches[:2]:  # warm-up
            backbone(x)
        i = 0
        while gate.step(len(batches[i % len(batches)])):
            backbone(batches[i % len(batches)])
            i += 1


def idle(gate: Gate) -> None:
    """Nothing: the worker's memory after the imports every side starts from."""


def prepare_inputs(gate: Gate, plan: dict[str, Any], work: str, data_overrides: dict[str, Any],
                   run_overrides: dict[str, Any]) -> None:
    """Decode the labelled data once into the image cache every side reads (``data_overrides`` name it), copy
    the folder to predict, and train the run (the recipe, ``run_overrides``) that (c) predicts with; one gate
    step, whose extras describe the result."""
    if not gate.step(1):
        return
    start = time.perf_counter()
    root = Path(work)
    data = Path(plan["data"])
    if plan["smoke"]:
        data = root / "synth"
        api.synth(data, train_per_class=8, test_per_class=3, size=plan["image_size"])
    cfg = load_config(None, data_overrides)
    labelled = api.load_labelled(data, cfg)
    n_train = len(training_rows(len(labelled.images), cfg.data.val_fraction, cfg.seed))
    if plan["smoke"]:
        folder = data / "test_images"
    else:
        paths = [r.path for r in labelled.dataset.records[: plan["predict_images"]]]
        folder = _copy_images(paths, root / "predict")
    images = sorted(p for p in folder.iterdir() if p.is_file())
    warmup = _copy_images(images[: 2 * plan["batch_size"]], root / "warmup")
    run_data = data if plan["smoke"] else _subset(data, plan["run_per_class"], plan["seed"], root / "run-data")
    with _env("SUPERSUB_CACHE_DIR", str(root / "run-cache")):  # the run's config keeps no cache_dir
        api.train(run_data, root / "run", **run_overrides)
    gate.extra = {"data": str(data), "image_cache": str(cfg.data.cache_dir), "n_images": len(labelled.images),
                  "n_train": n_train, "folder": str(folder), "n_predict": len(images), "warmup_folder": str(warmup),
                  "run": str(root / "run"), "threads": torch.get_num_threads(),
                  "versions": {"torch": torch.__version__, "lightning": L.__version__},
                  "seconds": time.perf_counter() - start}


def _copy_images(paths: list[Path], out: Path) -> Path:
    out.mkdir(parents=True)
    for p in paths:
        shutil.copyfile(p, out / p.name)
    return out


def _subset(data: Path, per_class: int, seed: int, out: Path) -> Path:
    """A competition-layout copy of ``data`` with ``per_class`` images of every subclass (images linked)."""
    table = pd.read_csv(data / "train_data.csv").sample(frac=1.0, random_state=seed)
    table = table.groupby("subclass_index").head(per_class).sort_index()
    out.mkdir(parents=True)
    table.to_csv(out / "train_data.csv", index=False)
    for name in ("superclass_mapping.csv", "subclass_mapping.csv"):
        shutil.copyfile(data / name, out / name)
    (out / "train_images").symlink_to((data / "train_images").resolve(), target_is_directory=True)
    return out


@contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
