#!/usr/bin/env python3
"""Benchmark: the fixed open-set protocol end to end, through the public CLI.

    python benchmarks/protocol.py --variant tin --seed 0 [--work bench-out] [-- <extra 'supersub train' flags>]

Builds the split with ../shared/bench/make_protocol.py (read-only yardstick, never copied here), runs
`supersub train` -> `supersub predict --probs` -> ../shared/bench/score.py, and prints the scored table
and wall times. Nothing here tunes against the test split: it only runs the CLI as a user would.

Committed tables: docs/results/benchmarks.md and docs/experiments.md, one run per row, from
``python benchmarks/protocol.py --variant V --seed S --name NAME -- FLAGS`` as each table lists.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import DEFAULT_BENCH, after_dashes, ensure_protocol, score, supersub_cmd, timed_run, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tin", choices=["tin", "loso-reptile"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("bench-out"))
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with make_protocol.py and score.py")
    ap.add_argument("--name", default="default", help="name of this configuration (run folder)")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="extra flags for 'supersub train' after --")
    a = ap.parse_args()
    extra = after_dashes(a.train_args)
    data = a.work / f"{a.variant}-{a.seed}" / "data"
    out = a.work / f"{a.variant}-{a.seed}" / a.name
    times: dict[str, float] = {}
    if not (data / "test_truth.csv").is_file():
        start = time.perf_counter()
        ensure_protocol(data, a.variant, a.seed, a.bench)
        times["protocol"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    times["train"] = timed_run(supersub_cmd("train", "--data", str(data), "--out", str(out / "run"), "--overwrite",
                                            "--seed", str(a.seed), "--no-progress", *extra))
    pred = out / "predictions.csv"
    times["predict"] = timed_run(supersub_cmd("predict", str(out / "run"), str(data / "test_images"), "--out",
                                              str(pred), "--probs", "--overwrite"))
    scored = score(data, pred, out / "score.json", a.bench)
    result = {"variant": a.variant, "seed": a.seed, "name": a.name, "train_args": extra,
              "seconds": {k: round(v, 1) for k, v in times.items()}, **scored}
    write_json(out / "result.json", result, indent=2)
    print(json.dumps(result["seconds"]))


if __name__ == "__main__":
    main()
