"""The ``supersub`` command line: parses options, calls :mod:`supersub.api`, prints with rich.

Every :class:`SupersubError` becomes one line on stderr and exit code 2; nothing else happens here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from .cli_data import cache_app, data_app
from .cli_errors import INTERRUPTED, click_errors, continue_command, usage_message
from .cli_options import (CALIBRATE_FLAGS, DATA, PRETRAIN_FLAGS, RUN, TRAIN_FLAGS, default_text, flag_overrides,
                          parse_sets, with_flags)
from .errors import SupersubError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hierarchical open-set image classification.")
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")
console = Console()
err_console = Console(stderr=True)


def _setup_logging(verbose: bool = False) -> None:
    """Log lines on stderr; ``--verbose`` turns on supersub's debug messages (not every library's)."""
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, show_time=False)
        fmt = "%(message)s"
    else:  # a log file or a pipe: plain lines, never wrapped at the console width
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(levelname)-8s %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, handlers=[handler], force=True)
    logging.getLogger("supersub").setLevel(logging.DEBUG if verbose else logging.NOTSET)


@app.callback()
def _main_options(
    verbose: bool = typer.Option(False, "--verbose/--no-verbose", "-v", help="debug-level log messages"),
) -> None:
    """Hierarchical open-set image classification."""
    _setup_logging(verbose)


CONFIG_OPTION = typer.Option(None, "--config", help="a YAML settings file; options given here win",
                             show_default="none", rich_help_panel=RUN)
SET_OPTION = typer.Option([], "--set", metavar="KEY=VALUE", help="any setting by its key, e.g. --set model.width=64 "
                          "(repeatable; docs/guide.md lists them)", show_default="none", rich_help_panel=RUN)
# the arguments and options several of the run's verbs share (typer copies an OptionInfo, never changes it)
RUN_DIR_ARGUMENT = typer.Argument(..., help="a run directory made by 'supersub train'")
DEVICE_OPTION = typer.Option(None, "--device", help="inference device: cpu, cuda, cuda:1, mps or auto",
                             show_default="the run's accelerator")
SKIP_BAD_OPTION = typer.Option(False, "--skip-bad-images/--no-skip-bad-images", help="warn and skip unreadable images")


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    from .metrics import metrics_rich_table

    console.print(metrics_rich_table(metrics, title=title))


@app.command()
@with_flags(TRAIN_FLAGS)
def train(
    data: Optional[Path] = typer.Option(None, "--data", rich_help_panel=DATA, show_default="required",
                                        help="your labelled images: a competition folder (train_data.csv and "
                                        "mappings), a folder of superclass folders of subclass folders, or a "
                                        "CSV of image, superclass and subclass names"),
    out: Optional[Path] = typer.Option(None, "--out", rich_help_panel=DATA,
                                      help="run folder to create (not needed with --print-config)", show_default="none"),
    *,
    extend: Optional[Path] = typer.Option(
        None, "--extend", rich_help_panel=RUN, show_default="none",
        help="a finished run to grow: --data is then a CSV of image, superclass and subclass names (such as "
        "the labels.csv of discover); the run's images plus these train with its settings into --out (default: "
        "RUN-extended)"),
    config: Optional[Path] = CONFIG_OPTION,
    set_: list[str] = SET_OPTION,
    print_config: bool = typer.Option(False, "--print-config/--no-print-config", rich_help_panel=RUN,
                                      help="print the settings this command would use, as YAML, and stop"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", rich_help_panel=RUN,
                                   help="replace an existing run folder"),
    resume: bool = typer.Option(False, "--resume/--no-resume", rich_help_panel=RUN,
                                help="continue an interrupted run where it stopped"),
    **flags: Any,
) -> None:
    """Train a model on labelled images, calibrate its "novel" thresholds and save everything in the --out folder."""
    from . import api

    # flags left out set nothing; a --set KEY=null is kept: it sets the key to None (unsets a YAML threshold)
    overrides = {**flag_overrides(TRAIN_FLAGS, flags), **parse_sets(set_)}
    if data is None:  # checked here, not by typer: a required option's marker column cost --help 2 of 80 columns
        raise SupersubError("Missing option '--data': the labelled images to train on (see 'supersub train --help')")
    if print_config:
        from .config import config_yaml

        console.print(config_yaml(api.resolve_config(config, **overrides)), end="", markup=False, highlight=False)
        return
    if out is None and extend is None:
        raise SupersubError("Missing option '--out': the run directory to create, needed unless --print-config "
                            "(see 'supersub train --help')")
    summary = api.train(data, out, config, overwrite=overwrite, resume=resume, extend=extend, **overrides)
    out = out if out is not None else Path(f"{extend}-extended")
    from .training.distributed import is_global_zero

    if not is_global_zero():  # a DDP worker re-running this command: rank 0 reports
        return
    console.print(_train_table(summary, out))


def _train_table(summary: dict[str, Any], out: Path) -> Any:
    """The end of ``train``: one row per trained model (every calibration fold, the LOSO models, the final model),
    then the thresholds. Validation accuracy is the closed-set one the epoch log shows, at the kept (best) epoch."""
    from rich.table import Table

    from .config import FINAL_MODEL_PROTOCOLS

    table = Table(title=f"trained {out} in {summary['seconds']}s", title_justify="left")
    for column in ("model", "epochs", "best loss", "s/epoch", "val acc super %", "val acc sub %"):
        table.add_column(column, justify="left" if column == "model" else "right")
    stages = [name for name, stage in summary.items() if isinstance(stage, dict) and "epochs_run" in stage]
    for name in sorted(stages, key=lambda n: (n == "final", n)):  # calibration folds and LOSO models, final last
        stage = summary[name]
        loss = stage.get("val_loss", stage.get("train_loss"))
        table.add_row(name, str(stage["epochs_run"]), "-" if loss is None else f"{loss:.4g}",
                      str(stage.get("seconds_per_epoch") or "-"), str(stage.get("val_acc_super", "-")),
                      str(stage.get("val_acc_sub", "-")))
    t = summary["thresholds"]
    calibration = summary.get("calibration")
    protocol = calibration.get("super_protocol") if isinstance(calibration, dict) else None
    where = ("tau_sub: the mean over the calibration models, tau_super: on the final model"
             if protocol in FINAL_MODEL_PROTOCOLS else "the mean over the calibration models")
    table.caption = (f"{t['score']}: tau_super={t['tau_super']:.4g} tau_sub={t['tau_sub']:.4g} ({where}); val acc: each "
                     "head's argmax, before the novelty thresholds")
    table.caption_justify = "left"
    return table


@app.command()
@with_flags(PRETRAIN_FLAGS)
def pretrain(
    data: Path = typer.Option(..., "--data", help="class folder: root/<class>/*.jpg (e.g. Tiny-ImageNet's train/)"),
    out: Path = typer.Option(..., "--out", help="checkpoint to write (load it with 'train --weights OUT')"),
    config: Optional[Path] = CONFIG_OPTION,
    *,
    test_data: Optional[Path] = typer.Option(
        None, "--test-data", help="class folder with the same class names: its accuracy goes in the summary",
        show_default="none"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace an existing checkpoint and its run"),
    resume: bool = typer.Option(False, "--resume/--no-resume",
                                help="continue an interrupted run from OUT.d/checkpoints/last.ckpt"),
    set_: list[str] = SET_OPTION,
    **flags: Any,
) -> None:
    """Train a backbone on a folder of classified images (optionally with binary tasks on random class halves), for train --weights."""
    from . import api

    overrides = {**flag_overrides(PRETRAIN_FLAGS, flags), **parse_sets(set_)}  # KEY=null kept, as for train
    summary = api.pretrain(data, out, config, test_data=test_data, overwrite=overwrite, resume=resume, **overrides)
    accs = ", ".join(f"{k} {summary[k]}%" for k in ("val_acc", "test_acc") if k in summary)
    console.print(f"[bold green]pretrained[/] {out} ({summary['n_classes']} classes, {summary['epochs_run']} epochs, "
                  f"{summary['seconds']}s){': ' + accs if accs else ''}")


@app.command()
@with_flags(CALIBRATE_FLAGS)
def calibrate(
    run_dir: Path = RUN_DIR_ARGUMENT,
    **flags: Any,
) -> None:
    """Re-choose the novelty score and thresholds of a trained run, without retraining."""
    from . import api

    novelty = {key.removeprefix("novelty."): value for key, value in flag_overrides(CALIBRATE_FLAGS, flags).items()}
    result = api.calibrate(run_dir, **novelty)
    t = result["thresholds"]
    console.print(
        f"[bold green]calibrated[/] {run_dir}: {t['score']} tau_super={t['tau_super']:.4g} tau_sub={t['tau_sub']:.4g}"
    )



@app.command()
def predict(
    run_dir: Path = RUN_DIR_ARGUMENT,
    images: Path = typer.Argument(..., help="images to classify: a flat folder, a nested folder or a CSV (image column)"),
    out: Path = typer.Option(..., "--out", help="predictions CSV to write"),
    probs: bool = typer.Option(False, "--probs/--no-probs", help="also write super_prob_<i> and sub_prob_<j> columns"),
    names: bool = typer.Option(False, "--names/--no-names", help="also write superclass_name and subclass_name"),
    device: Optional[str] = DEVICE_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace an existing predictions file"),
    skip_bad_images: bool = SKIP_BAD_OPTION,
    cache: bool = typer.Option(False, "--cache/--no-cache",
                               help="keep these images' backbone outputs in the feature cache (a frozen run reads "
                               "cached ones either way)"),
    accelerator: Optional[str] = typer.Option(None, help="where to predict: auto, cpu, gpu, mps",
                                              show_default="the run's trainer.accelerator"),
    devices: Optional[str] = typer.Option(None, help="how many devices share the images: auto, 1, 2, '0,1'",
                                          show_default="the run's trainer.devices"),
    strategy: Optional[str] = typer.Option(None, help="auto, ddp (one process per device, rank 0 writes the CSV)",
                                           show_default="the run's trainer.strategy"),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help="machines of a multi-node job (SLURM: "
                                            "--nodes); --devices is per machine", show_default="the run's trainer.num_nodes"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="a progress bar with images/s (terminals only)"),
) -> None:
    """Write image,superclass_index,subclass_index for every image (novel = last index)."""
    from .api import call_scope
    from .pipeline.predict import predict_images
    from .training.distributed import is_global_zero

    with call_scope():
        rows = predict_images(run_dir, images, out, probs=probs, names=names, overwrite=overwrite, skip_bad=skip_bad_images,
                              device=device, cache=cache, accelerator=accelerator, devices=devices,
                              strategy=strategy, num_nodes=num_nodes, runs_devices=True, frame=False,
                              progress=progress)
    if is_global_zero():
        console.print(f"wrote {out}: {rows} images")


@app.command()
def discover(
    run_dir: Path = RUN_DIR_ARGUMENT,
    images: Path = typer.Argument(..., help="images to look at: a flat folder, a nested folder or a CSV (image column)"),
    out: Path = typer.Option(..., "--out", help="folder for clusters.csv, labels.csv, clusters.html, discover.json"),
    groups: Optional[int] = typer.Option(None, "--groups", help="force K groups in each set (the novel-superclass "
                                         "images; each superclass's novel-subclass images)",
                                         show_default="estimated (silhouette)"),
    max_groups: int = typer.Option(40, "--max-groups", help="the largest number of groups tried when estimating"),
    sheet_images: int = typer.Option(12, "--sheet-images", help="central images per cluster on the contact sheet"),
    device: Optional[str] = DEVICE_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite",
                                   help="replace the files of an earlier discover in OUT (labels.csv may hold edits)"),
    skip_bad_images: bool = SKIP_BAD_OPTION,
) -> None:
    """Group the images the run flags novel into candidate new classes to name (then review, train --extend)."""
    from . import api

    d = api.discover(run_dir, images, out, groups=groups, max_groups=max_groups, overwrite=overwrite,
                     skip_bad=skip_bad_images, device=device, sheet_images=sheet_images)
    for s in d.sets:
        how = "estimated" if s["estimated"] else "forced"
        where = "novel superclass" if s["level"] == "superclass" else f"novel subclasses of {s['superclass']}"
        console.print(f"{where}: {s['images']} images in {s['groups']} groups ({how})", markup=False, highlight=False)
    console.print(f"{len(d.clusters)} of {d.images} images flagged novel; wrote {out / 'clusters.csv'}, "
                  f"{out / 'labels.csv'} (rename the clusters there or with 'supersub review {run_dir} --discovered "
                  f"{out}'), {out / 'clusters.html'}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def review(
    run_dir: Path = RUN_DIR_ARGUMENT,
    discovered: Optional[Path] = typer.Option(None, "--discovered", help="a folder written by 'supersub discover': "
                                              "its clusters to name", show_default="none"),
    images: Optional[Path] = typer.Option(None, "--images", help="images whose predictions to browse",
                                          show_default="the folder discover looked at"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels CSV the edits are saved to",
                                          show_default="DISCOVERED/labels.csv"),
    port: int = typer.Option(8765, "--port", help="port of the local web server"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (another than 127.0.0.1 exposes the "
                             "images and labels to the network)"),
    device: Optional[str] = DEVICE_OPTION,
) -> None:
    """A local web page: browse the predictions, name the discovered clusters, save the labels (Ctrl-C stops it)."""
    from . import api

    console.print(f"review of {run_dir}: open http://{host}:{port} in a browser (Ctrl-C stops the server)",
                  markup=False, highlight=False, soft_wrap=True)
    api.review(run_dir, images=images, discovered=discovered, labels=labels, host=host, port=port, device=device)


@app.command()
def evaluate(
    run_dir: Path = RUN_DIR_ARGUMENT,
    images: Path = typer.Option(..., "--images", help="folder of the labelled images, or a nested folder "
                                "<superclass>/<subclass>/ labelled by its folder names"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV: image,superclass_index,subclass_index[,kind]",
                                          show_default="the folder names of --images"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the metrics JSON and the open-set report",
                                       show_default="RUN_DIR/evaluations"),
    device: Optional[str] = DEVICE_OPTION,
    skip_bad_images: bool = SKIP_BAD_OPTION,
    strict: bool = typer.Option(False, "--strict/--no-strict",
                                help="nested folder: refuse a folder that matches no class of the run (else it is "
                                "novel truth, with a warning naming the closest class)"),
) -> None:
    """Print the competition metric table (CE and accuracy overall/seen/unseen per level)."""
    from . import api
    from .pipeline.evaluate import metrics_file

    metrics = api.evaluate(run_dir, images, labels, skip_bad=skip_bad_images, out=out, device=device, strict=strict)
    _print_metrics(metrics, f"{run_dir} on {labels or images}")
    console.print(f"saved {metrics_file(run_dir, images, labels, out)} and its open-set report beside it",
                  soft_wrap=True, markup=False, highlight=False)


@app.command()
def report(
    run_dir: Path = RUN_DIR_ARGUMENT,
    test: Optional[Path] = typer.Option(None, "--test", help="labelled folder: test_truth.csv + test_images/, or "
                                        "<superclass>/<subclass>/ folders; adds metrics, confusions and image grids",
                                        show_default="none: the page shows what the run directory holds"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write", show_default="RUN_DIR/report.html"),
    images: int = typer.Option(24, "--images", help="thumbnails per image grid"),
    device: Optional[str] = DEVICE_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace an existing report"),
    skip_bad_images: bool = SKIP_BAD_OPTION,
) -> None:
    """One self-contained HTML page: config, metrics, training curves, sweeps, confusions, image grids."""
    from . import api

    path = api.report(run_dir, test, out, overwrite=overwrite, device=device, skip_bad=skip_bad_images, images=images)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


@app.command()
def export(
    run_dir: Path = RUN_DIR_ARGUMENT,
    out: Path = typer.Option(..., "--out", help="ONNX file to write; its class names go beside it as .json"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace existing files"),
) -> None:
    """Save the model with its novelty decision as one ONNX graph, for onnxruntime: images in, classes out."""
    from . import api

    result = api.export(run_dir, out, overwrite=overwrite)
    console.print(f"wrote {result['onnx']} ({result['bytes'] / 1e6:.1f} MB, score {result['score']}, input uint8 "
                  f"images 3x{result['image_size']}x{result['image_size']}) and {result['names']}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where data, run and predictions go"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace a previous demo in OUT"),
    epochs: Optional[int] = typer.Option(None, help="training epochs", show_default="30"),
    seed: int = typer.Option(0, help="seed of the data and the training"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="progress bar / epoch lines",
                                            show_default=default_text("trainer.progress")),
) -> None:
    """Synthesise the built-in dataset, train, calibrate, evaluate on its test folder, print the table."""
    from . import api

    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["optim.epochs"] = epochs
    if progress is not None:
        overrides["trainer.progress"] = progress
    result = api.demo(out, overwrite=overwrite, seed=seed, **overrides)
    _print_metrics(result["test"], f"built-in test set ({out / 'data' / 'test_truth.csv'})")
    t = result["train"]["thresholds"]
    console.print(
        f"tau_super={t['tau_super']:.4f} tau_sub={t['tau_sub']:.4f}; run in {out / 'run'}; "
        f"predictions in {out / 'predictions.csv'}; {result['seconds']}s in all"
    )
    found = result["discovered"]
    console.print(f"discover: {found['flagged']} test images flagged novel, in {found['clusters']} clusters "
                  f"({out / 'discovered' / 'clusters.html'}); name them with 'supersub review {out / 'run'} --discovered "
                  f"{out / 'discovered'}', then 'supersub train --extend {out / 'run'} --data "
                  f"{out / 'discovered' / 'labels.csv'}'", markup=False, highlight=False, soft_wrap=True)


@app.command()
def experiment(
    grid: Path = typer.Argument(..., help="grid YAML: data, test, base, grid (key: [values]), seeds, out"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder of the runs and the results table",
                                       show_default="the grid's 'out', else runs/<grid file name>"),
    set_: list[str] = typer.Option([], "--set", help="a config key for every run, e.g. --set optim.epochs=2 "
                                   "(repeatable; not a grid key)", show_default="none"),
    dry_run: bool = typer.Option(False, "--dry-run/--no-dry-run", help="list the runs and what each would do"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite",
                                   help="retrain run folders that hold another configuration"),
) -> None:
    """Train a grid of configs (one run after another), evaluate each run, collect one results table.

    Finished runs are skipped and interrupted ones resumed, so the same command continues a grid.
    """
    from . import api
    from .pipeline.compare import ACCURACY, METRICS, frame_rich_table

    result = api.experiment(grid, out, overwrite=overwrite, dry_run=dry_run, **parse_sets(set_))
    shown = [c for c in ("run", "status", "train_seconds", *ACCURACY) if c in result.table.columns]  # fits a terminal
    done = "planned" if dry_run else f"every column in {result.out / 'results.csv'} and results.md"
    console.print(frame_rich_table(result.table[shown].rename(columns=METRICS),
                                   title=f"{grid}: {len(result.table)} runs in {result.out}", caption=done))


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="evaluated run directories, or an experiment folder (all its "
                                      "runs)"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="a run of the group the others are compared "
                                            "with", show_default="the first run"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="group by these config keys (comma-separated), "
                                           "e.g. model.approach", show_default="runs differing only by seed"),
    evaluation: Optional[str] = typer.Option(None, "--evaluation", help="which RUN/evaluations/NAME.json to read",
                                             show_default="the run's only one"),
    out: Path = typer.Option(Path("compare"), "--out", help="folder for compare.csv, compare.md, compare_deltas.csv "
                             "and compare_delta.png"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace those files"),
) -> None:
    """Table of the competition metrics and AUROCs (mean ± std over seeds) and a chart of the deltas."""
    from . import api
    from .pipeline.compare import by_metric, delta_cells, frame_rich_table, summary_cells

    keys = [k.strip() for k in group_by.split(",") if k.strip()] if group_by else None
    c = api.compare(runs, baseline=baseline, group_by=keys, evaluation=evaluation, out=out, overwrite=overwrite)
    console.print(frame_rich_table(by_metric(summary_cells(c)), title="mean ± std over seeds",
                                   caption="accuracy %, CE nats, AUROC of the novelty score"))
    if len(c.deltas):
        console.print(frame_rich_table(by_metric(delta_cells(c)), title=f"change against {c.baseline}"))
    console.print(f"wrote {', '.join(str(f) for f in c.files)}")


def _interrupted() -> None:
    """A Ctrl-C in any phase: one line saying how to go on, exit 130 (never 0, never a traceback)."""
    err_console.print(f"interrupted; continue with: {continue_command(sys.argv[1:])}", markup=False,
                      highlight=False, soft_wrap=True)
    sys.exit(INTERRUPTED)


def main() -> None:
    """Console-script entry point: user errors are one line and exit code 2, never a traceback; a Ctrl-C is
    one line and exit code 130."""
    _setup_logging()
    usage_errors, aborts = click_errors()
    try:
        code = app(standalone_mode=False)
        # typer turns a KeyboardInterrupt raised inside a command into Exit(130) and, outside standalone mode,
        # returns that code instead of raising; supersub's commands return None and never exit with 130
        if code == INTERRUPTED:
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except SupersubError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except aborts:
        sys.exit(1)
    except usage_errors as e:  # usage mistakes: unknown option or command, bad or missing value
        if type(e).__name__ == "NoArgsIsHelpError":  # bare 'supersub' / 'supersub data': the help, as typer shows it
            text = getattr(e, "format_message", lambda: "")()
            if text.strip():
                err_console.print(text, highlight=False, markup=False)
            sys.exit(2)
        err_console.print(f"[bold red]error:[/] {escape(usage_message(e))}", highlight=False, soft_wrap=True)
        sys.exit(int(getattr(e, "exit_code", 2) or 2))


if __name__ == "__main__":
    main()
