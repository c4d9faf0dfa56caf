"""What benchmarks/speed.py's run depends on (:class:`Plan`), what its preparation made (:class:`Prepared`), and
its table: one row per measurement, printed with rich and written as Markdown."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

@dataclass
class Plan:
    """Everything the run depends on (saved with the results)."""

    data: str
    backbone: str
    image_size: int
    input_size: int | None
    batch_size: int
    threads: int
    seed: int
    warmup_batches: int
    train_batches: int  # per turn
    train_rounds: int
    regime_images: int
    regime_epochs: int
    predict_images: int
    predict_repeats: int
    forward_batches: int  # per turn
    forward_pool: int
    run_per_class: int  # images per subclass of the run trained for (c)
    run_epochs: int
    smoke: bool = False

    def overrides(self, cache_dir: Path | str | None, **more: Any) -> dict[str, Any]:
        """The config of every side: the plan's backbone and sizes, no progress bar, ``data.cache_dir``."""
        base = {"model.backbone": self.backbone, "data.image_size": self.image_size,
                "optim.batch_size": self.batch_size, "model.input_size": self.input_size, "trainer.progress": False,
                "seed": self.seed, "data.cache_dir": None if cache_dir is None else str(cache_dir)}
        return {**base, **more}


@dataclass
class Prepared:
    """What :func:`_speed.sides.prepare_inputs` made (paths as strings) and found (threads, versions)."""

    data: str  # labelled training set
    image_cache: str  # decoded images, shared by every side
    n_images: int
    n_train: int
    folder: str  # images to predict
    n_predict: int
    warmup_folder: str
    run: str  # a trained run (the recipe) for (c)
    threads: int  # torch's default thread count, when --threads is not given
    versions: dict[str, str]
    seconds: float


TARGETS = {"train": 0.95, "frozen": 50.0, "predict": 0.80}
ROW_KEYS = ("train", "train-kept", "full", "frozen", "partial", "fill-frozen", "fill-partial", "predict",
            "predict-kept", "idle")


@dataclass
class Row:
    key: str
    measurement: str
    supersub: float
    reference: float | None
    ratio: float | None
    target: float | None
    rss_mb: tuple[float, float | None]
    unit: str  # of supersub / reference
    ratio_kind: str = "x"  # "x": supersub / reference; "faster": reference / supersub

    @property
    def met(self) -> bool | None:
        return None if self.target is None or self.ratio is None else self.ratio >= self.target


def build_rows(plan: Plan, prep: Prepared, r: dict[str, Any]) -> list[Row]:
    t, g, p = r["train"], r["regimes"], r["predict"]
    full_epoch = (prep.n_train // plan.batch_size) * plan.batch_size / t["supersub_ips"]
    rss_full = t["rss_mb"][0]
    fill_n = f"{prep.n_train:,} images x 2 views"
    kept = "with supersub's allocator setting"
    return [
        Row("train", f"(a) training img/s, full fine-tuning, batch {plan.batch_size}: fit_stage vs a plain loop",
            t["supersub_ips"], t["plain_ips"], t["supersub_ips"] / t["plain_ips"], TARGETS["train"],
            (t["rss_mb"][0], t["rss_mb"][1]), "img/s"),
        Row("train-kept", f"(a) the same, vs the plain loop {kept} (Lightning and data pipeline only)",
            t["supersub_ips"], t["plain_kept_ips"], t["supersub_ips"] / t["plain_kept_ips"], TARGETS["train"],
            (t["rss_mb"][0], t["rss_mb"][2]), "img/s"),
        Row("full", f"(b) epoch of {prep.n_train:,} training images, full fine-tuning (from (a))", full_epoch, None,
            None, None, (rss_full, None), "s"),
        Row("frozen", "(b) epoch, frozen on cached features, vs full", g["frozen"]["epoch_seconds"], full_epoch,
            full_epoch / g["frozen"]["epoch_seconds"], TARGETS["frozen"], (g["frozen"]["rss_mb"], rss_full), "s",
            "faster"),
        Row("partial", "(b) epoch, partial (last stage on cached trunk), vs full", g["partial"]["epoch_seconds"],
            full_epoch, full_epoch / g["partial"]["epoch_seconds"], None, (g["partial"]["rss_mb"], rss_full), "s",
            "faster"),
        Row("fill-frozen", f"(b) one-off cache fill, frozen ({fill_n})", g["frozen"]["fill_seconds"], None, None,
            None, (g["frozen"]["rss_mb"], None), "s"),
        Row("fill-partial", f"(b) one-off cache fill, partial ({fill_n})", g["partial"]["fill_seconds"], None, None,
            None, (g["partial"]["rss_mb"], None), "s"),
        Row("predict", f"(c) prediction img/s, {p['images']:,} images end to end vs the backbone's forward alone",
            p["supersub_ips"], p["forward_ips"], p["supersub_ips"] / p["forward_ips"], TARGETS["predict"],
            (p["rss_mb"][0], p["rss_mb"][1]), "img/s"),
        Row("predict-kept", f"(c) the same, vs the forward alone {kept}", p["supersub_ips"], p["forward_kept_ips"],
            p["supersub_ips"] / p["forward_kept_ips"], TARGETS["predict"], (p["rss_mb"][0], p["rss_mb"][2]),
            "img/s"),
        Row("idle", "(d) idle worker: imports only (the memory baseline of every row)", r["idle"]["rss_mb"], None,
            None, None, (r["idle"]["rss_mb"], None), "MB"),
    ]


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2 if abs(x) >= 0.1 else 3
    text = f"{x:,.{digits}f}"
    return f"{text} {unit}".strip()


def _cells(row: Row) -> list[str]:
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}" if row.ratio_kind == "x" else f"{row.ratio:,.1f}x"
    if row.target is None:
        target = "-"
    else:
        sign = "" if row.ratio_kind == "x" else "x"
        target = f">= {row.target:g}{sign} {'yes' if row.met else 'NO'}"
    rss = " / ".join(_num(v) for v in row.rss_mb if v is not None)
    reference = _num(row.reference, row.unit if row.reference else "")
    return [row.measurement, _num(row.supersub, row.unit), reference, ratio, target, rss]


HEADER = ["measurement", "supersub", "reference", "ratio", "target", "peak RSS MB (supersub / reference)"]


def markdown(rows: list[Row], notes: list[str]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(["# supersub speed benchmark", "", *lines, "", *notes, ""])


def print_rich(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(HEADER):
        table.add_column(name, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*_cells(r))
    console = Console()
    Console(width=max(console.width, 150)).print(table)  # a pipe or a log gets whole rows


def describe(plan: Plan, prep: Prepared, r: dict[str, Any], command: str, seconds: float) -> list[str]:
    t, g, p = r["train"], r["regimes"], r["predict"]
    load = r.get("load", {})

    def ratios(xs: list[float]) -> str:
        return ", ".join(f"{x:.3f}" for x in xs)

    run_images = "the synthetic data" if plan.smoke else f"{plan.run_per_class} images per subclass"

    def kernel(turns: dict[str, list[dict[str, Any]]]) -> str:
        share = {k: sum(x["system_seconds"] for x in v) / sum(x["seconds"] for x in v) for k, v in turns.items()}
        return ", ".join(f"{k.replace('_', ' ')} {100 * v:.0f}%" for k, v in share.items())

    def epochs(regime: dict[str, Any]) -> str:
        return ", ".join(f"{e['seconds']:.2f}" for e in regime["epochs_measured"])

    return [
        f"Command: `{command}`",
        "",
        f"- Data: {prep.data} ({prep.n_images:,} images, {prep.n_train:,} of them training rows); backbone "
        f"{plan.backbone}, images at {plan.image_size} px resized inside the model to the backbone's input size, "
        f"batch {plan.batch_size}, {plan.threads} torch thread(s) on every side, seed {plan.seed}.",
        f"- (a) three sides: supersub's `fit_stage`, the plain loop with glibc's allocator defaults, the plain loop "
        f"with supersub's allocator setting (`supersub.memory`: freed memory kept for the next batch). After "
        f"{plan.warmup_batches} untimed batches per side, {plan.train_rounds} turns of {plan.train_batches} batches "
        f"per side in the order A B C, C B A, ...; per-turn ratios {ratios(t['round_ratios'])} (vs the plain loop) "
        f"and {ratios(t['round_ratios_kept'])} (vs the plain loop with the setting). A turn runs from one batch "
        "start to the batch start after its last batch (data loading, augmentation, forward, backward, optimizer "
        "and Lightning's hooks all count); no validation rows. Share of the time spent in the kernel (page faults): "
        f"{kernel(t['turns'])}.",
        f"- (b) frozen and partial: `fit_stage` on {g['frozen']['rows']:,} training rows, {plan.regime_epochs} epochs "
        f"from an empty feature cache; each epoch after the first is split into its batches and the rest (epoch "
        f"start, checkpoints and logs at its end); an epoch of the {prep.n_train:,} training rows = the median "
        f"rest + {prep.n_train // plan.batch_size} x the median batch time. Measured epochs of "
        f"{g['frozen']['rows']:,} rows: frozen {epochs(g['frozen'])} s, partial {epochs(g['partial'])} s. Full: the "
        f"batch time of (a) x {prep.n_train // plan.batch_size} batches (extrapolated, not a whole epoch). The "
        f"cache fill is paid once per data set and weights (then read from disk): timed on "
        f"{g['frozen']['rows']:,} images (2 views each) and scaled to {prep.n_train:,}.",
        f"- (c) `api.predict` (what `supersub predict RUN FOLDER --out CSV` runs) on {p['images']:,} JPEGs with an "
        f"empty feature cache, {plan.predict_repeats} timed call(s) after an untimed one on "
        f"{2 * plan.batch_size} images, between turns of the two references ({plan.forward_batches} batches each): "
        f"the run's backbone on pre-loaded, pre-resized tensors, eval mode, inference_mode, channels-last, batch "
        f"{plan.batch_size}, with glibc's allocator defaults and with supersub's setting; per-call ratios "
        f"{ratios(p['round_ratios'])} and {ratios(p['round_ratios_kept'])}. Kernel share of the time: "
        f"{kernel(p['turns'])}. The run is the recipe trained for {plan.run_epochs} epoch(s) on {run_images} "
        "(speed does not depend on it).",
        "- (d) peak RSS: the high-water mark of each side's own worker process (`VmHWM` in /proc/self/status; "
        "`ru_maxrss` off Linux), over the worker's whole life: set-up, warm-up and measurement. Workers are "
        "forked from a server that imported torch, Lightning and supersub; the idle row is what such a worker "
        "holds before it does anything (library pages it never touches are shared and not counted).",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
        f"{prep.versions['torch']}, Lightning {prep.versions['lightning']}; load average "
        f"{load.get('start', '?')} at the start, {load.get('end', '?')} at the end; benchmark wall time "
        f"{seconds / 60:.1f} min (preparation {prep.seconds:.0f} s).",
    ]
