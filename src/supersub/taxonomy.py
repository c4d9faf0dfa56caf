"""The two-level label space: superclasses, subclasses, the sub->super map and the 'novel' index.

Index conventions follow the competition's mapping files: seen classes are ``0..n-1`` and "novel" is
the last index (``n``) at each level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import SupersubError


@dataclass(frozen=True)
class Taxonomy:
    """Seen superclass/subclass names and which superclass every subclass belongs to.

    ``sub_to_super[j]`` is the superclass index of subclass ``j``. The novel class of each level is not
    listed in ``super_names``/``sub_names``; its index is ``len(...)`` (see :attr:`novel_super`).
    """

    super_names: tuple[str, ...]
    sub_names: tuple[str, ...]
    sub_to_super: tuple[int, ...]
    source: str = field(default="taxonomy", compare=False)

    def __post_init__(self) -> None:
        where = self.source
        if not self.super_names:
            raise SupersubError(f"{where}: no superclasses defined")
        if len(self.sub_to_super) != len(self.sub_names):
            raise SupersubError(
                f"{where}: {len(self.sub_names)} subclasses but {len(self.sub_to_super)} superclass assignments"
            )
        for j, k in enumerate(self.sub_to_super):
            if not 0 <= int(k) < len(self.super_names):
                raise SupersubError(
                    f"{where}: subclass {j} ({self.sub_names[j]!r}) maps to superclass {k}, "
                    f"which is not a seen superclass (0..{len(self.super_names) - 1})"
                )
        for level, names in (("superclass", self.super_names), ("subclass", self.sub_names)):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise SupersubError(f"{where}: {level} name {name!r} appears twice")
                if name.strip().lower() == "novel":
                    raise SupersubError(f"{where}: 'novel' must be the last index of the {level} mapping only")
                seen.add(name)

    # ---- indices -------------------------------------------------------------------------------
    @property
    def n_super(self) -> int:
        return len(self.super_names)

    @property
    def n_sub(self) -> int:
        return len(self.sub_names)

    @property
    def novel_super(self) -> int:
        return self.n_super

    @property
    def novel_sub(self) -> int:
        return self.n_sub

    def subs_of(self, super_index: int) -> list[int]:
        return [j for j, k in enumerate(self.sub_to_super) if k == super_index]

    def membership(self, with_novel: bool = False) -> torch.Tensor:
        """(n_sub[+1], n_super[+1]) 0/1 matrix: row j has a 1 at the superclass of subclass j.

        With ``with_novel`` the novel subclass belongs to the novel superclass, so summing subclass
        probabilities through this matrix gives the implied superclass distribution (seed 001).
        """
        rows = self.n_sub + int(with_novel)
        cols = self.n_super + int(with_novel)
        m = torch.zeros(rows, cols)
        m[torch.arange(self.n_sub), torch.tensor(self.sub_to_super, dtype=torch.long)] = 1.0
        if with_novel:
            m[self.n_sub, self.n_super] = 1.0
        return m

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_pairs(
        cls,
        super_names: Sequence[str],
        sub_names: Sequence[str],
        pairs: Sequence[tuple[int, int]],
        source: str = "taxonomy",
    ) -> Taxonomy:
        """Build from observed (super, sub) label pairs; a subclass seen under two superclasses is an error."""
        owner: dict[int, int] = {}
        for k, j in pairs:
            if j in owner and owner[j] != k:
                raise SupersubError(
                    f"{source}: subclass {j} ({sub_names[j] if 0 <= j < len(sub_names) else '?'!s}) "
                    f"is labelled with two superclasses ({owner[j]} and {k})"
                )
            owner[j] = k
        missing = [j for j in range(len(sub_names)) if j not in owner]
        if missing:
            raise SupersubError(
                f"{source}: subclass {missing[0]} ({sub_names[missing[0]]!r}) has no labelled image, so its "
                f"superclass is unknown ({len(missing)} such subclass(es))"
            )
        return cls(tuple(super_names), tuple(sub_names), tuple(owner[j] for j in range(len(sub_names))), source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "super_names": list(self.super_names),
            "sub_names": list(self.sub_names),
            "sub_to_super": list(self.sub_to_super),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "taxonomy.json") -> Taxonomy:
        try:
            return cls(tuple(d["super_names"]), tuple(d["sub_names"]), tuple(int(x) for x in d["sub_to_super"]), source)
        except KeyError as e:
            raise SupersubError(f"{source}: missing key {e.args[0]!r}") from None

    def subset(self, keep_subs: Sequence[int]) -> tuple[Taxonomy, dict[int, int]]:
        """A taxonomy with only ``keep_subs`` (all superclasses kept) and the old->new subclass index map."""
        keep = sorted(keep_subs)
        remap = {old: new for new, old in enumerate(keep)}
        t = Taxonomy(
            self.super_names,
            tuple(self.sub_names[j] for j in keep),
            tuple(self.sub_to_super[j] for j in keep),
            self.source,
        )
        return t, remap
