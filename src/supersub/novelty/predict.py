"""From a model's outputs to decisions and probabilities: the one path predict, evaluate and calibrate share.

Confidences come from the run's :class:`~supersub.novelty.scoring.NoveltyScorer`, decisions from
:func:`~supersub.novelty.decide.decide` at the run's thresholds, the novel probabilities from the fitted
logistic on the same confidences, and the seen-class probabilities from temperature-scaled logits
(temperature never changes an argmax). :func:`~supersub.novelty.probs.with_novel_column` combines them
into hierarchical distributions whose argmax at each level is the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inference import Outputs
from ..run import Thresholds
from ..taxonomy import Taxonomy
from .decide import Decision, decide
from .probs import novel_probability, with_novel_column
from .scoring import NoveltyScorer, seen_view


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
