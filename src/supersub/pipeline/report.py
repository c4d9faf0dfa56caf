"""``supersub report``: one self-contained HTML page about a trained run, and about its results on labelled images.

From the run directory alone: the resolved config, thresholds, the training summary (metrics.json), training
curves (``logs/<stage>/metrics.csv``) and the calibration sweeps. With a labelled folder (``--test``) also the
competition metric table and the open-set metrics (the numbers ``supersub evaluate`` prints, by the same
code), threshold sweeps on that folder, confusion matrices with the novel class, and image grids of the most
confident mistakes and of the images flagged novel. Nothing in the run directory changes but the page itself
when it is written there (the default).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.formats import read_labels, read_nested_labels
from ..data.records import Dataset
from ..errors import SupersubError
from ..inference import Outputs
from ..io import write_text_atomic
from ..metrics import LEVELS, SUBSETS, OpenSetReport
from ..novelty.threshold_search import sweep
from ..report_page import Chart, Grid, Page, Section, Table, Tile, render_page, thumbnail_uri
from ..reporting import confusion_figure, figure_png, overlaid_curves_figure, sweep_figure
from ..novelty.open_set import OpenSetDecision, OpenSetHead
from ..novelty.thresholds import Thresholds
from ..run_dir import MARKER, RunDir
from ..taxonomy import Taxonomy
from .evaluate import score_prediction
from .predict import Prediction, predict_dataset
from ..training.stream import Scores


COMPETITION_TRUTH, COMPETITION_IMAGES = "test_truth.csv", "test_images"
TOP_CONFUSIONS = 15
LEVEL_NAME = {"super": "superclass", "sub": "subclass"}


@dataclass
class Labelled:
    """A run's prediction of a labelled folder, with the threshold-free argmax the sweeps need."""

    source: str
    kept: Dataset
    pred: Prediction
    open_super: np.ndarray  # seen-class decision at tau = -inf (what a kept image is predicted as)
    open_sub: np.ndarray
    metrics: dict[str, Any]
    report: OpenSetReport


def build_report(
    run_dir: str | Path, test: str | Path | None = None, out: str | Path | None = None, *, overwrite: bool = False,
    device: str | None = None, skip_bad: bool = False, images: int = 24,
) -> Path:
    """:func:`supersub.api.report`: write the page to ``out`` (default ``RUN_DIR/report.html``); returns its path."""
    run = RunDir.open(run_dir)
    target = Path(out) if out is not None else run.path / "report.html"
    if target.exists() and not overwrite:
        raise SupersubError(f"{target}: exists (pass --overwrite to replace it)")
    if images < 1:
        raise SupersubError(f"--images: must be at least 1, got {images}")
    taxonomy, thresholds = run.load_taxonomy(), run.load_thresholds()
    missing: list[str] = []
    labelled = _predict_labelled(run, Path(test), taxonomy, device, skip_bad) if test is not None else None
    sections: list[Section] = []
    if labelled is None:
        missing.append("Metrics, threshold sweeps on labelled images, confusion matrices and image grids of mistakes "
                       "and of images flagged novel: they need a labelled folder (--test DIR with test_truth.csv and "
                       "test_images/, or <superclass>/<subclass>/ folders).")
    else:
        sections.append(_metrics_section(labelled))
    sections.append(_summary_section(run, thresholds))
    sections.append(_curves_section(run, missing))
    sections.append(_sweeps_section(run, labelled, taxonomy, thresholds, missing))
    if labelled is not None:
        sections.append(_confusion_section(labelled.report))
        sections.append(_grids_section(labelled, taxonomy, images))
    sections.append(Section("config", "Configuration", ["The run's resolved config.yaml."],
                            pre=_read_text(run.config_file)))
    subtitle = f"{run.path.resolve()} · {_versions(run)} · written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    if labelled is not None:
        subtitle += f" · evaluated on {labelled.source} ({len(labelled.kept)} images)"
    page = Page(f"supersub report: {run.path.name}", subtitle, missing, sections)
    write_text_atomic(target, render_page(page))
    return target


# ---- the labelled folder ---------------------------------------------------------------------------------


def read_labelled_folder(folder: Path, taxonomy: Taxonomy) -> Dataset:
    """The competition layout (``test_truth.csv`` + ``test_images/``) or a nested ``<superclass>/<subclass>/`` folder."""
    if not folder.is_dir():
        raise SupersubError(f"--test {folder}: not a folder")
    if (folder / COMPETITION_TRUTH).is_file():
        return read_labels(folder / COMPETITION_TRUTH, folder / COMPETITION_IMAGES, taxonomy)
    return read_nested_labels(folder, taxonomy)


def _predict_labelled(run: RunDir, folder: Path, taxonomy: Taxonomy, device: str | None, skip_bad: bool) -> Labelled:
    """Predict as ``supersub evaluate`` does (its path, one forward pass) and keep the seen-class decision too."""
    ds = read_labelled_folder(folder, taxonomy)

    def closed_set(head: OpenSetHead, outputs: Outputs, decided: OpenSetDecision) -> Scores:
        o = head.closed_set(outputs, decided)
        return {"open_super": o.super_pred, "open_sub": o.sub_pred}

    pred, kept, extra = predict_dataset(run.path, ds, skip_bad, device, extra=closed_set)
    metrics, report = score_prediction(pred, kept, taxonomy)
    return Labelled(str(folder), kept, pred, extra["open_super"].cpu().numpy(), extra["open_sub"].cpu().numpy(),
                    metrics, report)


# ---- sections --------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A metric as the page shows it: the stored number as is (so it reads the same as metrics.json), n/a for None."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _metrics_section(lab: Labelled) -> Section:
    m = lab.metrics
    columns = ["level", "CE", "accuracy overall %", "seen %", "unseen %", "n overall", "n seen", "n unseen"]
    keys = [[""] + [f"{level}_ce"] + [f"{level}_acc_{k}" for k in SUBSETS] + [f"{level}_n_{k}" for k in SUBSETS]
            for level in LEVELS]
    rows = [[LEVEL_NAME[level]] + [_cell(m[k]) for k in row[1:]] for level, row in zip(LEVELS, keys)]
    competition = Table(columns, rows, keys, "The competition's metrics (the numbers supersub evaluate prints): "
                        "accuracy over all images, over images of seen classes and of novel ones; CE = mean "
                        "cross-entropy of the predicted distribution, novel column included.")
    open_columns = ["level", "AUROC", "FPR95", "AUPR", "ECE"]
    open_keys = [[""] + [f"{level}_{k}" for k in ("auroc", "fpr95", "aupr", "ece")] for level in LEVELS]
    open_rows = [[LEVEL_NAME[level]] + [_cell(m.get(k)) for k in row[1:]] for level, row in zip(LEVELS, open_keys)]
    open_set = Table(open_columns, open_rows, open_keys,
                     "Threshold-free ranking of the novelty confidence (seen vs novel; the subclass level over "
                     "images of seen superclasses) and the expected calibration error of the probabilities.")
    return Section("metrics", "Metrics", [f"On {lab.source}: {len(lab.kept)} images."], [competition, open_set])


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        return [item for k, v in d.items() for item in _flatten(v, f"{prefix}{k}.")]
    return [(prefix[:-1], d)]


def _summary_section(run: RunDir, thresholds: Thresholds) -> Section:
    """What a person reads first (thresholds, per-fold thresholds, each model's training), then all of
    metrics.json folded away (some 60 rows: a reference, not a first read)."""
    t_rows = [[k, _cell(v)] for k, v in thresholds.to_dict().items()]
    tables = [Table(["threshold", "value"], t_rows, [["", f"thresholds.{k}"] for k, _ in t_rows],
                    "The open-set head's thresholds (open_set_head.pt): seen iff confidence >= tau, in units of the "
                    "novelty score.")]
    paragraphs = []
    try:
        summary = json.loads(run.metrics_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        summary = None
        paragraphs.append(f"metrics.json could not be read ({type(e).__name__}).")
    if isinstance(summary, dict):
        folds = _fold_table(summary, thresholds)
        if folds is not None:
            tables.append(folds)
        tables.append(_models_table(summary))
        flat = [(k, v) for k, v in _flatten(summary) if not k.startswith("thresholds.")]  # shown above
        rows = [[k, "; ".join(map(str, v)) if isinstance(v, list) else _cell(v)] for k, v in flat]
        # no data-metric keys here: the visible tables above carry them (a cell is named once on the page)
        tables.append(Table(["metrics.json", "value"], rows, [], "Everything train recorded: each model's training, "
                            "the calibration figures of fold 1, the data.",
                            folded=f"All of metrics.json ({len(rows)} entries)"))
    return Section("run", "Run summary", paragraphs, tables)


def _fold_table(summary: dict[str, Any], thresholds: Thresholds) -> Table | None:
    """Each calibration model's thresholds on the final model's scale, and their mean: the run's thresholds."""
    cal = summary.get("calibration", summary.get("novelty", {}))
    per = {level: cal.get(f"{level}_tau_per_fold") for level in LEVELS} if isinstance(cal, dict) else {}
    n = max((len(v) for v in per.values() if isinstance(v, list)), default=0)
    if n < 2:
        return None
    rows = [[f"calibration model {k + 1}"] + [_cell(per[level][k]) if isinstance(per[level], list) else "hand-set"
                                              for level in LEVELS] for k in range(n)]
    rows.append(["mean: the run's thresholds", _cell(thresholds.tau_super), _cell(thresholds.tau_sub)])
    return Table(["", "tau_super", "tau_sub"], rows, caption=f"Each of the {n} calibration models chose its thresholds "
                 "on its own held-out subclasses; moved onto the final model's score scale (same share of seen images "
                 "kept), their mean is what the run uses.")


def _models_table(summary: dict[str, Any]) -> Table:
    """One row per trained model: epochs, best loss, seconds per epoch (and the final model's accuracy)."""
    names = sorted((k for k, v in summary.items() if isinstance(v, dict) and "epochs_run" in v),
                   key=lambda n: (n == "final", n))
    rows, keys = [], []
    for name in names:
        stage = summary[name]
        loss = stage.get("val_loss", stage.get("train_loss"))
        rows.append([name, _cell(stage["epochs_run"]), _cell(loss), _cell(stage.get("seconds_per_epoch")),
                     _cell(stage.get("val_acc_super")), _cell(stage.get("val_acc_sub"))])
        keys.append(["", "", "", "", *(f"{name}.val_acc_{lv}" if f"val_acc_{lv}" in stage else "" for lv in LEVELS)])
    return Table(["model", "epochs", "best loss", "s/epoch", "val acc super %", "val acc sub %"], rows, keys,
                 "Each trained model (validation accuracy: each head's argmax, before the novelty thresholds).")


def _stage_logs(run: RunDir) -> list[Path]:
    """``logs/<stage>/metrics.csv``, the final model first, then calibration, then the others by name."""
    order = {"final": 0, "calibration": 1}
    found = sorted((run.path / "logs").glob("*/metrics.csv"))
    return sorted(found, key=lambda p: (order.get(p.parent.name, 2), p.parent.name))


def epoch_frame(path: Path) -> pd.DataFrame:
    """One row per epoch of a Lightning CSV log (its train and validation rows are separate lines)."""
    df = pd.read_csv(path)
    if "epoch" not in df.columns:
        raise SupersubError(f"{path}: no 'epoch' column")
    df = df.dropna(subset=["epoch"]).drop(columns=[c for c in ("step",) if c in df.columns])
    return df.groupby("epoch").mean(numeric_only=True)


def _model_kind(stage: str) -> str:
    """final, calibration (every fold) or loso: one training-curve panel per kind, its models overlaid."""
    return "calibration" if stage.startswith("calibration") else "loso" if stage.startswith("loso-") else stage


def _curves_section(run: RunDir, missing: list[str]) -> Section:
    kinds: dict[str, dict[str, pd.DataFrame]] = {}
    for path in _stage_logs(run):
        stage = path.parent.name
        try:
            frame = epoch_frame(path)
        except (OSError, SupersubError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            missing.append(f"Training curves of stage {stage}: {path} is unreadable ({type(e).__name__}).")
            continue
        kinds.setdefault(_model_kind(stage), {})[stage] = frame
    charts = []
    for kind, frames in kinds.items():
        what = f"{len(frames)} {kind} models" if len(frames) > 1 else f"the {kind} model"
        fig = overlaid_curves_figure(frames, what)
        if fig is not None:
            logs = ", ".join(f"logs/{s}/metrics.csv" for s in frames) if len(frames) <= 2 else \
                f"logs/{kind}*/metrics.csv"
            charts.append(Chart(f"stage {kind}" if len(frames) == 1 else f"stage {kind}: {len(frames)} models overlaid",
                                figure_png(fig), f"From {logs}: loss and accuracy (fraction) per epoch; val = the "
                                "stage's validation images." + (" One line per model." if len(frames) > 1 else "")))
    if not charts:
        missing.append("Training curves: the run has no logs/<stage>/metrics.csv (trainer.loggers without csv, "
                       "or a head that is not trained by gradient descent).")
    return Section("curves", "Training curves", [], charts=charts)


def _sweeps_section(run: RunDir, lab: Labelled | None, taxonomy: Taxonomy, thresholds: Thresholds,
                    missing: list[str]) -> Section:
    """Per level (one row each): the calibration sweep of the run, then the same sweep on the labelled folder."""
    charts = []
    paragraphs = ["seen accuracy = share of images of seen classes kept as seen and classified correctly; novel "
                  "flagged = share of novel images flagged; both against the threshold tau."]
    inputs = _test_sweep_inputs(lab, taxonomy) if lab is not None else {}
    for level in LEVELS:
        png = run.calibration_dir / f"sweep_{level}.png"
        if png.is_file():
            charts.append(Chart(f"{LEVEL_NAME[level]}, calibration", png.read_bytes(),
                                "Made during training on calibration model 1's holdout (pseudo-novel held-out "
                                "subclasses, outlier images, or seen images only under the recall rule), on that "
                                "model's score scale; the dashed line is the cut chosen there. The run's threshold "
                                "is the mean of every calibration model's cut moved to the final model's scale "
                                "(Run summary)."))
        else:
            missing.append(f"The {LEVEL_NAME[level]} calibration sweep: the run has no {png.name} in calibration/ "
                           "(a threshold given by hand is not calibrated).")
        if lab is None:
            continue
        conf_seen, conf_novel, correct = inputs[level]
        if len(conf_seen) == 0:
            paragraphs.append(f"No {LEVEL_NAME[level]} sweep on {lab.source}: it has no image of a seen class.")
            continue
        name = Path(lab.source).name
        tau = thresholds.tau_super if level == "super" else thresholds.tau_sub
        fig = sweep_figure(sweep(conf_seen, conf_novel, correct), f"{LEVEL_NAME[level]} on {name}, {thresholds.score}",
                           tau)
        what = "images of seen superclasses" if level == "sub" else "all images"
        charts.append(Chart(f"{LEVEL_NAME[level]}, labelled folder {name}", figure_png(fig),
                            f"On {lab.source} ({what}); the dashed line is the run's threshold."))
        if len(conf_novel) == 0:
            paragraphs.append(f"{lab.source} has no novel {LEVEL_NAME[level]}: its novel-flagged curve is empty.")
    return Section("sweeps", "Threshold sweeps", paragraphs, charts=charts)


def _test_sweep_inputs(lab: Labelled, taxonomy: Taxonomy) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(confidences of seen images, of novel ones, seen images classified right) per level, as open_set_report
    splits them: superclass over all images, subclass over images of seen superclasses."""
    ys, yb = np.asarray(lab.kept.super_labels), np.asarray(lab.kept.sub_labels)
    cs, cb = lab.pred.super_conf.double().cpu().numpy(), lab.pred.sub_conf.double().cpu().numpy()
    seen_super = ys != taxonomy.novel_super
    seen_sub = seen_super & (yb != taxonomy.novel_sub)
    novel_sub = seen_super & (yb == taxonomy.novel_sub)
    return {
        "super": (cs[seen_super], cs[~seen_super], (lab.open_super == ys)[seen_super].astype(float)),
        "sub": (cb[seen_sub], cb[novel_sub], ((lab.open_sub == yb) & (lab.open_super == ys))[seen_sub].astype(float)),
    }


def _confusion_section(report: OpenSetReport) -> Section:
    names = report.class_names
    counts = report.confusion["super"]
    rows = [[names["super"][i], *map(str, counts[i]), str(counts[i].sum())] for i in range(len(counts))]
    tables = [Table(["true \\ predicted", *names["super"], "total"], rows, caption="Superclass confusion (counts).")]
    tables.append(_top_confusions(report.confusion["sub"], names["sub"]))
    charts = [Chart(f"{LEVEL_NAME[level]} confusion", figure_png(confusion_figure(report.confusion[level],
                                                                                 names[level], level)),
                    "Rows = true class, columns = prediction, novel last; each row shows shares of its true class.",
                    wide=len(names[level]) > 12)
              for level in LEVELS]
    return Section("confusion", "Confusion matrices", [], tables, charts)


def _top_confusions(counts: np.ndarray, names: list[str]) -> Table:
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:TOP_CONFUSIONS]
    totals = counts.sum(axis=1)
    rows = []
    for flat in order:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] == 0:
            break
        rows.append([names[i], names[j], str(off[i, j]), f"{100 * off[i, j] / max(totals[i], 1):.1f}"])
    return Table(["true subclass", "predicted", "images", "% of true class"], rows,
                 caption=f"The {len(rows)} most frequent subclass confusions.")


def _grids_section(lab: Labelled, taxonomy: Taxonomy, n: int) -> Section:
    ys, yb = np.asarray(lab.kept.super_labels), np.asarray(lab.kept.sub_labels)
    ps, pb = lab.pred.super_pred.cpu().numpy(), lab.pred.sub_pred.cpu().numpy()
    p_super = lab.pred.super_probs.double().cpu().numpy()
    p_sub = lab.pred.sub_probs.double().cpu().numpy()
    rows = np.arange(len(ys))
    wrong = (ps != ys) | (pb != yb)
    # a mistake's confidence: the probability given to the wrong answer at the first level that is wrong
    confidence = np.where(ps != ys, p_super[rows, ps], p_sub[rows, pb])
    flagged_super = ps == taxonomy.novel_super
    flagged_sub = ~flagged_super & (pb == taxonomy.novel_sub)
    spread = "evenly spread from the highest novel probability to the lowest"
    picks = [
        ("Most confident mistakes", wrong, confidence, False,
         "Wrong at either level, most probable wrong answer first (the probability given to it in brackets)."),
        ("Flagged novel superclass", flagged_super, p_super[:, taxonomy.novel_super], True,
         f"Predicted novel at both levels, {spread}; green = truly novel."),
        ("Flagged novel subclass of a known superclass", flagged_sub, p_sub[:, taxonomy.novel_sub], True,
         f"A seen superclass with a novel subclass, {spread}; green = right at both levels."),
    ]
    supers, subs = [*taxonomy.super_names, "novel"], [*taxonomy.sub_names, "novel"]
    grids = []
    for title, mask, score, even, text in picks:
        chosen = np.flatnonzero(mask)
        chosen = chosen[np.argsort(-score[chosen], kind="stable")]
        # the top of a flagged list is the easy cases: a spread shows the whole range down to the threshold
        chosen = chosen[np.unique(np.linspace(0, len(chosen) - 1, n).round().astype(int))] if even and len(chosen) > n \
            else chosen[:n]
        tiles = []
        for i in chosen.tolist():
            record = lab.kept.records[i]
            uri = thumbnail_uri(record.path)
            if not uri:
                continue
            prob = p_super[i, ps[i]] if ps[i] != ys[i] else p_sub[i, pb[i]]
            tiles.append(Tile(uri, record.name, _pair(supers[ys[i]], subs[yb[i]]),
                              f"{_pair(supers[ps[i]], subs[pb[i]])} ({prob:.2f})", not wrong[i]))
        shown = f"{len(tiles)} of {int(mask.sum())} shown. {text}" if mask.any() else "None."
        grids.append(Grid(title, shown, tiles))
    return Section("images", "Images", ["Thumbnails from the labelled folder: true and predicted "
                                        "superclass / subclass; red border = wrong, green = right."], grids=grids)


def _pair(super_name: str, sub_name: str) -> str:
    """"dog / beagle"; a subclass already spelt "dog/beagle" (the competition mapping's way) is not repeated."""
    return f"{super_name} / {sub_name.removeprefix(super_name + '/')}"


# ---- small readers ---------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return f"({path.name} could not be read: {type(e).__name__})"


def _versions(run: RunDir) -> str:
    try:
        marker = json.loads((run.path / MARKER).read_text(encoding="utf-8"))
        return f"supersub {marker.get('supersub', '?')}, torch {marker.get('torch', '?')}"
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return "versions unknown"

