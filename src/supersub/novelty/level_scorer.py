"""Per-level novelty confidences of a trained model: one fitted detector per level, saved with the run.

A :class:`NoveltyScorer` turns a model's :class:`~supersub.novelty.outputs.Outputs` into the two confidences
the decision rule thresholds (higher = more seen, see :mod:`supersub.novelty.decide`):

* ``msp``: superclass max softmax, and at the subclass level the subclass head's (unnormalised)
  probability of the chosen subclass of the predicted superclass, comparable across superclasses (see
  :func:`~supersub.novelty.decide.subclass_confidence` for why it is not renormalised within the superclass);
* every other score is a detector of :mod:`supersub.novelty.detectors` fitted per level on the training
  images' logits and features (the superclass detector on superclass logits and labels, the subclass
  detector on subclass logits and labels). ``vim`` also needs the level's linear read-out ``(W, b)``:
  :func:`linear_heads` takes it from the model, and :meth:`NoveltyScorer.fit` passes it on.

With the explicit-novel-class variant of outlier exposure (``novelty.oe: class``) the heads have one
extra output; :func:`seen_view` drops it and keeps the *seen-class probability mass* (1 - p(novel)),
which replaces max softmax as the ``msp`` confidence at the superclass level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SupersubError
from ..io import torch_save_atomic
from ..score_catalog import PAIR_SEPARATOR
from .decide import decide, subclass_mask
from .outputs import IndexedRows, Outputs, RowSelection, unit_rows
from .detectors import (
    DETECTORS, Detector, FitError, create_detector, detector_from_state, level_scores, options_for_detector,
)

DETECTORS_FORMAT = "supersub-detectors-1"
SCORES = tuple(DETECTORS)
LEVELS = ("super", "sub")
# what a level scores with when its detector cannot be fitted on the run's features: it needs no fitting, reads
# the level's own logits, and was the subclass half of the default score on the novelty suite
FALLBACK_SCORE = "maxlogit"


class LevelFitError(FitError):
    """A level's detector cannot be fitted on the model's features; ``level`` ("super" or "sub") says which,
    so that a caller can score that level with :data:`FALLBACK_SCORE` instead (:func:`with_fallback`)."""

    def __init__(self, level: str, detector: str, message: str) -> None:
        super().__init__(message)
        self.level, self.detector = level, detector


def with_fallback(name: str, level: str) -> str:
    """The score ``name`` with ``level``'s detector replaced by :data:`FALLBACK_SCORE`: ``vim+knn`` -> ``maxlogit+knn``
    for the superclass; a pair of equal names is written once (``vim+maxlogit`` -> ``maxlogit``)."""
    pair = list(level_scores(name))
    pair[LEVELS.index(level)] = FALLBACK_SCORE
    return pair[0] if pair[0] == pair[1] else PAIR_SEPARATOR.join(pair)


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
    seen = outputs.seen_classes(n_super, n_sub)
    return SeenView(seen, 1 - outputs.super_probs[:, n_super], 1 - outputs.sub_probs[:, n_sub])


Head = tuple[torch.Tensor, torch.Tensor]  # (W (C, D), b (C,)) with logits = features @ W.T + b


def linear_heads(model: Any, n_super: int, n_sub: int) -> dict[str, Head | None]:
    """Each level's ``(W, b)`` from ``model.linear_readout(level)``, restricted to the seen classes.

    None for a level whose logits are not an affine function of the features (cosine and MLP heads, the
    derived superclass scores of ``sub-only``) and for models without ``linear_readout``. With an explicit
    novel class (``novelty.oe: class``) the head has one more row, which :func:`seen_view` drops from the
    logits, so it is dropped here too.
    """
    readout = getattr(model, "linear_readout", None)
    heads: dict[str, Head | None] = {}
    for level, n in (("super", n_super), ("sub", n_sub)):
        wb = readout(level) if readout is not None else None
        heads[level] = None if wb is None else (wb[0][:n].detach().cpu(), wb[1][:n].detach().cpu())
    return heads


@dataclass
class Confidences:
    """The two confidences the decision rule thresholds (``(N,)`` each, higher = more seen)."""

    super_conf: torch.Tensor
    sub_conf: torch.Tensor


def _logits_for(detector: Detector, outputs: Outputs, level: str) -> torch.Tensor:
    """The logits ``detector`` reads at ``level``: the members' (N, K, C) for an ensemble score, else the model's."""
    if not detector.needs_members:
        return outputs.super_logits if level == "super" else outputs.sub_logits
    members = outputs.members(level)
    if members is None:
        raise SupersubError(f"score '{detector.name}' reads the members of an ensemble, and this model has none "
                            "(train with model.approach bagging)")
    return members


# far below any real logit, yet finite (the detectors refuse non-finite logits): a subclass of another superclass
_OUTSIDE = 1e4


def decided_subclass_logits(logits: torch.Tensor, super_logits: torch.Tensor, sub_to_super: Sequence[int]) -> torch.Tensor:
    """Subclass logits with every subclass outside the predicted superclass pushed far below the others.

    The decision rule picks ``j*`` among the subclasses of the predicted superclass ``k*``; a subclass score must
    judge that subclass, not the global maximum (which may belong to another superclass). On these logits the
    max logit is ``j*``'s logit, class-conditional scores (``knn-class``) use ``j*``'s class, and energy, entropy
    and GEN describe the distribution over ``k*``'s subclasses. Works for ``(N, C)`` and members' ``(N, K, C)``.
    """
    allowed = subclass_mask(sub_to_super, super_logits.argmax(dim=1))  # (N, C)
    if logits.ndim == 3:
        allowed = allowed.unsqueeze(1)
    floor = logits.detach().amin() - _OUTSIDE
    return torch.where(allowed, logits, floor.expand_as(logits))


AUTO_LAYERS = {"super": "block-1", "sub": "final"}  # layer "auto" where the outputs carry it (the suite's choice)


def resolve_layer(layer: str, level: str, outputs: Outputs) -> str:
    """``auto``: :data:`AUTO_LAYERS` of the level when the model exposes that layer (timm backbones with tapped
    blocks), else ``final``; any other name as given."""
    if layer != "auto":
        return layer
    wanted = AUTO_LAYERS[level]
    return wanted if outputs.has_layer(wanted) else "final"  # not layer(): a row selection would gather it


def layer_features(outputs: Outputs, layer: str) -> torch.Tensor:
    """The features a level's score reads: ``final`` as they are (ViM needs them on the head's scale), any other
    layer or a ``+``-joined list of layers with each piece L2-normalised (so no piece dominates by its scale)."""
    if layer == "final":
        return outputs.features
    pieces = []
    for name in layer.split("+"):
        x = outputs.layer(name)
        if x is None:
            have = ", ".join(["final", *sorted(outputs.layers or {})])
            raise SupersubError(f"novelty layer {name!r}: this model does not expose it (available: {have}; tapped "
                                "blocks need a timm backbone and model.tap_blocks > 0)")
        pieces.append(unit_rows(x))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def _features_for(detector: Detector, outputs: Outputs, layer: str, in_blocks: bool) -> torch.Tensor | IndexedRows | None:
    """What ``detector`` reads of ``outputs``: None for a logit score (a row selection would gather its rows, a
    whole training matrix when fitting, for nothing), else :func:`_level_rows`."""
    return _level_rows(outputs, layer, in_blocks) if detector.needs_features else None


def _level_rows(outputs: Outputs, layer: str, in_blocks: bool) -> torch.Tensor | IndexedRows:
    """A level's features: with ``in_blocks`` a row selection's rows of one layer left where they are
    (:class:`IndexedRows`: every detector scores them a block at a time, a ``reads_blocks`` one also fits on them),
    else :func:`layer_features`."""
    if in_blocks and isinstance(outputs, RowSelection) and "+" not in layer:
        rows = outputs.indexed(layer)
        if rows is not None:
            return rows
    return layer_features(outputs, layer)


class NoveltyScorer:
    """A detector per level under one score name; ``msp`` is max softmax (see the module docstring)."""

    def __init__(self, name: str, super_detector: Detector, sub_detector: Detector,
                 layers: tuple[str, str] = ("final", "final")) -> None:
        self.levels = level_scores(name)  # ("vim", "knn") for "vim+knn"; unknown names are one-line errors
        self.name = name
        self.super_detector = super_detector
        self.sub_detector = sub_detector
        self.layers = (str(layers[0]), str(layers[1]))  # the features each level's detector reads

    @classmethod
    def fit(
        cls, name: str, train: SeenView, y_super: torch.Tensor, y_sub: torch.Tensor,
        heads: Mapping[str, Head | None] | None = None, options: Mapping[str, Any] | None = None,
        layers: tuple[str, str] = ("final", "final"),
    ) -> NoveltyScorer:
        """Fit both levels on training outputs; rows with a negative label at a level are left out there.

        ``heads`` maps ``"super"``/``"sub"`` to that level's linear read-out ``(W, b)`` of the model that
        produced ``train`` (:func:`linear_heads`), or None. Only ``vim`` uses it: its feature-space origin
        ``-pinv(W) b`` and its virtual logit are defined by the real final layer. A level without one (cosine
        and MLP heads, ``sub-only`` superclass scores, or ``heads`` not given) falls back to the affine map
        from features to logits fitted by least squares on the training rows: exact for a linear head with
        more training rows than feature dimensions, and for cosine/MLP heads the best affine approximation of
        a non-affine read-out, which ViM's derivation does not cover (its scores are then a heuristic).

        A detector that cannot be fitted on these features raises :class:`LevelFitError` naming its level.
        """
        out = train.outputs
        heads = heads or {}
        layers = (resolve_layer(layers[0], "super", out), resolve_layer(layers[1], "sub", out))
        detectors = []
        for detector, level, labels, layer in zip(level_scores(name), LEVELS, (y_super, y_sub), layers):
            keep = labels >= 0
            if not keep.any():
                raise SupersubError(f"score '{name}': no labelled training images to fit on")
            head = heads.get(level) if layer == "final" else None  # the head reads the final features only
            weight, bias = head if head is not None else (None, None)
            made = create_detector(detector, **options_for_detector(detector, dict(options or {})))
            try:
                every = bool(keep.all())  # indexing copies: a large run's training matrix is not copied for nothing
                feats = _features_for(made, out, layer, made.reads_blocks)
                detectors.append(made.fit(_logits_for(made, out, level)[keep],
                                          feats if every or feats is None else feats[keep],
                                          labels if every else labels[keep], head_weight=weight, head_bias=bias))
                del feats
            except FitError as e:
                raise LevelFitError(level, detector, str(e)) from None
        return cls(name, *detectors, layers=layers)

    def confidences(self, view: SeenView, sub_to_super: Sequence[int]) -> Confidences:
        out = view.outputs
        super_name, sub_name = self.levels
        d = decide(out.super_probs, out.sub_probs, sub_to_super, 0.0, 0.0) if "msp" in self.levels else None
        if super_name == "msp":
            assert d is not None
            super_conf = d.super_conf if view.super_seen_mass is None else view.super_seen_mass
        else:
            super_conf = self.super_detector.confidence(_logits_for(self.super_detector, out, "super"),
                                                        _features_for(self.super_detector, out, self.layers[0], True))
        if sub_name == "msp":
            assert d is not None
            sub_conf = d.sub_conf
        else:
            # the subclass the rule decides (j*, among the predicted superclass's subclasses) is what is scored
            logits = decided_subclass_logits(_logits_for(self.sub_detector, out, "sub"), out.super_logits, sub_to_super)
            sub_conf = self.sub_detector.confidence(logits, _features_for(self.sub_detector, out, self.layers[1], True))
        return Confidences(super_conf.float(), sub_conf.float())

    # ---- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": DETECTORS_FORMAT,
            "score": self.name,
            "layers": list(self.layers),
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
            layers = state.get("layers", ["final", "final"])  # files written before layers were per level
            if not (isinstance(layers, list) and len(layers) == 2 and all(isinstance(x, str) for x in layers)):
                raise SupersubError("'layers' must be two layer names")
            return cls(state["score"], detector_from_state(state["super"]), detector_from_state(state["sub"]),
                       (layers[0], layers[1]))
        except SupersubError as e:
            raise SupersubError(f"{source}: {e}") from None

    def save(self, path: Path) -> None:
        torch_save_atomic(self.state_dict(), path)
