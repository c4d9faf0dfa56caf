#!/usr/bin/env python3
"""Benchmark: what a bundled backbone costs per image, at each input size, on this machine.

    python benchmarks/backbone_cost.py [--backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2]
                                       [--sizes 64 96 128 160 224] [--images 256] [--batch-size 64]

Times ``supersub.models.feature_cache.extract_features`` (eval mode, channels-last, inference mode, no cache)
of each backbone with its bundled ImageNet weights on random 64 px uint8 images resized inside the model:
the path frozen-feature extraction takes. Prints milliseconds per image and images per second as a Markdown table.

Committed table: docs/results/benchmarks.md and the README (backbone cost), from
``python benchmarks/backbone_cost.py --backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2
--sizes 96 128 224 --images 384``.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+",
                    default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 96, 128, 160, 224])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()

    from supersub.config import ModelConfig
    from supersub.models.feature_cache import extract_features
    from supersub.models.hierarchical import HierarchicalClassifier

    torch.manual_seed(0)
    images = torch.randint(0, 256, (a.images, 3, 64, 64), dtype=torch.uint8)
    print(f"{torch.get_num_threads()} threads, {a.images} images per measurement, batch {a.batch_size}")
    print("| backbone | input px | ms / image | images / s |")
    print("|---|---|---|---|")
    for name in a.backbones:
        for size in a.sizes:
            model = HierarchicalClassifier(ModelConfig(backbone=name, input_size=size), 3, 10, load_weights=True)
            model.eval()
            extract_features(model.backbone, images[: a.batch_size], model.prepare, a.batch_size)  # warm-up
            start = time.perf_counter()
            extract_features(model.backbone, images, model.prepare, a.batch_size)
            seconds = time.perf_counter() - start
            print(f"| {name} | {size} | {1000 * seconds / a.images:.1f} | {a.images / seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
