"""Seed 004's pseudo-task regularisation (PtR, Zhong & Maki, CVPR 2020) for fine-tuning.

A regression layer maps the pooled representation to random targets drawn afresh for every sample, so
its gradient on the representation is structured noise that keeps fine-tuning from over-fitting a small
target set. Its strength adapts every step: with ``G`` the batch mean of the per-sample gradient norms with
respect to the representation, ``w = G_ce / (G_ptr * R)`` and the step back-propagates ``CE + w * PtR``.
While the classification loss is far from its minimum (the first ``warmup_epochs``, or batches whose loss is
above ``ce_below``) the step is CE alone. Hand-written: no maintained library implements PtR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PtrConfig


@dataclass
class PtrStep:
    """What one step adds: ``w * loss`` (``w`` detached) and the norms ``w`` came from (for the logs)."""

    loss: torch.Tensor
    weight: torch.Tensor
    grad_ce: torch.Tensor
    grad_ptr: torch.Tensor


def ptr_active(epoch: int, ce: float, warmup_epochs: int, ce_below: float | None) -> bool:
    """The switch-on rule: after the warm-up epochs, and (when set) once the batch's CE is below ``ce_below``."""
    return epoch >= warmup_epochs and (ce_below is None or ce < ce_below)


def mean_grad_norm(loss: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-sample L2 norms of d loss / d rep (the graph is kept for the real backward)."""
    (grad,) = torch.autograd.grad(loss, rep, retain_graph=True)
    return grad.flatten(1).norm(dim=1).mean()


def ptr_weight(ce: torch.Tensor, ptr: torch.Tensor, rep: torch.Tensor, ratio: float) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w, G_ce, G_ptr) with ``w = G_ce / (G_ptr * ratio)``, all detached: w is a weight, not a trained term."""
    g_ce, g_ptr = mean_grad_norm(ce, rep).detach(), mean_grad_norm(ptr, rep).detach()
    w = g_ce / (g_ptr * ratio).clamp_min(torch.finfo(g_ptr.dtype).tiny)
    return w, g_ce, g_ptr


class PseudoTaskRegressor(nn.Module):
    """The pseudo task: a linear regression of the representation onto per-sample random targets."""

    def __init__(self, dim: int, cfg: PtrConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.regressor = nn.Linear(dim, dim)
        # the targets come from a generator of their own, so switching PtR on changes the loss and nothing
        # else: dropout masks and view choices keep drawing the same numbers from the global RNG as without it
        self._seed = 0
        self._generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        """Restart the targets' generator (the module calls this at every epoch's start, for exact resumes)."""
        self._seed, self._generator = seed, None

    def targets(self, like: torch.Tensor) -> torch.Tensor:
        """Fresh targets shaped like the regression output: N(0,1) or U(0,1), from the pseudo task's generator."""
        if self._generator is None or self._generator.device != like.device:
            self._generator = torch.Generator(device=like.device).manual_seed(self._seed)
        draw = torch.randn if self.cfg.target == "normal" else torch.rand
        return draw(like.shape, generator=self._generator, device=like.device, dtype=like.dtype)

    def loss(self, rep: torch.Tensor) -> torch.Tensor:
        pred = self.regressor(rep)
        target = self.targets(pred)
        if self.cfg.loss == "l2":
            return F.mse_loss(pred, target)
        return F.smooth_l1_loss(pred, target)

    def step(self, ce: torch.Tensor, rep: torch.Tensor) -> PtrStep:
        """The weighted PtR term of a step whose classification loss is ``ce`` on representation ``rep``."""
        ptr = self.loss(rep)
        w, g_ce, g_ptr = ptr_weight(ce, ptr, rep, self.cfg.ratio)
        return PtrStep(w * ptr, w, g_ce, g_ptr)
