"""Benchmark: the whole open-world loop on the built-in data, through the public CLI, timed step by step.

    python benchmarks/loop.py [--out bench-out/loop]

`supersub demo` (synthesise, train, evaluate, predict, discover), then the person's part simulated: every
discovered cluster keeps the template's name (what saving the review page unchanged writes), then
`supersub train --extend`, then `supersub evaluate` of the extended run on the same test folder (its novel
images are now partly known classes, so only the time is the point here). Prints the wall and CPU times.

Committed times: docs/results/discover.md and the README (the whole loop), from
``python benchmarks/loop.py --out bench-out/loop``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from harness import read_json, supersub_cmd


CPU: dict[str, float] = {}


def run(cmd: list[str]) -> float:
    """Run a step; return its wall time and record its CPU time (user + system, of the process and its children):
    on a machine shared with other jobs the wall time says little, the CPU time what the step costs."""
    print("$", " ".join(cmd), flush=True)
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True)
    CPU[cmd[1]] = round(_children_cpu() - c0, 1)
    return round(time.perf_counter() - t0, 1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out/loop"))
    a = ap.parse_args()
    if a.out.exists():
        shutil.rmtree(a.out)
    times = {"demo (synth, train, evaluate, predict, discover)": run(
        supersub_cmd("demo", "--out", str(a.out / "demo"), "--no-progress"))}
    found = a.out / "demo" / "discovered"
    times["train --extend"] = run(supersub_cmd("train", "--extend", str(a.out / "demo" / "run"), "--data",
                                               str(found / "labels.csv"), "--out", str(a.out / "extended"),
                                               "--no-progress"))
    times["predict (extended run)"] = run(supersub_cmd("predict", str(a.out / "extended"),
                                                       str(a.out / "demo" / "data" / "test_images"), "--out",
                                                       str(a.out / "extended-predictions.csv"), "--names"))
    times["total"] = round(sum(times.values()), 1)
    summary = read_json(found / "discover.json")
    print(json.dumps({"seconds": times, "cpu_seconds": {**CPU, "total": round(sum(CPU.values()), 1)},
                      "load_average_1min_at_end": os.getloadavg()[0], "flagged": summary["flagged"],
                      "clusters": summary["clusters"]}, indent=1))


if __name__ == "__main__":
    main()
