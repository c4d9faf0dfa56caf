"""Benchmark: how well ``supersub discover`` groups the images a run flags novel into their true classes.

    python benchmarks/discover.py [--work /work/bench-out/discover] [--variants loso-reptile loso-bird tin]
        [--seeds 0 1 2] [--from-suite /work/bench-out/suite] [--out docs/results/discover-table.md]

For every protocol split (../shared/bench/make_protocol.py, read-only, never copied here) it trains the
default recipe if WORK/<variant>-s<seed>/run is missing (`supersub train --seed S`), predicts the test images,
groups the flagged ones as `discover` does (the number of groups estimated, and, as a reference, forced to
the true number of classes among the flagged images), and scores the groups against test_sources.csv (every
test image's true source class; a seen image flagged by mistake is a group of its own class): clustering
accuracy (Hungarian matching, Vaze et al. CVPR 2022), NMI and ARI, per level; mean ± std over seeds.

Committed table: docs/results/discover-table.md (and .json), from ``python benchmarks/discover.py --work
/work/bench-out/discover2 --from-suite /work/bench-out/suite --out docs/results/discover-table.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness import DEFAULT_BENCH, ensure_protocol, is_calibrated, supersub_cmd, timed_run, write_text
from supersub.metrics import clustering_scores
from supersub.pipeline.discover import SUPER_LEVEL, group_flagged, run_view

LEVELS = {SUPER_LEVEL: "novel superclass", "subclass": "novel subclass"}
NOVEL_KIND = {SUPER_LEVEL: "novel_super", "subclass": "novel_sub"}  # test_truth.csv's kind of a truly novel image


def from_suite(work: Path, suite: Path, variant: str, seed: int) -> None:
    """WORK/<variant>-s<seed>/ from the novelty suite's run of that split (benchmarks/novelty_suite.py): data/ a link
    to the suite's split, run/ a copy of its run recalibrated with the default novelty options (the suite's last
    candidate may have left others), so no model is trained twice."""
    import shutil

    import supersub.api as ss
    from supersub.config import TrainConfig

    folder = work / f"{variant}-s{seed}"
    if is_calibrated(folder / "run") and (folder / "run" / ".default-novelty").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "data").exists():
        (folder / "data").symlink_to(suite / "data" / f"{variant}-s{seed}")
    if (folder / "run").exists():
        shutil.rmtree(folder / "run")
    shutil.copytree(suite / "runs" / "none" / "lite0" / f"{variant}-s{seed}", folder / "run")
    defaults = TrainConfig().novelty
    ss.calibrate(folder / "run", score_options={}, **{key: getattr(defaults, key) for key in (
        "score", "super_layer", "sub_layer", "super_protocol", "objective", "transfer", "super_recall", "sub_recall")})
    (folder / "run" / ".default-novelty").write_text("recalibrated with the default novelty options\n")


def ensure_split(work: Path, bench: Path, variant: str, seed: int, cache_dir: str) -> Path:
    """WORK/<variant>-s<seed>/ with data/ (the protocol) and run/ (the default recipe), made when missing."""
    folder = work / f"{variant}-s{seed}"
    data = folder / "data"
    ensure_protocol(data, variant, seed, bench, done="test_sources.csv")
    if not is_calibrated(folder / "run"):
        timed_run(supersub_cmd("train", "--data", str(data), "--out", str(folder / "run"), "--overwrite", "--seed",
                               str(seed), "--set", f"data.cache_dir={cache_dir}", "--set", "trainer.progress=false"))
    return folder


def score_split(folder: Path, seed: int) -> list[dict[str, object]]:
    """One row per (level, k choice): images, groups found, true classes, ACC / NMI / ARI."""
    t0 = time.perf_counter()
    view = run_view(folder / "run", folder / "data" / "test_images", cache=True)
    sources = pd.read_csv(folder / "data" / "test_sources.csv").set_index("image")["source_class"]
    kinds = pd.read_csv(folder / "data" / "test_truth.csv").set_index("image")["kind"]
    estimated = group_flagged(view, folder / "discover", seed=seed).clusters
    seconds = time.perf_counter() - t0
    rows: list[dict[str, object]] = []
    for level in LEVELS:
        part = estimated[estimated["level"] == level]
        if part.empty:
            continue
        truth = sources.loc[part["image"]].to_numpy()
        novel = float((kinds.loc[part["image"]] == NOVEL_KIND[level]).mean() * 100)
        rows.append({"level": level, "k": "estimated", "images": len(part), "novel": novel,
                     "groups": part["cluster"].nunique(), "classes": len(set(truth)), "seconds": seconds,
                     **clustering_scores(truth, part["cluster"])})
    # the reference: each set forced to the true number of classes among its flagged images
    for level in LEVELS:
        part = estimated[estimated["level"] == level]
        if part.empty:
            continue
        groups: list[str] = []
        truths: list[str] = []
        for superclass, members in part.groupby("superclass"):
            truth = sources.loc[members["image"]].to_numpy()
            mask = np.isin(np.asarray(view.names), members["image"].to_numpy())
            sub_view = _subset(view, mask)
            forced = group_flagged(sub_view, folder / "discover", groups=len(set(truth)), seed=seed).clusters
            forced = forced[forced["level"] == level]
            groups += [f"{superclass}:{c}" for c in forced["cluster"]]
            truths += list(sources.loc[forced["image"]])
        novel = float((kinds.loc[part["image"]] == NOVEL_KIND[level]).mean() * 100)
        rows.append({"level": level, "k": "true", "images": len(part), "novel": novel, "groups": len(set(groups)),
                     "classes": len(set(truths)), "seconds": float("nan"), **clustering_scores(truths, groups)})
    return rows


def _subset(view, mask: np.ndarray):  # type: ignore[no-untyped-def]
    """The run's view of some images only (the flagged ones of one set)."""
    from dataclasses import replace

    keep = np.flatnonzero(mask)
    return replace(view, names=[view.names[i] for i in keep], paths=[view.paths[i] for i in keep],
                   super_pred=view.super_pred[keep], sub_pred=view.sub_pred[keep], super_conf=view.super_conf[keep],
                   sub_conf=view.sub_conf[keep], features=view.features[keep], super_prob=view.super_prob[keep],
                   sub_prob=view.sub_prob[keep])


def table(results: pd.DataFrame) -> str:
    """Markdown: one row per (protocol, level, k choice), mean ± std over seeds."""
    def ms(values: pd.Series, digits: int = 1) -> str:
        return f"{values.mean():.{digits}f} ± {values.std(ddof=0):.{digits}f}"

    lines = ["| protocol | level | k | seeds | flagged images | truly novel % | groups | true classes | ACC % | NMI % "
             "| ARI % |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (variant, level, k), g in results.groupby(["variant", "level", "k"], sort=False):
        lines.append(f"| {variant} | {LEVELS[level]} | {k} | {len(g)} | {ms(g['images'], 0)} | {ms(g['novel'])} | "
                     f"{ms(g['groups'], 1)} | "
                     f"{ms(g['classes'], 1)} | {ms(g['acc'])} | {ms(g['nmi'])} | {ms(g['ari'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/bench-out/discover"))
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="folder with make_protocol.py")
    ap.add_argument("--variants", nargs="+", default=["loso-reptile", "loso-bird", "tin"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--cache-dir", default="/work/bench-out/cache")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) and a .json beside it")
    ap.add_argument("--available", action="store_true", help="score only the splits whose run is trained (train none)")
    ap.add_argument("--from-suite", type=Path, default=None,
                    help="the novelty suite's --work folder: reuse its runs (copied, recalibrated with the defaults)")
    a = ap.parse_args()
    rows: list[dict[str, object]] = []
    for variant in a.variants:
        for seed in a.seeds:
            if a.available and not is_calibrated(a.work / f"{variant}-s{seed}" / "run"):
                print(f"skipped {variant} seed {seed}: no trained run", flush=True)
                continue
            if a.from_suite is not None:
                from_suite(a.work, a.from_suite, variant, seed)
            folder = ensure_split(a.work, a.bench, variant, seed, a.cache_dir)
            for r in score_split(folder, seed):
                rows.append({"variant": variant, "seed": seed, **r})
                print(json.dumps(rows[-1]), flush=True)
    results = pd.DataFrame(rows)
    text = table(results)
    print(text)
    if a.out is not None:
        write_text(a.out.with_suffix(".json"), results.to_json(orient="records", indent=1) + "\n")
        write_text(a.out, text + "\n")


if __name__ == "__main__":
    main()
