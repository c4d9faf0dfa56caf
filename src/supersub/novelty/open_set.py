"""A run's open-set head: everything that turns a model's outputs into open-set decisions, as one object.

It holds the fitted novelty detectors of both levels (:class:`~supersub.novelty.level_scorer.NoveltyScorer`), the
thresholds, slopes and temperatures (:class:`~supersub.novelty.thresholds.Thresholds`) and the sub->super map
the rule needs. Calibration fits it once; predict, evaluate, report, discover, export and
``supersub.api.predict_tensors`` call :meth:`OpenSetHead.decide`, the one path from outputs to decisions (the
shape of pytorch-ood's detectors: fit once, then predict). Pure: tensors in, tensors out; the run directory
stores it as one file (:meth:`supersub.run_dir.RunDir.save_open_set_head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SupersubError
from .decide import Decision, decide
from .outputs import Outputs
from .probs import novel_probability, with_novel_column
from .detectors import create_detector
from .level_scorer import NoveltyScorer, SeenView, seen_view
from .thresholds import Thresholds

HEAD_FORMAT = "supersub-open-set-head-1"


@dataclass
class OpenSetDecision:
    """Decisions (novel = K resp. M), the confidences they thresholded, and both levels' distributions with the
    novel column last, whose argmax is the decision (:func:`~supersub.novelty.probs.with_novel_column`)."""

    super_pred: torch.Tensor
    sub_pred: torch.Tensor
    super_conf: torch.Tensor
    sub_conf: torch.Tensor
    super_probs: torch.Tensor
    sub_probs: torch.Tensor


class OpenSetHead:
    """Fitted detectors + thresholds + the taxonomy's sub->super map: ``decide(outputs)`` for any batch."""

    def __init__(self, scorer: NoveltyScorer, thresholds: Thresholds, sub_to_super: Sequence[int], n_super: int) -> None:
        if scorer.name != thresholds.score:
            raise SupersubError(f"scorer '{scorer.name}' does not match the thresholds' score '{thresholds.score}'")
        self.scorer, self.thresholds = scorer, thresholds
        self.sub_to_super, self.n_super = [int(k) for k in sub_to_super], int(n_super)

    @classmethod
    def msp(cls, thresholds: Thresholds, sub_to_super: Sequence[int], n_super: int) -> OpenSetHead:
        """A head on max softmax, which needs no fitted detector (hand-set thresholds, tests)."""
        scorer = NoveltyScorer("msp", create_detector("msp"), create_detector("msp"))
        return cls(scorer, thresholds, sub_to_super, n_super)

    @property
    def score(self) -> str:
        return self.thresholds.score

    @property
    def n_sub(self) -> int:
        return len(self.sub_to_super)

    def rule(self, outputs: Outputs) -> Decision:
        """The decision rule alone, at the head's thresholds, on its detectors' confidences."""
        return self._rule(seen_view(outputs, self.n_super, self.n_sub))

    def _rule(self, view: SeenView) -> Decision:
        conf = self.scorer.confidences(view, self.sub_to_super)
        seen, t = view.outputs, self.thresholds
        return decide(seen.super_probs, seen.sub_probs, self.sub_to_super, t.tau_super, t.tau_sub, conf.super_conf,
                      conf.sub_conf)

    def closed_set(self, outputs: Outputs, decided: OpenSetDecision) -> Decision:
        """What the rule decides on the same confidences without thresholds: the seen-class argmax at each level
        (the report's threshold sweeps start from it)."""
        seen = seen_view(outputs, self.n_super, self.n_sub).outputs
        return decide(seen.super_probs, seen.sub_probs, self.sub_to_super, -torch.inf, -torch.inf, decided.super_conf,
                      decided.sub_conf)

    def decide(self, outputs: Outputs) -> OpenSetDecision:
        """Decisions and calibrated probabilities for one batch of the run's final model's outputs: the novel
        probability is the fitted logistic on the thresholded confidences, the seen-class probabilities come from
        temperature-scaled logits (a temperature never changes an argmax)."""
        view, t = seen_view(outputs, self.n_super, self.n_sub), self.thresholds  # once per batch (the hot path)
        d, seen = self._rule(view), view.outputs
        q_super = novel_probability(d.super_conf, t.tau_super, t.slope_super)
        q_sub = novel_probability(d.sub_conf, t.tau_sub, t.slope_sub)
        p_super = (seen.super_logits / t.temperature_super).softmax(dim=1)
        p_sub = (seen.sub_logits / t.temperature_sub).softmax(dim=1)
        full_super, full_sub = with_novel_column(p_super, p_sub, d.super_pred, d.sub_pred, q_super, q_sub,
                                                 self.sub_to_super)
        return OpenSetDecision(d.super_pred, d.sub_pred, d.super_conf, d.sub_conf, full_super, full_sub)

    # ---- persistence ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors only, so that the file loads with ``weights_only=True``."""
        return {"format": HEAD_FORMAT, "thresholds": self.thresholds.to_dict(), "detectors": self.scorer.state_dict(),
                "sub_to_super": list(self.sub_to_super), "n_super": self.n_super}

    @classmethod
    def from_state_dict(cls, state: Any, source: str = "open-set head") -> OpenSetHead:
        """Validate as well as build: a damaged or foreign file fails here in one line naming it."""
        if not isinstance(state, dict) or state.get("format") != HEAD_FORMAT:
            raise SupersubError(f"{source}: not a supersub open-set head file")
        for key in ("thresholds", "detectors", "sub_to_super", "n_super"):
            if key not in state:
                raise SupersubError(f"{source}: missing key {key!r}")
        sub_to_super, n_super = state["sub_to_super"], state["n_super"]
        if not (isinstance(n_super, int) and isinstance(sub_to_super, list)
                and all(isinstance(k, int) and 0 <= k < n_super for k in sub_to_super)):
            raise SupersubError(f"{source}: sub_to_super must map every subclass into 0..n_super-1")
        thresholds = Thresholds.from_dict(state["thresholds"], f"{source}: thresholds")
        scorer = NoveltyScorer.from_state(state["detectors"], f"{source}: detectors")
        try:
            return cls(scorer, thresholds, sub_to_super, n_super)
        except SupersubError as e:
            raise SupersubError(f"{source}: {e}") from None
