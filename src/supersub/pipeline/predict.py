"""From a trained run and images to decisions and probabilities: the one path predict, evaluate and demo share.

Confidences come from the run's :class:`~supersub.novelty.scoring.NoveltyScorer`, decisions from
:func:`~supersub.novelty.decide.decide` at the run's thresholds, the novel probabilities from the fitted
logistic on the same confidences, and the seen-class probabilities from temperature-scaled logits
(temperature never changes an argmax). :func:`~supersub.novelty.probs.with_novel_column` combines them
into hierarchical distributions whose argmax at each level is the decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..data.cache import decode_images
from ..data.cache_limit import cache_policy
from ..data.formats import read_images
from ..data.records import Dataset
from ..errors import SupersubError
from ..inference import Outputs, named_device, pick_device, run_model
from ..io import write_atomic
from ..config import TrainConfig
from ..models.ensemble import BaggingEnsemble
from ..models.model import HierarchicalClassifier
from ..novelty.decide import Decision, decide
from ..novelty.probs import novel_probability, with_novel_column
from ..novelty.scores import create_detector
from ..novelty.scoring import NoveltyScorer, seen_view
from ..run import RunDir, Thresholds
from ..taxonomy import Taxonomy
from ..training.finetune import cached_outputs
from .calibration import load_scorer

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
                    cache: bool = False) -> tuple[Prediction, Dataset]:
    """Predict a dataset with a run. The disk caches are read, but the images predicted (test sets, a user's
    photos) are kept in them only with ``cache`` (``predict --cache``)."""
    run = RunDir.open(run_dir)
    run.require_finished()  # an interrupted run's model or thresholds are never used
    model, cfg, _ = run.load_model()
    with cache_policy(write=cache, max_gb=cfg.data.cache_max_gb):
        return _predict_loaded(run, model, cfg, ds, skip_bad, device)


def _predict_loaded(run: RunDir, model: Any, cfg: TrainConfig, ds: Dataset, skip_bad: bool,
                    device: str | None) -> tuple[Prediction, Dataset]:
    thresholds = run.load_thresholds()
    taxonomy = run.load_taxonomy()  # the model's own may carry the extra class of novelty.oe: class
    scorer = load_scorer(run.path, thresholds.score)
    images, kept = decode_readable(ds, cfg.data.image_size, skip_bad)
    pred = predict_tensors(model, taxonomy, thresholds, images, kept.names, cfg.trainer.accelerator, scorer,
                           named_device(device) if device else None, cfg)
    return pred, kept


def decode_readable(ds: Dataset, image_size: int, skip_bad: bool) -> tuple[torch.Tensor, Dataset]:
    """The decoded images and the dataset of their records; with ``skip_bad`` unreadable files are logged and
    left out (recorded in ``Dataset.skipped``), else the first one is an error naming the file."""
    decoded = decode_images(ds.records, image_size, skip_bad=skip_bad)
    if decoded.bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(decoded.bad), decoded.bad[0])
    kept = Dataset([ds.records[i] for i in decoded.kept], ds.taxonomy, ds.source, ds.skipped + decoded.bad)
    if not kept.records:
        raise SupersubError(f"{ds.source}: no readable images")
    return decoded.images, kept


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
) -> pd.DataFrame:
    """:func:`supersub.api.predict`: read any unlabelled layout, predict, write the CSV when ``out`` is given."""
    if out is not None and Path(out).exists() and not overwrite:
        raise SupersubError(f"{out}: exists (pass --overwrite to replace it)")
    pred, _ = predict_dataset(run_dir, read_images(Path(images)), skip_bad, device, cache=cache)
    df = pred.to_frame(probs, RunDir.open(run_dir).load_taxonomy() if names else None)
    if out is not None:
        write_atomic(out, lambda fh: df.to_csv(fh, index=False, float_format="%.6g"))
    return df
