"""The one in-memory form every reader produces: a list of image paths with optional labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..taxonomy import Taxonomy

UNLABELLED = -1


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``super_index``/``sub_index`` are -1 when unlabelled; the novel index when novel."""

    path: Path
    name: str
    super_index: int = UNLABELLED
    sub_index: int = UNLABELLED


@dataclass
class Dataset:
    """Records plus the taxonomy they are labelled in (None for an unlabelled folder)."""

    records: list[ImageRecord]
    taxonomy: Taxonomy | None = None
    source: str = ""
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    @property
    def super_labels(self) -> list[int]:
        return [r.super_index for r in self.records]

    @property
    def sub_labels(self) -> list[int]:
        return [r.sub_index for r in self.records]
