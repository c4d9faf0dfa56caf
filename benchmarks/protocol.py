#!/usr/bin/env python3
"""Benchmark: the fixed open-set protocol end to end, through the public CLI.

    python benchmarks/protocol.py --variant tin --seed 0 [--work bench-out] [-- <extra 'supersub train' flags>]

Builds the split with ../shared/bench/make_protocol.py (read-only yardstick, never copied here), runs
`supersub train` -> `supersub predict --probs` -> ../shared/bench/score.py, and prints the scored table
and wall times. Nothing here tunes against the test split: it only runs the CLI as a user would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="tin", choices=["tin", "loso-reptile"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("bench-out"))
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with make_protocol.py and score.py")
    ap.add_argument("--name", default="default", help="name of this configuration (run folder)")
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="extra flags for 'supersub train' after --")
    a = ap.parse_args()
    extra = [x for x in a.train_args if x != "--"]
    supersub = str(Path(sys.executable).parent / "supersub")
    data = a.work / f"{a.variant}-{a.seed}" / "data"
    out = a.work / f"{a.variant}-{a.seed}" / a.name
    times: dict[str, float] = {}
    if not (data / "test_truth.csv").is_file():
        if data.exists():
            shutil.rmtree(data)
        times["protocol"] = run([sys.executable, str(a.bench / "make_protocol.py"), str(data), "--variant", a.variant,
                                 "--seed", str(a.seed)])
    out.mkdir(parents=True, exist_ok=True)
    times["train"] = run([supersub, "train", "--data", str(data), "--out", str(out / "run"), "--overwrite",
                          "--seed", str(a.seed), "--no-progress", *extra])
    pred = out / "predictions.csv"
    times["predict"] = run([supersub, "predict", str(out / "run"), str(data / "test_images"), "--out", str(pred),
                            "--probs", "--overwrite"])
    score_json = out / "score.json"
    run([sys.executable, str(a.bench / "score.py"), str(data / "test_truth.csv"), str(pred), "--json", str(score_json)])
    result = {"variant": a.variant, "seed": a.seed, "name": a.name, "train_args": extra,
              "seconds": {k: round(v, 1) for k, v in times.items()}, **json.loads(score_json.read_text())}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["seconds"]))


if __name__ == "__main__":
    main()
