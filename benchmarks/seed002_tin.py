#!/usr/bin/env python3
"""Seed 002's own protocol on Tiny-ImageNet, through the public CLI: pretrain on classes A (binary head
weight B, K splits), fine-tune on classes B (new head, backbone at a reduced LR), report B's test accuracy.

    python benchmarks/seed002_tin.py split                      # bench-out/s002/{A,B}.txt, fixed (seed 0)
    python benchmarks/seed002_tin.py run --bp 0.3 --seed 1 [--partitions 1] [--work bench-out/s002]
    python benchmarks/seed002_tin.py scratch --seed 1           # reference: B trained from scratch, no A
    python benchmarks/seed002_tin.py table                      # mean +- std per (B, K) from results.jsonl
    python benchmarks/seed002_tin.py run --size medium --work bench-out/s002-medium --bp 0.3 --seed 1

Sizes (chosen for 2 shared CPU cores; see docs/experiments.md) are the constants below. Each finished run
appends one line to results.jsonl, so a stopped session keeps every finished run.

Committed tables: docs/experiments.md (seed 002), from ``split``, ``run --bp B --seed S`` for B in {0.0, 0.1,
0.3} and S in {0, 1, 2}, ``scratch --seed S``, then ``python benchmarks/seed002_tin.py table``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import SHARED, read_json, timed_run, write_text

TIN = SHARED / "data" / "tiny-imagenet"
COMMON = ["--backbone", "cnn", "--image-size", "32", "--batch-size", "128", "--no-progress",
          "--set", "data.cache_dir=bench-out/cache"]
# (model, pretraining on A, fine-tuning on B) per size; "small" is the size of every n=3 table so far,
# "medium" (width 32: ~0.8 M parameters, 2x the images of A, 2x the epochs) tests the seed's "needs capacity".
SIZES = {
    "small": (["--set", "model.width=16"],
              ["--per-class", "100", "--epochs", "6", "--lr", "0.003"],
              ["--per-class", "50", "--epochs", "6", "--lr", "0.0003", "--set", "optim.head_lr_mult=10"]),
    "medium": (["--set", "model.width=32"],
               ["--per-class", "200", "--epochs", "12", "--lr", "0.003"],
               ["--per-class", "50", "--epochs", "10", "--lr", "0.0003", "--set", "optim.head_lr_mult=10"]),
}


def size_args(size: str) -> tuple[list[str], list[str], list[str]]:
    """(model, pretraining, fine-tuning) CLI arguments of one run size."""
    model, pretrain, finetune = SIZES[size]
    return [*COMMON, *model], pretrain, finetune


def cli(args: list[str]) -> None:
    timed_run([sys.executable, "-m", "supersub.cli", *args])


def record(work: Path, row: dict[str, Any]) -> None:
    """Append one finished run to results.jsonl (a stopped session keeps every finished run) and print it."""
    with open(work / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def split(work: Path) -> None:
    wnids = sorted(os.listdir(TIN / "train"))
    random.Random(0).shuffle(wnids)
    work.mkdir(parents=True, exist_ok=True)
    write_text(work / "A.txt", "\n".join(sorted(wnids[:100])) + "\n")
    write_text(work / "B.txt", "\n".join(sorted(wnids[100:])) + "\n")


def run(work: Path, bp: float, k: int, seed: int, size: str = "small") -> None:
    model, pretrain, finetune = size_args(size)
    name = f"bp{bp}-k{k}-s{seed}"
    pre, fine = work / f"{name}-A.pt", work / f"{name}-B.pt"
    cli(["pretrain", "--data", str(TIN / "train"), "--classes", str(work / "A.txt"), "--out", str(pre),
         "--binary-partition", str(bp), "--partitions", str(k), "--seed", str(seed), "--test-data", str(TIN / "val"),
         "--overwrite", *model, *pretrain])
    cli(["pretrain", "--data", str(TIN / "train"), "--classes", str(work / "B.txt"), "--out", str(fine),
         "--weights", str(pre), "--seed", str(seed), "--test-data", str(TIN / "val"), "--overwrite", *model,
         *finetune])
    a, b = (read_json(Path(f"{p}.json")) for p in (pre, fine))
    row = {"bp": bp, "k": k, "seed": seed, "A_test_acc": a["test_acc"], "B_test_acc": b["test_acc"],
           "seconds": round(a["seconds"] + b["seconds"], 1)}
    record(work, row)


def scratch(work: Path, seed: int, size: str = "small") -> None:
    """The no-transfer reference: B's classifier from random weights, at the pretraining LR (full)."""
    model, _, finetune = size_args(size)
    out = work / f"scratch-s{seed}-B.pt"
    cli(["pretrain", "--data", str(TIN / "train"), "--classes", str(work / "B.txt"), "--out", str(out),
         "--seed", str(seed), "--test-data", str(TIN / "val"), "--overwrite", *model,
         *finetune[:4], "--lr", "0.003"])  # B's images and epochs, the pretraining LR
    b = read_json(Path(f"{out}.json"))
    row = {"bp": -1.0, "k": 0, "seed": seed, "A_test_acc": None, "B_test_acc": b["test_acc"],
           "seconds": b["seconds"]}
    record(work, row)


def table(work: Path) -> None:
    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines() if line.strip()]
    groups: dict[tuple[float, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["bp"], r["k"] if r["bp"] > 0 else 0), []).append(r)
    print("| B | K | seeds | B test acc % (mean ± std) | A test acc % | per seed (B acc) | paired diff vs B=0 (pp) |")
    print("|---|---|---|---|---|---|---|")
    base = {r["seed"]: r["B_test_acc"] for r in groups.get((0.0, 0), [])}
    for (bp, k), rs in sorted(groups.items()):
        b = [r["B_test_acc"] for r in rs]
        diffs = [r["B_test_acc"] - base[r["seed"]] for r in rs if r["seed"] in base]
        paired = "-" if bp == 0 or not diffs else \
            f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs) if len(diffs) > 1 else 0.0:.2f} (n={len(diffs)})"
        a = [r["A_test_acc"] for r in rs if r["A_test_acc"] is not None]
        sd = statistics.stdev(b) if len(b) > 1 else 0.0
        label = "scratch (no A)" if bp < 0 else str(bp)
        print(f"| {label} | {k or '-'} | {','.join(str(r['seed']) for r in rs)} | {statistics.mean(b):.2f} ± {sd:.2f} | "
              f"{f'{statistics.mean(a):.2f}' if a else '-'} | {', '.join(f'{x:.2f}' for x in b)} | {paired} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["split", "run", "scratch", "table"])
    ap.add_argument("--work", type=Path, default=Path("bench-out/s002"))
    ap.add_argument("--bp", type=float, default=0.0)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=sorted(SIZES), default="small",
                    help="run size; keep one size per --work folder (the table pairs runs by seed)")
    a = ap.parse_args()
    if a.action == "split":
        split(a.work)
    elif a.action == "run":
        run(a.work, a.bp, a.partitions, a.seed, a.size)
    elif a.action == "scratch":
        scratch(a.work, a.seed, a.size)
    else:
        table(a.work)


if __name__ == "__main__":
    main()
