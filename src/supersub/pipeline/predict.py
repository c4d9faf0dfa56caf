"""From a trained run and images to decisions and probabilities: the one path predict, evaluate and demo share.

Confidences come from the run's :class:`~supersub.novelty.scoring.NoveltyScorer`, decisions from
:func:`~supersub.novelty.decide.decide` at the run's thresholds, the novel probabilities from the fitted
logistic on the same confidences, and the seen-class probabilities from temperature-scaled logits
(temperature never changes an argmax). :func:`~supersub.novelty.probs.with_novel_column` combines them
into hierarchical distributions whose argmax at each level is the decision.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch

from ..data.cache_limit import cache_policy
from ..data.formats import read_images
from ..data.records import Dataset, ImageRecord
from ..errors import SupersubError
from ..inference import Outputs, named_device, pick_device, run_model
from ..io import atomic_path
from ..config import TrainConfig
from ..models.ensemble import BaggingEnsemble
from ..models.model import HierarchicalClassifier
from ..novelty.decide import Decision, decide
from ..novelty.probs import novel_probability, with_novel_column
from ..novelty.scores import create_detector
from ..novelty.scoring import NoveltyScorer, seen_view
from ..run import RunDir, Thresholds
from ..taxonomy import Taxonomy
from ..training.distributed import is_global_zero
from ..training.finetune import cached_outputs
from .calibration import load_scorer
from ..training.stream import Devices, Scores, Sink, Streamed, stream_predictions

log = logging.getLogger("supersub")


@dataclass
class Applied:
    """Decisions (with the confidences they thresholded) and full distributions with the novel column last."""

    decision: Decision
    super_probs: torch.Tensor
    sub_probs: torch.Tensor


def apply_novelty(outputs: Outputs, taxonomy: Taxonomy, thresholds: Thresholds, scorer: NoveltyScorer) -> Applied:
    """Decide and attach probabilities for one batch of outputs of the run's final model."""
    view = seen_view(outputs, taxonomy.n_super, taxonomy.n_sub)
    sub_to_super = list(taxonomy.sub_to_super)
    conf = scorer.confidences(view, sub_to_super)
    seen = view.outputs
    d = decide(seen.super_probs, seen.sub_probs, sub_to_super, thresholds.tau_super, thresholds.tau_sub,
               conf.super_conf, conf.sub_conf)
    q_super = novel_probability(conf.super_conf, thresholds.tau_super, thresholds.slope_super)
    q_sub = novel_probability(conf.sub_conf, thresholds.tau_sub, thresholds.slope_sub)
    p_super = (seen.super_logits / thresholds.temperature_super).softmax(dim=1)
    p_sub = (seen.sub_logits / thresholds.temperature_sub).softmax(dim=1)
    full_super, full_sub = with_novel_column(p_super, p_sub, d.super_pred, d.sub_pred, q_super, q_sub, sub_to_super)
    return Applied(d, full_super, full_sub)


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

    @classmethod
    def from_scores(cls, names: list[str], scores: Scores) -> Prediction:
        """A prediction from the columns :func:`decision_scores` makes (as streamed chunk by chunk)."""
        return cls(names, scores["super_pred"], scores["sub_pred"], scores["super_probs"], scores["sub_probs"],
                   scores["super_conf"], scores["sub_conf"])

    def to_frame(self, probs: bool = False, taxonomy: Taxonomy | None = None) -> pd.DataFrame:
        """The competition columns; with ``taxonomy`` also superclass_name/subclass_name ("novel" when novel)."""
        df = pd.DataFrame(
            {"image": self.names, "superclass_index": self.super_pred.numpy(), "subclass_index": self.sub_pred.numpy()}
        )
        if taxonomy is not None:
            supers, subs = [*taxonomy.super_names, "novel"], [*taxonomy.sub_names, "novel"]
            df["superclass_name"] = [supers[k] for k in self.super_pred.tolist()]
            df["subclass_name"] = [subs[j] for j in self.sub_pred.tolist()]
        if probs:
            sp = pd.DataFrame(self.super_probs.double().numpy(), columns=[f"super_prob_{i}" for i in range(self.super_probs.shape[1])])
            bp = pd.DataFrame(self.sub_probs.double().numpy(), columns=[f"sub_prob_{j}" for j in range(self.sub_probs.shape[1])])
            df = pd.concat([df, sp, bp], axis=1)
        return df


def predict_tensors(
    model: HierarchicalClassifier | BaggingEnsemble, taxonomy: Taxonomy, thresholds: Thresholds, images: torch.Tensor,
    names: list[str], accelerator: str = "auto", scorer: NoveltyScorer | None = None,
    device: torch.device | None = None, cfg: TrainConfig | None = None,
) -> Prediction:
    """The decision rule and calibrated probabilities for decoded images.

    The thresholds are in the units of ``thresholds.score``, so the confidences must come from that score:
    ``scorer`` is the run's fitted detectors (``supersub.pipeline.calibration.load_scorer(run_dir,
    thresholds.score)``). It may be left out only for ``msp``, which needs no fitting. With the run's ``cfg``
    a ``finetune: frozen`` model reads its backbone features from the disk cache (see :func:`model_outputs`).
    """
    scorer = _scorer_for(thresholds, scorer)
    outputs = model_outputs(model, images, cfg, device or pick_device(accelerator))
    a = apply_novelty(outputs, taxonomy, thresholds, scorer)
    d = a.decision
    return Prediction(names, d.super_pred, d.sub_pred, a.super_probs, a.sub_probs, d.super_conf, d.sub_conf)


def model_outputs(model: HierarchicalClassifier | BaggingEnsemble, images: torch.Tensor, cfg: TrainConfig | None,
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
                f"(supersub.pipeline.calibration.load_scorer(run_dir, '{thresholds.score}'))"
            )
        return NoveltyScorer("msp", create_detector("msp"), create_detector("msp"))
    if scorer.name != thresholds.score:
        raise SupersubError(f"scorer '{scorer.name}' does not match the thresholds' score '{thresholds.score}'")
    return scorer


def predict_dataset(run_dir: str | Path, ds: Dataset, skip_bad: bool, device: str | None = None,
                    cache: bool = False, progress: bool = False) -> tuple[Prediction, Dataset]:
    """Predict a dataset with a run, chunk by chunk (:mod:`.stream`: the images are never all in memory, only
    their scores). The disk caches are read, but the images predicted (test sets, a user's photos) are kept in
    them only with ``cache`` (``predict --cache``)."""
    run = RunDir.open(run_dir)
    run.require_finished()  # an interrupted run's model or thresholds are never used
    model, cfg, _ = run.load_model()
    collected = Collected()
    with cache_policy(write=cache, max_gb=cfg.data.cache_max_gb):
        streamed = stream_run(run, model, cfg, ds.records, collected, one_device(cfg, device), skip_bad=skip_bad,
                              progress=progress)
    kept = kept_dataset(ds, streamed)
    return Prediction.from_scores([r.name for r in kept.records], collected.scores()), kept


def stream_run(run: RunDir, model: Any, cfg: TrainConfig, records: list[ImageRecord], sink: Sink, devices: Devices, *,
               skip_bad: bool, progress: bool, extra: Callable[[Outputs, Applied], Scores] | None = None) -> Streamed:
    """Stream ``records`` through the run's model, decision rule and probabilities into ``sink``
    (``extra`` adds columns of its own: discover's features, report's open-set argmax)."""
    thresholds = run.load_thresholds()
    taxonomy = run.load_taxonomy()  # the model's own may carry the extra class of novelty.oe: class
    scorer = _scorer_for(thresholds, load_scorer(run.path, thresholds.score))

    def score(outputs: Outputs) -> Scores:
        applied = apply_novelty(outputs, taxonomy, thresholds, scorer)
        return {**decision_scores(applied), **(extra(outputs, applied) if extra is not None else {})}

    def outputs_of(net: torch.nn.Module, images: torch.Tensor, device: torch.device) -> Outputs:
        return model_outputs(net, images, cfg, device)

    return stream_predictions(model, records, cfg.data.image_size, outputs_of, score, sink, devices,
                              skip_bad=skip_bad, progress=progress)


def decision_scores(applied: Applied) -> Scores:
    """The per-image columns of a :class:`Prediction`."""
    d = applied.decision
    return {"super_pred": d.super_pred, "sub_pred": d.sub_pred, "super_probs": applied.super_probs,
            "sub_probs": applied.sub_probs, "super_conf": d.super_conf, "sub_conf": d.sub_conf}


def kept_dataset(ds: Dataset, streamed: Streamed) -> Dataset:
    """The dataset of the records that were read, with the unreadable ones recorded as skipped."""
    kept = Dataset([ds.records[i] for i in streamed.kept], ds.taxonomy, ds.source, ds.skipped + streamed.bad)
    if streamed.lead and not kept.records:
        raise SupersubError(f"{ds.source}: no readable images")
    return kept


def one_device(cfg: TrainConfig, device: str | None) -> Devices:
    """One device: ``--device`` if given, else the run's accelerator (evaluate, report, discover)."""
    if device:
        return named_devices(device)
    return Devices(cfg.trainer.accelerator, 1, "auto")


def run_devices(cfg: TrainConfig, device: str | None, accelerator: str | None, devices: str | None,
                strategy: str | None, num_nodes: int = 1, runs_devices: bool = False) -> Devices:
    """``predict``'s devices: ``--device``, else the options given, else (``runs_devices``: the command line) the
    run's ``trainer`` settings, or one device of the run's accelerator.

    Several devices mean Lightning re-runs the command line once per device: right for ``supersub predict``, wrong
    for a library call (a notebook, a test runner would be started again), so the API asks for them explicitly."""
    if num_nodes < 1:
        raise SupersubError(f"--num-nodes: {num_nodes} machines; give 1 or more")
    if device:
        return named_devices(device)
    if runs_devices:
        devices, strategy = devices or cfg.trainer.devices, strategy or cfg.trainer.strategy
    return Devices(accelerator or cfg.trainer.accelerator, devices or 1, strategy or "auto", num_nodes)


def named_devices(name: str) -> Devices:
    """``--device`` (cpu, cuda, cuda:1, mps, auto) as Lightning's accelerator and device list."""
    device = named_device(name)
    if device.type == "cuda":
        return Devices("gpu", [device.index] if device.index is not None else 1, "auto")
    return Devices(device.type, 1, "auto")


class Collected:
    """A sink that keeps every chunk's scores (small: no images), concatenated by :meth:`scores`."""

    def __init__(self) -> None:
        self.parts: list[Scores] = []

    def add(self, records: list[ImageRecord], scores: Scores) -> None:
        self.parts.append(scores)

    def scores(self) -> Scores:
        if not self.parts:
            return {}
        return {k: torch.cat([p[k] for p in self.parts]) for k in self.parts[0]}


class CsvRows:
    """A sink that appends each chunk's rows to an open CSV: the same bytes as the whole frame's ``to_csv``."""

    def __init__(self, fh: IO[str], probs: bool, taxonomy: Taxonomy | None) -> None:
        self.fh, self.probs, self.taxonomy, self.header, self.rows = fh, probs, taxonomy, True, 0

    def add(self, records: list[ImageRecord], scores: Scores) -> None:
        frame = Prediction.from_scores([r.name for r in records], scores).to_frame(self.probs, self.taxonomy)
        frame.to_csv(self.fh, header=self.header, index=False, float_format="%.6g")
        self.header, self.rows = False, self.rows + len(frame)


class Both:
    """A sink that hands every chunk to two sinks (``api.predict`` writes the CSV and returns the frame)."""

    def __init__(self, first: Sink, second: Sink) -> None:
        self.first, self.second = first, second

    def add(self, records: list[ImageRecord], scores: Scores) -> None:
        self.first.add(records, scores)
        self.second.add(records, scores)


def predict_images(
    run_dir: str | Path,
    images: str | Path,
    out: str | Path | None = None,
    *,
    probs: bool = False,
    names: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    device: str | None = None,
    cache: bool = False,
    accelerator: str | None = None,
    devices: str | None = None,
    strategy: str | None = None,
    num_nodes: int = 1,
    runs_devices: bool = False,
    frame: bool = True,
    progress: bool = False,
) -> pd.DataFrame | int:
    """:func:`supersub.api.predict`: read any unlabelled layout, predict chunk by chunk, write the CSV when ``out``
    is given (rows appended as chunks finish, to a temporary file renamed onto ``out`` at the end: a partial
    file never has the final name). Returns the frame, or with ``frame`` off only the number of rows written (the
    command line: nothing of the images' results stays in memory). On one device of the run's accelerator, or
    ``device``; ``devices``/``strategy`` (or ``runs_devices``, what the command line does: the run's ``trainer``
    settings) spread the chunks over several; under several processes only rank 0 writes, and the other ranks
    return an empty frame (or 0)."""
    if out is not None and Path(out).exists() and not overwrite:
        raise SupersubError(f"{out}: exists (pass --overwrite to replace it)")
    if out is None and not frame:
        raise SupersubError("predict: give an output file, or ask for the frame")
    ds = read_images(Path(images))
    run = RunDir.open(run_dir)
    run.require_finished()
    model, cfg, _ = run.load_model()
    where = run_devices(cfg, device, accelerator, devices, strategy, num_nodes, runs_devices)
    taxonomy = run.load_taxonomy() if names else None
    collected = Collected()
    with cache_policy(write=cache, max_gb=cfg.data.cache_max_gb):
        if out is None:
            streamed = stream_run(run, model, cfg, ds.records, collected, where, skip_bad=skip_bad, progress=progress)
            rows = len(streamed.kept)
        else:
            streamed, rows = _stream_to_csv(run, model, cfg, ds, Path(out), collected if frame else None, where,
                                            probs=probs, taxonomy=taxonomy, skip_bad=skip_bad, progress=progress)
    kept_dataset(ds, streamed)  # no readable image is an error
    if not frame:
        return rows
    if not streamed.lead:
        return pd.DataFrame()
    return Prediction.from_scores([ds.records[i].name for i in streamed.kept], collected.scores()).to_frame(
        probs, taxonomy)


def _stream_to_csv(run: RunDir, model: Any, cfg: TrainConfig, ds: Dataset, out: Path, also: Sink | None,
                   where: Devices, *, probs: bool, taxonomy: Taxonomy | None, skip_bad: bool,
                   progress: bool) -> tuple[Streamed, int]:
    """Stream into ``out`` atomically; only global rank 0 opens (and renames) the file."""
    if not is_global_zero():
        return stream_run(run, model, cfg, ds.records, also or Collected(), where, skip_bad=skip_bad,
                          progress=False), 0
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        rows = CsvRows(fh, probs, taxonomy)
        streamed = stream_run(run, model, cfg, ds.records, rows if also is None else Both(rows, also), where,
                              skip_bad=skip_bad, progress=progress)
        kept_dataset(ds, streamed)  # nothing readable: no file
        fh.flush()
        os.fsync(fh.fileno())
    return streamed, rows.rows
