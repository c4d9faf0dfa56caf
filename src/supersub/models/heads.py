"""Classifier heads: a name -> a module mapping features (B, in_features) to logits (B, n_classes).

* ``linear`` - dropout, then one affine layer (seed 001, approach A).
* ``cosine`` - dropout, then a cosine-similarity classifier (seed 001, approach C; Gidaris & Komodakis,
  "Dynamic Few-Shot Visual Learning without Forgetting", 2018). Its logits are bounded by the scale, so a
  class cannot win by feature norm alone; that tends to give better-calibrated max-softmax scores for
  novelty detection and helps rare subclasses whose weight vectors would otherwise stay short.
* ``mlp`` - seed 000's linear bottleneck: Linear(in, b) -> BatchNorm1d -> ReLU -> Dropout -> Linear(b, n).
* ``xgboost`` - seed 000's boosting: gradient-boosted trees on fixed features (:mod:`.boosted`); it is fitted
  by :mod:`supersub.training.boosting`, not by gradient descent (:func:`trains_by_gradient`).

Every factory has the same signature, so a config only needs a name. ``bottleneck`` is the hidden width
of ``mlp``; the other heads have no hidden layer and refuse a non-zero bottleneck rather than ignore it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SupersubError
from .boosted import XGBoostHead

HeadFactory = Callable[[int, int, float, int], nn.Module]

# Cosines lie in [-1, 1], so logits need a scale for the softmax to become confident: with s = 16 a cosine
# margin of 0.3 over two rivals already gives p ~ 0.98. Gidaris & Komodakis start at 10; s is learnt anyway.
DEFAULT_COSINE_SCALE = 16.0


class CosineClassifier(nn.Module):
    """logits = s * cos(features, class weight): both L2-normalised, s a learnable scalar, no bias."""

    def __init__(self, in_features: int, n_classes: int, scale: float = DEFAULT_COSINE_SCALE,
                 learn_scale: bool = True) -> None:
        super().__init__()
        if scale <= 0:
            raise SupersubError(f"cosine head: scale must be positive, got {scale}")
        self.in_features = in_features
        self.out_features = n_classes
        self.weight = nn.Parameter(torch.empty(n_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default initialisation
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()
        return self.scale * cos

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _no_bottleneck(name: str, bottleneck: int) -> None:
    if bottleneck:
        raise SupersubError(f"head {name!r} has no hidden layer (bottleneck={bottleneck}); use head 'mlp'")


def linear_head(in_features: int, n_classes: int, dropout: float, bottleneck: int) -> nn.Module:
    _no_bottleneck("linear", bottleneck)
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n_classes))


def cosine_head(in_features: int, n_classes: int, dropout: float, bottleneck: int) -> nn.Module:
    _no_bottleneck("cosine", bottleneck)
    return nn.Sequential(nn.Dropout(dropout), CosineClassifier(in_features, n_classes))


def mlp_head(in_features: int, n_classes: int, dropout: float, bottleneck: int) -> nn.Module:
    if bottleneck < 1:
        raise SupersubError("head 'mlp' needs a bottleneck width >= 1 (e.g. 256)")
    return nn.Sequential(
        nn.Linear(in_features, bottleneck),
        nn.BatchNorm1d(bottleneck),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(bottleneck, n_classes),
    )


HEADS: dict[str, HeadFactory] = {"linear": linear_head, "cosine": cosine_head, "mlp": mlp_head, "xgboost": XGBoostHead}
FITTED_HEADS = ("xgboost",)  # heads fitted on feature rows by their own ``fit``, not by gradient descent


def trains_by_gradient(name: str) -> bool:
    return name not in FITTED_HEADS


def create_head(name: str, in_features: int, n_classes: int, dropout: float = 0.0, bottleneck: int = 0) -> nn.Module:
    """Build the head called ``name``; unknown names and impossible sizes are one-line errors."""
    if name not in HEADS:
        raise SupersubError(f"unknown head {name!r} (choose from {', '.join(sorted(HEADS))})")
    if in_features < 1 or n_classes < 1:
        raise SupersubError(f"head {name!r}: in_features and n_classes must be >= 1 (got {in_features}, {n_classes})")
    if not 0.0 <= dropout < 1.0:
        raise SupersubError(f"head {name!r}: dropout must be in [0, 1), got {dropout}")
    return HEADS[name](in_features, n_classes, dropout, bottleneck)
