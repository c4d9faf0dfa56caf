"""From a trained run and images to decisions and probabilities: the one path predict, evaluate, report, discover
and demo share. The model gives outputs chunk by chunk; the run's :class:`~supersub.novelty.open_set.OpenSetHead`
turns each chunk into decisions and hierarchical distributions with the novel column.
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
from ..models.hierarchical import HierarchicalClassifier
from ..novelty.open_set import OpenSetDecision, OpenSetHead
from ..run_dir import RunDir
from ..taxonomy import Taxonomy
from ..training.distributed import is_global_zero
from ..training.finetune import cached_outputs
from ..training.stream import Devices, Scores, Sink, Streamed, stream_predictions

log = logging.getLogger("supersub")


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
    model: HierarchicalClassifier | BaggingEnsemble, head: OpenSetHead, images: torch.Tensor, names: list[str],
    accelerator: str = "auto", device: torch.device | None = None, cfg: TrainConfig | None = None,
) -> Prediction:
    """The run's open-set head on decoded images (``head``: ``RunDir(run).load_open_set_head()``). With the run's
    ``cfg`` a ``finetune: frozen`` model reads its backbone features from the disk cache (see :func:`model_outputs`)."""
    outputs = model_outputs(model, images, cfg, device or pick_device(accelerator))
    return Prediction.from_scores(names, decision_scores(head.decide(outputs)))


def model_outputs(model: HierarchicalClassifier | BaggingEnsemble, images: torch.Tensor, cfg: TrainConfig | None,
                  device: torch.device) -> Outputs:
    """The model's outputs on ``images``. A ``finetune: frozen`` model with ``data.feature_cache`` reads its (float32)
    backbone features from the disk cache and computes only the missing ones, as calibration does: predicting
    the same images again, or with another run on the same frozen backbone (the configurations of a benchmark,
    a bagging ensemble and its single-model baseline), skips the backbone. Every other model runs on the images."""
    if cfg is not None and cfg.optim.finetune == "frozen" and cfg.data.feature_cache:
        return cached_outputs(model, images, cfg, device)
    return run_model(model, images, device=device)


def predict_dataset(run_dir: str | Path, ds: Dataset, skip_bad: bool, device: str | None = None,
                    cache: bool = False, progress: bool = False,
                    extra: Callable[[OpenSetHead, Outputs, OpenSetDecision], Scores] | None = None,
                    ) -> tuple[Prediction, Dataset, Scores]:
    """Predict a dataset with a run, chunk by chunk (:mod:`.stream`: the images are never all in memory, only
    their scores). The disk caches are read, but the images predicted (test sets, a user's photos) are kept in
    them only with ``cache`` (``predict --cache``). ``extra`` adds columns of its own, returned last."""
    run = RunDir.open(run_dir)
    run.require_finished()  # an interrupted run's model or thresholds are never used
    model, cfg, _ = run.load_model()
    collected = Collected()
    with cache_policy(write=cache, max_gb=cfg.data.cache_max_gb):
        streamed = stream_run(run, model, cfg, ds.records, collected, one_device(cfg, device), skip_bad=skip_bad,
                              progress=progress, extra=extra)
    kept, scores = kept_dataset(ds, streamed), collected.scores()
    extra_columns = {k: v for k, v in scores.items() if k not in DECISION_COLUMNS}
    return Prediction.from_scores([r.name for r in kept.records], scores), kept, extra_columns


def stream_run(run: RunDir, model: Any, cfg: TrainConfig, records: list[ImageRecord], sink: Sink, devices: Devices, *,
               skip_bad: bool, progress: bool,
               extra: Callable[[OpenSetHead, Outputs, OpenSetDecision], Scores] | None = None) -> Streamed:
    """Stream ``records`` through the run's model and open-set head into ``sink`` (``extra`` adds columns of its
    own: discover's features, report's seen-class decision)."""
    head = run.load_open_set_head()

    def score(outputs: Outputs) -> Scores:
        decision = head.decide(outputs)
        return {**decision_scores(decision), **(extra(head, outputs, decision) if extra is not None else {})}

    def outputs_of(net: torch.nn.Module, images: torch.Tensor, device: torch.device) -> Outputs:
        return model_outputs(net, images, cfg, device)

    return stream_predictions(model, records, cfg.data.image_size, outputs_of, score, sink, devices,
                              skip_bad=skip_bad, progress=progress)


DECISION_COLUMNS = ("super_pred", "sub_pred", "super_probs", "sub_probs", "super_conf", "sub_conf")


def decision_scores(d: OpenSetDecision) -> Scores:
    """The per-image columns of a :class:`Prediction`."""
    return {"super_pred": d.super_pred, "sub_pred": d.sub_pred, "super_probs": d.super_probs,
            "sub_probs": d.sub_probs, "super_conf": d.super_conf, "sub_conf": d.sub_conf}


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
                strategy: str | None, num_nodes: int | None = None, runs_devices: bool = False) -> Devices:
    """``predict``'s devices: ``--device``, else the options given, else (``runs_devices``: the command line) the
    run's ``trainer`` settings (machines too: a run trained on N nodes predicts on N), or one device of the run's
    accelerator on one machine.

    Several devices mean Lightning re-runs the command line once per device: right for ``supersub predict``, wrong
    for a library call (a notebook, a test runner would be started again), so the API asks for them explicitly."""
    if num_nodes is None:
        num_nodes = cfg.trainer.num_nodes if runs_devices else 1
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
    num_nodes: int | None = None,
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
