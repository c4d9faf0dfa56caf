"""The Python API: synthesise, train, predict, evaluate, demo. The CLI is a thin layer over these.

    >>> import supersub.api as ss
    >>> ss.synth("data/synth")
    >>> ss.train("data/synth", "runs/a", epochs=10)
    >>> preds = ss.predict("runs/a", "data/synth/test_images", out="preds.csv", probs=True)
    >>> metrics = ss.evaluate("runs/a", "data/synth/test_images", "data/synth/test_truth.csv")
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import TrainConfig, build_config, load_config
from .data.cache import decode_images
from .data.formats import read_dataset, read_flat, read_image_list, read_labels
from .data.records import Dataset
from .data.splits import holdout_subclasses, stratified_split
from .data.synth import write_synth
from .errors import SupersubError
from .inference import Outputs, pick_device, run_model
from .io import write_atomic, write_json_atomic
from .metrics import competition_metrics
from .models.model import HierarchicalClassifier
from .novelty.decide import decide
from .novelty.holdout import calibrate_thresholds, save_calibration
from .novelty.probs import novel_probability, with_novel_column
from .run import RunDir, Thresholds
from .taxonomy import Taxonomy
from .losses import OUTLIER
from .training.fit import fit_stage

log = logging.getLogger("supersub")


@dataclass
class LabelledImages:
    """A labelled dataset decoded into tensors (images uint8 N,3,H,W; labels long N)."""

    dataset: Dataset
    images: torch.Tensor
    y_super: torch.Tensor
    y_sub: torch.Tensor


def load_labelled(path: str | Path, cfg: TrainConfig) -> LabelledImages:
    """Read a competition-layout or nested-folder dataset and decode it once."""
    ds = read_dataset(Path(path))
    decoded = decode_images(
        ds.records, cfg.data.image_size, skip_bad=cfg.data.skip_bad_images, cache_dir=cfg.data.cache_dir
    )
    if decoded.bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(decoded.bad), decoded.bad[0])
    records = [ds.records[i] for i in decoded.kept]
    if not records:
        raise SupersubError(f"{path}: no readable images")
    ds = Dataset(records, ds.taxonomy, ds.source, ds.skipped + decoded.bad)
    y_super = torch.tensor([r.super_index for r in records], dtype=torch.long)
    y_sub = torch.tensor([r.sub_index for r in records], dtype=torch.long)
    return LabelledImages(ds, decoded.images, y_super, y_sub)


def load_novel_images(path: str | Path, cfg: TrainConfig) -> torch.Tensor:
    """Outlier-exposure images (novel at both levels) as uint8 tensors, a seeded sample of ``novel_count``.

    ``path`` is a flat folder of images, or a CSV with an ``image`` column whose files sit beside it or in
    the sibling folder named as the competition does (``novel_data.csv`` -> ``novel_images/``).
    """
    path = Path(path)
    if path.is_file():
        ds = read_image_list(path)
    else:
        ds = read_flat(path)
    records = ds.records
    if cfg.data.novel_count is not None and cfg.data.novel_count < len(records):
        pick = np.random.default_rng(cfg.seed).choice(len(records), size=cfg.data.novel_count, replace=False)
        records = [records[i] for i in sorted(pick.tolist())]
    decoded = decode_images(records, cfg.data.image_size, skip_bad=cfg.data.skip_bad_images, cache_dir=cfg.data.cache_dir)
    if decoded.bad:
        log.warning("skipped %d unreadable novel image(s), e.g. %s", len(decoded.bad), decoded.bad[0])
    if len(decoded.kept) == 0:
        raise SupersubError(f"{path}: no readable novel images")
    return decoded.images


def _config(config: TrainConfig | dict[str, Any] | str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return build_config({**config.model_dump(mode="json")}, "config") if not overrides else load_config(
            None, {**_flatten(config.model_dump(mode="json")), **overrides}
        )
    if isinstance(config, dict):
        return load_config(None, {**_flatten(config), **overrides})
    return load_config(config, overrides)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a two-headed model on ``data`` into run directory ``out``; returns the run's summary.

    Unless both thresholds are given, a calibration model is first trained with a share of each
    superclass's subclasses held out, the thresholds are chosen on it, and then the final model is trained
    on every subclass (seed 001). ``overrides`` are dotted config keys, e.g. ``**{"optim.epochs": 5}`` or
    the short names ``epochs``, ``lr``, ``batch_size``, ``seed``.
    """
    short = {"epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size"}
    overrides = {short.get(k, k): v for k, v in overrides.items()}
    cfg = _config(config, overrides)
    t0 = time.perf_counter()
    run = RunDir.open(out) if resume else RunDir.create(out, overwrite=overwrite)
    data_ = load_labelled(data, cfg)
    taxonomy = data_.dataset.taxonomy
    assert taxonomy is not None
    run.save_config(cfg)
    run.save_taxonomy(taxonomy)
    log.info("%s: %d images, %d superclasses, %d subclasses", data, len(data_.dataset), taxonomy.n_super, taxonomy.n_sub)

    summary: dict[str, Any] = {"data": str(data), "n_images": len(data_.dataset)}
    n_labelled = len(data_.dataset)
    n_novel_cal = 0
    if cfg.data.novel_data is not None:
        novel = load_novel_images(cfg.data.novel_data, cfg)
        n_novel_cal = int(round(cfg.data.novel_calibration_fraction * len(novel)))
        data_ = _with_outliers(data_, novel)
        summary["n_novel_images"] = len(novel)
        log.info("outlier exposure: %d novel images (%d kept for calibration)", len(novel), n_novel_cal)
    novel_idx = list(range(n_labelled, len(data_.images)))
    labelled = data_.y_sub[:n_labelled].tolist()
    if cfg.novelty.tau_super is not None and cfg.novelty.tau_sub is not None:
        thresholds = Thresholds(cfg.novelty.tau_super, cfg.novelty.tau_sub)
        summary["calibration"] = {"hand_set": True}
    else:
        thresholds, summary["calibration"] = _calibration_stage(
            data_, n_labelled, novel_idx[n_novel_cal:], novel_idx[:n_novel_cal], taxonomy, cfg, run, resume
        )
    run.save_thresholds(thresholds)

    train_idx, val_idx = stratified_split(labelled, cfg.data.val_fraction, cfg.seed)
    log.info("final model: %d train (+%d novel) / %d validation images", len(train_idx), len(novel_idx), len(val_idx))
    result = fit_stage(
        data_.images, data_.y_super, data_.y_sub, train_idx + novel_idx, val_idx, taxonomy, cfg, run.path, "final",
        resume=resume,
    )
    run.save_model(result.model, cfg, taxonomy)
    summary["final"] = {"epochs_run": result.epochs_run, result.monitor: result.best_score}
    if val_idx:
        out_val = run_model(result.model, data_.images[val_idx], device=pick_device(cfg.trainer.accelerator))
        d = decide(out_val.super_probs, out_val.sub_probs, list(taxonomy.sub_to_super), 0.0, 0.0)
        summary["final"]["val_acc_super"] = round(100 * float((d.super_pred == data_.y_super[val_idx]).float().mean()), 2)
        summary["final"]["val_acc_sub"] = round(100 * float((d.sub_pred == data_.y_sub[val_idx]).float().mean()), 2)
    summary["thresholds"] = thresholds.to_dict()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    run.save_metrics(summary)
    return summary


def _with_outliers(data_: LabelledImages, novel: torch.Tensor) -> LabelledImages:
    """Append outlier-exposure images labelled :data:`OUTLIER` at both levels."""
    fill = torch.full((len(novel),), OUTLIER, dtype=torch.long)
    return LabelledImages(
        data_.dataset, torch.cat([data_.images, novel]), torch.cat([data_.y_super, fill]), torch.cat([data_.y_sub, fill])
    )


def _calibration_stage(
    data_: LabelledImages, n_labelled: int, novel_train: list[int], novel_cal: list[int], taxonomy: Taxonomy,
    cfg: TrainConfig, run: RunDir, resume: bool,
) -> tuple[Thresholds, dict[str, Any]]:
    held = holdout_subclasses(taxonomy, cfg.data.holdout_fraction, cfg.seed)
    if not held or cfg.data.val_fraction <= 0:
        raise SupersubError(
            "novelty: calibration needs data.holdout_fraction > 0, data.val_fraction > 0 and a superclass with "
            "two or more subclasses; otherwise set novelty.tau_super and novelty.tau_sub by hand"
        )
    held_set = set(held)
    keep = [j for j in range(taxonomy.n_sub) if j not in held_set]
    cal_tax, remap = taxonomy.subset(keep)
    is_held = torch.tensor([int(j) in held_set for j in data_.y_sub[:n_labelled].tolist()])
    seen_idx = torch.nonzero(~is_held).flatten()
    held_idx = torch.nonzero(is_held).flatten()
    y_sub_cal = data_.y_sub.clone()
    y_sub_cal[seen_idx] = torch.tensor([remap[int(j)] for j in data_.y_sub[seen_idx].tolist()])
    tr, va = stratified_split(y_sub_cal[seen_idx].tolist(), cfg.data.val_fraction, cfg.seed)
    train_idx, val_idx = seen_idx[tr].tolist(), seen_idx[va].tolist()
    log.info(
        "calibration model: %d subclasses held out as pseudo-novel (%d images); %d train / %d validation",
        len(held), len(held_idx), len(train_idx), len(val_idx),
    )
    result = fit_stage(
        data_.images, data_.y_super, y_sub_cal, train_idx + novel_train, val_idx, cal_tax, cfg, run.path,
        "calibration", epochs=cfg.novelty.calibration_epochs, resume=resume,
    )
    device = pick_device(cfg.trainer.accelerator)
    seen_out = run_model(result.model, data_.images[val_idx], device=device)
    held_out = run_model(result.model, data_.images[held_idx], device=device)
    novel_out = run_model(result.model, data_.images[novel_cal], device=device) if novel_cal else None
    cal = calibrate_thresholds(
        seen_out, data_.y_super[val_idx], y_sub_cal[val_idx], held_out, novel_out, cal_tax, cfg.novelty
    )
    save_calibration(cal, run.calibration_dir)
    info = {
        "held_out_subclasses": [taxonomy.sub_names[j] for j in held],
        "epochs_run": result.epochs_run,
        **cal.summary,
    }
    log.info("thresholds: tau_super=%.4f tau_sub=%.4f", cal.thresholds.tau_super, cal.thresholds.tau_sub)
    return cal.thresholds, info


@dataclass
class Prediction:
    """Decisions and probabilities (with the novel column) for a set of images."""

    names: list[str]
    super_pred: torch.Tensor
    sub_pred: torch.Tensor
    super_probs: torch.Tensor
    sub_probs: torch.Tensor

    def to_frame(self, probs: bool = False) -> pd.DataFrame:
        df = pd.DataFrame(
            {"image": self.names, "superclass_index": self.super_pred.numpy(), "subclass_index": self.sub_pred.numpy()}
        )
        if probs:
            sp = pd.DataFrame(self.super_probs.double().numpy(), columns=[f"super_prob_{i}" for i in range(self.super_probs.shape[1])])
            bp = pd.DataFrame(self.sub_probs.double().numpy(), columns=[f"sub_prob_{j}" for j in range(self.sub_probs.shape[1])])
            df = pd.concat([df, sp, bp], axis=1)
        return df


def predict_tensors(
    model: HierarchicalClassifier, taxonomy: Taxonomy, thresholds: Thresholds, images: torch.Tensor,
    names: list[str], accelerator: str = "auto",
) -> Prediction:
    """The decision rule and calibrated probabilities for decoded images."""
    outputs: Outputs = run_model(model, images, device=pick_device(accelerator))
    sub_to_super = list(taxonomy.sub_to_super)
    d = decide(outputs.super_probs, outputs.sub_probs, sub_to_super, thresholds.tau_super, thresholds.tau_sub)
    q_super = novel_probability(d.super_conf, thresholds.tau_super, thresholds.slope_super)
    q_sub = novel_probability(d.sub_conf, thresholds.tau_sub, thresholds.slope_sub)
    p_super, p_sub = with_novel_column(outputs.super_probs, outputs.sub_probs, d.super_pred, q_super, q_sub, sub_to_super)
    return Prediction(names, d.super_pred, d.sub_pred, p_super, p_sub)


def _predict_dataset(run_dir: str | Path, ds: Dataset, skip_bad: bool) -> tuple[Prediction, Dataset]:
    run = RunDir.open(run_dir)
    model, cfg, taxonomy = run.load_model()
    thresholds = run.load_thresholds()
    decoded = decode_images(ds.records, cfg.data.image_size, skip_bad=skip_bad)
    if decoded.bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(decoded.bad), decoded.bad[0])
    kept = Dataset([ds.records[i] for i in decoded.kept], ds.taxonomy, ds.source, ds.skipped + decoded.bad)
    if not kept.records:
        raise SupersubError(f"{ds.source}: no readable images")
    pred = predict_tensors(model, taxonomy, thresholds, decoded.images, kept.names, cfg.trainer.accelerator)
    return pred, kept


def predict(
    run_dir: str | Path,
    images: str | Path,
    out: str | Path | None = None,
    *,
    probs: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> pd.DataFrame:
    """Predict every image in a flat folder; write the competition CSV to ``out`` when given."""
    if out is not None and Path(out).exists() and not overwrite:
        raise SupersubError(f"{out}: exists (pass --overwrite to replace it)")
    pred, _ = _predict_dataset(run_dir, read_flat(Path(images)), skip_bad)
    df = pred.to_frame(probs)
    if out is not None:
        write_atomic(out, lambda fh: df.to_csv(fh, index=False, float_format="%.6g"))
    return df


def evaluate(
    run_dir: str | Path, images: str | Path, labels: str | Path, *, skip_bad: bool = False, save: bool = True
) -> dict[str, Any]:
    """Competition metrics (accuracy overall/seen/unseen, cross-entropy, per level) on labelled images."""
    run = RunDir.open(run_dir)
    taxonomy = run.load_taxonomy()
    ds = read_labels(Path(labels), Path(images), taxonomy)
    pred, kept = _predict_dataset(run_dir, ds, skip_bad)
    metrics = competition_metrics(
        np.array(kept.super_labels), np.array(kept.sub_labels), pred.super_pred.numpy(), pred.sub_pred.numpy(),
        taxonomy.novel_super, taxonomy.novel_sub, pred.super_probs.numpy(), pred.sub_probs.numpy(),
    )
    if save:
        write_json_atomic(run.path / "evaluations" / f"{Path(labels).stem}.json", {"labels": str(labels), **metrics})
    return metrics


def synth(out: str | Path, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Write the built-in procedural dataset (see :mod:`supersub.data.synth`)."""
    return write_synth(Path(out), seed=seed, **kwargs)


DEMO_MARKER = ".supersub-demo"
DEMO_CONFIG: dict[str, Any] = {"optim.epochs": 12}


def demo(out: str | Path = "runs/demo", *, overwrite: bool = False, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Synthesise the built-in data, train with calibration, evaluate on its test folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SupersubError(f"{out}: exists and is not empty (pass --overwrite to replace the demo)")
        if not (out / DEMO_MARKER).is_file():
            raise SupersubError(f"{out}: not a supersub demo folder (no {DEMO_MARKER}); refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("created by supersub demo\n", encoding="utf-8")
    t0 = time.perf_counter()
    counts = synth(out / "data", seed=seed)
    log.info("built-in dataset: %s (%.1fs)", counts, time.perf_counter() - t0)
    # the built-in data ships an outlier pool of another unseen family: the recommended recipe uses it
    novel = {"data.novel_data": str(out / "data" / "novel_images")}
    summary = train(out / "data", out / "run", None, **{**DEMO_CONFIG, **novel, "seed": seed, **overrides})
    metrics = evaluate(out / "run", out / "data" / "test_images", out / "data" / "test_truth.csv")
    predict(out / "run", out / "data" / "test_images", out / "predictions.csv", probs=True)
    return {"train": summary, "test": metrics, "seconds": round(time.perf_counter() - t0, 1)}
