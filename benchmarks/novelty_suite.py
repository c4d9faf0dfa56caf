#!/usr/bin/env python3
"""The novelty yardstick: five open-set protocols x three seeds, every candidate score re-scored without retraining.

    python benchmarks/novelty_suite.py run [--quick] [--exposure none oe] [--candidates NAME ...] [--work DIR]
    python benchmarks/novelty_suite.py table [--work DIR] [--out docs/results/novelty-suite.md]

``run`` builds each split with ../shared/bench/make_protocol.py (read-only; the splits stay in WORK/data),
trains the recipe ONCE per split and exposure setting through ``supersub.api.train`` (frozen features in one
shared, per-image content-addressed cache, so the 15 splits of the same photos embed each image once), then
re-scores every candidate through the run's own calibration path (``supersub.api.calibrate`` on the saved
evidence: calibration folds, LOSO models, transfer to the final model) and applies it to the split's test
images with the functions ``supersub evaluate`` uses. Every (split, exposure, candidate) row is saved in
WORK/results/<exposure>/<split>.json as soon as it is measured, so an interrupted run resumes where it stopped.
``--quick`` = seed 0 only. With ``--exposure oe`` the recipe trains with the protocol's OWN novel_images/
(never ``supersub data tin-outliers``: in ``tin`` those share a pool with the novel test classes).

``table`` prints per candidate: super / sub AUROC and the competition accuracies (overall / seen / unseen, both
levels) per variant as mean +- std over seeds, and the suite mean; the default candidates side by side.

Committed tables: docs/results/novelty-suite-tables.md from ``python benchmarks/novelty_suite.py run`` then
``python benchmarks/novelty_suite.py table --out docs/results/novelty-suite-tables.md`` (the other runs and
novelty-suite-probe-tables.md: docs/results/novelty-suite.md).
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import (DEFAULT_BENCH, apply_calibrated, decoded_test_set, ensure_protocol, is_calibrated, model_outputs,
                     open_run, read_json, write_json, write_text)

VARIANTS = ("loso-reptile", "loso-bird", "loso-dog", "near-amphibian", "tin")
# the built-in dataset (supersub data synth): a domain far from ImageNet, reported beside the suite, not in its mean
FAR = "synth"
SEEDS = (0, 1, 2)
# recipe -> training options (the backbone the features come from); candidates re-score each recipe's runs
RECIPES: dict[str, dict[str, Any]] = {
    "lite0": {},
    "lite2": {"model.backbone": "efficientnet_lite2"},
    "cnn": {"model.backbone": "cnn"},
    # the demo's CNN (32 px, 30 epochs; supersub.pipeline.demo.DEMO_CONFIG) without its outlier images and score
    "cnn32": {"model.backbone": "cnn", "optim.epochs": 30, "data.image_size": 32, "model.width": 32},
    # the default CNN trained twice as long, or on 32 px images: which of cnn32's two changes ranks the new family
    "cnn-e30": {"model.backbone": "cnn", "optim.epochs": 30},
    "cnn-px32": {"model.backbone": "cnn", "data.image_size": 32},
    # the same two on photos without LOSO models (a scratch CNN on 6,000 photos costs ~1 min an epoch here)
    "cnn-rec": {"model.backbone": "cnn", "novelty.super_protocol": "recall"},
    "cnn-e30-rec": {"model.backbone": "cnn", "optim.epochs": 30, "novelty.super_protocol": "recall"},
    # 30 epochs with three calibration models (a bagged cut: one fold's few held-out subclasses set it alone)
    "cnn-e30-f3": {"model.backbone": "cnn", "optim.epochs": 30, "novelty.calibration_folds": 3,
                   "novelty.super_protocol": "recall"},
    # Lite0's last stage fine-tuned on cached trunk outputs; no LOSO models (each would be another fine-tuning run)
    "lite0-partial": {"optim.finetune": "partial", "optim.trainable_stages": 1, "novelty.super_protocol": "recall"},
    "lite0-partial2": {"optim.finetune": "partial", "optim.trainable_stages": 2, "novelty.super_protocol": "recall"},
    # the same with a cosine subclass head (the head that lifted the source run: kNN reads the feature's direction)
    "lite0-partial-cos": {"optim.finetune": "partial", "optim.trainable_stages": 1, "novelty.super_protocol": "recall",
                          "model.approach": "cosine"},
    # the frozen recipe on a Lite0 whose last stage was first trained on Tiny-ImageNet without the competition's
    # classes (a supersub run's model.pt; how it is made: docs/results/novelty-suite.md, "A source-tuned backbone")
    "lite0-tin": {"model.weights": os.environ.get("SUITE_SOURCE_WEIGHTS", "bench-out/tin-src-run/model.pt")},
    # the same source tuned for 3 epochs instead of 8 (the lighter dose ranked the near family best)
    "lite0-tin-e3": {"model.weights": os.environ.get("SUITE_SOURCE_WEIGHTS_E3", "bench-out/tin-src-e3-run/model.pt")},
    # the source run with a cosine subclass head (supersub train --approach cosine on supersub data tin-source)
    "lite0-tin-cos": {"model.weights": os.environ.get("SUITE_SOURCE_WEIGHTS_COS",
                                                      "bench-out/tin-source-cos-run/model.pt")},
    # the product path to the same: supersub pretrain --finetune partial on the same classes (benchmarks/tin_source.py)
    "lite0-src": {"model.weights": os.environ.get("SUITE_SOURCE_WEIGHTS_PRE", "bench-out/tin-lite0.pt")},
}
NOVEL_COUNT = 2000  # outlier images per run with --exposure oe (the protocol's own pool holds 18,600)

# name -> novelty options for supersub.api.calibrate; "today" is the default before issue 22. Pruned after the
# seed-0 pass (docs/results/novelty-suite.md lists what was dropped and why): msp, knn k=1 / k=50, Mahalanobis on
# the final features and at the subclass level, ViM at the subclass level, knn-class on block-1+final
CANDIDATES: dict[str, dict[str, Any]] = {
    "today": {"score": "vim+maxlogit", "super_layer": "final", "sub_layer": "final", "super_protocol": "auto"},
    "energy": {"score": "energy"},
    # today's default with outlier images: energy, tau_super against the held-back outliers alone
    "today-oe": {"score": "energy", "super_protocol": "outliers"},
    "knn-b1-outliers": {"score": "knn+maxlogit", "super_layer": "block-1", "super_protocol": "outliers"},
    "maxlogit": {"score": "maxlogit"},
    "knn-final": {"score": "knn+maxlogit"},
    "knn-b1": {"score": "knn+maxlogit", "super_layer": "block-1"},
    "knn-b12": {"score": "knn+maxlogit", "super_layer": "block-1+block-2"},
    "knn-b1f": {"score": "knn+maxlogit", "super_layer": "block-1+final"},
    "maha-b1": {"score": "mahalanobis+maxlogit", "super_layer": "block-1"},
    "maha-b12": {"score": "mahalanobis+maxlogit", "super_layer": "block-1+block-2"},
    "vim-b1": {"score": "vim+maxlogit", "super_layer": "block-1"},
    "knn-b1-recall": {"score": "knn+maxlogit", "super_layer": "block-1", "super_protocol": "recall"},
    "vim-b1-recall": {"score": "vim+maxlogit", "super_layer": "block-1", "super_protocol": "recall"},
    "vim-b1-loso": {"score": "vim+maxlogit", "super_layer": "block-1", "super_protocol": "loso"},
    "knn-b1-loso": {"score": "knn+maxlogit", "super_layer": "block-1", "super_protocol": "loso"},
    "avg-b1": {"score": "knn,maxlogit+maxlogit", "super_layer": "block-1"},
    "knn-probe-final": {"score": "knn+probe"},
    # kNN's cut moved to the final model in its own units (a frozen backbone: the fold's and the final model's
    # features are the same, only the bank differs), or set by the LOSO models
    "knn-probe-abs": {"score": "knn+probe", "transfer": "absolute"},
    "knn-probe-loso": {"score": "knn+probe", "super_protocol": "loso"},
    # kNN's cut on the final bank (novelty.super_protocol bank: auto's choice for knn since 2026-12-07; before, the
    # folds' recall cut, which knn-probe-final measured and knn-probe-folds keeps)
    "knn-probe-bank": {"score": "knn+probe", "super_protocol": "bank", "super_recall": 0.92},
    "knn-probe-folds": {"score": "knn+probe", "super_protocol": "recall", "super_recall": 0.92},
    # the subclass level on a source-tuned backbone (the folds' cut above): the probe's feature scale, and the
    # z-average of the probe with class-conditional kNN
    "knn-probe-s5": {"score": "knn+probe", "super_protocol": "recall", "super_recall": 0.92,
                     "score_options": {"scale": 5.0}},
    "knn-probe-s20": {"score": "knn+probe", "super_protocol": "recall", "super_recall": 0.92,
                      "score_options": {"scale": 20.0}},
    "knn-probe-kc": {"score": "knn+probe,knn-class", "super_protocol": "recall", "super_recall": 0.92},
    # the z-average of ViM and kNN at the superclass level (kNN ranked near families best, ViM far domains)
    "avg-vk-final": {"score": "vim,knn+probe", "super_recall": 0.92},
    "avg-vk-b1": {"score": "vim,knn+probe", "super_layer": "block-1", "super_recall": 0.92},
    # subclass level (superclass: the knn-b1 candidate)
    "sub-avg-kc": {"score": "knn+maxlogit,knn-class", "super_layer": "block-1"},
    "sub-avg-kc-vim": {"score": "vim+maxlogit,knn-class", "super_layer": "block-1"},
    "sub-knnclass": {"score": "knn+knn-class", "super_layer": "block-1"},
    "sub-energy": {"score": "knn+energy", "super_layer": "block-1"},
    # a logistic-regression probe on unit features at the subclass level (superclass: the default vim-b1)
    "sub-probe": {"score": "vim+probe", "super_layer": "block-1"},
    "sub-avg-probe": {"score": "vim+maxlogit,probe", "super_layer": "block-1"},
    # the superclass operating point: the recall target over seen images (validation + held-out subclasses)
    "probe-r90": {"score": "vim+probe", "super_layer": "block-1", "super_recall": 0.90},
    "probe-r85": {"score": "vim+probe", "super_layer": "block-1", "super_recall": 0.85},
    "probe-r93": {"score": "vim+probe", "super_layer": "block-1", "super_recall": 0.93},
    "probe-r92": {"score": "vim+probe", "super_layer": "block-1", "super_recall": 0.92},
    "probe-loso": {"score": "vim+probe", "super_layer": "block-1", "super_protocol": "loso"},
    # other superclass scores at the 92% recall cut (the built-in shapes' scratch CNN: ViM on its final features
    # ranks the new family worst)
    "maxlogit-r92": {"score": "maxlogit+probe", "super_recall": 0.92},
    "energy-r92": {"score": "energy+probe", "super_recall": 0.92},
    "energy-r90": {"score": "energy+probe", "super_recall": 0.90},
    "energy-loso": {"score": "energy+probe", "super_protocol": "loso"},
    # tau_super on the final model's own validation images (novelty.super_protocol val), no calibration cut moved
    "energy-val92": {"score": "energy+probe", "super_protocol": "val", "super_recall": 0.92},
    "energy-val90": {"score": "energy+probe", "super_protocol": "val", "super_recall": 0.90},
    "probe-val92": {"score": "vim+probe", "super_layer": "block-1", "super_protocol": "val", "super_recall": 0.92},
    "maxlogit-r90": {"score": "maxlogit+probe", "super_recall": 0.90},
    "knn-r92": {"score": "knn+probe", "super_layer": "auto", "super_recall": 0.92},
    "maha-r92": {"score": "mahalanobis+probe", "super_layer": "auto", "super_recall": 0.92},
    # the same with the layer the config resolves (block-1 where the backbone exposes it; final for the scratch CNN)
    "vim-auto": {"score": "vim+maxlogit", "super_layer": "auto"},
    "probe-auto": {"score": "vim+probe", "super_layer": "auto"},
    "probe-auto-r93": {"score": "vim+probe", "super_layer": "auto", "super_recall": 0.93},
    "probe-auto-r92": {"score": "vim+probe", "super_layer": "auto", "super_recall": 0.92},
    "probe-auto-r90": {"score": "vim+probe", "super_layer": "auto", "super_recall": 0.90},
    "probe-auto-r85": {"score": "vim+probe", "super_layer": "auto", "super_recall": 0.85},
    "probe-auto-loso": {"score": "vim+probe", "super_layer": "auto", "super_protocol": "loso"},
    "avg-probe-auto": {"score": "vim+maxlogit,probe", "super_layer": "auto"},
    # each level's score chosen on the run's calibration evidence (supersub.novelty.score_choice)
    "score-auto": {"score": "auto", "super_layer": "auto"},
}
RESET = {"super_layer": "final", "sub_layer": "final", "super_protocol": "auto", "score_options": {},
         "objective": "balanced", "transfer": "quantile", "super_recall": 0.95, "sub_recall": 0.95}
METRICS = ("super_auroc", "sub_auroc", "super_acc_overall", "super_acc_seen", "super_acc_unseen",
           "sub_acc_overall", "sub_acc_seen", "sub_acc_unseen")


def make_split(work: Path, variant: str, seed: int) -> Path:
    data = work / "data" / f"{variant}-s{seed}"
    if variant == FAR:
        if not (data / "test_truth.csv").is_file():
            import supersub.api as ss

            ss.synth(str(data), seed=seed)
        return data
    return ensure_protocol(data, variant, seed, DEFAULT_BENCH, done="test_sources.csv")


def train_run(work: Path, data: Path, seed: int, exposure: str, recipe: str) -> tuple[Path, float]:
    """The recipe on one split (LOSO models too, so the loso candidates can be scored); reused when finished."""
    import supersub.api as ss

    run = work / "runs" / exposure / recipe / data.name
    if is_calibrated(run) and (run / "model.pt").is_file():
        return run, 0.0
    overrides: dict[str, Any] = {"seed": seed, "data.cache_dir": str(work / "cache"), "trainer.progress": False,
                                 "novelty.super_protocol": "loso", **RECIPES[recipe]}
    if exposure == "oe":
        overrides |= {"data.novel_data": str(data / "novel_data.csv"), "data.novel_count": NOVEL_COUNT}
    t0 = time.perf_counter()
    resume = (run / "checkpoints").is_dir()
    ss.train(str(data), str(run), overwrite=not resume and run.exists(), resume=resume, **overrides)
    return run, time.perf_counter() - t0


def loso_config(run: Path) -> Any:
    """The run's config with the LOSO protocol, so the evidence holds the LOSO models whatever the last candidate
    wrote into the run (``calibrate`` saves its options)."""
    cfg = open_run(run).load_config()
    return cfg.model_copy(update={"novelty": cfg.novelty.model_copy(update={"super_protocol": "loso"})})


def test_outputs(run: Path, data: Path, work: Path) -> tuple[Any, Any, Any]:
    """The final model's outputs on the split's test images, from the feature cache, and the labelled records."""
    rd = open_run(run)
    model, cfg, _ = rd.load_model()
    taxonomy = rd.load_taxonomy()
    images, truth = decoded_test_set(data, taxonomy, cfg.data.image_size, work / "cache")
    return model_outputs(model, images, cfg), taxonomy, truth


def measure(run: Path, evidence: Any, outputs: Any, taxonomy: Any, truth: Any, options: dict[str, Any]) -> dict[str, Any]:
    """One candidate through the run's calibration path, then ``supersub evaluate``'s metrics on the test images."""
    import supersub.api as ss
    from supersub.pipeline.evaluate import score_prediction
    from supersub.pipeline.predict import Prediction

    summary = ss.calibrate(run, evidence=evidence, **{**RESET, **options})
    d, thresholds = apply_calibrated(run, outputs)
    names = [r.name for r in truth.records]
    pred = Prediction(names, d.super_pred, d.sub_pred, d.super_probs, d.sub_probs, d.super_conf, d.sub_conf)
    m, _ = score_prediction(pred, truth, taxonomy)
    return {**{k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None},
            "tau_super": thresholds.tau_super, "tau_sub": thresholds.tau_sub,
            "super_protocol": summary.get("super_protocol")}


def run_suite(a: argparse.Namespace) -> None:
    seeds = tuple(a.seeds) if a.seeds else (0,) if a.quick else SEEDS
    names = a.candidates or list(CANDIDATES)
    for exposure, recipe, seed, variant in itertools.product(a.exposure, a.recipes, seeds, a.variants):
        score_split(a, exposure, recipe, variant, seed, names)


def score_split(a: argparse.Namespace, exposure: str, recipe: str, variant: str, seed: int, names: list[str]) -> None:
    """Train (or reuse) one run and measure every candidate not yet measured on it."""
    import supersub.api as ss

    data = make_split(a.work, variant, seed)
    out = a.work / "results" / exposure / recipe / f"{data.name}.json"
    rows = read_json(out, default={})
    todo = [n for n in names if n not in rows or "error" in rows[n]]
    if not todo:
        return
    run, seconds = train_run(a.work, data, seed, exposure, recipe)
    t0 = time.perf_counter()
    trained_loso = RECIPES[recipe].get("novelty.super_protocol", "loso") == "loso"
    evidence = ss.calibration_evidence(run, loso_config(run) if trained_loso else None)
    outputs, taxonomy, truth = test_outputs(run, data, a.work)
    print(f"[{exposure} {recipe} {data.name}] trained in {seconds:.0f}s, evidence + test outputs "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    for name in todo:
        t1 = time.perf_counter()
        try:
            rows[name] = measure(run, evidence, outputs, taxonomy, truth, CANDIDATES[name])
        except Exception as e:  # noqa: BLE001 - a candidate that cannot fit is a result, not a crash
            rows[name] = {"error": f"{type(e).__name__}: {e}"}
        r = rows[name]
        print(f"  {name:18} super AUROC {r.get('super_auroc', float('nan')):.4f} "
              f"{r.get('super_acc_seen')}/{r.get('super_acc_unseen')}  sub AUROC "
              f"{r.get('sub_auroc', float('nan')):.4f} {r.get('sub_acc_seen')}/{r.get('sub_acc_unseen')}"
              f"{'  ' + r['error'] if 'error' in r else ''} ({time.perf_counter() - t1:.0f}s)", flush=True)
        write_json(out, rows)


def load_results(work: Path) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """(exposure, recipe:candidate, variant, seed) -> metrics."""
    found = {}
    for path in sorted((work / "results").glob("*/*/*.json")):
        variant, seed = path.stem.rsplit("-s", 1)
        exposure, recipe = path.parent.parent.name, path.parent.name
        for name, row in read_json(path).items():
            if "error" not in row:
                found[(exposure, f"{recipe}:{name}", variant, int(seed))] = row
    return found


def fmt(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "-"
    v = np.array(values, dtype=float) * scale
    return f"{v.mean():.{digits}f}" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def seed_values(found: dict, exposure: str, name: str, variant: str, metric: str) -> list[float]:
    """One candidate's ``metric`` on one variant, per measured seed."""
    keys = [(exposure, name, variant, s) for s in SEEDS]
    return [found[k][metric] for k in keys if k in found and found[k].get(metric) is not None]


def variant_mean(found: dict, exposure: str, name: str, variant: str, metric: str) -> float | None:
    vals = seed_values(found, exposure, name, variant, metric)
    return float(np.mean(vals)) if vals else None


def summary(found: dict) -> list[str]:
    """One row per exposure and candidate: the suite means (mean over variants of the per-variant means)."""
    lines = ["## Summary: suite means", "",
             "| exposure | candidate | super AUROC | sub AUROC | super overall | super seen | super unseen | sub overall "
             "| sub seen | sub unseen | synth super seen / unseen |", "|---|---|" + "---:|" * 9]
    for exposure in sorted({k[0] for k in found}):
        for name in [f"{r}:{n}" for r in RECIPES for n in CANDIDATES]:
            cells = []
            for metric in METRICS:
                means = [variant_mean(found, exposure, name, v, metric) for v in VARIANTS]
                scale = 100.0 if "auroc" in metric else 1.0
                cells.append(f"{np.mean(means) * scale:.1f}" if None not in means else "-")
            far = [variant_mean(found, exposure, name, FAR, m) for m in ("super_acc_seen", "super_acc_unseen")]
            far_cell = "-" if None in far else f"{far[0]:.1f} / {far[1]:.1f}"
            if all(c == "-" for c in cells) and far_cell == "-":
                continue
            lines.append(f"| {exposure} | {name} | " + " | ".join(cells) + f" | {far_cell} |")
    return lines + [""]


def metric_table(found: dict, exposure: str, names: list[str], metric: str) -> list[str]:
    """One metric: a row per candidate, mean +- std over seeds per variant, the suite mean, the far domain."""
    scale = 100.0 if "auroc" in metric else 1.0
    lines = [f"## {exposure}: {metric}", "", "| candidate | " + " | ".join(VARIANTS) + f" | suite | {FAR} |",
             "|---|" + "---:|" * (len(VARIANTS) + 2)]
    for name in names:
        values = {v: seed_values(found, exposure, name, v, metric) for v in (*VARIANTS, FAR)}
        cells = {v: fmt(vals, scale) + (f" (n={len(vals)})" if len(vals) not in (0, 3) else "")
                 for v, vals in values.items()}
        means = [float(np.mean(values[v])) * scale for v in VARIANTS if values[v]]
        suite = f"{np.mean(means):.1f}" if len(means) == len(VARIANTS) else "-"
        lines.append(f"| {name} | " + " | ".join(cells[v] for v in VARIANTS) + f" | {suite} | {cells[FAR]} |")
    return lines + [""]


def table(a: argparse.Namespace) -> str:
    found = load_results(a.work)
    lines = ["# Novelty suite", "",
             "`python benchmarks/novelty_suite.py run` then `table` (commands and protocol: the script's docstring). "
             "AUROC x100; accuracies in %; mean ± std over seeds (n in the header); suite = mean over the variants "
             "of each variant's mean.", ""]
    lines += summary(found)
    for exposure in sorted({k[0] for k in found}):
        names = [f"{r}:{n}" for r in RECIPES for n in CANDIDATES
                 if any(k[0] == exposure and k[1] == f"{r}:{n}" for k in found)]
        for metric in METRICS:
            lines += metric_table(found, exposure, names, metric)
    text = "\n".join(lines)
    if a.out:
        write_text(a.out, text + "\n")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("run", "table"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/suite"))
    ap.add_argument("--quick", action="store_true", help="seed 0 only")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=(*VARIANTS, FAR),
                    help=f"{FAR}: the built-in dataset (seed 1 unless --seeds), beside the suite")
    ap.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (0 with --quick)")
    ap.add_argument("--exposure", nargs="+", default=["none"], choices=("none", "oe"))
    ap.add_argument("--candidates", nargs="+", choices=list(CANDIDATES))
    ap.add_argument("--recipes", nargs="+", default=["lite0"], choices=list(RECIPES))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.command == "run":
        run_suite(a)
    else:
        print(table(a))


if __name__ == "__main__":
    main()
