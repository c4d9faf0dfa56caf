"""The hierarchical open-set decision rule, in one place (training, calibration and prediction share it).

1. superclass = argmax of the superclass probabilities; it is *novel* if its confidence < ``tau_super``;
2. a novel superclass implies a novel subclass;
3. otherwise the subclass is the most probable subclass *of the predicted superclass*, and it is novel
   ("a novel subclass of a known superclass") if its confidence < ``tau_sub``. The default confidence is
   that subclass's *unnormalised* probability under the subclass head, ``p_sub(j*)`` (see
   :func:`subclass_confidence` for why it is not renormalised within the superclass).

Probabilities cover the *seen* classes only (K superclasses, M subclasses); novel is index K resp. M.
Confidences are "higher = more seen"; callers may pass any novelty score in that orientation instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import SupersubError


@dataclass
class Decision:
    """Predicted indices (novel = K resp. M) and the confidences they were thresholded on."""

    super_pred: torch.Tensor
    sub_pred: torch.Tensor
    super_conf: torch.Tensor
    sub_conf: torch.Tensor


def subclass_mask(sub_to_super: Sequence[int], super_pred: torch.Tensor) -> torch.Tensor:
    """(N, M) bool: the subclasses of each row's superclass (none for the novel index or an empty one)."""
    owner = torch.as_tensor(list(sub_to_super), dtype=torch.long, device=super_pred.device)
    return owner.unsqueeze(0) == super_pred.unsqueeze(1)


def _check_map_length(sub_to_super: Sequence[int], n_sub: int) -> None:
    if len(sub_to_super) != n_sub:
        raise SupersubError(f"sub_to_super has {len(sub_to_super)} entries but sub_probs has {n_sub} columns")


def conditional_sub_probs(
    sub_probs: torch.Tensor, sub_to_super: Sequence[int], super_pred: torch.Tensor
) -> torch.Tensor:
    """p(sub | predicted superclass): sub_probs restricted to that superclass's subclasses, renormalised.

    Rows whose superclass is novel (index K), has no subclasses, or gives them zero mass are all zeros.
    """
    _check_map_length(sub_to_super, sub_probs.shape[1])
    masked = torch.where(subclass_mask(sub_to_super, super_pred), sub_probs, torch.zeros_like(sub_probs))
    return masked / masked.sum(dim=1, keepdim=True).clamp_min(torch.finfo(sub_probs.dtype).tiny)


def subclass_confidence(sub_probs: torch.Tensor, sub_argmax: torch.Tensor, has_subs: torch.Tensor) -> torch.Tensor:
    """The default (max-softmax) subclass confidence: ``p_sub(j*)``, 0 where the superclass has no subclass.

    ``j*`` is the most probable subclass of the predicted superclass and ``p_sub`` the subclass head's
    softmax over *all* seen subclasses, not renormalised within the superclass. Why: the renormalised
    probability ``p(j* | k*)`` is at least ``1/|S_k|``, so a superclass with one subclass could never yield
    "novel subclass", and one global ``tau_sub`` meant a different thing for a superclass with 2 subclasses
    (floor 0.5) than for one with 50 (floor 0.02). ``p_sub(j*)`` is a probability over the same M classes
    for every row, with no per-superclass floor, so a single ``tau_sub`` means the same everywhere ("the
    subclass head gives the chosen subclass at least tau_sub of its mass") and every superclass, even one
    with a single subclass, can be declared to hold a novel subclass. It equals ``p_sub(k*) * p(j* | k*)``:
    the conditional times the subclass head's own mass on the superclass, so a subclass head that doubts
    the superclass lowers it, which is real doubt about the subclass. Per-superclass thresholds were the
    alternative; they would need held-out subclasses of every superclass to calibrate, which small
    superclasses do not have.
    """
    conf = sub_probs.gather(1, sub_argmax.unsqueeze(1)).squeeze(1)
    return torch.where(has_subs, conf, torch.zeros_like(conf))


def _check_inputs(
    super_probs: torch.Tensor,
    sub_probs: torch.Tensor,
    sub_to_super: Sequence[int],
    conf: dict[str, torch.Tensor | None],
) -> None:
    if super_probs.ndim != 2 or sub_probs.ndim != 2 or super_probs.shape[0] != sub_probs.shape[0]:
        raise SupersubError(
            f"decide: expected (N, K) and (N, M) probabilities, got {tuple(super_probs.shape)} "
            f"and {tuple(sub_probs.shape)}"
        )
    n = super_probs.shape[0]
    for name, c in conf.items():
        if c is not None and tuple(c.shape) != (n,):
            raise SupersubError(f"decide: {name} has shape {tuple(c.shape)}, expected ({n},)")
    _check_map_length(sub_to_super, sub_probs.shape[1])
    n_super = super_probs.shape[1]
    bad = [j for j, k in enumerate(sub_to_super) if not 0 <= int(k) < n_super]
    if bad:
        raise SupersubError(
            f"sub_to_super: subclass {bad[0]} maps to superclass {sub_to_super[bad[0]]}, outside 0..{n_super - 1}"
        )


def decide(
    super_probs: torch.Tensor,
    sub_probs: torch.Tensor,
    sub_to_super: Sequence[int],
    tau_super: float,
    tau_sub: float,
    super_conf: torch.Tensor | None = None,
    sub_conf: torch.Tensor | None = None,
) -> Decision:
    """Apply the rule above; seen iff confidence >= tau, so ``tau = 0`` never flags max-softmax novelty."""
    _check_inputs(super_probs, sub_probs, sub_to_super, {"super_conf": super_conf, "sub_conf": sub_conf})
    n_super, n_sub = super_probs.shape[1], sub_probs.shape[1]

    best_super, super_argmax = super_probs.max(dim=1)
    s_conf = best_super if super_conf is None else super_conf
    novel_super = s_conf < tau_super

    allowed = subclass_mask(sub_to_super, super_argmax)
    has_subs = allowed.any(dim=1)
    sub_argmax = torch.where(allowed, sub_probs, torch.full_like(sub_probs, -torch.inf)).argmax(dim=1)
    if sub_conf is None:
        sub_conf = subclass_confidence(sub_probs, sub_argmax, has_subs)
    novel_sub = novel_super | ~has_subs | (sub_conf < tau_sub)

    super_pred = torch.where(novel_super, torch.full_like(super_argmax, n_super), super_argmax)
    sub_pred = torch.where(novel_sub, torch.full_like(sub_argmax, n_sub), sub_argmax)
    return Decision(super_pred, sub_pred, s_conf, sub_conf)
