#!/usr/bin/env python3
"""The competition table of finished `benchmarks/protocol.py` runs: one row per (name, seed), then mean ± std.

    python benchmarks/protocol_table.py --variant loso-reptile --names ptr-off-partial,ptr-r10-partial [--work bench-out]

Reads ``WORK/<variant>-<seed>/<name>/result.json`` (the scorer's numbers), the run's ``metrics.json``
(final validation subclass accuracy), when the run used PtR the final model's last-epoch ``ptr_w``, and
``predictions.csv`` (written with ``--probs``) for the threshold-free novelty AUROCs, defined as in
``supersub evaluate`` (``metrics.open_set_report``): P(novel superclass) ranking novel-superclass images above
all others (super), and P(novel subclass) ranking novel-subclass images above seen ones among images of seen
superclasses (sub). Accuracies hang on where tau lands; the AUROCs say whether the features separate novelty.

Committed tables: docs/experiments.md (seed 004, PtR), from e.g. ``python benchmarks/protocol_table.py
--variant loso-reptile --names ptr-off-partial,ptr2-r1-partial,ptr2-r10-partial,ptr2-r100-partial``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import pandas as pd

from harness import read_json
from supersub.novelty.ood_metrics import open_set_metrics

COLUMNS = ("super_acc_overall", "super_acc_seen", "super_acc_unseen", "sub_acc_overall", "sub_acc_seen",
           "sub_acc_unseen", "super_ce", "sub_ce")


def last_ptr_w(run: Path) -> str:
    path = run / "logs" / "final" / "metrics.csv"
    if not path.is_file():
        return "-"
    with open(path, newline="") as fh:
        values = [r["ptr_w"] for r in csv.DictReader(fh) if r.get("ptr_w")]
    return f"{float(values[-1]):.3g}" if values else "-"


def novelty_aurocs(folder: Path, name: str) -> tuple[float, float] | None:
    """Super and sub AUROC (%) of P(novel): the last probability column (novel = last index in this format)."""
    predictions = folder / name / "predictions.csv"
    if not predictions.is_file():
        return None
    both = pd.read_csv(folder / "data" / "test_truth.csv").merge(pd.read_csv(predictions), on="image",
                                                                  suffixes=("", "_pred"))
    seen_conf = {level: -both[[c for c in both.columns if c.startswith(f"{level}_prob_")][-1]]
                 for level in ("super", "sub")}
    novel_super, known = both["kind"] == "novel_super", both["kind"] != "novel_super"
    super_auroc = open_set_metrics(seen_conf["super"][~novel_super], seen_conf["super"][novel_super])["auroc"]
    sub_auroc = open_set_metrics(seen_conf["sub"][known & (both["kind"] == "seen")],
                                 seen_conf["sub"][both["kind"] == "novel_sub"])["auroc"]
    return round(100 * super_auroc, 2), round(100 * sub_auroc, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="loso-reptile")
    ap.add_argument("--names", required=True, help="comma-separated run names")
    ap.add_argument("--work", type=Path, default=Path("bench-out"))
    a = ap.parse_args()
    print("| name | seed | super overall | super seen | super unseen | sub overall | sub seen | sub unseen | super CE "
          "| sub CE | super AUROC | sub AUROC | val sub acc | last ptr_w | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary: dict[str, list[dict]] = {}
    for name in a.names.split(","):
        for folder in sorted(a.work.glob(f"{a.variant}-*")):
            result = folder / name / "result.json"
            if not result.is_file():
                continue
            r = read_json(result)
            metrics = read_json(folder / name / "run" / "metrics.json")
            r["val_sub"] = metrics.get("final", {}).get("val_acc_sub")
            r["super_auroc"], r["sub_auroc"] = novelty_aurocs(folder, name) or ("-", "-")
            summary.setdefault(name, []).append(r)
            print(f"| {name} | {r['seed']} | " + " | ".join(str(r[c]) for c in COLUMNS) +
                  f" | {r['super_auroc']} | {r['sub_auroc']} | {r['val_sub']} | {last_ptr_w(folder / name / 'run')} | {r['seconds']['train']} |")
    print()
    print("| name | seeds | super overall | sub overall | super CE | sub CE | super AUROC | sub AUROC | val sub acc "
          "| paired diff vs first name, super / sub overall (pp) | paired diff, super / sub AUROC / val sub acc (pp) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first = {r["seed"]: r for r in summary.get(a.names.split(",")[0], [])}
    for name, rs in summary.items():
        pairs = [(r, first[r["seed"]]) for r in rs if r["seed"] in first]

        def diff(key: str) -> str:
            ds = [float(r[key]) - float(f[key]) for r, f in pairs]
            return f"{statistics.mean(ds):+.2f} ± {statistics.stdev(ds) if len(ds) > 1 else 0.0:.2f}"
        is_first = not pairs or name == a.names.split(",")[0]
        paired = "-" if is_first else f"{diff('super_acc_overall')} / {diff('sub_acc_overall')} (n={len(pairs)})"
        paired_auroc = "-" if is_first or any(r["super_auroc"] == "-" or f["super_auroc"] == "-" for r, f in pairs) \
            else f"{diff('super_auroc')} / {diff('sub_auroc')} / {diff('val_sub')}"
        def ms(key: str) -> str:
            if any(r[key] == "-" for r in rs):
                return "-"
            xs = [float(r[key]) for r in rs]
            return f"{statistics.mean(xs):.3g} ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else f"{xs[0]:.3g}"
        print(f"| {name} | {','.join(str(r['seed']) for r in rs)} | {ms('super_acc_overall')} | "
              f"{ms('sub_acc_overall')} | {ms('super_ce')} | {ms('sub_ce')} | {ms('super_auroc')} | {ms('sub_auroc')} | "
              f"{ms('val_sub')} | {paired} | {paired_auroc} |")


if __name__ == "__main__":
    main()
