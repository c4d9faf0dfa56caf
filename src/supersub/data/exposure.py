"""Novel-subclass exposure images: seed 000's examples of other species/breeds of the *known* superclasses.

:func:`read_novel_sub` reads them from ``DIR/<superclass name>/<any folders>/<images>`` or from a CSV with
``image,superclass_index`` columns (:mod:`.tiny_imagenet` writes such a folder from Tiny-ImageNet).
"""

from __future__ import annotations

import csv
from pathlib import Path

from .formats import images_folder_for
from .images import is_image_file
from .records import Dataset, ImageRecord
from ..errors import SupersubError
from ..taxonomy import Taxonomy


def read_novel_sub(path: Path, taxonomy: Taxonomy) -> Dataset:
    """Novel-subclass images labelled with their known superclass (``sub_index`` stays unlabelled)."""
    path = Path(path)
    if not path.exists():
        raise SupersubError(f"{path}: no such file or folder")
    records = _novel_sub_csv(path, taxonomy) if path.is_file() else _novel_sub_folders(path, taxonomy)
    if not records:
        raise SupersubError(f"{path}: no novel-subclass images found")
    return Dataset(sorted(records, key=lambda r: r.name), None, source=str(path))


def _novel_sub_folders(root: Path, taxonomy: Taxonomy) -> list[ImageRecord]:
    """``root/<superclass name>/**/<image>``; a top-level folder must name a known superclass."""
    records: list[ImageRecord] = []
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            continue
        if folder.name not in taxonomy.super_names:
            known = ", ".join(taxonomy.super_names)
            raise SupersubError(f"{folder}: {folder.name!r} is not a known superclass (known: {known})")
        k = taxonomy.super_names.index(folder.name)
        for p in sorted(folder.rglob("*")):
            if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts):
                records.append(ImageRecord(p, p.relative_to(root).as_posix(), k))
    return records


def _novel_sub_csv(path: Path, taxonomy: Taxonomy) -> list[ImageRecord]:
    """A CSV with ``image`` and ``superclass_index`` columns (others ignored), images beside it."""
    folder = images_folder_for(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh, strict=True))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SupersubError(f"{path}: unreadable CSV ({e})") from None
    for column in ("image", "superclass_index"):
        if column not in header:
            raise SupersubError(f"{path}: missing required column {column!r}")
    records = []
    for number, row in enumerate(rows, 1):
        name, cell = (row.get("image") or "").strip(), (row.get("superclass_index") or "").strip()
        if not cell.isdigit() or int(cell) >= taxonomy.n_super:
            raise SupersubError(
                f"{path}: row {number}, column 'superclass_index': {cell!r} is not a known superclass "
                f"(0..{taxonomy.n_super - 1})"
            )
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or not (folder / name).is_file():
            raise SupersubError(f"{path}: row {number}, column 'image': image file {folder / name} not found")
        records.append(ImageRecord(folder / name, name, int(cell)))
    return records
