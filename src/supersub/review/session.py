"""What the review page shows and saves, without the web server: a run's predictions on some images, the
clusters ``discover`` found, and the labels file the edits go to.

The labels file is the one ``discover`` wrote (``DIR/labels.csv``: ``image,superclass,subclass,cluster``, the
named training layout ``train --extend`` reads). A save replaces it atomically with the rows the page sends,
after checking every row (an unknown image, an empty name, a new class named like a known one, one subclass
under two superclasses) and that nobody saved since the page loaded it (the version is a hash of the file):
a refused save writes nothing and the page keeps its edits.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import SupersubError
from ..io import write_atomic
from ..io import read_mapping
from ..pipeline.discover import CLUSTERS_CSV, LABELS_CSV, SUMMARY_JSON, Flagged, run_view
from ..run_dir import RunDir

LABEL_COLUMNS = ["image", "superclass", "subclass", "cluster"]
DECISIONS = ("seen", "novel_super", "novel_sub")


class StaleVersion(SupersubError):
    """The labels file changed since the page read it (another tab or person saved)."""


@dataclass
class Item:
    """One predicted image as the page lists it."""

    id: int
    image: str
    path: str
    decision: str
    superclass: str
    subclass: str
    super_prob: float
    sub_prob: float
    super_conf: float
    sub_conf: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ReviewSession:
    """The state behind one ``supersub review``: read-only predictions and clusters, one editable labels file."""

    def __init__(self, run_dir: Path, view: Flagged, clusters: pd.DataFrame | None, labels_path: Path) -> None:
        self.run_dir = Path(run_dir)
        self.labels_path = Path(labels_path)
        self.super_names = list(view.super_names)
        self.sub_names = list(view.sub_names)
        self.sub_super = self._known_pairs()
        self.items = _items(view)
        self.by_path = {item.path: item for item in self.items}
        self.clusters = clusters
        self._lock = threading.Lock()

    # ---- loading --------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path, images: str | Path | None = None, discovered: str | Path | None = None,
             labels: str | Path | None = None, device: str | None = None) -> ReviewSession:
        """The run's view of ``images`` (default: the folder ``discover`` looked at) and the clusters in
        ``discovered``; edits go to ``labels`` (default ``DISCOVERED/labels.csv``)."""
        clusters = None
        if discovered is not None:
            discovered = Path(discovered)
            if not (discovered / CLUSTERS_CSV).is_file():
                raise SupersubError(f"{discovered}: no {CLUSTERS_CSV} (run 'supersub discover' first)")
            clusters = pd.read_csv(discovered / CLUSTERS_CSV, dtype={"image": str, "path": str})
            if images is None:
                images = _discovered_source(discovered)
        if images is None:
            raise SupersubError("review: give the images to look at (--images) or a discover folder (--discovered)")
        if labels is None:
            if discovered is None:
                raise SupersubError("review: without --discovered, say where the labels go (--labels FILE.csv)")
            labels = Path(discovered) / LABELS_CSV
        view = run_view(run_dir, images, skip_bad=True, device=device)
        session = cls(Path(run_dir), view, clusters, Path(labels))
        session.read_labels()  # a broken labels file is an error now, not at the first save
        return session

    def _known_pairs(self) -> dict[str, str]:
        """Known subclass name -> its superclass's name."""
        taxonomy = RunDir.open(self.run_dir).load_taxonomy()
        return {sub: taxonomy.super_names[k] for sub, k in zip(taxonomy.sub_names, taxonomy.sub_to_super)}

    def read_labels(self) -> pd.DataFrame:
        """The labels file as it is now (empty when it does not exist yet)."""
        if not self.labels_path.is_file():
            return pd.DataFrame(columns=LABEL_COLUMNS)
        try:
            df = pd.read_csv(self.labels_path, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as e:
            raise SupersubError(f"{self.labels_path}: not a readable CSV ({' '.join(str(e).split())[:200]})") from None
        missing = [c for c in LABEL_COLUMNS[:3] if c not in df.columns]
        if missing:
            raise SupersubError(f"{self.labels_path}: missing column(s) {', '.join(missing)} (expected "
                                f"{','.join(LABEL_COLUMNS)})")
        if "cluster" not in df.columns:
            df["cluster"] = ""
        return df[LABEL_COLUMNS]

    def version(self) -> str:
        """A hash of the labels file's bytes ("none" before the first save): a save names the version it edits."""
        if not self.labels_path.is_file():
            return "none"
        return hashlib.sha256(self.labels_path.read_bytes()).hexdigest()[:16]

    # ---- what the page shows ------------------------------------------------------------------------------
    def predictions(self, decision: str | None = None, sort: str = "confidence", descending: bool = False
                    ) -> list[dict[str, Any]]:
        """The items, filtered by decision and sorted by the confidence of their decision (least sure first)."""
        if decision not in (None, "", "all", *DECISIONS):
            raise SupersubError(f"unknown decision filter {decision!r} (expected one of all, {', '.join(DECISIONS)})")
        items = [i for i in self.items if decision in (None, "", "all") or i.decision == decision]
        key = {"confidence": _decision_prob, "super_conf": lambda i: i.super_conf, "sub_conf": lambda i: i.sub_conf,
               "name": lambda i: i.image}.get(sort)
        if key is None:
            raise SupersubError(f"unknown sort {sort!r} (expected confidence, super_conf, sub_conf or name)")
        return [i.to_dict() for i in sorted(items, key=key, reverse=descending)]  # type: ignore[arg-type]

    def cluster_state(self) -> list[dict[str, Any]]:
        """Every cluster with its level, predicted superclass, current names and member ids (most central first)."""
        if self.clusters is None:
            return []
        labels = self.read_labels()
        names = {str(r.cluster): (r.superclass, r.subclass) for r in labels.itertuples() if str(r.cluster)}
        out = []
        for c, g in self.clusters.sort_values(["cluster", "rank"]).groupby("cluster", sort=True):
            members = [self.by_path[p].id for p in g["path"] if p in self.by_path]
            sup, sub = names.get(str(c), ("", ""))
            out.append({"cluster": int(c), "level": str(g["level"].iloc[0]), "predicted": str(g["superclass"].iloc[0]),
                        "superclass": sup, "subclass": sub, "members": members})
        return out

    def assignments(self) -> dict[str, dict[str, str]]:
        """Rows of the labels file by image path: where each labelled image is now."""
        return {r.image: {"superclass": r.superclass, "subclass": r.subclass, "cluster": str(r.cluster)}
                for r in self.read_labels().itertuples()}

    def known_classes(self) -> list[dict[str, str]]:
        return [{"superclass": sup, "subclass": sub} for sub, sup in self.sub_super.items()]

    def retrain_command(self) -> str:
        return f"supersub train --extend {self.run_dir} --data {self.labels_path} --out {self.run_dir}-extended"

    # ---- saving ---------------------------------------------------------------------------------------------
    def save(self, version: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Check ``rows`` and write them as the labels file, if it is still at ``version``."""
        frame = self.check_rows(rows)
        with self._lock:  # two saves of this server never interleave between the check and the write
            if version != self.version():
                raise StaleVersion(f"{self.labels_path} was saved by someone else since this page loaded it; nothing "
                                   "was written and your edits are still here: reload to see theirs, then edit again")
            write_atomic(self.labels_path, lambda fh: frame.to_csv(fh, index=False))
            return {"version": self.version(), "rows": len(frame), "path": str(self.labels_path),
                    "retrain": self.retrain_command()}

    def check_rows(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """The rows as a labels frame, or a SupersubError naming the first bad row and what is wrong with it."""
        if not isinstance(rows, list):
            raise SupersubError("save: expected a list of rows")
        clean: list[dict[str, str]] = []
        owner: dict[str, tuple[str, str]] = {}  # subclass -> (superclass, where first named)
        seen: set[str] = set()
        for n, row in enumerate(rows, start=1):
            image = str(row.get("image", ""))
            where = f"row {n} ({Path(image).name or 'no image'})"
            if image not in self.by_path:
                raise SupersubError(f"{where}: unknown image {image!r} (not one of the images under review)")
            if image in seen:
                raise SupersubError(f"{where}: image labelled twice")
            seen.add(image)
            sup, sub = (" ".join(str(row.get(k, "")).split()) for k in ("superclass", "subclass"))
            cluster = str(row.get("cluster", "") or "")
            label = f"cluster {cluster}" if cluster else where
            if not sup or not sub:
                raise SupersubError(f"{label}: empty {'superclass' if not sup else 'subclass'} name")
            if sup.lower() == "novel" or sub.lower() == "novel":
                raise SupersubError(f"{label}: 'novel' is reserved for the novel class")
            known_super = self.sub_super.get(sub)
            if cluster and known_super is not None:
                raise SupersubError(f"{label}: {sub!r} is already a subclass of {known_super!r}; give the new class "
                                    "another name, or mark its images as that known class")
            if not cluster and known_super != sup:
                raise SupersubError(f"{where}: {sup} / {sub} is not a known class of the run")
            first = owner.setdefault(sub, (sup, label))
            if first[0] != sup:
                raise SupersubError(f"{label}: subclass {sub!r} is also named under superclass {first[0]!r} "
                                    f"({first[1]}); a subclass belongs to one superclass")
            clean.append({"image": image, "superclass": sup, "subclass": sub, "cluster": cluster})
        return pd.DataFrame(clean, columns=LABEL_COLUMNS)


def _decision_prob(item: Item) -> float:
    """How sure the run is of what it decided: the probability of the decided class at the deciding level."""
    return item.super_prob if item.decision == "novel_super" else item.sub_prob


def _items(view: Flagged) -> list[Item]:
    supers, subs = [*view.super_names, "novel"], [*view.sub_names, "novel"]
    novel_super, novel_sub = view.novel_super, view.novel_sub
    items = []
    for i, (name, path) in enumerate(zip(view.names, view.paths)):
        decision = "novel_super" if novel_super[i] else "novel_sub" if novel_sub[i] else "seen"
        items.append(Item(i, name, path, decision, supers[int(view.super_pred[i])], subs[int(view.sub_pred[i])],
                          round(float(view.super_prob[i]), 4), round(float(view.sub_prob[i]), 4),
                          round(float(view.super_conf[i]), 4), round(float(view.sub_conf[i]), 4)))
    return items


def _discovered_source(discovered: Path) -> str:
    """The images discover looked at, as discover.json records them."""
    summary = read_mapping(discovered / SUMMARY_JSON, "JSON", "expected a JSON object")
    source = summary.get("source")
    if not source:
        raise SupersubError(f"{discovered / SUMMARY_JSON}: no 'source' folder; pass --images")
    return str(source)
