#!/usr/bin/env python3
"""Benchmark: seconds per epoch of frozen (cached features) vs full fine-tuning of the same backbone.

    python benchmarks/finetune.py [--data ../shared/data/bird-dog-reptile] [--backbones resnet18,cnn]

For each backbone, one training stage per regime through the library (``supersub.training.fit_stage``,
the code ``supersub train`` runs), on the real images at ``--image-size`` (64: no upsampling):

* frozen - the backbone features of every image are extracted once (timed on its own), then
  ``--frozen-epochs`` epochs train the heads on the cached rows;
* full   - ``--full-epochs`` epochs of forward and backward passes through the whole network.

Speed does not depend on the weights, so timm backbones start from a random initialisation (no network
needed). Times are wall-clock on whatever machine runs this; the other load on it counts.

Committed table: docs/results/benchmarks.md (finetune), from ``python benchmarks/finetune.py --backbones resnet18,cnn
--image-size 64 --frozen-epochs 2 --full-epochs 1``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness import DEFAULT_DATA
from supersub.api import load_labelled
from supersub.config import load_config
from supersub.data.splits import stratified_split
from supersub.training.lightning_fit import fit_stage


def time_regime(data, backbone: str, regime: str, epochs: int, a: argparse.Namespace, work: Path) -> dict:
    cfg = load_config(None, {
        "model.backbone": backbone, "optim.finetune": regime, "optim.epochs": epochs, "optim.patience": epochs,
        "optim.batch_size": a.batch_size, "data.image_size": a.image_size, "trainer.progress": False,
        "trainer.accelerator": a.accelerator,
    })
    train, val = stratified_split(data.y_sub.tolist(), cfg.data.val_fraction, cfg.seed)
    start = time.perf_counter()
    result = fit_stage(data.images, data.y_super, data.y_sub, train, val, data.dataset.taxonomy, cfg,
                       work / f"{backbone}-{regime}", "final")
    return {"backbone": backbone, "regime": regime, "epochs": result.epochs_run,
            "features_s": result.feature_seconds, "epoch_s": result.seconds_per_epoch,
            "total_s": time.perf_counter() - start, "n_train": len(train), "n_val": len(val)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbones", default="resnet18,cnn", help="comma-separated: 'cnn' and/or timm names")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--frozen-epochs", type=int, default=3)
    ap.add_argument("--full-epochs", type=int, default=1)
    ap.add_argument("--accelerator", default="auto")
    a = ap.parse_args()
    cfg = load_config(None, {"data.image_size": a.image_size})
    t0 = time.perf_counter()
    data = load_labelled(a.data, cfg)
    print(f"{a.data}: {len(data.images)} images decoded at {a.image_size}px in {time.perf_counter() - t0:.1f}s",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="supersub-finetune-") as tmp:
        for backbone in a.backbones.split(","):
            for regime, epochs in (("frozen", a.frozen_epochs), ("full", a.full_epochs)):
                rows.append(time_regime(data, backbone, regime, epochs, a, Path(tmp)))
                print(rows[-1], flush=True)
    print(f"\n{'backbone':<12}{'regime':<8}{'features (once)':>17}{'s/epoch':>10}{'epochs':>8}{'full/frozen':>13}")
    for r in rows:
        full = next(x["epoch_s"] for x in rows if x["backbone"] == r["backbone"] and x["regime"] == "full")
        ratio = f"{full / r['epoch_s']:.0f}x" if r["regime"] == "frozen" else ""
        feats = f"{r['features_s']:.1f}s" if r["features_s"] is not None else "-"
        print(f"{r['backbone']:<12}{r['regime']:<8}{feats:>17}{r['epoch_s']:>10.2f}{r['epochs']:>8}{ratio:>13}")
    print(f"({rows[0]['n_train']} training + {rows[0]['n_val']} validation images per epoch, batch {a.batch_size}, "
          f"{a.image_size}px; wall {time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
