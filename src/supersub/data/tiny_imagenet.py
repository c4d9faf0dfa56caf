"""Tiny-ImageNet turned into supersub's layouts: outlier images, novel-subclass images and a transfer source.

The folder is ``train/<wnid>/*.JPEG`` with ``classes.csv`` (``wnid,name,overlaps,in_competition``): ``overlaps``
names the task superclass a class belongs to (bird, dog, reptile, fish or empty), ``in_competition`` whether the
competition's training set has it.

* :func:`write_tin_outliers`: the classes that are none of the task's superclasses (fish counts as novel), for
  ``--novel-data``;
* :func:`write_tin_novel_sub`: the bird/dog/reptile classes the competition lacks, for ``--novel-sub-data``;
* :func:`write_tin_source`: every class the competition lacks, as ``OUT/<superclass>/<wnid>/`` (superclass: the
  ``overlaps`` value, else ``other``), a source to tune a backbone's last stage on before the task (README,
  Recommended recipe).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from .images import is_image_file
from ..errors import SupersubError

log = logging.getLogger("supersub")

TIN_NOVEL_OVERLAPS = ("", "fish")  # Tiny-ImageNet ``overlaps`` values that are a novel superclass
SOURCE_OTHER = "other"  # the source's superclass of the classes that overlap no task superclass


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


def write_tin_source(tin: Path, out: Path, per_class: int | None = 60, seed: int = 0, link: bool = False) -> int:
    """``OUT/<superclass>/<wnid>/`` from every class the competition lacks, ``per_class`` images each (a seeded
    sample); ``link`` symlinks instead of copying. Returns the number of images written.

    Why these classes: the source teaches the backbone's last stage photos of *other* things; the task's own
    species would only teach what the task trains on anyway (and the benchmark's novel families must stay unseen).
    """
    rows = [r for r in _tin_classes(tin) if (r["in_competition"] or "").strip() != "yes"]
    if len(rows) < 2:
        raise SupersubError(f"{tin}: fewer than two classes outside the competition")
    out = _fresh_folder(out)
    total = 0
    for number, r in enumerate(rows):
        superclass = (r["overlaps"] or "").strip() or SOURCE_OTHER
        images = _sample([p for _, p in _tin_images(tin, [r["wnid"]])], per_class, seed + number)
        folder = out / superclass / r["wnid"]
        folder.mkdir(parents=True, exist_ok=True)
        for p in images:
            if link:
                (folder / p.name).symlink_to(os.path.abspath(p))
            else:
                shutil.copyfile(p, folder / p.name)
        total += len(images)
    log.info("%s: %d images of %d Tiny-ImageNet classes", out, total, len(rows))
    return total
