#!/usr/bin/env python3
"""Benchmark: training speed of the fine-tuning regimes of one backbone, measured in one run.

    python benchmarks/regimes_speed.py [--data ../shared/data/bird-dog-reptile] [--images 768]
        [--backbone efficientnet_lite0] [--input-size 128] [--epochs 2] [--regimes full partial:1 partial:2 frozen]

Each regime trains the same model (same images, batch size, input size, seed) through supersub's own
training path (``supersub.training.lightning_fit.fit_stage``, the Lightning loop ``supersub train`` uses) for a few
epochs without validation. Printed per regime: seconds per epoch after the first (the steady state), training
images/second, the speed-up over ``full``, and the one-off cost of filling the cache of frozen outputs (paid
once per data set and weights, then read from disk; it is timed with an empty cache folder).

Committed table: docs/results/benchmarks.md (fine-tuning regimes, speed), from
``python benchmarks/regimes_speed.py --images 384 --input-size 128 --epochs 2``. (speed.py's (b) measures frozen
and partial against full for its target; this prints the epoch time of any list of regimes.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from harness import DEFAULT_DATA



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=768, help="training images (a seeded sample)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per regime; the first is reported apart")
    ap.add_argument("--regimes", nargs="+", default=["full", "partial:1", "partial:2", "frozen"])
    a = ap.parse_args()

    from supersub import api
    from supersub.config import load_config
    from supersub.training.lightning_fit import fit_stage

    base = {"model.backbone": a.backbone, "model.input_size": a.input_size, "optim.batch_size": a.batch_size,
            "optim.epochs": a.epochs, "optim.patience": a.epochs + 1, "trainer.progress": False,
            "trainer.loggers": ["csv"]}
    data = api.load_labelled(a.data, load_config(None, base))
    n = min(a.images, len(data.images))
    idx = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))[:n].tolist()
    images, y_super, y_sub = data.images[idx], data.y_super[idx], data.y_sub[idx]
    print(f"{a.backbone} at {a.input_size} px, {n} training images, batch {a.batch_size}, "
          f"{torch.get_num_threads()} threads", flush=True)
    rows = []
    for spec in a.regimes:
        regime, _, stages = spec.partition(":")
        extra = {"optim.finetune": regime, **({"optim.trainable_stages": int(stages)} if stages else {})}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(None, {**base, **extra, "data.cache_dir": str(Path(tmp) / "cache")})
            start = time.perf_counter()
            result = fit_stage(images, y_super, y_sub, list(range(n)), [], data.dataset.taxonomy, cfg, Path(tmp),
                               "speed")
            total = time.perf_counter() - start
            steady = _steady_epoch_seconds(Path(tmp))
        rows.append((spec, steady, n / steady, result.feature_seconds or 0.0, total))
        print(f"  {spec:10s} {steady:7.2f} s/epoch  {n / steady:8.1f} img/s  cache fill "
              f"{result.feature_seconds or 0.0:6.1f} s", flush=True)
    full = next((r for r in rows if r[0] == "full"), None)
    print("\n| regime | s / epoch | train img/s | speed-up vs full | one-off cache fill (s) |")
    print("|---|---|---|---|---|")
    for spec, steady, ips, fill, _ in rows:
        speedup = f"{full[1] / steady:.1f}x" if full else "-"
        print(f"| {spec} | {steady:.2f} | {ips:.1f} | {speedup} | {fill:.1f} |")


def _steady_epoch_seconds(run: Path) -> float:
    """Mean of the logged epoch times after the first (which pays for warm-up)."""
    import pandas as pd

    log = pd.read_csv(run / "logs" / "speed" / "metrics.csv")
    seconds = log["epoch_seconds"].dropna().tolist()
    return sum(seconds[1:]) / len(seconds[1:]) if len(seconds) > 1 else seconds[0]


if __name__ == "__main__":
    main()
