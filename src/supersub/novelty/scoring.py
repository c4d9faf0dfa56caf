"""Per-level novelty confidences of a trained model: one fitted detector per level, saved with the run.

A :class:`NoveltyScorer` turns a model's :class:`~supersub.inference.Outputs` into the two confidences
the decision rule thresholds (higher = more seen, see :mod:`supersub.novelty.decide`):

* ``msp`` keeps the seed's rule: superclass max softmax, and the subclass probability renormalised
  within the predicted superclass (so a superclass-level doubt does not count twice);
* every other score is a detector of :mod:`supersub.novelty.scores` fitted per level on the training
  images' logits and features (the superclass detector on superclass logits and labels, the subclass
  detector on subclass logits and labels).

With the explicit-novel-class variant of outlier exposure (``novelty.oe: class``) the heads have one
extra output; :func:`seen_view` drops it and keeps the *seen-class probability mass* (1 - p(novel)),
which replaces max softmax as the ``msp`` confidence at the superclass level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SupersubError
from ..inference import Outputs
from ..io import torch_save_atomic
from .decide import decide
from .scores import DETECTORS, Detector, create_detector, detector_from_state

DETECTORS_FORMAT = "supersub-detectors-1"
SCORES = tuple(DETECTORS)


@dataclass
class SeenView:
    """Outputs restricted to the seen classes, and the seen-class softmax mass of each head (or None)."""

    outputs: Outputs
    super_seen_mass: torch.Tensor | None = None
    sub_seen_mass: torch.Tensor | None = None


def seen_view(outputs: Outputs, n_super: int, n_sub: int) -> SeenView:
    """Split off the extra "novel" output of each head when the model has one (``novelty.oe: class``)."""
    extra_super = outputs.super_logits.shape[1] - n_super
    extra_sub = outputs.sub_logits.shape[1] - n_sub
    if (extra_super, extra_sub) == (0, 0):
        return SeenView(outputs)
    if (extra_super, extra_sub) != (1, 1):
        raise SupersubError(
            f"model outputs {outputs.super_logits.shape[1]} superclass and {outputs.sub_logits.shape[1]} subclass "
            f"scores but the taxonomy has {n_super} and {n_sub} classes"
        )
    seen = Outputs(outputs.super_logits[:, :n_super], outputs.sub_logits[:, :n_sub], outputs.features)
    return SeenView(seen, 1 - outputs.super_probs[:, n_super], 1 - outputs.sub_probs[:, n_sub])


@dataclass
class Confidences:
    """The two confidences the decision rule thresholds (``(N,)`` each, higher = more seen)."""

    super_conf: torch.Tensor
    sub_conf: torch.Tensor


class NoveltyScorer:
    """A detector per level under one score name; ``msp`` is the seed's conditional max softmax."""

    def __init__(self, name: str, super_detector: Detector, sub_detector: Detector) -> None:
        if name not in SCORES:
            raise SupersubError(f"unknown score {name!r} (choose from {', '.join(SCORES)})")
        self.name = name
        self.super_detector = super_detector
        self.sub_detector = sub_detector

    @classmethod
    def fit(cls, name: str, train: SeenView, y_super: torch.Tensor, y_sub: torch.Tensor) -> NoveltyScorer:
        """Fit both levels on training outputs; rows with a negative label at a level are left out there."""
        out = train.outputs
        detectors = []
        for logits, labels in ((out.super_logits, y_super), (out.sub_logits, y_sub)):
            keep = labels >= 0
            if not keep.any():
                raise SupersubError(f"score '{name}': no labelled training images to fit on")
            detectors.append(create_detector(name).fit(logits[keep], out.features[keep], labels[keep]))
        return cls(name, *detectors)

    def confidences(self, view: SeenView, sub_to_super: Sequence[int]) -> Confidences:
        out = view.outputs
        if self.name == "msp":
            d = decide(out.super_probs, out.sub_probs, sub_to_super, 0.0, 0.0)
            super_conf = d.super_conf if view.super_seen_mass is None else view.super_seen_mass
            return Confidences(super_conf.float(), d.sub_conf.float())
        return Confidences(
            self.super_detector.confidence(out.super_logits, out.features),
            self.sub_detector.confidence(out.sub_logits, out.features),
        )

    # ---- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": DETECTORS_FORMAT,
            "score": self.name,
            "super": self.super_detector.state_dict(),
            "sub": self.sub_detector.state_dict(),
        }

    @classmethod
    def from_state(cls, state: Any, source: str = "detectors") -> NoveltyScorer:
        if not isinstance(state, dict) or state.get("format") != DETECTORS_FORMAT:
            raise SupersubError(f"{source}: not a supersub detectors file")
        for key in ("score", "super", "sub"):
            if key not in state:
                raise SupersubError(f"{source}: missing key {key!r}")
        try:
            return cls(state["score"], detector_from_state(state["super"]), detector_from_state(state["sub"]))
        except SupersubError as e:
            raise SupersubError(f"{source}: {e}") from None

    def save(self, path: Path) -> None:
        torch_save_atomic(self.state_dict(), path)
