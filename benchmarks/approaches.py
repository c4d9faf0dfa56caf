#!/usr/bin/env python3
"""Benchmark: the seed paper's approaches A, B and C on the fixed open-set protocol, scored side by side.

    python benchmarks/approaches.py [--variant tin] [--seed 0] [--work bench-out] [--novel-count 2000]
                                    [--approaches a,b,c] [-- <extra 'supersub train' flags>]

Each approach is one run of ``benchmarks/protocol.py`` (split by ../shared/bench/make_protocol.py, then
``supersub train --config configs/approach_<x>.yaml`` -> ``supersub predict --probs`` -> score.py), with
the from-scratch CNN unless the extra flags say otherwise, and outlier exposure from the protocol's own
pool (``--novel-count 0`` turns it off). The configs carry the paper's settings, hand-set thresholds
included; extra flags (e.g. ``--epochs 5``) apply to every approach alike. Prints the scored table.

Committed table: docs/results/benchmarks.md (approaches), from
``python benchmarks/approaches.py --variant tin --seed 0 -- --epochs 8``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import HERE, after_dashes, read_json, timed_run

CONFIGS = HERE.parent / "configs"
NAMES = {"a": "A two-heads + KL", "b": "B two-models", "c": "C two-models, cosine sub head"}
COLUMNS = ["super_acc_overall", "super_acc_seen", "super_acc_unseen", "sub_acc_overall", "sub_acc_seen",
           "sub_acc_unseen", "super_ce", "sub_ce"]


def run_approach(key: str, a: argparse.Namespace, extra: list[str]) -> dict:
    data = a.work / f"{a.variant}-{a.seed}" / "data"
    oe = ["--novel-data", str(data / "novel_data.csv"), "--novel-count", str(a.novel_count)] if a.novel_count else []
    cmd = [sys.executable, str(HERE / "protocol.py"), "--variant", a.variant, "--seed", str(a.seed),
           "--work", str(a.work), "--name", f"approach-{key}", "--",
           "--config", str(CONFIGS / f"approach_{key}.yaml"), "--backbone", "cnn", *oe, *extra]
    seconds = timed_run(cmd)
    result = read_json(a.work / f"{a.variant}-{a.seed}" / f"approach-{key}" / "result.json")
    return {**result, "wall_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tin", choices=["tin", "loso-reptile"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("bench-out"))
    ap.add_argument("--novel-count", type=int, default=2000, help="outlier-exposure images (0 = none)")
    ap.add_argument("--approaches", default="a,b,c")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="extra flags for 'supersub train' after --")
    a = ap.parse_args()
    extra = after_dashes(a.train_args)
    results = {key: run_approach(key, a, extra) for key in a.approaches.split(",")}
    print(f"\n{a.variant} seed {a.seed}, cnn, novel-count {a.novel_count}, extra {extra or 'none'} (accuracy %):")
    print(f"{'approach':<32}" + "".join(f"{c.replace('_acc', ''):>16}" for c in COLUMNS) + f"{'train s':>10}")
    for key, r in results.items():
        cells = "".join(f"{'n/a' if r.get(c) is None else r[c]:>16}" for c in COLUMNS)
        print(f"{NAMES[key]:<32}{cells}{r['seconds']['train']:>10}")


if __name__ == "__main__":
    main()
