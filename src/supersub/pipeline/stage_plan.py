"""Which models a run trains and on which rows of its image pool; the split file that records it.

A run trains up to three kinds of model on one pool of decoded images (labelled images first, then
outlier-exposure images labelled :data:`~supersub.losses.OUTLIER`, then novel-subclass images labelled
with their superclass and :data:`~supersub.losses.NOVEL_SUB`):

* ``final``: every seen class; the model that predicts.
* ``calibration`` (seed 001): a share of every superclass's subclasses held out as pseudo-novel. tau_sub
  separates its validation images from the held-out subclasses; tau_super separates validation plus
  held-out images (a held-out subclass is still a *seen superclass*) from held-back outlier images.
  With ``novelty.calibration_folds`` K > 1, folds ``calibration-1`` .. ``calibration-{K-1}`` hold out other
  subclasses the same way, and each threshold is the mean of the K folds' (one draw of pseudo-novel
  subclasses is a noisy stand-in for the novel subclasses a test brings).
* ``loso-<k>`` (``novelty.super_protocol: loso``, or ``novelty.score: auto`` with >= 3 superclasses; optional
  because it trains one more model per superclass): the calibration split without superclass k, whose images
  then stand in for a novel superclass; the pooled result sets tau_super (the loso protocol) or chooses the
  superclass score (auto).

How thresholds are chosen from these models is :mod:`supersub.pipeline.calibrate`. Every index list is saved in ``calibration/split.json`` so ``supersub calibrate`` can re-score a trained
run with another score or objective without retraining.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..config import NoveltyConfig, TrainConfig
from ..data.splits import holdout_folds, stratified_split
from ..errors import SupersubError
from ..score_catalog import AUTO, level_scores
from ..io import write_json_atomic
from ..losses import NOVEL_SUB, OUTLIER
from ..taxonomy import Taxonomy

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
EXTRA_CLASS = "__novel__"  # name of the explicit novel class of ``novelty.oe: class`` at both levels
UNUSED = -100  # label of a labelled image that a stage does not train on (never reaches a loss)


@dataclass
class Pool:
    """Decoded images of a run and their labels; ``n_labelled`` labelled images come first."""

    images: torch.Tensor
    y_super: torch.Tensor
    y_sub: torch.Tensor
    n_labelled: int

    @property
    def outliers(self) -> list[int]:
        return torch.nonzero(self.y_super == OUTLIER).flatten().tolist()

    @property
    def novel_sub(self) -> list[int]:
        return torch.nonzero((self.y_super >= 0) & (self.y_sub == NOVEL_SUB)).flatten().tolist()


@dataclass(frozen=True)
class StageTargets:
    """A stage's classes and every pool row's labels in them, computed once (:func:`stage_targets`).

    ``taxonomy``/``y_super``/``y_sub``: the stage's seen classes, rows of other classes :data:`UNUSED`, exposure
    rows as in the pool (what the stage's evidence is read with); ``fit_*``: what its model trains on, which under
    ``novelty.oe: class`` adds the explicit novel class and labels the outlier rows with it.
    """

    taxonomy: Taxonomy
    y_super: torch.Tensor
    y_sub: torch.Tensor
    fit_taxonomy: Taxonomy
    fit_y_super: torch.Tensor
    fit_y_sub: torch.Tensor


@dataclass
class Stage:
    """One model's share of the pool: its classes (original indices), image index lists and, once planned, the
    labels of every row in its classes (``targets``; not saved in the split file, recomputed on load).

    ``held`` are images of held-out subclasses of seen superclasses, ``novel`` images of a novel
    superclass (held-back outliers, or the left-out superclass of a LOSO model).
    """

    name: str
    keep_super: list[int]
    keep_sub: list[int]
    train: list[int]
    val: list[int]
    held: list[int] = field(default_factory=list)
    novel: list[int] = field(default_factory=list)
    targets: StageTargets | None = field(default=None, repr=False, compare=False)

    def rows(self) -> dict[str, list[int] | str]:
        """The plain data the split file records (everything but the targets)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "targets"}


def stage_taxonomy(taxonomy: Taxonomy, stage: Stage) -> tuple[Taxonomy, dict[int, int], dict[int, int]]:
    """The stage's taxonomy and the original -> stage index maps of both levels."""
    super_map = {k: i for i, k in enumerate(stage.keep_super)}
    sub_map = {j: i for i, j in enumerate(stage.keep_sub)}
    tax = Taxonomy(
        tuple(taxonomy.super_names[k] for k in stage.keep_super),
        tuple(taxonomy.sub_names[j] for j in stage.keep_sub),
        tuple(super_map[taxonomy.sub_to_super[j]] for j in stage.keep_sub),
        taxonomy.source,
    )
    return tax, super_map, sub_map


def with_extra_class(taxonomy: Taxonomy) -> Taxonomy:
    """The taxonomy plus an explicit novel superclass owning one novel subclass (``novelty.oe: class``).

    Training on it gives each head one more output, and its membership matrix is exactly
    ``membership(with_novel=True)``, so the KL interaction loss covers the novel class too.
    """
    return Taxonomy(
        (*taxonomy.super_names, EXTRA_CLASS), (*taxonomy.sub_names, EXTRA_CLASS),
        (*taxonomy.sub_to_super, taxonomy.n_super), taxonomy.source,
    )


def stage_targets(pool: Pool, taxonomy: Taxonomy, stage: Stage, oe: str) -> StageTargets:
    """A stage's taxonomy and remapped labels, and the model's training ones (exposure labels as ``oe`` needs)."""
    tax, super_map, sub_map = stage_taxonomy(taxonomy, stage)
    y_super = torch.tensor([super_map.get(int(k), UNUSED) if k >= 0 else int(k) for k in pool.y_super.tolist()])
    y_sub = torch.tensor([sub_map.get(int(j), UNUSED) if j >= 0 else int(j) for j in pool.y_sub.tolist()])
    if oe != "class":
        return StageTargets(tax, y_super, y_sub, tax, y_super, y_sub)
    fit_super, fit_sub = y_super.clone(), y_sub.clone()
    outlier = pool.y_super == OUTLIER
    fit_super[outlier], fit_sub[outlier] = tax.n_super, tax.n_sub
    return StageTargets(tax, y_super, y_sub, with_extra_class(tax), fit_super, fit_sub)


def with_targets(stages: dict[str, Stage], pool: Pool, taxonomy: Taxonomy, oe: str) -> dict[str, Stage]:
    """Every stage with its targets computed (once: training, evidence and saving read them from the stage)."""
    return {name: replace(stage, targets=stage_targets(pool, taxonomy, stage, oe)) for name, stage in stages.items()}


def needs_calibration_model(cfg: NoveltyConfig) -> bool:
    return cfg.tau_super is None or cfg.tau_sub is None


def needs_loso_models(cfg: NoveltyConfig, n_super: int) -> bool:
    """LOSO models: for the LOSO protocol's cut, or as the evidence ``score: auto`` chooses the superclass score on
    (a left-out superclass stands for a new family only when >= 2 others remain to train on)."""
    if cfg.tau_super is not None:
        return False
    return cfg.super_protocol == "loso" or (level_scores(cfg.score)[0] == AUTO and n_super >= 3)


CALIBRATION = "calibration"  # the first calibration fold's stage; the others are calibration-1, calibration-2, ...


def calibration_stage_names(names: Iterable[str]) -> list[str]:
    """The calibration folds among stage ``names``, fold 0 first (its scale is the one thresholds are on)."""
    folds = [n for n in names if n == CALIBRATION or (n.startswith(CALIBRATION + "-") and n[len(CALIBRATION) + 1:].isdigit())]
    return sorted(folds, key=lambda n: 0 if n == CALIBRATION else int(n[len(CALIBRATION) + 1:]))


def plan_stages(pool: Pool, taxonomy: Taxonomy, cfg: TrainConfig) -> dict[str, Stage]:
    """Every stage of a run (final, and calibration folds / LOSO models when thresholds are to be calibrated),
    each with its targets."""
    return with_targets(_stage_rows(pool, taxonomy, cfg), pool, taxonomy, cfg.novelty.oe)


def _stage_rows(pool: Pool, taxonomy: Taxonomy, cfg: TrainConfig) -> dict[str, Stage]:
    """Which rows each stage trains, validates and calibrates on."""
    labelled_sub = pool.y_sub[: pool.n_labelled].tolist()
    all_super, all_sub = list(range(taxonomy.n_super)), list(range(taxonomy.n_sub))
    train, val = stratified_split(labelled_sub, cfg.data.val_fraction, cfg.seed)
    outliers, novel_sub = pool.outliers, pool.novel_sub
    stages = {"final": Stage("final", all_super, all_sub, train + outliers + novel_sub, val)}
    if not needs_calibration_model(cfg.novelty):
        return stages
    asked = cfg.novelty.calibration_folds or 1
    folds = holdout_folds(taxonomy, cfg.data.holdout_fraction, cfg.seed, asked)
    if folds and len(folds) < asked:
        log.info("novelty.calibration_folds: %d asked, but these subclasses allow only %d distinct held-out sets "
                 "at data.holdout_fraction %g: calibrating on %d folds (a repeated fold would count its holdout "
                 "twice)", asked, len(folds), cfg.data.holdout_fraction, len(folds))
    if not folds or cfg.data.val_fraction <= 0:
        raise SupersubError(
            "novelty: calibration needs data.holdout_fraction > 0, data.val_fraction > 0 and a superclass with "
            "two or more subclasses; otherwise set novelty.tau_super and novelty.tau_sub by hand"
        )
    cal_outliers = held_back_outliers(outliers, cfg)
    train_outliers = [i for i in outliers if i not in set(cal_outliers)]
    for f, held in enumerate(folds):
        name = CALIBRATION if f == 0 else f"{CALIBRATION}-{f}"
        held_set = set(held)
        is_held = [j in held_set for j in labelled_sub]
        seen_rows = [i for i, h in enumerate(is_held) if not h]
        tr, va = stratified_split([labelled_sub[i] for i in seen_rows], cfg.data.val_fraction, cfg.seed)
        if not va:
            raise SupersubError(
                f"novelty: data.val_fraction = {cfg.data.val_fraction} leaves no validation image to calibrate on "
                "(too few images per subclass); raise it or set novelty.tau_super and novelty.tau_sub by hand"
            )
        stages[name] = Stage(
            name, all_super, [j for j in all_sub if j not in held_set],
            [seen_rows[i] for i in tr] + train_outliers + novel_sub, [seen_rows[i] for i in va],
            [i for i, h in enumerate(is_held) if h], cal_outliers,
        )
    if needs_loso_models(cfg.novelty, taxonomy.n_super):
        stages.update(_loso_stages(pool, taxonomy, stages[CALIBRATION]))
    return stages


HELD_BACK_STREAM = 0x6E6F76656C  # "novel": the held-back draw's own random stream, apart from every other sample


def held_back_outliers(outliers: list[int], cfg: TrainConfig) -> list[int]:
    """The ``data.novel_calibration_fraction`` of the outlier rows kept out of the calibration models' training
    to calibrate tau_super: a random draw with the run's seed (sorted), on a stream of its own.

    The first rows in file-name order would be clustered by source class (Tiny-ImageNet names start with the
    class id), so tau_super would be calibrated on a few kinds of outlier and trained against the others;
    a stream of its own keeps the draw independent of the ``novel_count`` / ``novel_sub_count`` samples.
    """
    n_cal = int(round(cfg.data.novel_calibration_fraction * len(outliers)))
    if n_cal == 0:
        return []
    pick = np.random.default_rng([cfg.seed, HELD_BACK_STREAM]).choice(len(outliers), size=n_cal, replace=False)
    return sorted(outliers[i] for i in pick.tolist())


def _loso_stages(pool: Pool, taxonomy: Taxonomy, cal: Stage) -> dict[str, Stage]:
    """One stage per superclass k: the calibration split without k; all labelled images of k are novel."""
    if taxonomy.n_super < 2:
        raise SupersubError("novelty.super_protocol: loso needs at least two superclasses")
    sup = pool.y_super.tolist()
    n = pool.n_labelled
    stages: dict[str, Stage] = {}
    for k in range(taxonomy.n_super):
        keep_super = [c for c in range(taxonomy.n_super) if c != k]
        keep_sub = [j for j in cal.keep_sub if taxonomy.sub_to_super[j] != k]
        others = [i for i in cal.train if sup[i] != k]  # drops k's labelled and novel-subclass images
        stages[f"loso-{k}"] = Stage(
            f"loso-{k}", keep_super, keep_sub, others, [i for i in cal.val if sup[i] != k],
            [i for i in cal.held if sup[i] != k], [i for i in range(n) if sup[i] == k],
        )
    return stages


# ---- split file ------------------------------------------------------------------------------------


def save_split(folder: Path, data: str, pool: Pool, stages: dict[str, Stage]) -> None:
    """Record the data source and every stage's index lists (what ``supersub calibrate`` needs)."""
    write_json_atomic(
        folder / SPLIT_FILE,
        {"data": data, "n_images": len(pool.y_super), "n_labelled": pool.n_labelled,
         "stages": {name: stage.rows() for name, stage in stages.items()}},
    )


def load_split(folder: Path) -> tuple[str, int, int, dict[str, Stage]]:
    """``(data, n_images, n_labelled, stages)`` as :func:`save_split` wrote them."""
    path = folder / SPLIT_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        stages = {name: Stage(**s) for name, s in d["stages"].items()}
        return str(d["data"]), int(d["n_images"]), int(d["n_labelled"]), stages
    except FileNotFoundError:
        raise SupersubError(f"{path}: missing (the run was trained before 'supersub calibrate' existed)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SupersubError(f"{path}: unreadable split file ({type(e).__name__}: {e})") from None
