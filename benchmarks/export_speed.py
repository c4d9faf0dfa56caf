"""Images per second of an exported run (onnxruntime) against ``supersub predict``, on the same images.

    python benchmarks/export_speed.py --run runs/mine --images some.csv --out bench-out/export_speed.json

Both sides start from image files: ``predict`` is ``supersub.api.predict`` (decode, model, novelty, probabilities;
cached backbone outputs are not used: the images are new to the cache); the exported side decodes the same files
with supersub's decoder and runs the ONNX graph in batches of ``--batch``. Each side runs ``--repeats`` times, in
turns; the best time of each is reported.

Committed result: docs/results/export_speed.json and the README's export speed line, from
``python benchmarks/export_speed.py --run RUN --images IMAGES.csv --out docs/results/export_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from harness import open_run, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="a flat folder or a CSV of image paths")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    import supersub.api as api
    from supersub.data.cache import decode_images
    from supersub.data.formats import read_images

    size = open_run(args.run).load_config().data.image_size
    with tempfile.TemporaryDirectory(prefix="supersub-export-") as tmp:
        os.environ["SUPERSUB_CACHE_DIR"] = str(Path(tmp) / "cache")  # a fresh cache: nothing precomputed
        onnx_file = Path(tmp) / "model.onnx"
        api.export(args.run, onnx_file)
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        records = read_images(args.images).records

        def exported() -> int:
            pixels = decode_images(records, size).images.numpy()
            rows = [session.run(None, {"images": pixels[i:i + args.batch]})[0] for i in range(0, len(pixels), args.batch)]
            return len(np.concatenate(rows))

        def predicted() -> int:
            return len(api.predict(args.run, args.images, probs=True))

        best = {"onnxruntime": float("inf"), "predict": float("inf")}
        for _ in range(args.repeats):
            for name, side in (("onnxruntime", exported), ("predict", predicted)):
                t = time.perf_counter()
                n = side()
                best[name] = min(best[name], time.perf_counter() - t)
    result = {"images": n, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "batch": args.batch,
              "seconds": {k: round(v, 2) for k, v in best.items()},
              "images_per_second": {k: round(n / v, 1) for k, v in best.items()}, "load_1min": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)


if __name__ == "__main__":
    main()
