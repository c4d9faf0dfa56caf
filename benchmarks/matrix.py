#!/usr/bin/env python3
"""Smoke benchmark: every approach x fine-tuning regime trains and predicts on real data via the CLI.

    python benchmarks/matrix.py [--data ../shared/data/bird-dog-reptile] [--backbone cnn] [--epochs 1]
                                [--work bench-out/matrix] [--approaches ...] [--regimes ...]

For each (approach, regime) it runs ``supersub train`` (hand-set thresholds, so one training stage;
``gradual`` trains at least 2 epochs and unfreezes after the first), ``supersub predict --probs`` on the
training images and ``../shared/bench/score.py`` against ``train_data.csv``. The scores are
*training-set* figures, a check that the whole path works and that the model learnt something, not a
measure of generalisation (use ``benchmarks/protocol.py`` for that). Prints one row per combination:
seconds per epoch, train time, predict time and the scored accuracies.

Committed table: docs/results/benchmarks.md (matrix), from ``python benchmarks/matrix.py --backbone cnn --epochs 1``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import DEFAULT_BENCH, DEFAULT_DATA, markdown_table, read_json, score, supersub_cmd, timed_run, write_json

APPROACHES = ("two-heads", "two-models", "cosine", "sub-only")
REGIMES = ("frozen", "full", "discriminative", "gradual")


def novel_index(mapping: Path) -> int:
    """The competition's mapping files list 'novel' last: its index is the largest."""
    return max(int(line.split(",")[0]) for line in mapping.read_text().splitlines()[1:] if line.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--backbone", default="cnn")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run (gradual: at least 2)")
    ap.add_argument("--work", type=Path, default=Path("bench-out/matrix"))
    ap.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=APPROACHES)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    a = ap.parse_args()
    rows = []
    for approach in a.approaches:
        for regime in a.regimes:
            out = a.work / f"{approach}-{regime}"
            cmd = supersub_cmd("train", "--data", str(a.data), "--out", str(out / "run"), "--overwrite",
                               "--no-progress", "--backbone", a.backbone, "--approach", approach, "--finetune", regime,
                               "--epochs", str(max(a.epochs, 2) if regime == "gradual" else a.epochs),
                               "--score", "msp", "--tau-super", "0.5", "--tau-sub", "0.5",
                               "--set", f"data.cache_dir={a.work / 'cache'}", "--set", "optim.unfreeze_epoch=1")
            train_s = timed_run(cmd)
            pred = out / "predictions.csv"
            predict_s = timed_run(supersub_cmd("predict", str(out / "run"), str(a.data / "train_images"), "--out",
                                               str(pred), "--probs", "--overwrite"))
            # train_data.csv holds no novel rows: tell the scorer the novel indices of the mapping files
            scored = score(a.data, pred, out / "score.json", a.bench, truth="train_data.csv",
                           flags=["--novel-super", str(novel_index(a.data / "superclass_mapping.csv")),
                                  "--novel-sub", str(novel_index(a.data / "subclass_mapping.csv"))])
            metrics = read_json(out / "run" / "metrics.json")
            rows.append({"approach": approach, "regime": regime, "s_per_epoch": metrics["final"]["seconds_per_epoch"],
                         "train_s": round(train_s), "predict_s": round(predict_s), **scored})
            write_json(a.work / "matrix.json", rows, indent=2)
    print(f"\n{a.data.name}, backbone {a.backbone}, {a.epochs} epochs, hand-set thresholds 0.5/0.5; "
          "accuracy % on the training images (a smoke check, not generalisation):")
    head = ["approach", "regime", "s/epoch", "train s", "predict s", "super acc", "sub acc", "super CE", "sub CE"]
    print(markdown_table(head, [[r["approach"], r["regime"], r["s_per_epoch"], r["train_s"], r["predict_s"],
                                 *(r.get(k) for k in ("super_acc_overall", "sub_acc_overall", "super_ce", "sub_ce"))]
                                for r in rows]))


if __name__ == "__main__":
    main()
