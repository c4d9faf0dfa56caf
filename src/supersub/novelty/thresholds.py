"""The numbers that turn a model's novelty confidences into decisions and probabilities: both thresholds, the
novel-probability slopes and the softmax temperatures (part of a run's :class:`~supersub.novelty.open_set.OpenSetHead`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import SupersubError


@dataclass(frozen=True)
class Thresholds:
    """What turns a model's outputs into decisions and probabilities, beside the fitted detectors.

    Thresholds are in the units of the run's novelty ``score`` on the final model (seen iff confidence
    >= tau); the slopes are those of the logistic novel probability in the same units; the temperatures
    scale each head's logits for the seen-class probabilities (they never change a decision).
    """

    tau_super: float
    tau_sub: float
    slope_super: float = 20.0
    slope_sub: float = 20.0
    score: str = "msp"
    temperature_super: float = 1.0
    temperature_sub: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Any, source: str = "thresholds") -> Thresholds:
        """Validate as well as build: a damaged head file (or an old run's hand-edited thresholds.json) must fail here, not inside the decision."""
        if not isinstance(d, dict):
            raise SupersubError(f"{source}: expected a JSON object with tau_super and tau_sub")
        for key in ("tau_super", "tau_sub"):
            if key not in d:
                raise SupersubError(f"{source}: missing key {key!r}")
        for key in ("tau_super", "tau_sub", "slope_super", "slope_sub", "temperature_super", "temperature_sub"):
            value = d.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SupersubError(f"{source}: {key} must be a finite number, found {value!r}")
        for key in ("temperature_super", "temperature_sub"):
            if not d.get(key, 1.0) > 0:
                raise SupersubError(f"{source}: {key} must be positive, found {d[key]!r}")
        if not isinstance(d.get("score", ""), str):
            raise SupersubError(f"{source}: score must be a string, found {d['score']!r}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


