"""Benchmark: `supersub train --extend` on loso-reptile against a model trained from the start with the reptiles.

    python benchmarks/extend.py [--work /work/bench-out/discover] [--seed 0] [--out docs/results/extend.json]

Starts from WORK/loso-reptile-s<seed>/run (the default recipe trained on bird + dog; benchmarks/discover.py
makes it). The test images are split in two by a seeded draw: half A is what the user collects and looks at,
half B a fresh test split. Then, through the public API:

1. `discover` on half A;
2. a simulated user names every cluster with the majority true (superclass, subclass) of its images
   (test_sources.csv), a known class when the majority is one, and saves labels.csv;
3. `train --extend RUN --data labels.csv` (the run's config and feature cache);
4. the reference: `train` from the start on the original training data plus half A's reptile images with
   their true labels (same recipe and cache);
5. both, and the original run, predict half B; accuracy by names on its reptiles and on its seen-class images
   (the old classes), and the wall times.

Committed numbers: docs/results/discover.md (train --extend), from
``python benchmarks/extend.py --seed 0 --out /work/bench-out/discover/extend-s0.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness import write_json
from supersub import api

LEVELS = ("superclass", "subclass")


def split_halves(sources: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    in_a = rng.random(len(sources)) < 0.5
    return sources[in_a], sources[~in_a]


def write_list(work: Path, name: str, images: Path, names: pd.Series) -> Path:
    """WORK/NAME_data.csv listing some test images, beside a link NAME_images/ to the test folder (the
    competition's pairing of a CSV with its image folder, which predict and discover read)."""
    link = work / f"{name}_images"
    if not link.exists():
        link.symlink_to(images, target_is_directory=True)
    path = work / f"{name}_data.csv"
    pd.DataFrame({"image": list(names)}).to_csv(path, index=False)
    return path


def simulated_labels(clusters: pd.DataFrame, sources: pd.DataFrame) -> pd.DataFrame:
    """Each cluster named by the majority true class of its images (ties: first by name)."""
    truth = sources.set_index("image")
    c = clusters.assign(sup=truth.loc[clusters["image"], "source_superclass"].to_numpy(),
                        sub=truth.loc[clusters["image"], "source_class"].to_numpy())
    rows = []
    for cluster, g in c.groupby("cluster"):
        counts = g.groupby(["sup", "sub"]).size().sort_index()
        sup, sub = counts.idxmax()
        rows += [{"image": p, "superclass": sup, "subclass": sub, "cluster": cluster} for p in g["path"]]
    return pd.DataFrame(rows)


def accuracies(run: Path, listing: Path, truth: pd.DataFrame) -> dict[str, float]:
    """Accuracy (%) by names at each level, on half B's reptiles and on its seen-class images."""
    preds = api.predict(run, listing, names=True)
    preds["image"] = preds["image"].map(lambda p: Path(p).name)
    m = preds.merge(truth, on="image")
    out: dict[str, float] = {}
    for part, rows in (("reptile", m[m["kind"] == "novel_super"]), ("old", m[m["kind"] == "seen"])):
        out[f"{part}_super"] = round(100 * float((rows["superclass_name"] == rows["source_superclass"]).mean()), 2)
        out[f"{part}_sub"] = round(100 * float((rows["subclass_name"] == rows["source_class"]).mean()), 2)
        out[f"{part}_n"] = len(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/bench-out/discover"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument("--labels-only", action="store_true", help="stop after writing the simulated labels")
    a = ap.parse_args()
    folder = a.work / f"loso-reptile-s{a.seed}"
    data, run, work = folder / "data", folder / "run", folder / "extend"
    work.mkdir(exist_ok=True)
    images = (data / "test_images").resolve()
    sources = pd.read_csv(data / "test_sources.csv").merge(pd.read_csv(data / "test_truth.csv")[["image", "kind"]],
                                                           on="image")
    half_a, half_b = split_halves(sources, a.seed)
    list_a = write_list(work, "half_a", images, half_a["image"])
    list_b = write_list(work, "half_b", images, half_b["image"])
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    found = api.discover(run, list_a, work / "discovered", overwrite=True, cache=True, seed=a.seed)
    times["discover"] = round(time.perf_counter() - t0, 1)
    labels = simulated_labels(found.clusters, half_a)
    labels.to_csv(work / "labels.csv", index=False)
    print(f"{len(labels)} images labelled in {labels['cluster'].nunique()} clusters, "
          f"{labels.drop_duplicates('subclass').shape[0]} distinct names", flush=True)
    if a.labels_only:
        return

    t0 = time.perf_counter()
    summary = api.train(work / "labels.csv", work / "extended", extend=run, overwrite=True)
    times["train --extend"] = round(time.perf_counter() - t0, 1)

    # the reference: the original training data plus half A's reptiles with their true labels, from the start
    train = pd.read_csv(data / "train_data.csv")
    supers = pd.read_csv(data / "superclass_mapping.csv").set_index("index")["class"]
    subs = pd.read_csv(data / "subclass_mapping.csv").set_index("index")["class"]
    reptiles = half_a[half_a["kind"] == "novel_super"]
    full = pd.concat([
        pd.DataFrame({"image": [str((data / "train_images" / n).resolve()) for n in train["image"]],
                      "superclass": supers.loc[train["superclass_index"]].to_numpy(),
                      "subclass": subs.loc[train["subclass_index"]].to_numpy()}),
        pd.DataFrame({"image": [str(images / n) for n in reptiles["image"]],
                      "superclass": reptiles["source_superclass"].to_numpy(),
                      "subclass": reptiles["source_class"].to_numpy()})])
    full.to_csv(work / "full_data.csv", index=False)
    cfg = api.RunDir.open(run).load_config()
    t0 = time.perf_counter()
    api.train(work / "full_data.csv", work / "retrained", cfg, overwrite=True)
    times["train (from the start)"] = round(time.perf_counter() - t0, 1)

    results = {"seed": a.seed, "half_a": len(half_a), "half_b": len(half_b), "clusters": int(found.clusters["cluster"].nunique()),
               "labelled": len(labels), "new_subclasses": len(summary["new_subclasses"]), "seconds": times,
               "true_reptile_subclasses": int(reptiles["source_class"].nunique())}
    for name, path in (("original", run), ("extended", work / "extended"), ("retrained", work / "retrained")):
        results[name] = accuracies(path, list_b, half_b)
        print(name, results[name], flush=True)
    print(json.dumps(results, indent=1))
    if a.out is not None:
        write_json(a.out, results)


if __name__ == "__main__":
    main()
