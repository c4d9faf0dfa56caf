#!/usr/bin/env python3
"""Benchmark: what supersub's own machinery costs, measured against plain PyTorch in one run.

    python benchmarks/speed.py --out speed.md [--data ../shared/data/bird-dog-reptile] [--threads N]
    python benchmarks/speed.py --smoke --out /tmp/speed.md      # built-in synthetic data, a few batches

On the real data (competition layout) with the recipe's backbone and sizes (EfficientNet-Lite0 with its
bundled ImageNet weights, images decoded at ``data.image_size`` and resized to 224 px inside the model,
batch ``optim.batch_size``), it measures:

(a) training images/s of supersub's training step (``fit_stage``: its LightningModule, data module and
    Trainer, what ``supersub train`` runs) in full fine-tuning, against a plain PyTorch loop over the same
    model, loss, optimizer, schedule, batch size and augmentation; target >= 0.95;
(b) the epoch time of frozen-with-cache and partial (cached early stages) fine-tuning, measured through
    ``fit_stage`` on ``--regime-images`` training images and scaled to the whole training set, against full
    fine-tuning (the batch time of (a) times the batches of an epoch); target: frozen >= 50x faster;
(c) prediction images/s of ``supersub predict`` (``api.predict``: decode, preprocess, forward, novelty
    scores, CSV) on a folder of ``--predict-images`` images with an empty feature cache, against the backbone's
    forward pass alone on pre-loaded tensors at the same batch and input size; target >= 0.80;
(d) the peak memory of each side: every side runs in its own worker process, which reports the kernel's
    high-water mark of its resident set (``VmHWM``; torch allocates outside Python's heap, so tracemalloc
    would miss most of it); the idle-worker row is what a worker holds before it does anything.

Each side is set up and warmed up before it is timed; the two sides of a ratio stay set up side by side and
take turns (A B B A ...), so the load of a shared machine drifts over both alike; both use ``--threads``
torch threads. Prints one table and writes it as Markdown to ``--out`` (numbers also to ``<out>.json``).
This file is the driver (it imports no torch); its parts are in ``benchmarks/_speed/``.

Committed table: docs/results/speed.md (numbers in speed.md.json), from
``python benchmarks/speed.py --out docs/results/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # harness and _speed beside this file (the workers get the driver's sys.path)

from _speed.table import Plan, Prepared, build_rows, describe, markdown, print_rich  # noqa: E402 - after the path
from _speed.workers import Worker, start_server  # noqa: E402
from harness import DEFAULT_DATA, write_text  # noqa: E402
_T0 = time.perf_counter()


def say(message: str) -> None:
    """Progress on stderr, with the minutes since the start."""
    print(f"[{(time.perf_counter() - _T0) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Markdown table (numbers also to <out>.json)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--smoke", action="store_true", help="built-in synthetic data, tiny sizes, a few batches")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="competition-layout training set")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=None, help="data.image_size (default: the config's)")
    ap.add_argument("--batch-size", type=int, default=None, help="optim.batch_size (default: the config's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of every side (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup-batches", type=int, default=2, help="(a): untimed batches of each side first")
    ap.add_argument("--train-batches", type=int, default=2, help="(a): batches per turn")
    ap.add_argument("--train-rounds", type=int, default=4, help="(a): turns of each side")
    ap.add_argument("--regime-images", type=int, default=512, help="(b): training images of the cached regimes")
    ap.add_argument("--regime-epochs", type=int, default=4, help="(b): epochs per cached regime (the first is warm-up)")
    ap.add_argument("--predict-images", type=int, default=5000, help="(c): images in the folder to predict")
    ap.add_argument("--predict-repeats", type=int, default=1, help="(c): timed predict calls")
    ap.add_argument("--forward-batches", type=int, default=8, help="(c): forward batches per turn")
    ap.add_argument("--run-per-class", type=int, default=6, help="(c): images per subclass to train the run on")
    ap.add_argument("--run-epochs", type=int, default=3, help="(c): epochs of the run")
    return ap.parse_args(argv)


def make_plan(a: argparse.Namespace) -> Plan:
    from supersub.config import TrainConfig  # pydantic only: the driver imports no torch

    defaults = TrainConfig()
    plan = Plan(
        data=str(a.data), backbone=a.backbone, image_size=a.image_size or defaults.data.image_size, input_size=None,
        batch_size=a.batch_size or defaults.optim.batch_size, threads=a.threads or 0,
        seed=a.seed, warmup_batches=a.warmup_batches, train_batches=a.train_batches, train_rounds=a.train_rounds,
        regime_images=a.regime_images, regime_epochs=a.regime_epochs, predict_images=a.predict_images,
        predict_repeats=a.predict_repeats, forward_batches=a.forward_batches, forward_pool=0,
        run_per_class=a.run_per_class, run_epochs=a.run_epochs,
    )
    if a.smoke:  # tiny everything: the test of this script, not a measurement
        plan.image_size, plan.input_size, plan.batch_size = a.image_size or 24, 32, a.batch_size or 8
        plan.warmup_batches, plan.train_batches, plan.train_rounds = 1, 1, 2
        plan.regime_images, plan.regime_epochs, plan.predict_repeats, plan.forward_batches = 48, 2, 1, 2
        plan.run_epochs, plan.smoke = 1, True
    plan.forward_pool = 4 * plan.batch_size
    return plan


# ---- preparation -----------------------------------------------------------------------------------
def prepare(plan: Plan, work: Path) -> Prepared:
    """In a worker (the driver never imports torch): decode the data, copy the folder, train the run."""
    data_overrides = plan.overrides(work / "images")
    # the run's config keeps no cache folder, so that each predict call starts from an empty one; a third of
    # its few images validate (calibration needs validation images of every subclass)
    run = plan.overrides(None, **{"optim.epochs": plan.run_epochs, "data.val_fraction": 0.3})
    run_overrides = {k: v for k, v in run.items() if k != "data.cache_dir"}
    kwargs = {"plan": asdict(plan), "work": str(work), "data_overrides": data_overrides, "run_overrides": run_overrides}
    with _workers(("prepare", "prepare_inputs", kwargs), threads=plan.threads) as (w,):
        got = w.run(1)
        w.stop()
    return Prepared(**{k: got[k] for k in Prepared.__dataclass_fields__})


# ---- measurements ----------------------------------------------------------------------------------
def _alternate(workers: list[Any], rounds: int, steps: int) -> list[list[dict]]:
    """``rounds`` turns of ``steps`` for each worker, in the order A B C, C B A, A B C ..., so a linear drift in
    the machine's load hits every side alike; each worker's results, in the workers' order."""
    got: list[list[dict]] = [[] for _ in workers]
    for r in range(rounds):
        order = list(range(len(workers)))
        for i in order if r % 2 == 0 else order[::-1]:
            got[i].append(workers[i].run(steps))
    return got


def _median(xs: list[float]) -> float:
    ordered = sorted(xs)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _rate(results: list[dict]) -> float:
    return sum(r["items"] for r in results) / sum(r["seconds"] for r in results)


@contextmanager
def _workers(*specs: tuple[str, str, dict[str, Any]], threads: int) -> Iterator[list[Any]]:
    """Start the workers together (their set-ups overlap, untimed), wait until all are ready, kill on error."""
    say(f"setting up {', '.join(name for name, _, _ in specs)}")
    workers = [Worker(name, side, threads, **kwargs) for name, side, kwargs in specs]
    try:
        for w in workers:
            w.ready()
        say("measuring")
        yield workers
    finally:
        for w in workers:
            w.kill()
        say("done")


def measure_idle(plan: Plan) -> dict[str, Any]:
    with _workers(("idle", "idle", {}), threads=plan.threads) as (w,):
        return {"rss_mb": w.stop()}


def measure_training(plan: Plan, prep: Prepared) -> dict[str, Any]:
    """(a): supersub's training step against the plain loop (glibc's allocator defaults, and supersub's
    setting), full fine-tuning, in alternating turns."""
    over = plan.overrides(prep.image_cache, **{"optim.finetune": "full", "optim.patience": 10**6})
    kwargs = {"data": str(prep.data), "overrides": over}
    with _workers(("supersub-train", "supersub_training", kwargs), ("plain-train", "plain_training", kwargs),
                  ("plain-train-kept", "plain_training", {**kwargs, "keep_memory": True}),
                  threads=plan.threads) as workers:
        _alternate(workers, 1, plan.warmup_batches)
        turns = _alternate(workers, plan.train_rounds, plan.train_batches)
        rss = [w.stop() for w in workers]
    ours, plain, kept = turns
    return {"supersub_ips": _rate(ours), "plain_ips": _rate(plain), "plain_kept_ips": _rate(kept),
            "round_ratios": [_rate([o]) / _rate([p]) for o, p in zip(ours, plain)],
            "round_ratios_kept": [_rate([o]) / _rate([k]) for o, k in zip(ours, kept)],
            "batches_timed": sum(r["steps"] for r in ours), "rss_mb": rss,
            "turns": {"supersub": ours, "plain": plain, "plain_kept": kept}}


def measure_regimes(plan: Plan, prep: Prepared, work: Path) -> dict[str, Any]:
    """(b): frozen and partial through fit_stage on ``regime_images`` rows, each from an empty cache."""
    out: dict[str, Any] = {}
    for regime in ("frozen", "partial"):
        over = plan.overrides(prep.image_cache, **{"optim.finetune": regime, "optim.epochs": plan.regime_epochs,
                                                  "optim.patience": plan.regime_epochs + 1})
        kwargs = {"data": str(prep.data), "overrides": over, "feature_dir": str(work / f"features-{regime}"),
                  "limit": plan.regime_images}
        with _workers((regime, "cached_regime", kwargs), threads=plan.threads) as (w,):
            got = w.run(1)
            rss = w.stop()
        epochs = got["epochs"][1:] or got["epochs"]  # the first epoch warms up
        batches = (prep.n_train // plan.batch_size) or 1  # an epoch of the whole training set (drop_last)
        per_batch = _median([e["batch_seconds"] / e["batches"] for e in epochs])
        other = _median([e["other_seconds"] for e in epochs])
        scale = prep.n_train / got["rows"]
        out[regime] = {"rows": got["rows"], "epochs_measured": got["epochs"], "batch_seconds": per_batch,
                       "other_seconds": other, "epoch_seconds": other + per_batch * batches,
                       "fill_seconds_measured": got["fill_seconds"], "fill_seconds": got["fill_seconds"] * scale,
                       "rss_mb": rss}
    return out


def measure_predict(plan: Plan, prep: Prepared, work: Path) -> dict[str, Any]:
    """(c): ``supersub predict`` on the folder against the backbone's forward pass (glibc's allocator defaults,
    and supersub's setting), in turns F F' P F' F P ... F F'."""
    predict = {"run": str(prep.run), "folder": str(prep.folder), "warmup_folder": str(prep.warmup_folder),
               "work": str(work / "predict-out")}
    forward = {"run": str(prep.run), "folder": str(prep.folder), "batch_size": plan.batch_size,
               "pool": plan.forward_pool}
    (work / "predict-out").mkdir()
    with _workers(("supersub-predict", "supersub_predict", predict), ("pure-forward", "pure_forward", forward),
                  ("pure-forward-kept", "pure_forward", {**forward, "keep_memory": True}),
                  threads=plan.threads) as (ours, *refs):
        got_refs: list[list[dict]] = [[] for _ in refs]
        got_ours: list[dict] = []
        for r in range(plan.predict_repeats + 1):
            for i in range(len(refs)) if r % 2 == 0 else reversed(range(len(refs))):
                got_refs[i].append(refs[i].run(plan.forward_batches))
            if r < plan.predict_repeats:
                got_ours.append(ours.run(1))
        rss = [ours.stop(), *(w.stop() for w in refs)]
    (fwd, kept) = got_refs
    return {"supersub_ips": _rate(got_ours), "forward_ips": _rate(fwd), "forward_kept_ips": _rate(kept),
            "round_ratios": [_rate([o]) / _rate(fwd[i:i + 2]) for i, o in enumerate(got_ours)],
            "round_ratios_kept": [_rate([o]) / _rate(kept[i:i + 2]) for i, o in enumerate(got_ours)],
            "images": prep.n_predict, "rss_mb": rss,
            "turns": {"supersub": got_ours, "forward": fwd, "forward_kept": kept}}


def command_line() -> str:
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ)
    args = shlex.join(["python", "benchmarks/speed.py", *sys.argv[1:]])
    return f"{env} {args}".strip()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    json_out = a.out.with_suffix(a.out.suffix + ".json")
    for target in (a.out, json_out):
        if target.exists() and not a.overwrite:
            print(f"error: {target}: exists (pass --overwrite to replace it)", file=sys.stderr)
            return 2
    start = time.perf_counter()
    start_server()  # the workers' imports, once, while the driver goes on
    plan = make_plan(a)
    results: dict[str, Any] = {"load": {"start": _load()}}
    with tempfile.TemporaryDirectory(prefix="supersub-speed-") as tmp:
        work = Path(tmp)
        say("preparing: decoding the data, copying the folder to predict, training the run to predict with")
        prep = prepare(plan, work)
        plan.threads = plan.threads or prep.threads
        results["idle"] = measure_idle(plan)
        results["train"] = measure_training(plan, prep)
        results["regimes"] = measure_regimes(plan, prep, work)
        results["predict"] = measure_predict(plan, prep, work)
    results["load"]["end"] = _load()
    seconds = time.perf_counter() - start
    rows = build_rows(plan, prep, results)
    command = command_line()
    print_rich(rows, f"supersub speed ({plan.threads} thread(s){', smoke' if plan.smoke else ''})")
    print(f"command: {command}")
    write_text(a.out, markdown(rows, describe(plan, prep, results, command, seconds)))
    write_text(json_out, json.dumps({"plan": asdict(plan), "prepared": asdict(prep), "results": results,
                                        "rows": [{**asdict(r), "met": r.met} for r in rows], "command": command,
                                        "seconds": seconds}, indent=2) + "\n")
    print(f"wrote {a.out} and {json_out}")
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
