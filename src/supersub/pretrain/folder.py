"""A classification folder ``root/<class>/**/<image>`` (Tiny-ImageNet's ``train/`` and ``val/`` are ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.images import is_image_file
from ..data.records import ImageRecord
from ..errors import SupersubError


def read_class_list(path: Path) -> list[str]:
    """Class folder names, one a line; blank lines and ``#`` comments are skipped, duplicates are errors."""
    if not path.is_file():
        raise SupersubError(f"{path}: class list not found")
    names: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name in names:
            raise SupersubError(f"{path}: line {number}: class {name!r} is listed twice")
        names.append(name)
    if len(names) < 2:
        raise SupersubError(f"{path}: lists {len(names)} class(es); a classifier needs at least 2")
    return names


def folder_classes(root: Path) -> list[str]:
    """The class folders of ``root``, sorted by name."""
    if not root.is_dir():
        raise SupersubError(f"{root}: not a folder (expected root/<class>/<images>)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise SupersubError(f"{root}: has {len(names)} class folder(s); expected root/<class>/<images> with >= 2")
    return names


def read_class_folder(root: Path, classes: list[str], per_class: int | None = None, seed: int = 0,
                      missing_ok: bool = False) -> list[ImageRecord]:
    """Records of ``classes`` (label = position in ``classes``), at most ``per_class`` each (a seeded sample).

    A class without a folder or images is an error naming it, unless ``missing_ok`` (a test folder may hold
    only some of the classes).
    """
    rng = np.random.default_rng(seed)
    records: list[ImageRecord] = []
    for index, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)) if folder.is_dir() else []
        if not files:
            if missing_ok:
                continue
            raise SupersubError(f"{folder}: class {name!r} has no images")
        if per_class is not None and per_class < len(files):
            files = [files[i] for i in sorted(rng.choice(len(files), size=per_class, replace=False).tolist())]
        records += [ImageRecord(p, str(p.relative_to(root)), index, index) for p in files]
    if not records:
        raise SupersubError(f"{root}: no images of the {len(classes)} classes")
    return records
