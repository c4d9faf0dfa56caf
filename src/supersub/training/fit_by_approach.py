"""Which routine trains a stage's model: one entry per kind of training, chosen from the model config.

* ``lightning`` - a network trained by gradient descent (:func:`.fit.fit_stage`): every approach's network
  with linear, cosine or MLP heads;
* ``trees`` - heads fitted on cached backbone features by their own ``fit`` (``model.head: xgboost``,
  :func:`.boosting.fit_boosted`);
* ``bagging`` - an ensemble whose members are each fitted by one of the above (:func:`.bagging.fit_bagging`).

All take the arguments of ``fit_stage`` and return a :class:`~.fit.FitResult` whose model the rest of the
pipeline uses as is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, TrainConfig
from ..models.heads import trains_by_gradient
from ..taxonomy import Taxonomy
from .bagging import fit_bagging
from .boosting import fit_boosted
from .lightning_fit import FitResult, fit_stage

Fitter = Callable[..., FitResult]


def _bagging(*args: Any, **kwargs: Any) -> FitResult:
    """Bagging fits each member as a single model of its config."""
    return fit_bagging(*args, fit_member=fit_model, **kwargs)


FITTERS: dict[str, Fitter] = {"lightning": fit_stage, "trees": fit_boosted, "bagging": _bagging}


def fitter_name(cfg: ModelConfig) -> str:
    if cfg.approach == "bagging":
        return "bagging"
    return "lightning" if trains_by_gradient(cfg.head) else "trees"


def fit_model(images: torch.Tensor, y_super: torch.Tensor, y_sub: torch.Tensor, train_idx: Sequence[int],
              val_idx: Sequence[int], taxonomy: Taxonomy, cfg: TrainConfig, run_path: Path, stage: str,
              epochs: int | None = None, resume: bool = False) -> FitResult:
    """Train the stage's model with the routine its config calls for (see the module docstring)."""
    return FITTERS[fitter_name(cfg.model)](images, y_super, y_sub, train_idx, val_idx, taxonomy, cfg, run_path,
                                           stage, epochs=epochs, resume=resume)
