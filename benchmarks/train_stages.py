"""Where `supersub train`'s time goes: the recipe's stages timed on a competition folder (or N of its images).

    python benchmarks/train_stages.py --data ../shared/data/bird-dog-reptile --images 300 --out bench-out/stages-300.json

Stages (seconds, summed over the eight models of the default recipe): ``decode`` (reading the images), ``extract``
(the frozen backbone over every image, into an empty feature cache), ``epochs`` (the stages' fits less the
extraction), ``evidence`` (each model's outputs on its rows), ``score fit`` (the detectors: ViM's covariance and
eigh per model and level), ``thresholds`` (the rest of calibration: confidences, sweeps, slopes, temperatures,
files). It wraps the functions of those steps with timers and changes nothing else, so it measures any checkout:
``PYTHONPATH=OTHER/src python benchmarks/train_stages.py ...`` gives the "before" of a change.

Committed results: docs/results/train_stages_*.json and the README's "where a run's time goes", from
``python benchmarks/train_stages.py --data ../shared/data/bird-dog-reptile [--images 300] --out ...``.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import wrap_calls, write_json

TIMES: dict[str, float] = defaultdict(float)


@contextmanager
def _timer(key: str) -> Iterator[None]:
    """Add the block's wall time to ``TIMES[key]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        TIMES[key] += time.perf_counter() - t


def _timed(owner: Any, name: str, key: str) -> None:
    """Time every call of ``owner.name`` into ``TIMES[key]``."""
    wrap_calls(owner, name, lambda: _timer(key))


def _subset(data: Path, n: int, where: Path, per_subclass: int = 20) -> Path:
    """A nested folder ``<superclass>/<subclass>/`` of ``n`` images of ``data``: ``per_subclass`` images of each of
    ``n / per_subclass`` subclasses taken in turn from each superclass (images linked, not copied)."""
    def names(csv_name: str) -> dict[str, str]:
        with (data / csv_name).open(newline="", encoding="utf-8") as fh:
            return {row[0]: row[1] for row in list(csv.reader(fh))[1:]}

    supers, subs = names("superclass_mapping.csv"), names("subclass_mapping.csv")
    with (data / "train_data.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    by_super: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for image, k, j, *_ in rows:
        by_super[k][j].append(image)
    queues = [[(j, files) for j, files in group.items() if len(files) >= per_subclass] for group in by_super.values()]
    out, taken = where / f"subset-{n}", 0
    while taken < n and any(queues):
        for k, queue in zip(by_super, queues):
            if queue and taken < n:
                j, files = queue.pop(0)
                folder = out / supers[k].replace("/", "_") / subs[j].replace("/", "_")
                folder.mkdir(parents=True)
                for image in files[: min(per_subclass, n - taken)]:
                    os.symlink((data / "train_images" / image).resolve(), folder / image)
                taken += min(per_subclass, n - taken)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a competition folder (train_data.csv, mappings)")
    parser.add_argument("--images", type=int, default=0, help="N of its images: 20 of each of N/20 subclasses, in turn from each superclass (0: all)")
    parser.add_argument("--out", type=Path, help="JSON file of the breakdown")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import supersub
    import supersub.api as api
    import supersub.novelty.level_scorer as scoring
    import supersub.pipeline.calibrate as calibration
    import supersub.pipeline.train as train
    import supersub.training.finetune as finetune

    with tempfile.TemporaryDirectory(prefix="supersub-stages-") as tmp:
        work = Path(tmp)
        data = _subset(args.data, args.images, work) if args.images else args.data
        _timed(finetune, "extract_features", "extract")
        _timed(train, "fit_model", "fits")
        _timed(train, "collect_evidence", "evidence")
        _timed(train, "calibrate_and_save", "calibration")
        _timed(train, "load_labelled", "decode")
        _timed(scoring.NoveltyScorer, "fit", "score fit")
        t0 = time.perf_counter()
        summary = api.train(data, work / "run", seed=args.seed, **{"trainer.progress": False,
                                                                   "data.cache_dir": str(work / "cache")})
        total = time.perf_counter() - t0
    stages = {
        "decode": TIMES["decode"], "extract": TIMES["extract"], "epochs": TIMES["fits"] - TIMES["extract"],
        "evidence": TIMES["evidence"], "score fit": TIMES["score fit"],
        "thresholds": TIMES["calibration"] - TIMES["score fit"],
    }
    stages["other"] = total - sum(stages.values())
    result = {"source": str(Path(supersub.__file__).parent), "data": str(args.data), "images": args.images or "all",
              "threads": __import__("torch").get_num_threads(), "cpus": os.cpu_count(),
              "total_seconds": round(total, 1), "stages": {k: round(v, 1) for k, v in stages.items()},
              "thresholds": summary["thresholds"], "load_1min": os.getloadavg()[0]}
    width = max(map(len, stages))
    for name, seconds in stages.items():
        print(f"{name:<{width}}  {seconds:7.1f} s")
    print(f"{'total':<{width}}  {total:7.1f} s   (tau_super={summary['thresholds']['tau_super']:.4g}, "
          f"tau_sub={summary['thresholds']['tau_sub']:.4g}; load {result['load_1min']:.1f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)


if __name__ == "__main__":
    main()
