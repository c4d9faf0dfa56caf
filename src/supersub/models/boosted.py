"""``model.head: xgboost``: gradient-boosted trees (XGBoost) as a head on fixed backbone features (seed 000).

Boosting fits each round's trees to the errors of the rounds before (Friedman, "Greedy Function Approximation:
A Gradient Boosting Machine", 2001; Chen & Guestrin, "XGBoost", KDD 2016): it cuts bias where bagging cuts
variance. :class:`XGBoostHead` is an ``nn.Module`` like every other head: features in, logits out (the booster's
softmax margins, so ``softmax(logits)`` is its probability), so scores, thresholds and probabilities treat it as
any head. It does not learn by gradient descent: :meth:`XGBoostHead.fit` trains it on feature rows, with early
stopping on validation rows (see :mod:`supersub.training.boosting`).

With ``boost.components`` the trees split on the features' leading principal components (scikit-learn ``PCA``
fitted on the training rows, kept as the buffers ``center`` and ``projection``): the cost of a boosting round
grows with columns x classes, and 1,280 backbone columns x 87 subclasses made a round take seconds on a CPU.
The fitted booster is kept as a uint8 buffer (XGBoost's UBJSON model bytes), so the model's state dict stays
plain tensors and ``model.pt`` loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from ..config import BoostConfig
from ..errors import SupersubError


def _xgboost() -> Any:
    try:
        import xgboost
    except ImportError:
        raise SupersubError('head xgboost needs the package xgboost: pip install "supersub[boost]"') from None
    return xgboost


class XGBoostHead(nn.Module):
    """(N, D) features -> (N, C) margins of a multi-class XGBoost booster (zeros for a single class)."""

    def __init__(self, in_features: int, n_classes: int, dropout: float = 0.0, bottleneck: int = 0) -> None:
        super().__init__()
        if bottleneck:
            raise SupersubError(f"head 'xgboost' has no hidden layer (bottleneck={bottleneck})")
        self.in_features, self.n_classes = in_features, n_classes
        self.register_buffer("booster_bytes", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("center", torch.zeros(0))  # PCA mean (D,), empty: raw features
        self.register_buffer("projection", torch.zeros(0, in_features))  # PCA components (k, D)
        self._booster: Any = None

    @property
    def is_fitted(self) -> bool:
        return self.n_classes == 1 or len(self.booster_bytes) > 0

    def fit(self, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor | None, y_val: torch.Tensor | None,
            cfg: BoostConfig, seed: int) -> dict[str, Any]:
        """Boost on rows ``x`` with labels ``y`` (0..C-1); stop early on the validation log-loss and keep the best
        round. Returns the rounds kept and the best validation log-loss (None without validation rows)."""
        if self.n_classes == 1:  # one class: nothing to separate
            return {"rounds": 0, "val_mlogloss": None}
        xgb = _xgboost()
        self._fit_projection(x, cfg.components, seed)
        x, x_val = self._project(x), None if x_val is None else self._project(x_val)
        params = {
            "objective": "multi:softprob", "num_class": self.n_classes, "eval_metric": "mlogloss",
            "eta": cfg.learning_rate, "max_depth": cfg.max_depth, "subsample": cfg.subsample,
            "colsample_bytree": cfg.colsample, "min_child_weight": cfg.min_child_weight, "lambda": cfg.reg_lambda,
            "tree_method": "hist", "max_bin": cfg.max_bin, "seed": seed, "nthread": cfg.threads or -1, "verbosity": 0,
        }
        train = xgb.DMatrix(_numpy(x), label=y.numpy())
        evals, stop = [], None
        if x_val is not None and y_val is not None and len(y_val):
            evals, stop = [(xgb.DMatrix(_numpy(x_val), label=y_val.numpy()), "val")], cfg.early_stopping
        booster = xgb.train(params, train, num_boost_round=cfg.rounds, evals=evals, early_stopping_rounds=stop,
                            verbose_eval=False)
        best = getattr(booster, "best_iteration", None) if stop else None
        score = getattr(booster, "best_score", None) if stop else None
        if best is not None:
            booster = booster[: best + 1]
        self._set(booster)
        return {"rounds": booster.num_boosted_rounds(), "val_mlogloss": None if score is None else float(score)}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.n_classes == 1:
            return features.new_zeros(len(features), 1)
        booster = self._loaded()
        margins = booster.inplace_predict(_numpy(self._project(features)), predict_type="margin")
        return torch.from_numpy(np.asarray(margins, dtype=np.float32).reshape(len(features), self.n_classes)).to(
            device=features.device, dtype=features.dtype)

    def _fit_projection(self, x: torch.Tensor, components: int, seed: int) -> None:
        """The leading principal components of the training rows (none when ``components`` is 0 or not fewer
        than the features)."""
        k = min(components, len(x) - 1)
        if components == 0 or k >= x.shape[1] or k < 1:
            self.center, self.projection = torch.zeros(0), torch.zeros(0, x.shape[1])
            return
        pca = PCA(n_components=k, random_state=seed).fit(_numpy(x))
        self.center = torch.from_numpy(pca.mean_).float()
        self.projection = torch.from_numpy(pca.components_).float()

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.center):
            return x
        return (x.float() - self.center.to(x.device)) @ self.projection.to(x.device).T

    def _set(self, booster: Any) -> None:
        raw = bytes(booster.save_raw("ubj"))
        self.booster_bytes = torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()
        self._booster = booster

    def _loaded(self) -> Any:
        if self._booster is None:
            if not len(self.booster_bytes):
                raise SupersubError("head xgboost: not fitted (its model file holds no trees)")
            booster = _xgboost().Booster()
            booster.load_model(bytearray(self.booster_bytes.cpu().numpy().tobytes()))
            self._booster = booster
        return self._booster

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        """The booster's byte length and the number of components differ per fit, so each buffer takes the saved
        tensor whatever its size (its kind and rank are checked)."""
        kinds = {"booster_bytes": (torch.uint8, 1), "center": (torch.float32, 1), "projection": (torch.float32, 2)}
        for name, (dtype, ndim) in kinds.items():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, torch.Tensor) or value.dtype != dtype or value.ndim != ndim:
                error_msgs.append(f"{key}: expected a {ndim}-D {dtype} tensor")
                continue
            setattr(self, name, value.detach().clone().cpu())
        self._booster = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_classes={self.n_classes}, fitted={self.is_fitted}"


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()
