"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One scalar T per head, fitted on validation logits by minimising the negative log-likelihood of
``softmax(logits / T)``. Dividing by T never changes the argmax, so decisions are untouched; only the
seen-class probabilities the competition's cross-entropy scores become calibrated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import SupersubError

T_MIN, T_MAX = 0.05, 20.0


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The NLL-minimising temperature, by L-BFGS on log T (so T stays positive), clamped to [0.05, 20].

    Returns 1.0 when there is nothing to fit on (no rows), so an empty validation split means "no scaling".
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise SupersubError(
            f"fit_temperature: expected (N, C) logits and N labels, got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if len(labels) == 0:
        return 1.0
    if not bool(((labels >= 0) & (labels < logits.shape[1])).all()):
        raise SupersubError(f"fit_temperature: labels must lie in 0..{logits.shape[1] - 1}")
    x, y = logits.detach().double(), labels.detach().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return min(max(t, T_MIN), T_MAX)
