"""Any model from its config: one network (:mod:`.model`), or for ``model.approach: bagging`` an ensemble of
them (:mod:`.ensemble`). What a saved ``model.pt`` is rebuilt with before its weights are loaded."""

from __future__ import annotations

from ..config import ModelConfig
from ..taxonomy import Taxonomy
from .ensemble import BaggingEnsemble
from .hierarchical import HierarchicalClassifier, build_model


def create_model(cfg: ModelConfig, taxonomy: Taxonomy, load_weights: bool = False) -> HierarchicalClassifier | BaggingEnsemble:
    if cfg.approach == "bagging":
        return BaggingEnsemble.build(cfg, taxonomy, load_weights)
    return build_model(cfg, taxonomy, load_weights)
