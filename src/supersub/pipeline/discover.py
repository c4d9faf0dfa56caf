"""``supersub discover``: what the images a run flags novel are, as candidate new classes to name.

The run predicts the images; those flagged novel are grouped on the features its heads read
(:mod:`supersub.grouping`): novel-superclass images among themselves, novel-subclass images within their
predicted superclass (a new dog breed is a dog). ``OUT`` receives

- ``clusters.csv``: image, level, superclass, cluster, distance to the cluster's centre, rank (1 = most
  central), the novelty confidences and the image's path;
- ``labels.csv``: a labelling template in the named training layout (``image,superclass,subclass``, see
  :func:`supersub.data.formats.read_named_labels`) with one editable name per cluster; ``train --extend``
  reads it;
- ``clusters.html``: a contact sheet of each cluster's most central images (the report page's blocks);
- ``discover.json``: the counts and how each set's number of groups was chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.cache_limit import cache_policy
from ..data.formats import read_images
from ..errors import SupersubError
from ..grouping import Grouping, group_features
from ..inference import Outputs
from ..io import write_atomic, write_json_atomic, write_text_atomic
from ..novelty.open_set import OpenSetDecision, OpenSetHead
from ..report_page import Grid, Page, Section, Table, Tile, render_page, thumbnail_uri
from ..run_dir import RunDir
from .predict import Collected, kept_dataset, one_device, stream_run
from ..training.stream import Scores

log = logging.getLogger("supersub")

CLUSTERS_CSV, LABELS_CSV, SHEET_HTML, SUMMARY_JSON = "clusters.csv", "labels.csv", "clusters.html", "discover.json"
OUTPUTS = (CLUSTERS_CSV, LABELS_CSV, SHEET_HTML, SUMMARY_JSON)
SUPER_LEVEL, SUB_LEVEL = "superclass", "subclass"
NEW_SUPERCLASS = "new_superclass"  # the template's name of every novel-superclass cluster's superclass


@dataclass
class Discovery:
    """What ``discover`` found: one row per flagged image (``clusters``), the template and the files written."""

    out: Path
    clusters: pd.DataFrame
    labels: pd.DataFrame
    images: int
    sets: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # the folder or CSV the images came from

    @property
    def files(self) -> list[Path]:
        return [self.out / name for name in OUTPUTS]


@dataclass
class Flagged:
    """The run's view of some images: names, paths, decisions and the features the groups are made of."""

    names: list[str]
    paths: list[str]
    super_pred: np.ndarray
    sub_pred: np.ndarray
    super_conf: np.ndarray
    sub_conf: np.ndarray
    features: np.ndarray
    super_names: list[str]
    sub_names: list[str]
    super_prob: np.ndarray  # the calibrated probability of the decided class (novel included) at each level
    sub_prob: np.ndarray

    @property
    def novel_super(self) -> np.ndarray:
        return self.super_pred == len(self.super_names)

    @property
    def novel_sub(self) -> np.ndarray:
        return ~self.novel_super & (self.sub_pred == len(self.sub_names))


def check_outputs_free(out: Path, overwrite: bool) -> None:
    """Never replace a labels.csv a person may have edited, or any other output, without ``--overwrite``."""
    if out.exists() and not out.is_dir():
        raise SupersubError(f"{out}: is a file, expected a folder for the discovered clusters")
    taken = [name for name in OUTPUTS if (out / name).exists()]
    if taken and not overwrite:
        raise SupersubError(f"{out}: already holds {', '.join(taken)} (pass --overwrite to replace them; "
                            f"{LABELS_CSV} may hold your edits)")


def run_view(run_dir: str | Path, images: str | Path, *, skip_bad: bool = False, device: str | None = None,
             cache: bool = False) -> Flagged:
    """Predict ``images`` with a finished run and keep the features: what discover and review start from."""
    run = RunDir.open(run_dir)
    run.require_finished()
    model, cfg, _ = run.load_model()
    taxonomy = run.load_taxonomy()
    ds = read_images(Path(images))

    def features(head: OpenSetHead, outputs: Outputs, d: OpenSetDecision) -> Scores:
        """The features the groups are made of and the calibrated probability of each decided class."""
        return {"features": outputs.features, "super_prob": d.super_probs.gather(1, d.super_pred.view(-1, 1)).view(-1),
                "sub_prob": d.sub_probs.gather(1, d.sub_pred.view(-1, 1)).view(-1)}

    collected = Collected()
    with cache_policy(write=cache, max_gb=cfg.data.cache_max_gb):
        streamed = stream_run(run, model, cfg, ds.records, collected, one_device(cfg, device), skip_bad=skip_bad,
                              progress=False, extra=features)
    kept = kept_dataset(ds, streamed)
    s = collected.scores()
    return Flagged(kept.names, [str(r.path) for r in kept.records], s["super_pred"].numpy(), s["sub_pred"].numpy(),
                   s["super_conf"].numpy(), s["sub_conf"].numpy(), s["features"].numpy(), list(taxonomy.super_names),
                   list(taxonomy.sub_names), s["super_prob"].numpy(), s["sub_prob"].numpy())


def discover_images(run_dir: str | Path, images: str | Path, out: str | Path, *, groups: int | None = None,
                    max_groups: int = 40, overwrite: bool = False, skip_bad: bool = False, device: str | None = None,
                    cache: bool = False, sheet_images: int = 12, seed: int = 0) -> Discovery:
    """:func:`supersub.api.discover`."""
    out = Path(out)
    check_outputs_free(out, overwrite)
    view = run_view(run_dir, images, skip_bad=skip_bad, device=device, cache=cache)
    discovery = group_flagged(view, out, groups=groups, max_groups=max_groups, seed=seed)
    discovery.source = str(Path(images).resolve())
    write_discovery(discovery, run_dir, sheet_images)
    return discovery


def group_flagged(view: Flagged, out: Path, *, groups: int | None = None, max_groups: int = 40,
                  seed: int = 0) -> Discovery:
    """Group the novel-superclass images, then each superclass's novel-subclass images; cluster ids run on."""
    sets: list[tuple[str, str, np.ndarray]] = [(SUPER_LEVEL, "novel", np.flatnonzero(view.novel_super))]
    for k, name in enumerate(view.super_names):
        sets.append((SUB_LEVEL, name, np.flatnonzero(view.novel_sub & (view.super_pred == k))))
    rows: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    next_id = 1
    for level, superclass, index in sets:
        if not len(index):
            continue
        g = group_features(view.features[index], None if groups is None else min(groups, len(index)),
                           max_groups=max_groups, seed=seed)
        summaries.append(_set_summary(level, superclass, len(index), g))
        ranks = _ranks(g)
        for row, i in enumerate(index):
            cluster = next_id + int(g.labels[row])
            rows.append({"image": view.names[i], "level": level, "superclass": superclass, "cluster": cluster,
                         "distance": round(float(g.distances[row]), 6), "rank": int(ranks[row]),
                         "super_conf": float(view.super_conf[i]), "sub_conf": float(view.sub_conf[i]),
                         "path": view.paths[i]})
            sup, sub = template_names(level, superclass, cluster)
            labels.append({"image": view.paths[i], "superclass": sup, "subclass": sub, "cluster": cluster})
        next_id += g.k
    columns = ["image", "level", "superclass", "cluster", "distance", "rank", "super_conf", "sub_conf", "path"]
    clusters = pd.DataFrame(rows, columns=columns).sort_values(["cluster", "rank"], kind="stable")
    template = pd.DataFrame(labels, columns=["image", "superclass", "subclass", "cluster"])
    template = template.set_index("image").loc[clusters["path"]].reset_index()  # same order as clusters.csv
    log.info("discover: %d of %d images flagged novel, %d cluster(s)", len(clusters), len(view.names), next_id - 1)
    return Discovery(out, clusters.reset_index(drop=True), template, len(view.names), summaries)


def template_names(level: str, superclass: str, cluster: int) -> tuple[str, str]:
    """The template's (superclass, subclass) of a cluster: a new subclass of the predicted superclass, or a
    new superclass with a first subclass; the user renames them."""
    if level == SUPER_LEVEL:
        return NEW_SUPERCLASS, f"new_{cluster}"
    return superclass, f"new_{superclass}_{cluster}"


def _ranks(g: Grouping) -> np.ndarray:
    """1 for the most central image of each group, 2 for the next, ..."""
    ranks = np.zeros(len(g.labels), dtype=int)
    for c in range(g.k):
        members = np.flatnonzero(g.labels == c)
        ranks[members[np.argsort(g.distances[members], kind="stable")]] = np.arange(1, len(members) + 1)
    return ranks


def _set_summary(level: str, superclass: str, n: int, g: Grouping) -> dict[str, Any]:
    return {"level": level, "superclass": superclass, "images": n, "groups": g.k, "estimated": g.estimated,
            "silhouettes": {str(k): round(v, 4) for k, v in g.silhouettes.items()}}


def write_discovery(d: Discovery, run_dir: str | Path, sheet_images: int = 12) -> None:
    """clusters.csv, labels.csv, the contact sheet and discover.json, each written atomically."""
    d.out.mkdir(parents=True, exist_ok=True)
    write_atomic(d.out / CLUSTERS_CSV, lambda fh: d.clusters.to_csv(fh, index=False, float_format="%.6g"))
    write_atomic(d.out / LABELS_CSV, lambda fh: d.labels.to_csv(fh, index=False))
    write_text_atomic(d.out / SHEET_HTML, render_page(contact_sheet(d, run_dir, sheet_images)))
    write_json_atomic(d.out / SUMMARY_JSON, {"run": str(run_dir), "source": d.source, "images": d.images,
                                             "flagged": len(d.clusters), "clusters": int(d.clusters["cluster"].nunique()),
                                             "sets": d.sets})


def contact_sheet(d: Discovery, run_dir: str | Path, per_cluster: int = 12) -> Page:
    """The page: a table of the clusters, then each cluster's most central images."""
    names = d.labels.drop_duplicates("cluster").set_index("cluster")
    sizes = d.clusters.groupby("cluster").size()
    table = Table(["cluster", "level", "superclass", "images", "template name"],
                  [[str(c), str(g["level"].iloc[0]), str(g["superclass"].iloc[0]), str(sizes[c]),
                    f"{names.loc[c, 'superclass']} / {names.loc[c, 'subclass']}"]
                   for c, g in d.clusters.groupby("cluster")],
                  caption=f"rename the clusters in {LABELS_CSV}, or with 'supersub review {run_dir} --discovered {d.out}'")
    grids = []
    for c, g in d.clusters.groupby("cluster"):
        central = g.sort_values("rank").head(per_cluster)
        tiles = [Tile(thumbnail_uri(Path(r.path), 96), r.image, f"{r.distance:.3f}", f"#{r.rank}", True,
                      truth_label="distance", predicted_label="rank") for r in central.itertuples()]
        level = g["level"].iloc[0]
        where = "a novel superclass" if level == SUPER_LEVEL else f"a novel subclass of {g['superclass'].iloc[0]}"
        grids.append(Grid(f"cluster {c}: {len(g)} images, {where}",
                          f"the {len(central)} most central images (distance to the cluster's centre)", tiles))
    summary = Section("clusters", "Clusters", [f"{len(d.clusters)} of {d.images} images flagged novel by the run, "
                                               f"in {len(grids)} clusters."], [table])
    sheet = Section("sheet", "Contact sheet", [], grids=grids)
    return Page(f"supersub discover: {Path(run_dir).name}", str(d.out), [], [summary, sheet])
