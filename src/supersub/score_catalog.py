"""The novelty scores as plain data: names, options and confidence ranges.

The config validates ``novelty.score``, ``novelty.score_options`` and hand-set thresholds against this
table without importing the detectors (and pytorch-ood); :mod:`supersub.novelty.detectors` builds its
detectors from the same table, and a test checks that the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import SupersubError

PAIR_SEPARATOR = "+"
# "maxlogit,knn-class": the average of the parts' standardised confidences (supersub.novelty.detectors.AveragedScore)
AVERAGE_SEPARATOR = ","


@dataclass(frozen=True)
class ScoreSpec:
    """One score: its options (name -> ``int`` or ``float``, always positive) and, when bounded, the
    interval its confidences lie in (a hand-set threshold outside it flags every image, or none)."""

    name: str
    options: dict[str, type] = field(default_factory=dict)
    confidence_range: tuple[float, float] | None = None
    needs_members: bool = False  # reads an ensemble's member logits (model.approach bagging)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(self.options)


SCORE_SPECS: dict[str, ScoreSpec] = {s.name: s for s in (
    ScoreSpec("msp", {"temperature": float}, (0.0, 1.0)),
    ScoreSpec("maxlogit"),
    ScoreSpec("energy", {"temperature": float}),
    ScoreSpec("entropy"),
    ScoreSpec("gen", {"gamma": float, "top_m": int}),
    ScoreSpec("mahalanobis"),
    ScoreSpec("knn", {"k": int}, (-2.0, 0.0)),  # minus a cosine distance
    ScoreSpec("knn-class", {"k": int}, (-2.0, 0.0)),
    ScoreSpec("vim", {"dim": int}),
    ScoreSpec("probe", {"scale": float}),  # a logistic-regression probe on unit features
    ScoreSpec("mi", {}, (-math.inf, 0.0), needs_members=True),  # minus the members' mutual information
    ScoreSpec("expected-entropy", {}, (-math.inf, 0.0), needs_members=True),  # minus their mean entropy
)}


# ``auto`` at a level: the score is chosen among AUTO_CANDIDATES on the run's calibration evidence when the run is
# calibrated (supersub.novelty.score_choice); the first candidate is the suite's default, kept unless another one
# separates the evidence clearly better. It takes no options and no hand-set threshold (its units are not known yet).
AUTO = "auto"
AUTO_CANDIDATES: dict[str, tuple[str, ...]] = {
    "super": ("vim", "knn", "mahalanobis", "maxlogit"),
    "sub": ("probe", "maxlogit", "knn-class", "energy"),
}


def score_spec(name: str) -> ScoreSpec:
    """A score's spec; ``a,b`` (an average of scores) takes the options of its parts and has no fixed range."""
    if name == AUTO:
        return ScoreSpec(AUTO)
    if AVERAGE_SEPARATOR in name:
        parts = average_parts(name)
        options = {k: v for part in parts for k, v in SCORE_SPECS[part].options.items()}
        return ScoreSpec(name, options, None, any(SCORE_SPECS[p].needs_members for p in parts))
    if name not in SCORE_SPECS:
        raise SupersubError(f"unknown score {name!r} (choose from {', '.join(SCORE_SPECS)})")
    return SCORE_SPECS[name]


def average_parts(name: str) -> list[str]:
    """The parts of an averaged score ``a,b[,c]``: known, distinct, not ``msp`` (its subclass form is not a detector)."""
    parts = name.split(AVERAGE_SEPARATOR)
    if len(parts) < 2 or len(set(parts)) != len(parts) or not all(parts):
        raise SupersubError(f"score {name!r}: an average needs two or more distinct scores joined by "
                            f"'{AVERAGE_SEPARATOR}'")
    for part in parts:
        if part not in SCORE_SPECS or part == "msp":
            raise SupersubError(f"score {name!r}: {part!r} cannot be averaged (choose from "
                                f"{', '.join(n for n in SCORE_SPECS if n != 'msp')})")
    return parts


def level_scores(name: str) -> tuple[str, str]:
    """The (superclass, subclass) detector names of a score: ``"knn"`` -> both knn; ``"vim+knn"`` -> ViM for
    the superclass, kNN for the subclass. A pair lets each level use the detector that separates its own kind
    of novelty best (a new family vs a new species of a known family)."""
    parts = name.split(PAIR_SEPARATOR)
    if len(parts) > 2 or not all(parts):
        raise SupersubError(f"score {name!r}: one name, or two joined by '{PAIR_SEPARATOR}' (superclass+subclass)")
    for part in parts:
        score_spec(part)
    return (parts[0], parts[-1])


def options_for_detector(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options among ``options`` that detector ``name`` takes (a pair's options go to the parts that take them)."""
    params = score_spec(name).params
    return {k: v for k, v in options.items() if k in params}


def positive_option(score: str, option: str, value: Any, integer: bool = False) -> Any:
    """A detector option's value, checked: a positive number (a positive integer where ``integer``)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise SupersubError(f"score '{score}': option {option} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of detector ``name``, checked (known names, positive values) and normalised."""
    spec = score_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.params) or "none"
        raise SupersubError(f"score '{name}': unknown option(s) {', '.join(unknown)} (options: {allowed})")
    return {k: positive_option(name, k, v, integer=spec.options[k] is int) for k, v in options.items()}
