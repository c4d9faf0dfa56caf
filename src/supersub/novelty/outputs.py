"""What a model hands the novelty maths: each level's logits, the shared features, and an ensemble's members.

A single network fills the first three fields. An ensemble (:mod:`supersub.models.ensemble`) also fills
``super_members`` / ``sub_members``, its members' own logits ``(N, K, C)``, which the disagreement scores of
:mod:`supersub.novelty.detectors` read (``mi``, ``expected-entropy``); its ``super_logits`` / ``sub_logits`` are
the combined ones every other score, the decision rule and the probabilities use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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

    def has_layer(self, name: str) -> bool:
        """Whether :meth:`layer` gives ``name`` (without reading it)."""
        return name == "final" or (self.layers is not None and name in self.layers)

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
        return Outputs.gather(parts, sum(len(p.super_logits) for p in parts))

    @staticmethod
    def gather(parts: Iterable[Outputs], n: int) -> Outputs:
        """:meth:`cat` of ``n`` rows arriving in batches, each copied into place as it comes: one batch is alive
        at a time instead of every batch and then their concatenation (twice a large run's feature matrix)."""
        out: Outputs | None = None
        filled = 0
        for part in parts:
            rows = len(part.super_logits)
            if out is None:
                out = part._empty(n)
            for into, t in zip(out._fields(), part._fields()):
                if into is not None and t is not None:
                    into[filled:filled + rows] = t
            for k, v in (part.layers or {}).items():
                out.layers[k][filled:filled + rows] = v  # type: ignore[index]
            filled += rows
        if out is None:
            raise ValueError("Outputs.gather needs at least one batch")
        if filled != n:
            raise ValueError(f"Outputs.gather: expected {n} rows, got {filled}")
        return out

    def _empty(self, n: int) -> Outputs:
        """Uninitialised outputs of ``n`` rows shaped like these (what :meth:`gather` fills)."""
        def room(t: torch.Tensor) -> torch.Tensor:
            return t.new_empty((n, *t.shape[1:]))
        layers = None if self.layers is None else {k: room(v) for k, v in self.layers.items()}
        return Outputs(*(None if t is None else room(t) for t in self._fields()), layers=layers)  # type: ignore[arg-type]

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return self.super_logits, self.sub_logits, self.features, self.super_members, self.sub_members


Logits = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


class RowSelection(Outputs):
    """Some rows of a larger :class:`Outputs`: the logits are copied out at once (a few numbers an image), the
    features and tapped layers each time they are read (a copy the reader frees when done).

    Why: a run's stages (final, calibration folds, LOSO models) each keep their evidence until calibration, and
    with a frozen backbone every stage's features are the same matrix; selecting them once per stage and view
    held that matrix once per stage. Read, they are ``source.features[index]``, the bytes
    :meth:`Outputs.select` gives, so every score computed from them is the same. Only the source's features and
    layers are kept (not its logits of every row).
    """

    def __init__(self, logits: Logits, all_features: torch.Tensor, all_layers: dict[str, torch.Tensor] | None,
                 index: torch.Tensor, after_read: AfterRead | None = None) -> None:
        self.super_logits, self.sub_logits, self.super_members, self.sub_members = logits
        self._all_features, self._all_layers, self._index = all_features, all_layers, index
        self._after_read = after_read

    @classmethod
    def pick(cls, source: Outputs, rows: Sequence[int], after_read: AfterRead | None = None) -> RowSelection:
        """Rows ``rows`` of ``source`` (an index list, as :meth:`Outputs.select` takes). ``after_read(matrix)`` is
        called after rows are gathered from one of the source's matrices (the pipeline drops a mapped file's
        pages from memory with it)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        sm, bm = source.super_members, source.sub_members
        logits = (source.super_logits[index], source.sub_logits[index],
                  None if sm is None else sm[index], None if bm is None else bm[index])
        return cls(logits, source.features, source.layers, index, after_read)

    @property  # type: ignore[override]
    def features(self) -> torch.Tensor:
        return _gathered(self._all_features, self._index, self._after_read)

    @property  # type: ignore[override]
    def layers(self) -> dict[str, torch.Tensor] | None:
        return None if self._all_layers is None else {k: _gathered(v, self._index, self._after_read)
                                                 for k, v in self._all_layers.items()}

    def layer(self, name: str) -> torch.Tensor | None:
        """One layer's rows only (reading ``layers`` would copy every tapped layer)."""
        if name == "final":
            return self.features
        rows = None if self._all_layers is None else self._all_layers.get(name)
        return None if rows is None else _gathered(rows, self._index, self._after_read)

    def has_layer(self, name: str) -> bool:
        """As :meth:`Outputs.has_layer`, on the source's matrices (``self.layers`` would gather every one)."""
        return name == "final" or (self._all_layers is not None and name in self._all_layers)

    def indexed(self, name: str) -> IndexedRows | None:
        """One layer's rows, read in blocks when used (:class:`IndexedRows`): ``final`` as they are, a tapped
        block L2-normalised (as :func:`~supersub.novelty.level_scorer.layer_features` gives it); None if absent."""
        if name == "final":
            return IndexedRows(self._all_features, self._index, after_read=self._after_read)
        rows = None if self._all_layers is None else self._all_layers.get(name)
        return None if rows is None else IndexedRows(rows, self._index, unit=True, after_read=self._after_read)

    def seen_classes(self, n_super: int, n_sub: int) -> Outputs:
        sm, bm = self.super_members, self.sub_members
        logits = (self.super_logits[:, :n_super], self.sub_logits[:, :n_sub],
                  None if sm is None else sm[..., :n_super], None if bm is None else bm[..., :n_sub])
        return RowSelection(logits, self._all_features, self._all_layers, self._index, self._after_read)

    def __repr__(self) -> str:
        return f"RowSelection({len(self._index)} rows of {len(self._all_features)})"


AfterRead = Callable[[torch.Tensor], None]  # called with a matrix after rows were gathered from it


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of ``x`` (as float32) divided by its L2 norm: how a tapped layer's features are read."""
    return x.float() / x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)


def _gathered(matrix: torch.Tensor, index: torch.Tensor, after_read: AfterRead | None) -> torch.Tensor:
    """``matrix[index]``, then ``after_read(matrix)`` (the pipeline passes one that drops a mapped file's pages)."""
    rows = matrix[index]
    if after_read is not None:
        after_read(matrix)
    return rows


class IndexedRows:
    """Rows ``index`` of ``matrix``, gathered a block at a time when read (each block L2-normalised if ``unit``,
    as :func:`~supersub.novelty.level_scorer.layer_features` does to a tapped layer): what a detector that passes
    over its training rows in blocks (ViM, the probe) is given for a :class:`RowSelection`.

    Why: a fit on a stage's training rows gathered them into a matrix of their own (one stage of a 50,000-image run:
    230 MB of final features) next to the run's held matrix; read in blocks, the fit holds one block.
    """

    def __init__(self, matrix: torch.Tensor, index: torch.Tensor, unit: bool = False,
                 after_read: AfterRead | None = None) -> None:
        self.matrix, self.index, self.unit, self.after_read = matrix, index, unit, after_read

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), self.matrix.shape[1]))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows: torch.Tensor) -> IndexedRows:
        """The rows a boolean mask or an index tensor picks (still not gathered)."""
        return IndexedRows(self.matrix, self.index[rows], self.unit, self.after_read)

    def blocks(self, size: int) -> Iterator[torch.Tensor]:
        """The rows, ``size`` at a time, in order."""
        for start in range(0, len(self.index), size):
            block = _gathered(self.matrix, self.index[start:start + size], self.after_read)
            yield unit_rows(block) if self.unit else block
