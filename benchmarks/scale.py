#!/usr/bin/env python3
"""Benchmark: what ``predict`` (default recipe) and ``train`` (frozen recipe) cost as the number of images grows.

    python benchmarks/scale.py --src /work/scale-before/src --label before --sizes 1000 3000 10000
    python benchmarks/scale.py --src src --label after --sizes 1000 3000 10000
    python benchmarks/scale.py --table                      # the Markdown table of every label measured
    python benchmarks/scale.py --src src --label after --sizes 1000 10000 50000   # a bigger machine

It builds, once, under ``--work`` (default ``/work/bench-out/scale``, never the repository):

* ``flat-N/``: N Tiny-ImageNet photos in one flat folder (what ``predict`` reads);
* ``train-N/``: N photos in ``<superclass>/<subclass>/`` folders, 100 Tiny-ImageNet classes as 10 superclasses
  of 10 subclasses (what ``train`` reads).

Photos are taken class by class in turn, so any N spreads over the classes; beyond the 250 photos a class has
(train and val), they repeat. Every command runs in a fresh subprocess with an empty feature cache
(``SUPERSUB_CACHE_DIR``) and the code of ``--src``; its wall time and peak resident set (``ru_maxrss`` of that
child, from ``os.wait4``, which includes its own children) are recorded. ``train`` is the default recipe
(EfficientNet-Lite0, frozen, calibrated) with ``--epochs`` (default 3: the cost that grows with N is the
feature extraction); ``predict`` uses the run trained on the smallest size, so every size runs the same model.
Results go to ``WORK/results-LABEL.json``; ``--table`` prints every label side by side.

``train`` also records the peak RSS of each of its phases (``harness.PhasePeaks``: the kernel's high-water mark
reset as a phase starts, read as it ends, in the training process itself): ``decode`` (reading the images),
``extract`` (the first call of the frozen backbone over the images), ``re-extract`` (the later calls: the
stages' rows read back from the feature cache), ``fits`` (the stages'
fits less extraction), ``evidence``, ``calibration``, ``other`` (start-up, the split, saving), and ``after
extract``, the peak of everything after the first extraction: what training holds besides the extraction's heap,
which should grow by no more than the feature matrix (``FEATURE_ROW_KB`` an image).

Committed table: docs/results/scale.md (and scale_before/after.json), from
``python benchmarks/scale.py --src /work/scale-before/src --label before --sizes 1000 3000 10000``,
``python benchmarks/scale.py --src src --label after --sizes 1000 3000 10000``, then
``python benchmarks/scale.py --table``; training's phases (the second table there, scale_phases*.json) from
``[SUPERSUB_KEEP_FREED_MEMORY=0] python benchmarks/scale.py --src src --label phases[-nokeep] --only train
--threads 1``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import SHARED, PhasePeaks, after_dashes, markdown_table, read_json, wrap_calls, write_json

TINY = SHARED / "data" / "tiny-imagenet"
SUPERS, SUBS_PER_SUPER = 10, 10
FEATURE_ROW_KB = (1280 + 320 + 192) * 4 / 1024  # frozen Lite0: final features + the two tapped blocks, float32
PHASES = ("decode", "extract", "re-extract", "fits", "evidence", "calibration", "other", "after extract")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    p.add_argument("--src", type=Path, help="the src/ folder of the supersub checkout to measure")
    p.add_argument("--label", help="name of this side (before, after)")
    p.add_argument("--work", type=Path, default=Path("/work/bench-out/scale"))
    p.add_argument("--data", type=Path, default=TINY, help="Tiny-ImageNet (train/<wnid>/, val/<wnid>/)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every command")
    p.add_argument("--only", choices=["train", "predict"], help="measure one command only")
    p.add_argument("--table", action="store_true", help="print the table of every results-*.json in --work")
    p.add_argument("--phases-json", type=Path, help="(internal) run `supersub ARGS...` in this process, writing "
                   "each phase's peak RSS to this file")
    p.add_argument("cli_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def probe(out: Path, cli_args: list[str]) -> None:
    """Run the supersub CLI in this process with each training phase's memory peak recorded into ``out``
    (written even when the command fails, so a failed run still shows how far it got)."""
    import supersub.cli as cli
    import supersub.pipeline.train as train
    import supersub.training.finetune as finetune

    peaks = PhasePeaks(after="extract")
    extractions = iter(["extract"])  # the first call computes; the later ones read the feature cache
    wrap_calls(finetune, "extract_features", lambda: peaks.phase(next(extractions, "re-extract")))
    for owner, name, phase in ((train, "load_labelled", "decode"), (train, "fit_model", "fits"), (train, "collect_evidence", "evidence"),
                               (train, "calibrate_and_save", "calibration")):
        wrap_calls(owner, name, lambda phase=phase: peaks.phase(phase))
    sys.argv = ["supersub", *after_dashes(cli_args)]
    try:
        cli.main()
    finally:
        write_json(out, peaks.result())


def photos(data: Path, classes: int) -> list[list[Path]]:
    """The photos of the first ``classes`` classes (sorted wnids), train then val, each sorted by name."""
    wnids = sorted(d.name for d in (data / "train").iterdir() if d.is_dir())[:classes]
    return [sorted((data / "train" / w).glob("*.JPEG")) + sorted((data / "val" / w).glob("*.JPEG")) for w in wnids]


def pick(per_class: list[list[Path]], n: int) -> list[tuple[int, Path]]:
    """N (class, photo) pairs, class by class in turn (round robin), repeating a class's photos when it runs out."""
    return [(i % len(per_class), per_class[i % len(per_class)][(i // len(per_class)) % len(per_class[i % len(per_class)])])
            for i in range(n)]


def build(work: Path, data: Path, n: int) -> tuple[Path, Path]:
    """``flat-N`` and ``train-N`` (made once; a finished folder carries a ``.done`` marker)."""
    per_class = photos(data, SUPERS * SUBS_PER_SUPER)
    flat, nested = work / f"flat-{n}", work / f"train-{n}"
    for folder, nest in ((flat, False), (nested, True)):
        if (folder / ".done").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        for i, (c, src) in enumerate(pick(per_class, n)):
            parent = folder / f"super{c // SUBS_PER_SUPER}" / f"sub{c}" if nest else folder
            parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, parent / f"{i:06d}_{src.name}")
        (folder / ".done").touch()
    return flat, nested


def measure(cmd: list[str], src: Path, threads: int, log: Path) -> dict[str, Any]:
    """Run ``cmd`` with supersub from ``src`` and an empty feature cache: wall seconds and peak RSS (MiB), and
    the peak of each phase when ``cmd`` is this script's ``--phases-json`` probe."""
    cache = Path(tempfile.mkdtemp(prefix="scale-cache-", dir=log.parent))
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "SUPERSUB_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    row: dict[str, Any] = {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # KiB
    if "--phases-json" in cmd:
        phases = row["phase_peak_mib"] = read_json(Path(cmd[cmd.index("--phases-json") + 1]))
        phases = {k: v for k, v in phases.items() if not k.endswith(" file")}
        # resetting the high-water mark resets ru_maxrss too (both are the kernel's hiwater_rss): the process's
        # peak is the highest of its phases'
        row["peak_rss_mib"] = max(row["peak_rss_mib"], *phases.values())
    return row


def run_side(args: argparse.Namespace) -> None:
    if args.src is None or args.label is None:
        raise SystemExit("--src and --label are needed (or --table)")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(args.sizes)
    results_path = work / f"results-{args.label}.json"
    results = read_json(results_path, default={"label": args.label, "rows": []})
    cli = [sys.executable, "-m", "supersub.cli"]
    runs = work / f"runs-{args.label}"
    runs.mkdir(exist_ok=True)
    model_run = runs / f"train-{sizes[0]}"
    for n in sizes:
        flat, nested = build(work, args.data, n)
        print(f"[{args.label}] {n} images: folders ready", file=sys.stderr, flush=True)
        if args.only in (None, "train"):
            out = runs / f"train-{n}"
            probe_cli = [sys.executable, str(Path(__file__).resolve()), "--phases-json", str(runs / f"phases-{n}.json"),
                         "--"]
            row = measure([*probe_cli, "train", "--data", str(nested), "--out", str(out), "--overwrite", "--no-progress",
                           "--epochs", str(args.epochs)], args.src, args.threads, runs / f"train-{n}.log")
            results["rows"].append({"command": "train", "images": n, **row})
            print(f"[{args.label}] train {n}: {row}", file=sys.stderr, flush=True)
            write_json(results_path, results)
        if args.only in (None, "predict"):
            if not (model_run / "model.pt").is_file():
                raise SystemExit(f"{model_run}: train the smallest size first (the run every size predicts with)")
            row = measure([*cli, "predict", str(model_run), str(flat), "--out", str(runs / f"predict-{n}.csv"),
                           "--overwrite"], args.src, args.threads, runs / f"predict-{n}.log")
            results["rows"].append({"command": "predict", "images": n, **row})
            print(f"[{args.label}] predict {n}: {row}", file=sys.stderr, flush=True)
            write_json(results_path, results)


def table(work: Path) -> str:
    """One row per (command, images), a column group per label: seconds, images/s, the marginal images/s from the
    next smaller size (extra images / extra seconds: equal across sizes when time is linear in images, whatever the
    fixed start-up cost), peak RSS (MiB)."""
    sides = [read_json(p) for p in sorted(work.glob("results-*.json"))]
    sides.sort(key=lambda s: {"before": 0, "after": 1}.get(s["label"], 2))
    keys = sorted({(r["command"], r["images"]) for s in sides for r in s["rows"]}, key=lambda k: (k[0] != "predict", k))
    head = "| command | images | " + " | ".join(f"{s['label']} s | {s['label']} img/s | {s['label']} marginal img/s | "
                                               f"{s['label']} peak RSS MiB" for s in sides) + " |"
    lines = [head, "|---|---:|" + "---:|" * (4 * len(sides))]
    for command, n in keys:
        cells = []
        for s in sides:
            r, smaller = _latest(s, command, n), _previous(s, command, n)
            if r is None:
                cells += ["", "", "", ""]
                continue
            marginal = (n - smaller["images"]) / (r["seconds"] - smaller["seconds"]) if smaller else None
            cells += [f"{r['seconds']:.0f}", f"{n / r['seconds']:.1f}", f"{marginal:.1f}" if marginal else "",
                      f"{r['peak_rss_mib']:.0f}"]
        lines.append(f"| {command} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _latest(side: dict, command: str, n: int) -> dict | None:
    """The latest measurement of this command and size (a size measured again replaces the earlier one)."""
    rows = [r for r in side["rows"] if (r["command"], r["images"]) == (command, n)]
    return rows[-1] if rows else None


def _previous(side: dict, command: str, n: int) -> dict | None:
    """The measurement of the next smaller size of the same command, if any."""
    sizes = sorted({r["images"] for r in side["rows"] if r["command"] == command and r["images"] < n})
    return _latest(side, command, sizes[-1]) if sizes else None


def phase_table(sides: list[dict]) -> str:
    """Training's peak RSS by phase (MiB), one row per label and size measured with phases; the last column is the
    growth per image of the ``after extract`` peak from the label's smallest such size, against a feature row."""
    rows: list[list[object]] = []
    for s in sides:
        sizes = sorted({r["images"] for r in s["rows"] if r["command"] == "train"})
        measured = [r for r in (_latest(s, "train", n) for n in sizes) if r is not None and "phase_peak_mib" in r]
        for r in measured:
            rows.append([s["label"], r["images"], *[_mib(r["phase_peak_mib"].get(k)) for k in PHASES],
                         _growth_kb(measured[0], r)])
    return markdown_table(["label", "images", *PHASES, f"after extract KB/image (feature row {FEATURE_ROW_KB:.1f})"],
                          rows, align="lr" + "r" * (len(PHASES) + 1))


def _growth_kb(first: dict, row: dict) -> str | None:
    """KB an image the ``after extract`` peak grew from ``first`` to ``row`` (None for ``first`` itself)."""
    a, b = first["phase_peak_mib"].get("after extract"), row["phase_peak_mib"].get("after extract")
    if row["images"] == first["images"] or a is None or b is None:
        return None
    return f"{(b - a) * 1024 / (row['images'] - first['images']):.1f}"


def _mib(value: float | None) -> str | None:
    return None if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.phases_json:
        probe(args.phases_json, args.cli_args)
    elif args.table:
        print(table(args.work))
        sides = [read_json(p) for p in sorted(args.work.glob("results-*.json"))]
        if any("phase_peak_mib" in r for s in sides for r in s["rows"]):
            print("\n" + phase_table(sides))
    else:
        run_side(args)


if __name__ == "__main__":
    main()
