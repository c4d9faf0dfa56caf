#!/usr/bin/env python3
"""A transfer source for the novelty suite: Tiny-ImageNet without the competition's classes, as a class list for
``supersub pretrain --classes`` (the product path) or in the competition's format for ``supersub train``.

    python benchmarks/tin_source.py --classes-out bench-out/tin-source-classes.txt
    supersub pretrain --data ../shared/data/tiny-imagenet/train --classes bench-out/tin-source-classes.txt \
        --per-class 60 --finetune partial --epochs 3 --out bench-out/tin-lite0.pt
    SUITE_SOURCE_WEIGHTS_PRE=bench-out/tin-lite0.pt python benchmarks/novelty_suite.py run --recipes lite0-src

The first form, through ``supersub train`` (how the 2026-12-07 rows were made):

    python benchmarks/tin_source.py --out bench-out/tin-src [--per-class 60] [--seed 0]
    supersub train --data bench-out/tin-src --out bench-out/tin-src-run --finetune partial \\
        --set optim.trainable_stages=1 --epochs 8 --tau-super 0 --tau-sub 0
    SUITE_SOURCE_WEIGHTS=bench-out/tin-src-run/model.pt python benchmarks/novelty_suite.py run --recipes lite0-tin

Every class that ``classes.csv`` marks ``in_competition`` (bullfrog, tailed frog, fire salamander, alligator,
albatross, king penguin, Chihuahua) is left out, so the source holds none of the species the protocols test on,
amphibians included (near-amphibian's new family). The ``tin`` protocol's new classes are Tiny-ImageNet classes,
so that variant is not clean with this source. Images are symlinked, not copied; the superclass is the
``overlaps`` column (bird, dog, fish, reptile) or ``other``; the thresholds are hand-set because the source run
is only a backbone to transfer.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

DEFAULT_TIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet"


def write_source(tin: Path, out: Path, per_class: int, seed: int) -> int:
    """Write ``out`` (train_images/ symlinks, train_data.csv, both mappings); returns the number of classes."""
    classes = [r for r in csv.DictReader(open(tin / "classes.csv", encoding="utf-8")) if r["in_competition"] != "yes"]
    supers = sorted({r["overlaps"] or "other" for r in classes})
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(out / "superclass_mapping.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "class"])
        w.writerows(enumerate(supers + ["novel"]))
    with open(out / "subclass_mapping.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["index", "class"])
        w.writerows(enumerate([r["name"] for r in classes] + ["novel"]))
    with open(out / "train_data.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "superclass_index", "subclass_index", "description"])
        for j, r in enumerate(classes):
            folder = tin / "train" / r["wnid"]
            folder = folder / "images" if (folder / "images").is_dir() else folder
            for name in rng.sample(sorted(os.listdir(folder)), per_class):
                link = out / "train_images" / name
                if not link.exists():
                    link.symlink_to(folder / name)
                w.writerow([name, supers.index(r["overlaps"] or "other"), j, ""])
    return len(classes)


def source_classes(tin: Path) -> list[str]:
    """The wnids of every Tiny-ImageNet class the competition does not have."""
    return [r["wnid"] for r in csv.DictReader(open(tin / "classes.csv", encoding="utf-8"))
            if r["in_competition"] != "yes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tin", type=Path, default=DEFAULT_TIN, help="Tiny-ImageNet folder (train/, classes.csv)")
    ap.add_argument("--out", type=Path, help="write the source in the competition's format here")
    ap.add_argument("--classes-out", type=Path, help="write the source's class list (for supersub pretrain --classes)")
    ap.add_argument("--per-class", type=int, default=60, help="images per class (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.out is None and args.classes_out is None:
        ap.error("give --out, --classes-out or both")
    if args.classes_out is not None:
        classes = source_classes(args.tin)
        args.classes_out.parent.mkdir(parents=True, exist_ok=True)
        args.classes_out.write_text("".join(f"{w}\n" for w in classes), encoding="utf-8")
        print(f"{args.classes_out}: {len(classes)} classes")
    if args.out is not None:
        n = write_source(args.tin, args.out, args.per_class, args.seed)
        print(f"{args.out}: {n} classes x {args.per_class} images")


if __name__ == "__main__":
    main()
