"""A run's inputs as tensors: the labelled images, then the exposure images, decoded once into one pool (a file
read through a memory map, :mod:`supersub.data.mapped`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..data.cache import decode_images
from ..data.mapped import cat_rows
from ..data.exposure import read_novel_sub
from ..data.formats import read_dataset, read_flat, read_image_list
from ..data.records import Dataset, ImageRecord
from ..errors import SupersubError
from ..losses import NOVEL_SUB, OUTLIER
from ..taxonomy import Taxonomy
from .stage_plan import Pool

log = logging.getLogger("supersub")


@dataclass
class LabelledImages:
    """A labelled dataset decoded into tensors (images uint8 N,3,H,W, memory-mapped; labels long N)."""

    dataset: Dataset
    images: torch.Tensor
    y_super: torch.Tensor
    y_sub: torch.Tensor


def load_labelled(path: str | Path, cfg: TrainConfig) -> LabelledImages:
    """Read a competition-layout or nested-folder training set (two superclasses or more) and decode it once."""
    ds = read_dataset(Path(path))
    check_superclasses(ds, path)
    decoded = decode_images(
        ds.records, cfg.data.image_size, skip_bad=cfg.data.skip_bad_images, cache_dir=cfg.data.cache_dir, mapped=True
    )
    if decoded.bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(decoded.bad), decoded.bad[0])
    records = [ds.records[i] for i in decoded.kept]
    if not records:
        raise SupersubError(f"{path}: no readable images")
    ds = Dataset(records, ds.taxonomy, ds.source, ds.skipped + decoded.bad)
    y_super = torch.tensor([r.super_index for r in records], dtype=torch.long)
    y_sub = torch.tensor([r.sub_index for r in records], dtype=torch.long)
    return LabelledImages(ds, decoded.images, y_super, y_sub)


def check_superclasses(ds: Dataset, path: str | Path) -> None:
    """Refuse a training set whose images all belong to one superclass, before anything is decoded.

    Its superclass head would have nothing to tell apart: trained anyway, the model called every dog, reptile
    and car of a test set "bird" (superclass unseen accuracy 0.7%) and the run still looked fine.
    """
    assert ds.taxonomy is not None
    present = sorted({r.super_index for r in ds.records})
    if len(present) < 2:
        name = ds.taxonomy.super_names[present[0]] if present else "none"
        raise SupersubError(
            f"{path}: all images belong to one superclass ({name!r}); the superclass level needs two or more to "
            f"learn anything (with one, every image, whatever it shows, would be called {name!r}): add images of "
            "another superclass")


def load_novel_images(path: str | Path, cfg: TrainConfig) -> torch.Tensor:
    """Outlier-exposure images (novel at both levels) as uint8 tensors, a seeded sample of ``novel_count``.

    ``path`` is a flat folder of images, or a CSV with an ``image`` column whose files sit beside it or in
    the sibling folder named as the competition does (``novel_data.csv`` -> ``novel_images/``).
    """
    path = Path(path)
    if path.is_file():
        ds = read_image_list(path)
    else:
        ds = read_flat(path)
    images, kept = _decode_sample(ds.records, cfg, cfg.data.novel_count, "novel")
    if not kept:
        raise SupersubError(f"{path}: no readable novel images")
    return images


def _decode_sample(records: list[ImageRecord], cfg: TrainConfig, count: int | None, what: str) -> tuple[
    torch.Tensor, list[ImageRecord]
]:
    """A seeded sample of at most ``count`` records, decoded; unreadable ones are skipped when allowed."""
    if count is not None and count < len(records):
        pick = np.random.default_rng(cfg.seed).choice(len(records), size=count, replace=False)
        records = [records[i] for i in sorted(pick.tolist())]
    decoded = decode_images(records, cfg.data.image_size, skip_bad=cfg.data.skip_bad_images, cache_dir=cfg.data.cache_dir,
                            mapped=True)
    if decoded.bad:
        log.warning("skipped %d unreadable %s image(s), e.g. %s", len(decoded.bad), what, decoded.bad[0])
    return decoded.images, [records[i] for i in decoded.kept]


def load_novel_sub_images(path: str | Path, taxonomy: Taxonomy, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Novel-subclass exposure images and their (known) superclass labels; see :func:`read_novel_sub`."""
    images, records = _decode_sample(read_novel_sub(Path(path), taxonomy).records, cfg, cfg.data.novel_sub_count,
                                     "novel-subclass")
    if not records:
        raise SupersubError(f"{path}: no readable novel-subclass images")
    return images, torch.tensor([r.super_index for r in records], dtype=torch.long)


def training_pool(data_: LabelledImages, cfg: TrainConfig, summary: dict[str, Any]) -> Pool:
    """Labelled images, then outlier-exposure images (:data:`OUTLIER` at both levels), then novel-subclass
    images (their superclass, :data:`NOVEL_SUB`)."""
    images, y_super, y_sub = [data_.images], [data_.y_super], [data_.y_sub]
    if cfg.data.novel_data is not None:
        novel = load_novel_images(cfg.data.novel_data, cfg)
        fill = torch.full((len(novel),), OUTLIER, dtype=torch.long)
        images.append(novel), y_super.append(fill), y_sub.append(fill)
        summary["n_novel_images"] = len(novel)
        log.info("outlier exposure: %d novel images (%s)", len(novel), cfg.novelty.oe)
    if cfg.data.novel_sub_data is not None:
        assert data_.dataset.taxonomy is not None
        sub_images, sub_super = load_novel_sub_images(cfg.data.novel_sub_data, data_.dataset.taxonomy, cfg)
        images.append(sub_images), y_super.append(sub_super)
        y_sub.append(torch.full((len(sub_images),), NOVEL_SUB, dtype=torch.long))
        summary["n_novel_sub_images"] = len(sub_images)
        log.info("novel-subclass exposure: %d images", len(sub_images))
    return Pool(cat_rows(images, cfg.data.cache_dir), torch.cat(y_super), torch.cat(y_sub), len(data_.dataset))
