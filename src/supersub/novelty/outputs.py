"""What a model hands the novelty maths: each level's logits, the shared features, and an ensemble's members.

A single network fills the first three fields. An ensemble (:mod:`supersub.models.ensemble`) also fills
``super_members`` / ``sub_members``, its members' own logits ``(N, K, C)``, which the disagreement scores of
:mod:`supersub.novelty.scores` read (``mi``, ``expected-entropy``); its ``super_logits`` / ``sub_logits`` are
the combined ones every other score, the decision rule and the probabilities use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Outputs:
    super_logits: torch.Tensor
    sub_logits: torch.Tensor
    features: torch.Tensor
    super_members: torch.Tensor | None = None
    sub_members: torch.Tensor | None = None
    # pooled outputs of the backbone's last blocks by name (block-1, block-2, ...; see supersub.models.taps)
    layers: dict[str, torch.Tensor] | None = None

    @property
    def super_probs(self) -> torch.Tensor:
        return self.super_logits.softmax(dim=1)

    @property
    def sub_probs(self) -> torch.Tensor:
        return self.sub_logits.softmax(dim=1)

    def members(self, level: str) -> torch.Tensor | None:
        """The members' logits of ``level`` ("super" / "sub"), None for a single network."""
        return self.super_members if level == "super" else self.sub_members

    def select(self, rows: Sequence[int] | torch.Tensor) -> Outputs:
        """The outputs of some rows (index list or boolean mask)."""
        index = rows if isinstance(rows, torch.Tensor) else torch.as_tensor(list(rows), dtype=torch.long)
        layers = None if self.layers is None else {k: v[index] for k, v in self.layers.items()}
        return Outputs(*(None if t is None else t[index] for t in self._fields()), layers=layers)

    def seen_classes(self, n_super: int, n_sub: int) -> Outputs:
        """The first ``n_super`` / ``n_sub`` classes of each level (drops an explicit novel output)."""
        sm, bm = self.super_members, self.sub_members
        return Outputs(self.super_logits[:, :n_super], self.sub_logits[:, :n_sub], self.features,
                       None if sm is None else sm[..., :n_super], None if bm is None else bm[..., :n_sub], self.layers)

    def cpu_float(self) -> Outputs:
        layers = None if self.layers is None else {k: v.float().cpu() for k, v in self.layers.items()}
        return Outputs(*(None if t is None else t.float().cpu() for t in self._fields()), layers=layers)

    def layer(self, name: str) -> torch.Tensor | None:
        """Features of one layer: ``final`` (the features the heads read) or a tapped block; None if absent."""
        if name == "final":
            return self.features
        return None if self.layers is None else self.layers.get(name)

    @staticmethod
    def cat(parts: Sequence[Outputs]) -> Outputs:
        """Row-wise concatenation of batches of the same model."""
        if not parts:
            raise ValueError("Outputs.cat needs at least one batch")
        columns = list(zip(*(p._fields() for p in parts)))
        layers = None if parts[0].layers is None else {k: torch.cat([p.layers[k] for p in parts])  # type: ignore[index]
                                                       for k in parts[0].layers}
        return Outputs(*(None if col[0] is None else torch.cat(col) for col in columns), layers=layers)

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return self.super_logits, self.sub_logits, self.features, self.super_members, self.sub_members

