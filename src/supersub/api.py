"""The Python API: synthesise, train, calibrate, predict, evaluate, demo. The CLI is a thin layer over these.

    >>> import supersub.api as ss
    >>> ss.synth("data/synth")
    >>> ss.train("data/synth", "runs/a", epochs=10)
    >>> preds = ss.predict("runs/a", "data/synth/test_images", out="preds.csv", probs=True)
    >>> metrics = ss.evaluate("runs/a", "data/synth/test_images", "data/synth/test_truth.csv")
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import TrainConfig, build_config, load_config, warn_ignored_options
from .data.cache import decode_images
from .data.formats import read_dataset, read_flat, read_image_list, read_labels
from .data.records import Dataset, ImageRecord
from .data.synth import write_synth
from .errors import SupersubError
from .inference import Outputs, pick_device, run_model
from .io import write_atomic, write_json_atomic
from .metrics import competition_metrics, open_set_report
from .models.ensemble import BaggingEnsemble
from .models.model import HierarchicalClassifier
from .novelty.decide import decide
from .novelty.exposure import read_novel_sub
from .novelty.predict import apply_novelty
from .novelty.scores import create_detector
from .novelty.protocol import (
    STAGE_MODEL_FILE, Evidence, Pool, Stage, calibrate_run, collect_evidence, load_scorer, load_split,
    load_stage_model, needs_calibration_model, plan_stages, save_calibration, save_split, stage_labels,
)
from .novelty.scoring import NoveltyScorer, seen_view
from .run import RunDir, Thresholds, save_model_file
from .taxonomy import Taxonomy
from .losses import NOVEL_SUB, OUTLIER
from .training.distributed import is_global_zero
from .training.finetune import cached_outputs
from .training.fitters import fit_model

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
    images, kept = _decode_sample(ds.records, cfg, cfg.data.novel_count, "novel")
    if not kept:
        raise SupersubError(f"{path}: no readable novel images")
    return images


def _config(config: TrainConfig | dict[str, Any] | str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        # only the keys the caller set, so the rebuilt config still tells them from defaults (ignored options)
        given = config.model_dump(mode="json", exclude_unset=True)
        return build_config(given, "config") if not overrides else load_config(None, {**_flatten(given), **overrides})
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
    """Train a model (any approach) on ``data`` into run directory ``out``; returns the run's summary.

    Unless both thresholds are given, a calibration model is first trained with a share of each
    superclass's subclasses held out, the thresholds are chosen on it, and then the final model is trained
    on every subclass (seed 001). ``overrides`` are dotted config keys, e.g. ``**{"optim.epochs": 5}`` or
    the short names ``epochs``, ``lr``, ``batch_size``, ``seed``.
    """
    short = {"epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size"}
    overrides = {short.get(k, k): v for k, v in overrides.items()}
    cfg = _config(config, overrides)
    _absolute_paths(cfg)
    t0 = time.perf_counter()
    # under DDP every rank runs train() (Lightning re-runs the command) and joins each fit; only rank 0 writes
    lead = is_global_zero()
    if lead:
        warn_ignored_options(cfg)  # options this approach would silently drop: one warning line per reason
    if lead and not resume:
        RunDir.check_creatable(out, overwrite)  # fail before the slow decode, and touch nothing yet
    # bad input (images, CSVs, novel data, split options) fails here, before a run directory exists
    data_ = load_labelled(data, cfg)
    taxonomy = data_.dataset.taxonomy
    assert taxonomy is not None
    log.info("%s: %d images, %d superclasses, %d subclasses", data, len(data_.dataset), taxonomy.n_super, taxonomy.n_sub)
    summary: dict[str, Any] = {"data": str(data), "n_images": len(data_.dataset)}
    pool = _training_pool(data_, cfg, summary)
    stages = plan_stages(pool, taxonomy, cfg)
    run = RunDir(out) if not lead else RunDir.open(out) if resume else RunDir.create(out, overwrite=overwrite)
    evidence: dict[str, Evidence] = {}
    try:
        if lead:
            run.save_config(cfg)
            run.save_taxonomy(taxonomy)
            save_split(run.calibration_dir, str(Path(data).resolve()), pool, stages)
        for name, stage in sorted(stages.items(), key=lambda item: item[0] == "final"):  # final model last
            result = _fit_stage(pool, taxonomy, stage, cfg, run, resume)
            summary[name] = {"epochs_run": result.epochs_run, result.monitor: result.best_score,
                             "seconds_per_epoch": result.seconds_per_epoch and round(result.seconds_per_epoch, 2),
                             **result.details}
            if lead:  # every stage's model in one format: model.pt, checkpoints/<stage>/model.pt (for calibrate)
                stage_tax = stage_labels(pool, taxonomy, stage, cfg.novelty.oe)[0]
                target = run.model_file if name == "final" else run.checkpoints_dir / name / STAGE_MODEL_FILE
                save_model_file(target, result.model, cfg, stage_tax)
            evidence[name] = collect_evidence(result.model, pool, taxonomy, stage, cfg.trainer.accelerator, cfg)
    except SupersubError:
        # a bad option found when the first stage starts (backbone, weights, trainer, logger): nothing was
        # trained, so leave no half-made run behind; a run with checkpoints stays for --resume
        if lead and not resume and not any(run.checkpoints_dir.rglob("*.ckpt")):
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    if not lead:
        return summary  # a DDP worker's share (the fits) is done: rank 0 calibrates and writes the run
    cal = _calibrate(run, cfg, evidence)
    if "calibration" in stages:
        held = [taxonomy.sub_names[j] for j in sorted(set(range(taxonomy.n_sub)) - set(stages["calibration"].keep_sub))]
        summary["calibration"] = {"held_out_subclasses": held, **summary["calibration"], **cal.summary}
    else:
        summary["calibration"] = {"hand_set": True}
        summary["novelty"] = cal.summary
    final_val = evidence["final"].val
    if final_val is not None:
        d = decide(final_val.outputs.super_probs, final_val.outputs.sub_probs, list(taxonomy.sub_to_super), 0.0, 0.0)
        summary["final"]["val_acc_super"] = round(100 * float((d.super_pred == evidence["final"].val_y_super).float().mean()), 2)
        summary["final"]["val_acc_sub"] = round(100 * float((d.sub_pred == evidence["final"].val_y_sub).float().mean()), 2)
    summary["thresholds"] = cal.thresholds.to_dict()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    run.save_metrics(summary)
    return summary


def _absolute_paths(cfg: TrainConfig) -> None:
    """The saved config must mean the same files wherever ``supersub calibrate`` is run from later."""
    for key in ("novel_data", "novel_sub_data", "cache_dir"):
        value = getattr(cfg.data, key)
        if value is not None:
            setattr(cfg.data, key, Path(value).resolve())
    if cfg.model.weights is not None:
        cfg.model.weights = Path(cfg.model.weights).resolve()


def _decode_sample(records: list[ImageRecord], cfg: TrainConfig, count: int | None, what: str) -> tuple[
    torch.Tensor, list[ImageRecord]
]:
    """A seeded sample of at most ``count`` records, decoded; unreadable ones are skipped when allowed."""
    if count is not None and count < len(records):
        pick = np.random.default_rng(cfg.seed).choice(len(records), size=count, replace=False)
        records = [records[i] for i in sorted(pick.tolist())]
    decoded = decode_images(records, cfg.data.image_size, skip_bad=cfg.data.skip_bad_images, cache_dir=cfg.data.cache_dir)
    if decoded.bad:
        log.warning("skipped %d unreadable %s image(s), e.g. %s", len(decoded.bad), what, decoded.bad[0])
    return decoded.images, [records[i] for i in decoded.kept]


def load_novel_sub_images(path: str | Path, taxonomy: Taxonomy, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Novel-subclass exposure images and their (known) superclass labels; see :func:`read_novel_sub`."""
    images, records = _decode_sample(read_novel_sub(Path(path), taxonomy).records, cfg, cfg.data.novel_sub_count,
                                     "novel-subclass")
    if not records:
        raise SupersubError(f"{path}: no readable novel-subclass images")
    return images, torch.tensor([r.super_index for r in records], dtype=torch.long)


def _training_pool(data_: LabelledImages, cfg: TrainConfig, summary: dict[str, Any]) -> Pool:
    """Labelled images, then outlier-exposure images (:data:`OUTLIER` at both levels), then novel-subclass
    images (their superclass, :data:`NOVEL_SUB`)."""
    images, y_super, y_sub = [data_.images], [data_.y_super], [data_.y_sub]
    if cfg.data.novel_data is not None:
        novel = load_novel_images(cfg.data.novel_data, cfg)
        fill = torch.full((len(novel),), OUTLIER, dtype=torch.long)
        images.append(novel), y_super.append(fill), y_sub.append(fill)
        summary["n_novel_images"] = len(novel)
        log.info("outlier exposure: %d novel images (%s)", len(novel), cfg.novelty.oe)
    if cfg.data.novel_sub_data is not None:
        assert data_.dataset.taxonomy is not None
        sub_images, sub_super = load_novel_sub_images(cfg.data.novel_sub_data, data_.dataset.taxonomy, cfg)
        images.append(sub_images), y_super.append(sub_super)
        y_sub.append(torch.full((len(sub_images),), NOVEL_SUB, dtype=torch.long))
        summary["n_novel_sub_images"] = len(sub_images)
        log.info("novel-subclass exposure: %d images", len(sub_images))
    return Pool(torch.cat(images), torch.cat(y_super), torch.cat(y_sub), len(data_.dataset))


def _fit_stage(pool: Pool, taxonomy: Taxonomy, stage: Stage, cfg: TrainConfig, run: RunDir, resume: bool) -> Any:
    """Train one stage's model (final, calibration or LOSO) on its share of the pool."""
    tax, y_super, y_sub = stage_labels(pool, taxonomy, stage, cfg.novelty.oe)
    log.info("%s model: %d subclasses, %d train / %d validation images", stage.name, len(stage.keep_sub),
             len(stage.train), len(stage.val))
    epochs = None if stage.name == "final" else cfg.novelty.calibration_epochs
    return fit_model(pool.images, y_super, y_sub, stage.train, stage.val, tax, cfg, run.path, stage.name,
                     epochs=epochs, resume=resume)


def _calibrate(run: RunDir, cfg: TrainConfig, evidence: dict[str, Evidence]) -> Any:
    """Choose and save thresholds, detectors and sweeps from the stages' outputs."""
    loso = [ev for name, ev in sorted(evidence.items()) if name.startswith("loso-")]
    cal = calibrate_run(cfg.novelty.score, cfg.novelty, evidence["final"], evidence.get("calibration"), loso)
    run.save_thresholds(cal.thresholds)
    save_calibration(cal, run.path)
    t = cal.thresholds
    log.info("%s thresholds: tau_super=%.4g tau_sub=%.4g", t.score, t.tau_super, t.tau_sub)
    return cal


@dataclass
class Prediction:
    """Decisions, probabilities (with the novel column) and the novelty confidences for a set of images."""

    names: list[str]
    super_pred: torch.Tensor
    sub_pred: torch.Tensor
    super_probs: torch.Tensor
    sub_probs: torch.Tensor
    super_conf: torch.Tensor
    sub_conf: torch.Tensor

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
    model: HierarchicalClassifier | BaggingEnsemble, taxonomy: Taxonomy, thresholds: Thresholds, images: torch.Tensor,
    names: list[str], accelerator: str = "auto", scorer: NoveltyScorer | None = None, cfg: TrainConfig | None = None,
) -> Prediction:
    """The decision rule and calibrated probabilities for decoded images.

    The thresholds are in the units of ``thresholds.score``, so the confidences must come from that score:
    ``scorer`` is the run's fitted detectors (``supersub.novelty.protocol.load_scorer(run_dir,
    thresholds.score)``). It may be left out only for ``msp``, which needs no fitting. With the run's ``cfg``
    a ``finetune: frozen`` model reads its backbone features from the disk cache (see :func:`_outputs`).
    """
    scorer = _scorer_for(thresholds, scorer)
    outputs = _outputs(model, images, cfg, pick_device(accelerator))
    a = apply_novelty(outputs, taxonomy, thresholds, scorer)
    d = a.decision
    return Prediction(names, d.super_pred, d.sub_pred, a.super_probs, a.sub_probs, d.super_conf, d.sub_conf)


def _outputs(model: HierarchicalClassifier | BaggingEnsemble, images: torch.Tensor, cfg: TrainConfig | None,
             device: torch.device) -> Outputs:
    """The model's outputs on ``images``. A ``finetune: frozen`` model with ``data.feature_cache`` reads its (float32)
    backbone features from the disk cache and computes only the missing ones, as calibration does: predicting
    the same images again, or with another run on the same frozen backbone (the configurations of a benchmark,
    a bagging ensemble and its single-model baseline), skips the backbone. Every other model runs on the images."""
    if cfg is not None and cfg.optim.finetune == "frozen" and cfg.data.feature_cache:
        return cached_outputs(model, images, cfg, device)
    return run_model(model, images, device=device)


def _scorer_for(thresholds: Thresholds, scorer: NoveltyScorer | None) -> NoveltyScorer:
    """The scorer whose units the thresholds are in; a missing or mismatched one is an error, never msp."""
    if scorer is None:
        if thresholds.score != "msp":
            raise SupersubError(
                f"the thresholds are in units of score '{thresholds.score}': pass the run's fitted scorer "
                f"(supersub.novelty.protocol.load_scorer(run_dir, '{thresholds.score}'))"
            )
        return NoveltyScorer("msp", create_detector("msp"), create_detector("msp"))
    if scorer.name != thresholds.score:
        raise SupersubError(f"scorer '{scorer.name}' does not match the thresholds' score '{thresholds.score}'")
    return scorer


def _predict_dataset(run_dir: str | Path, ds: Dataset, skip_bad: bool) -> tuple[Prediction, Dataset]:
    run = RunDir.open(run_dir)
    model, cfg, _ = run.load_model()
    thresholds = run.load_thresholds()
    taxonomy = run.load_taxonomy()  # the model's own may carry the extra class of novelty.oe: class
    scorer = load_scorer(run.path, thresholds.score)
    decoded = decode_images(ds.records, cfg.data.image_size, skip_bad=skip_bad)
    if decoded.bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(decoded.bad), decoded.bad[0])
    kept = Dataset([ds.records[i] for i in decoded.kept], ds.taxonomy, ds.source, ds.skipped + decoded.bad)
    if not kept.records:
        raise SupersubError(f"{ds.source}: no readable images")
    pred = predict_tensors(model, taxonomy, thresholds, decoded.images, kept.names, cfg.trainer.accelerator, scorer,
                           cfg)
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
    truth_super, truth_sub = np.array(kept.super_labels), np.array(kept.sub_labels)
    metrics = competition_metrics(
        truth_super, truth_sub, pred.super_pred.numpy(), pred.sub_pred.numpy(),
        taxonomy.novel_super, taxonomy.novel_sub, pred.super_probs.numpy(), pred.sub_probs.numpy(),
    )
    report = open_set_report(truth_super, truth_sub, pred.super_pred, pred.sub_pred, pred.super_probs,
                             pred.sub_probs, pred.super_conf, pred.sub_conf, taxonomy)
    metrics.update(report.metrics)
    if save:
        folder = run.path / "evaluations"
        write_json_atomic(folder / f"{Path(labels).stem}.json", {"labels": str(labels), **metrics})
        report.save(folder, Path(labels).stem)
    return metrics


def calibration_evidence(run_dir: str | Path, cfg: TrainConfig | None = None) -> dict[str, Evidence]:
    """The outputs ``calibrate`` works from: every saved model of the run on its stage's images.

    Re-reads the training data recorded in ``calibration/split.json`` and re-runs the final, calibration
    and LOSO models (no training). Compute it once to try several scores (``calibrate(..., evidence=)``).
    """
    run = RunDir.open(run_dir)
    cfg = cfg or run.load_config()
    taxonomy = run.load_taxonomy()
    data, n_images, n_labelled, stages = load_split(run.calibration_dir)
    pool = _training_pool(load_labelled(data, cfg), cfg, {})
    if (len(pool.y_super), pool.n_labelled) != (n_images, n_labelled):
        raise SupersubError(
            f"{data}: now gives {pool.n_labelled} labelled + {len(pool.y_super) - pool.n_labelled} exposure images, "
            f"but the run was trained on {n_labelled} + {n_images - n_labelled}; the data changed since training"
        )
    wanted = {"final"} | ({"calibration"} if needs_calibration_model(cfg.novelty) else set())
    if cfg.novelty.super_protocol == "loso" and cfg.novelty.tau_super is None:
        wanted |= {name for name in stages if name.startswith("loso-")}
    evidence: dict[str, Evidence] = {}
    for name, stage in stages.items():
        if name not in wanted:
            continue
        model = run.load_model()[0] if name == "final" else load_stage_model(run.path, name)
        evidence[name] = collect_evidence(model, pool, taxonomy, stage, cfg.trainer.accelerator, cfg)
    return evidence


def calibrate(
    run_dir: str | Path, *, evidence: dict[str, Evidence] | None = None, **novelty: Any
) -> dict[str, Any]:
    """Re-choose a trained run's novelty score and thresholds without retraining.

    ``novelty`` are :class:`~supersub.config.NoveltyConfig` fields (``score``, ``score_options``,
    ``objective``, ``transfer``, ``super_protocol``, ``tau_super``, ``tau_sub``, ...); the others keep the
    run's values, except that thresholds are re-calibrated unless given, and a new ``score`` starts from its
    own default options unless ``score_options`` is given. Rewrites thresholds.json, detectors.pt, the sweeps
    and the novelty section of config.yaml; returns the calibration summary (also stored in metrics.json).
    """
    run = RunDir.open(run_dir)
    cfg = run.load_config()
    current = {**cfg.novelty.model_dump(), "tau_super": None, "tau_sub": None}
    if novelty.get("score", cfg.novelty.score) != cfg.novelty.score:
        current["score_options"] = {}  # the old score's detector options do not apply to the new one
    cfg = build_config({**cfg.model_dump(mode="json"), "novelty": {**current, **novelty}}, "calibrate")
    warn_ignored_options(cfg, {f"novelty.{key}" for key in novelty})
    evidence = evidence if evidence is not None else calibration_evidence(run.path, cfg)
    cal = _calibrate(run, cfg, evidence)
    run.save_config(cfg)
    metrics = json.loads(run.metrics_file.read_text(encoding="utf-8")) if run.metrics_file.is_file() else {}
    metrics["novelty"] = cal.summary
    metrics["thresholds"] = cal.thresholds.to_dict()
    run.save_metrics(metrics)
    return {**cal.summary, "thresholds": cal.thresholds.to_dict()}


def synth(out: str | Path, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Write the built-in procedural dataset (see :mod:`supersub.data.synth`)."""
    return write_synth(Path(out), seed=seed, **kwargs)


DEMO_MARKER = ".supersub-demo"
# sized to finish in a few minutes on a 2-core laptop CPU: the built-in shapes are legible at 32 px, which
# makes an epoch ~4x cheaper than at 64 px and buys 30 epochs for both the calibration and the final model
DEMO_CONFIG: dict[str, Any] = {"model.backbone": "cnn", "optim.epochs": 30, "data.image_size": 32, "model.width": 32}


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
