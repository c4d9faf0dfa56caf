"""Exposure images: novel-subclass examples of known superclasses, and Tiny-ImageNet as an exposure source.

* :func:`read_novel_sub` reads seed 000's novel-subclass exposure set (images of other species/breeds of
  the *known* superclasses) from ``DIR/<superclass name>/<any folders>/<images>`` or from a CSV with
  ``image,superclass_index`` columns.
* :func:`write_tin_outliers` and :func:`write_tin_novel_sub` turn a Tiny-ImageNet folder
  (``train/<wnid>/*.JPEG`` + ``classes.csv`` with ``wnid,name,overlaps,in_competition``) into those
  layouts: outliers are the classes that are none of the task's superclasses (fish counts as novel);
  novel-subclass images are the bird/dog/reptile classes the competition lacks (``in_competition = no``).
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np

from .formats import images_folder_for
from .images import is_image_file
from .records import Dataset, ImageRecord
from ..errors import SupersubError
from ..taxonomy import Taxonomy

log = logging.getLogger("supersub")

TIN_NOVEL_OVERLAPS = ("", "fish")  # Tiny-ImageNet ``overlaps`` values that are a novel superclass


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


# ---- Tiny-ImageNet -----------------------------------------------------------------------------------


def _tin_classes(tin: Path) -> list[dict[str, str]]:
    path = Path(tin) / "classes.csv"
    if not path.is_file():
        raise SupersubError(f"{path}: not found (expected a Tiny-ImageNet folder with classes.csv and train/)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in ("wnid", "overlaps", "in_competition") if rows and c not in rows[0]]
    if not rows or missing:
        raise SupersubError(f"{path}: expected columns wnid, overlaps, in_competition")
    return rows


def _tin_images(tin: Path, wnids: list[str]) -> list[tuple[str, Path]]:
    out = []
    for w in sorted(wnids):
        folder = Path(tin) / "train" / w
        if not folder.is_dir():
            raise SupersubError(f"{folder}: missing Tiny-ImageNet class folder")
        out += [(w, p) for p in sorted(folder.iterdir()) if is_image_file(p)]
    return out


def _sample(items: list, count: int | None, seed: int) -> list:
    if count is None or count >= len(items):
        return items
    pick = np.random.default_rng(seed).choice(len(items), size=count, replace=False)
    return [items[i] for i in sorted(pick.tolist())]


def _fresh_folder(out: Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SupersubError(f"{out}: exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_tin_outliers(tin: Path, out: Path, count: int | None = None, seed: int = 0) -> int:
    """A flat folder of Tiny-ImageNet training images of classes that are no bird, dog or reptile.

    Classes with an empty ``overlaps`` (and the fish class) qualify; ``count`` draws a seeded sample.
    Files are named ``<wnid>_<file>`` so they stay unique. Returns the number of images written.
    """
    wnids = [r["wnid"] for r in _tin_classes(tin) if (r["overlaps"] or "").strip() in TIN_NOVEL_OVERLAPS]
    images = _sample(_tin_images(tin, wnids), count, seed)
    out = _fresh_folder(out)
    for w, p in images:
        shutil.copyfile(p, out / (p.name if p.name.startswith(w) else f"{w}_{p.name}"))
    log.info("%s: %d outlier images from %d Tiny-ImageNet classes", out, len(images), len(wnids))
    return len(images)


def write_tin_novel_sub(
    tin: Path, out: Path, superclasses: list[str] | None = None, count: int | None = None, seed: int = 0
) -> int:
    """``OUT/<superclass>/<wnid>/`` from the bird/dog/reptile classes not in the competition.

    ``superclasses`` restricts the superclasses written (e.g. the ones a protocol keeps seen). Returns the
    number of images written.
    """
    rows = [r for r in _tin_classes(tin) if (r["in_competition"] or "").strip() == "no"
            and (r["overlaps"] or "").strip() not in TIN_NOVEL_OVERLAPS]
    if superclasses is not None:
        rows = [r for r in rows if r["overlaps"].strip() in superclasses]
    if not rows:
        raise SupersubError(f"{tin}: no novel-subclass classes for superclasses {superclasses}")
    owner = {r["wnid"]: r["overlaps"].strip() for r in rows}
    images = _sample(_tin_images(tin, list(owner)), count, seed)
    out = _fresh_folder(out)
    for w, p in images:
        folder = out / owner[w] / w
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, folder / p.name)
    log.info("%s: %d novel-subclass images from %d Tiny-ImageNet classes", out, len(images), len(owner))
    return len(images)
