"""``supersub demo``: the built-in dataset through train, evaluate and predict, in a folder of its own."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..data.synth import write_synth
from ..errors import SupersubError
from .discover import discover_images
from .evaluate import evaluate_run
from .predict import predict_images
from .train import train_run

log = logging.getLogger("supersub")

DEMO_MARKER = ".supersub-demo"
# sized to finish in a few minutes on a 2-core laptop CPU: the built-in shapes are legible at 32 px, which
# makes an epoch ~4x cheaper than at 64 px and buys 30 epochs for both the calibration and the final model
# the from-scratch CNN (docs/results/benchmarks.md, the demo's section); its novelty score is left to the recipe's
# default for a backbone from random weights (config.SCRATCH_SCORE, energy+probe; the demo's subclass overall accuracy
# 67.1% against 65.0% with energy at both levels, torch 2.14)
DEMO_CONFIG: dict[str, Any] = {"model.backbone": "cnn", "optim.epochs": 30, "data.image_size": 32, "model.width": 32}


def run_demo(out: str | Path = "runs/demo", *, overwrite: bool = False, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """:func:`supersub.api.demo`: a fresh demo folder (only a previous demo is ever deleted), then every verb."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SupersubError(f"{out}: exists and is not empty (pass --overwrite to replace the demo)")
        if not (out / DEMO_MARKER).is_file():
            raise SupersubError(f"{out}: not a supersub demo folder (no {DEMO_MARKER}); refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("created by supersub demo\n", encoding="utf-8")
    t0 = time.perf_counter()
    counts = write_synth(out / "data", seed=seed)
    log.info("built-in dataset: %s (%.1fs)", counts, time.perf_counter() - t0)
    # the built-in data ships an outlier pool of another unseen family: the recommended recipe uses it
    novel = {"data.novel_data": str(out / "data" / "novel_images")}
    summary = train_run(out / "data", out / "run", None, **{**DEMO_CONFIG, **novel, "seed": seed, **overrides})
    metrics = evaluate_run(out / "run", out / "data" / "test_images", out / "data" / "test_truth.csv")
    predict_images(out / "run", out / "data" / "test_images", out / "predictions.csv", probs=True)
    # the open-world loop's first step: what are the images flagged novel? (then review, train --extend)
    found = discover_images(out / "run", out / "data" / "test_images", out / "discovered", seed=seed)
    discovered = {"folder": str(found.out), "flagged": len(found.clusters),
                  "clusters": int(found.clusters["cluster"].nunique())}
    return {"train": summary, "test": metrics, "discovered": discovered, "seconds": round(time.perf_counter() - t0, 1)}
