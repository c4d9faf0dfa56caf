"""The ``supersub`` command line: parses options, calls :mod:`supersub.api`, prints with rich.

Every :class:`SupersubError` becomes one line on stderr and exit code 2; nothing else happens here.
"""

from __future__ import annotations

import difflib

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from .errors import SupersubError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hierarchical open-set image classification.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the built-in synthetic one, exposure sets.")
app.add_typer(data_app, name="data")
cache_app = typer.Typer(no_args_is_help=True, help="The disk caches of decoded images and frozen backbone outputs.")
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


def _default(key: str) -> str:
    """The config default of a dotted key, for ``--help`` of options that fall back to the config."""
    from .config import build_config, config_to_dict

    node: Any = config_to_dict(build_config({}, "defaults"))
    for part in key.split("."):
        node = node[part]
    if isinstance(node, list):
        return ",".join(str(v) for v in node)
    return "none" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


def _pair_default(first: str, second: str) -> str:
    return f"{_default(first)},{_default(second)}"


# Options that train and pretrain share: one declaration, one help text (typer reads an OptionInfo, never changes it).
# the panels of `train --help` (and of the options other commands share with it)
DATA, MODEL, TRAINING, NOVELTY, HARDWARE, RUN = ("Data", "Model", "Training", "Novelty detection", "Hardware",
                                                 "Settings and the run folder")
CONFIG_OPTION = typer.Option(None, "--config", help="a YAML settings file; options given here win",
                             show_default="none", rich_help_panel=RUN)
EPOCHS_OPTION = typer.Option(None, help="passes over the training images", show_default=_default("optim.epochs"),
                             rich_help_panel=TRAINING)
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", help="images per training step",
                                 show_default=_default("optim.batch_size"), rich_help_panel=TRAINING)
IMAGE_SIZE_OPTION = typer.Option(None, "--image-size", help="images are decoded at this side length (pixels)",
                                 show_default=_default("data.image_size"), rich_help_panel=DATA)
VAL_FRACTION_OPTION = typer.Option(None, "--val-fraction", help="share of each subclass's images kept to validate",
                                   show_default=_default("data.val_fraction"), rich_help_panel=DATA)
ACCELERATOR_OPTION = typer.Option(None, help="where to train: auto, cpu, gpu, mps",
                                  show_default=_default("trainer.accelerator"), rich_help_panel=HARDWARE)
PROGRESS_OPTION = typer.Option(None, "--progress/--no-progress",
                               help="a progress bar on a terminal (one line per epoch in a log file)",
                               show_default=_default("trainer.progress"), rich_help_panel=RUN)
SET_OPTION = typer.Option([], "--set", metavar="KEY=VALUE", help="any setting by its key, e.g. --set model.width=64 (repeatable; "
                          "docs/guide.md lists them)", show_default="none", rich_help_panel=RUN)


def _parse_sets(sets: list[str], option: str = "--set", example: str = "optim.lr=0.001") -> dict[str, Any]:
    """``--set optim.lr=0.001`` style overrides; values are parsed as YAML scalars/lists."""
    import yaml

    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise SupersubError(f"{option} {item!r}: expected KEY=VALUE, e.g. {example}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise SupersubError(f"{option} {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out


def _score_options(items: list[str]) -> dict[str, Any]:
    """``--score-option k=50`` items as ``novelty.score_options``."""
    return _parse_sets(items, "--score-option", "k=50")


def _level_pair(text: str | None, option: str, keys: tuple[str, str], example: str) -> dict[str, float]:
    """``--novel-share 0.28,0.79`` style SUPER,SUB values as novelty options (empty when not given)."""
    if text is None:
        return {}
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise SupersubError(f"{option} {text!r}: expected two numbers SUPER,SUB, e.g. {option} {example}")
    return dict(zip(keys, values))


def _operating_options(novel_share: str | None, recall: str | None) -> dict[str, float]:
    """The NoveltyConfig fields set by ``--novel-share`` and ``--recall`` (shared by train and calibrate)."""
    return {**_level_pair(novel_share, "--novel-share", ("novel_share_super", "novel_share_sub"), "0.28,0.79"),
            **_level_pair(recall, "--recall", ("super_recall", "sub_recall"), "0.95,0.5")}


NOVEL_SHARE_HELP = ("expected objective: shares of test images with a novel superclass and with a novel subclass "
                    "(SUPER,SUB; the default is the competition's)")
SCORE_OPTION_HELP = ("an option of the score's detector, KEY=VALUE, e.g. k=50 (knn, knn-class), dim=64 (vim), "
                     "temperature=2 (energy); repeatable (novelty.score_options)")
RECALL_HELP = "recall objective: share of seen validation images each threshold keeps (SUPER,SUB)"


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    from .metrics import metrics_rich_table

    console.print(metrics_rich_table(metrics, title=title))


@data_app.command("synth")
def data_synth(
    out_dir: Path = typer.Argument(..., help="folder to create (must not exist or be empty)"),
    seed: int = typer.Option(0, help="random seed: the same seed gives byte-identical files"),
) -> None:
    """Write the built-in procedural dataset in the competition layout (train/test/novel pools)."""
    from . import api

    counts = api.synth(out_dir, seed=seed)
    console.print(f"wrote {out_dir}: {counts}")


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", rich_help_panel=DATA, show_default="required",
                                        help="your labelled images: a competition folder (train_data.csv and "
                                        "mappings), a folder of superclass folders of subclass folders, or a "
                                        "CSV of image, superclass and subclass names"),
    out: Optional[Path] = typer.Option(None, "--out", rich_help_panel=DATA,
                                      help="run folder to create (not needed with --print-config)", show_default="none"),
    novel_data: Optional[Path] = typer.Option(
        None, "--novel-data", rich_help_panel=DATA, show_default="none",
        help="images of none of your classes (a folder or a CSV with an image column): the model learns to call "
        "such images novel, and they help set the superclass threshold"),
    novel_count: Optional[int] = typer.Option(None, "--novel-count", rich_help_panel=DATA, show_default="all",
                                              help="use at most this many --novel-data images"),
    novel_sub_data: Optional[Path] = typer.Option(
        None, "--novel-sub-data", rich_help_panel=DATA, show_default="none",
        help="images of new subclasses of your superclasses: a folder of superclass folders, or a CSV "
        "(image, superclass_index)"),
    novel_sub_count: Optional[int] = typer.Option(None, "--novel-sub-count", rich_help_panel=DATA, show_default="all",
                                                  help="use at most this many --novel-sub-data images"),
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    val_fraction: Optional[float] = VAL_FRACTION_OPTION,
    holdout_fraction: Optional[float] = typer.Option(
        None, "--holdout-fraction", rich_help_panel=DATA, show_default=_default("data.holdout_fraction"),
        help="share of each superclass's subclasses hidden from the calibration models to stand for new ones"),
    skip_bad_images: Optional[bool] = typer.Option(None, "--skip-bad-images/--no-skip-bad-images",
                                                   rich_help_panel=RUN, help="warn about unreadable images and skip "
                                                   "them", show_default=_default("data.skip_bad_images")),
    backbone: Optional[str] = typer.Option(
        None, rich_help_panel=MODEL, show_default=_default("model.backbone"),
        help="the image network: efficientnet_lite0/1/2 (ImageNet weights included), cnn (trained from scratch) "
        "or any timm model name"),
    pretrained: Optional[bool] = typer.Option(
        None, "--pretrained/--no-pretrained", rich_help_panel=MODEL, show_default="yes for efficientnet_lite*",
        help="start from ImageNet weights (included for efficientnet_lite*, else downloaded by timm)"),
    weights: Optional[Path] = typer.Option(None, "--weights", rich_help_panel=MODEL, show_default="none",
                                           help="start the backbone from this file (a state dict or a model.pt)"),
    input_size: Optional[int] = typer.Option(None, "--input-size", rich_help_panel=MODEL,
                                             help="images are resized to this inside the model",
                                             show_default="224 for efficientnet_lite*"),
    approach: Optional[str] = typer.Option(
        None, rich_help_panel=MODEL, show_default=_default("model.approach"),
        help="two-heads (one network, two outputs), two-models (a network per level), cosine, sub-only, moe (one "
        "subclass expert per superclass) or bagging (several networks; see --members)"),
    head: Optional[str] = typer.Option(
        None, rich_help_panel=MODEL, show_default=_default("model.head"),
        help="the layer on top of the network: linear, cosine, mlp or xgboost (boosted trees)"),
    members: Optional[int] = typer.Option(None, "--members", rich_help_panel=MODEL,
                                          help="bagging: how many networks", show_default=_default("model.members")),
    bootstrap: Optional[bool] = typer.Option(
        None, "--bootstrap/--no-bootstrap", rich_help_panel=MODEL, show_default="yes unless --subsample < 1",
        help="bagging: each network draws its training images with replacement"),
    subsample: Optional[float] = typer.Option(
        None, "--subsample", rich_help_panel=MODEL, show_default=_default("model.subsample"),
        help="bagging: share of the training images each network draws"),
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    lr: Optional[float] = typer.Option(None, rich_help_panel=TRAINING, help="learning rate",
                                       show_default=_default("optim.lr")),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", rich_help_panel=TRAINING,
                                                 help="weight decay (AdamW)", show_default=_default("optim.weight_decay")),
    finetune: Optional[str] = typer.Option(
        None, rich_help_panel=TRAINING, show_default="frozen with starting weights, else full",
        help="what trains: frozen (only the heads, on features computed once), partial (also the last "
        "--trainable-stages), full, discriminative or gradual (the whole network)"),
    trainable_stages: Optional[int] = typer.Option(
        None, "--trainable-stages", rich_help_panel=TRAINING, show_default=_default("optim.trainable_stages"),
        help="partial: how many of the backbone's last stages train"),
    alpha: Optional[float] = typer.Option(None, rich_help_panel=TRAINING, show_default=_default("loss.alpha"),
                                          help="weight of the loss that keeps the two levels' answers consistent"),
    temperature: Optional[float] = typer.Option(None, rich_help_panel=TRAINING,
                                                help="temperature of that consistency loss",
                                                show_default=_default("loss.temperature")),
    seed: Optional[int] = typer.Option(None, rich_help_panel=TRAINING, help="random seed: the same seed, the same run",
                                       show_default=_default("seed")),
    ptr: Optional[bool] = typer.Option(
        None, "--ptr/--no-ptr", rich_help_panel=TRAINING, show_default=_default("ptr.enabled"),
        help="pseudo-task regularisation: an extra regression onto random targets that keeps features general "
        "(not with --finetune frozen)"),
    ptr_ratio: Optional[float] = typer.Option(
        None, "--ptr-ratio", rich_help_panel=TRAINING, show_default=_default("ptr.ratio"),
        help="--ptr: how much weaker the extra task's gradient is kept than the classification's"),
    ptr_loss: Optional[str] = typer.Option(None, "--ptr-loss", rich_help_panel=TRAINING,
                                           help="--ptr: smooth-l1 or l2", show_default=_default("ptr.loss")),
    ptr_target: Optional[str] = typer.Option(
        None, "--ptr-target", rich_help_panel=TRAINING, show_default=_default("ptr.target"),
        help="--ptr: random targets drawn from normal or uniform"),
    score: Optional[str] = typer.Option(
        None, rich_help_panel=NOVELTY, show_default=_default("novelty.score"),
        help="how \"novel\" is measured: msp, maxlogit, energy, entropy, gen, mahalanobis, knn, knn-class, vim, probe "
        "(bagging also mi, expected-entropy); one per level as SUPER+SUB"),
    score_option: list[str] = typer.Option([], "--score-option", metavar="KEY=VALUE", rich_help_panel=NOVELTY,
                                           help=SCORE_OPTION_HELP,
                                           show_default="none"),
    objective: Optional[str] = typer.Option(
        None, rich_help_panel=NOVELTY, show_default=_default("novelty.objective"),
        help="what the thresholds aim for: balanced (seen and novel accuracy alike), expected, eer or recall"),
    novel_share: Optional[str] = typer.Option(None, "--novel-share", rich_help_panel=NOVELTY, help=NOVEL_SHARE_HELP,
                                              show_default=_pair_default("novelty.novel_share_super",
                                                                         "novelty.novel_share_sub")),
    recall: Optional[str] = typer.Option(None, "--recall", rich_help_panel=NOVELTY, help=RECALL_HELP,
                                         show_default=_pair_default("novelty.super_recall", "novelty.sub_recall")),
    tau_super: Optional[float] = typer.Option(None, "--tau-super", rich_help_panel=NOVELTY, show_default="calibrated",
                                              help="set the superclass threshold by hand, in the score's units"),
    tau_sub: Optional[float] = typer.Option(None, "--tau-sub", rich_help_panel=NOVELTY, show_default="calibrated",
                                            help="set the subclass threshold by hand, in the score's units"),
    oe: Optional[str] = typer.Option(None, "--oe", rich_help_panel=NOVELTY, show_default=_default("novelty.oe"),
                                     help="how --novel-data trains: uniform (no class is likely) or class (an extra "
                                     "\"novel\" output)"),
    accelerator: Optional[str] = ACCELERATOR_OPTION,
    devices: Optional[str] = typer.Option(None, rich_help_panel=HARDWARE, help="how many devices: auto, 1, 2, '0,1'",
                                          show_default=_default("trainer.devices")),
    strategy: Optional[str] = typer.Option(None, rich_help_panel=HARDWARE,
                                           help="several devices: auto, ddp, ...", show_default=_default("trainer.strategy")),
    precision: Optional[str] = typer.Option(None, rich_help_panel=HARDWARE,
                                            help="number format: 32-true, 16-mixed, bf16-mixed",
                                            show_default=_default("trainer.precision")),
    extend: Optional[Path] = typer.Option(
        None, "--extend", rich_help_panel=RUN, show_default="none",
        help="a finished run to grow: --data is then a CSV of image, superclass and subclass names (such as "
        "the labels.csv of discover); the run's images plus these train with its settings into --out (default: "
        "RUN-extended)"),
    progress: Optional[bool] = PROGRESS_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    set_: list[str] = SET_OPTION,
    print_config: bool = typer.Option(False, "--print-config/--no-print-config", rich_help_panel=RUN,
                                      help="print the settings this command would use, as YAML, and stop"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", rich_help_panel=RUN,
                                   help="replace an existing run folder"),
    resume: bool = typer.Option(False, "--resume/--no-resume", rich_help_panel=RUN,
                                help="continue an interrupted run where it stopped"),
) -> None:
    """Train a model on labelled images, calibrate its "novel" thresholds and save everything in the --out folder."""
    from . import api

    overrides: dict[str, Any] = {
        "optim.epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr, "optim.weight_decay": weight_decay,
        "seed": seed, "model.backbone": backbone, "data.image_size": image_size, "loss.alpha": alpha,
        "model.weights": str(weights) if weights else None, "model.input_size": input_size,
        "model.approach": approach, "model.head": head, "optim.finetune": finetune, "model.members": members,
        "model.bootstrap": bootstrap, "model.subsample": subsample,
        "optim.trainable_stages": trainable_stages, "model.pretrained": pretrained,
        "loss.temperature": temperature, "novelty.tau_super": tau_super, "novelty.tau_sub": tau_sub,
        "data.holdout_fraction": holdout_fraction, "data.val_fraction": val_fraction,
        "data.novel_data": str(novel_data) if novel_data else None, "data.novel_count": novel_count,
        "data.novel_sub_data": str(novel_sub_data) if novel_sub_data else None,
        "data.novel_sub_count": novel_sub_count, "novelty.score": score, "novelty.objective": objective,
        "novelty.oe": oe,
        "trainer.accelerator": accelerator, "trainer.devices": devices, "trainer.strategy": strategy,
        "trainer.precision": precision, "data.skip_bad_images": skip_bad_images, "trainer.progress": progress,
        "ptr.enabled": ptr, "ptr.ratio": ptr_ratio, "ptr.loss": ptr_loss, "ptr.target": ptr_target,
    }
    overrides.update({f"novelty.{k}": v for k, v in _operating_options(novel_share, recall).items()})
    if score_option:
        overrides["novelty.score_options"] = _score_options(score_option)
    # flags left out are None; a --set KEY=null is kept: it sets the key to None (unsets a YAML threshold)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(_parse_sets(set_))
    if data is None:  # checked here, not by typer: a required option's marker column cost --help 2 of 80 columns
        raise SupersubError("Missing option '--data': the labelled images to train on (see 'supersub train --help')")
    if print_config:
        from .config import config_yaml

        console.print(config_yaml(api.resolve_config(config, **overrides)), end="", markup=False, highlight=False)
        return
    if out is None and extend is None:
        raise SupersubError("Missing option '--out': the run directory to create, needed unless --print-config (see 'supersub train --help')")
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
    table.caption = (f"{t['score']}: tau_super={t['tau_super']:.4g} tau_sub={t['tau_sub']:.4g} (the mean over the "
                     f"calibration models); val acc: each head's argmax, before the novelty thresholds")
    table.caption_justify = "left"
    return table


@app.command()
def pretrain(
    data: Path = typer.Option(..., "--data", help="class folder: root/<class>/*.jpg (e.g. Tiny-ImageNet's train/)"),
    out: Path = typer.Option(..., "--out", help="checkpoint to write (load it with 'train --weights OUT')"),
    config: Optional[Path] = CONFIG_OPTION,
    classes: Optional[Path] = typer.Option(None, "--classes", help="text file of class folders to use, one a line",
                                           show_default="all folders"),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="at most N images per class (seeded sample)",
                                            show_default="all"),
    test_data: Optional[Path] = typer.Option(
        None, "--test-data", help="class folder with the same class names: its accuracy goes in the summary",
        show_default="none"),
    binary_partition: Optional[float] = typer.Option(
        None, "--binary-partition", help="weight B of the extra binary tasks on random halves of the classes: (1-B) x classification + B x binary (0 = off)",
        show_default=_default("pretrain.binary_partition")),
    partitions: Optional[int] = typer.Option(None, "--partitions", help="how many random halvings of the classes (binary tasks)",
                                             show_default=_default("pretrain.partitions")),
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    lr: Optional[float] = typer.Option(None, help="learning rate (of the backbone when fine-tuning from weights)",
                                       show_default=_default("optim.lr")),
    seed: Optional[int] = typer.Option(None, help="random seed: also fixes the partitions",
                                       show_default=_default("seed")),
    backbone: Optional[str] = typer.Option(None, help="as for train: efficientnet_lite0/1/2, 'cnn' or a timm name",
                                           show_default=_default("model.backbone")),
    pretrained: Optional[bool] = typer.Option(
        None, "--pretrained/--no-pretrained", help="start from ImageNet weights",
        show_default="yes for the bundled backbones"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="start from a local backbone state dict",
                                           show_default="none"),
    finetune: Optional[str] = typer.Option(
        None, help="full, or discriminative (backbone at lr, new head at head_lr_mult x lr)",
        show_default="full from scratch, discriminative from weights"),
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    val_fraction: Optional[float] = VAL_FRACTION_OPTION,
    accelerator: Optional[str] = ACCELERATOR_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace an existing checkpoint and its run"),
    resume: bool = typer.Option(False, "--resume/--no-resume",
                                help="continue an interrupted run from OUT.d/checkpoints/last.ckpt"),
    progress: Optional[bool] = PROGRESS_OPTION,
    set_: list[str] = SET_OPTION,
) -> None:
    """Train a backbone on a folder of classified images (optionally with binary tasks on random class halves), for train --weights."""
    from . import api

    overrides: dict[str, Any] = {
        "pretrain.classes": str(classes) if classes else None, "pretrain.per_class": per_class,
        "pretrain.binary_partition": binary_partition, "pretrain.partitions": partitions,
        "optim.epochs": epochs, "optim.batch_size": batch_size, "optim.lr": lr, "seed": seed,
        "model.backbone": backbone, "model.pretrained": pretrained, "model.weights": str(weights) if weights else None,
        "optim.finetune": finetune, "data.image_size": image_size, "data.val_fraction": val_fraction,
        "trainer.accelerator": accelerator, "trainer.progress": progress,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(_parse_sets(set_))  # KEY=null kept, as for train
    summary = api.pretrain(data, out, config, test_data=test_data, overwrite=overwrite, resume=resume, **overrides)
    accs = ", ".join(f"{k} {summary[k]}%" for k in ("val_acc", "test_acc") if k in summary)
    console.print(f"[bold green]pretrained[/] {out} ({summary['n_classes']} classes, {summary['epochs_run']} epochs, "
                  f"{summary['seconds']}s){': ' + accs if accs else ''}")


@app.command()
def calibrate(
    run_dir: Path = typer.Argument(..., help="a run directory made by 'supersub train'"),
    score: Optional[str] = typer.Option(None, help="novelty score", show_default="the run's"),
    score_option: list[str] = typer.Option([], "--score-option", help=SCORE_OPTION_HELP,
                                           show_default="the run's for the same score, else none"),
    objective: Optional[str] = typer.Option(None, help="balanced, expected, eer or recall", show_default="the run's"),
    novel_share: Optional[str] = typer.Option(None, "--novel-share", help=NOVEL_SHARE_HELP, show_default="the run's"),
    recall: Optional[str] = typer.Option(None, "--recall", help=RECALL_HELP, show_default="the run's"),
    transfer: Optional[str] = typer.Option(None, help="quantile or absolute", show_default="the run's"),
    super_protocol: Optional[str] = typer.Option(
        None, "--super-protocol", help="auto, outliers, recall, or loso (needs a run trained with loso)", show_default="the run's"
    ),
    tau_super: Optional[float] = typer.Option(None, "--tau-super", help="hand-set superclass threshold",
                                              show_default="calibrated"),
    tau_sub: Optional[float] = typer.Option(None, "--tau-sub", help="hand-set subclass threshold",
                                            show_default="calibrated"),
) -> None:
    """Re-choose the novelty score and thresholds of a trained run, without retraining."""
    from . import api

    options = {"score": score, "objective": objective, "transfer": transfer, "super_protocol": super_protocol,
               "tau_super": tau_super, "tau_sub": tau_sub}
    options.update(_operating_options(novel_share, recall))
    if score_option:
        options["score_options"] = _score_options(score_option)
    result = api.calibrate(run_dir, **{k: v for k, v in options.items() if v is not None})
    t = result["thresholds"]
    console.print(
        f"[bold green]calibrated[/] {run_dir}: {t['score']} tau_super={t['tau_super']:.4g} tau_sub={t['tau_sub']:.4g}"
    )


@data_app.command("tin-outliers")
def data_tin_outliers(
    tin_dir: Path = typer.Argument(..., help="Tiny-ImageNet folder (classes.csv, train/<wnid>/)"),
    out: Path = typer.Argument(..., help="flat folder to create, for --novel-data"),
    count: Optional[int] = typer.Option(None, help="a seeded sample of N images", show_default="all"),
    seed: int = typer.Option(0, help="seed of the sample"),
) -> None:
    """Outlier-exposure images: Tiny-ImageNet classes that are no bird, dog or reptile (fish counts as novel)."""
    from .data.exposure import write_tin_outliers

    console.print(f"wrote {out}: {write_tin_outliers(tin_dir, out, count, seed)} images")


@data_app.command("tin-novel-sub")
def data_tin_novel_sub(
    tin_dir: Path = typer.Argument(..., help="Tiny-ImageNet folder (classes.csv, train/<wnid>/)"),
    out: Path = typer.Argument(..., help="folder to create, OUT/<superclass>/<wnid>/, for --novel-sub-data"),
    superclasses: Optional[str] = typer.Option(
        None, help="comma-separated superclasses to keep, e.g. bird,dog", show_default="all"
    ),
    count: Optional[int] = typer.Option(None, help="a seeded sample of N images", show_default="all"),
    seed: int = typer.Option(0, help="seed of the sample"),
) -> None:
    """Novel-subclass images: bird/dog/reptile classes of Tiny-ImageNet that the competition lacks."""
    from .data.exposure import write_tin_novel_sub

    keep = [s.strip() for s in superclasses.split(",") if s.strip()] if superclasses else None
    console.print(f"wrote {out}: {write_tin_novel_sub(tin_dir, out, keep, count, seed)} images")


CACHE_DIR_OPTION = typer.Option(None, "--dir", help="cache folder (a run's data.cache_dir)",
                                show_default="$SUPERSUB_CACHE_DIR, else ~/.cache/supersub")


def _cache_folder(folder: Optional[Path]) -> Path:
    from .models.feature_cache import default_cache_dir

    return folder if folder is not None else default_cache_dir()


@cache_app.command("info")
def cache_info(folder: Optional[Path] = CACHE_DIR_OPTION) -> None:
    """Files, size, oldest and newest use, and the size limit of a cache folder."""
    import datetime as dt

    from .data.cache_limit import cache_info as info

    i = info(_cache_folder(folder))
    when = {k: "-" if i[k] is None else dt.datetime.fromtimestamp(float(i[k])).isoformat(" ", "seconds")  # type: ignore[arg-type]
            for k in ("oldest_use", "newest_use")}
    limit = "none" if i["limit_bytes"] is None else f"{int(i['limit_bytes']) / 1e9:.3g} GB"  # type: ignore[arg-type]
    console.print(f"{i['folder']}: {i['files']} files, {int(i['bytes']) / 1e6:.1f} MB (limit {limit}; least recently "  # type: ignore[arg-type]
                  f"used deleted first); oldest use {when['oldest_use']}, newest {when['newest_use']}",
                  markup=False, highlight=False, soft_wrap=True)


@cache_app.command("clear")
def cache_clear(
    folder: Optional[Path] = CACHE_DIR_OPTION,
    older_than: Optional[float] = typer.Option(None, "--older-than", help="only files not used for this many days",
                                               show_default="all"),
) -> None:
    """Delete supersub's cache files (images-*.pt, features-*.pt; nothing else in the folder)."""
    from .data.cache_limit import clear_cache

    where = _cache_folder(folder)
    files, freed = clear_cache(where, older_than)
    console.print(f"{where}: removed {files} files, {freed / 1e6:.1f} MB", markup=False, highlight=False, soft_wrap=True)


DEVICE_HELP = "inference device: cpu, cuda, cuda:1, mps or auto"


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="a run directory made by 'supersub train'"),
    images: Path = typer.Argument(..., help="images to classify: a flat folder, a nested folder or a CSV (image column)"),
    out: Path = typer.Option(..., "--out", help="predictions CSV to write"),
    probs: bool = typer.Option(False, "--probs/--no-probs", help="also write super_prob_<i> and sub_prob_<j> columns"),
    names: bool = typer.Option(False, "--names/--no-names", help="also write superclass_name and subclass_name"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP, show_default="the run's accelerator"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace an existing predictions file"),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images/--no-skip-bad-images",
                                         help="warn and skip unreadable images"),
    cache: bool = typer.Option(False, "--cache/--no-cache",
                               help="keep these images' backbone outputs in the feature cache (a frozen run reads "
                               "cached ones either way)"),
    accelerator: Optional[str] = typer.Option(None, help="where to predict: auto, cpu, gpu, mps",
                                              show_default="the run's trainer.accelerator"),
    devices: Optional[str] = typer.Option(None, help="how many devices share the images: auto, 1, 2, '0,1'",
                                          show_default="the run's trainer.devices"),
    strategy: Optional[str] = typer.Option(None, help="auto, ddp (one process per device, rank 0 writes the CSV)",
                                           show_default="the run's trainer.strategy"),
    num_nodes: int = typer.Option(1, "--num-nodes", help="machines of a multi-node job (SLURM: --nodes); --devices "
                                  "is per machine"),
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
    run_dir: Path = typer.Argument(..., help="a run directory made by 'supersub train'"),
    images: Path = typer.Argument(..., help="images to look at: a flat folder, a nested folder or a CSV (image column)"),
    out: Path = typer.Option(..., "--out", help="folder for clusters.csv, labels.csv, clusters.html, discover.json"),
    groups: Optional[int] = typer.Option(None, "--groups", help="force K groups in each set (the novel-superclass "
                                         "images; each superclass's novel-subclass images)",
                                         show_default="estimated (silhouette)"),
    max_groups: int = typer.Option(40, "--max-groups", help="the largest number of groups tried when estimating"),
    sheet_images: int = typer.Option(12, "--sheet-images", help="central images per cluster on the contact sheet"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP, show_default="the run's accelerator"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite",
                                   help="replace the files of an earlier discover in OUT (labels.csv may hold edits)"),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images/--no-skip-bad-images",
                                         help="warn and skip unreadable images"),
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
    run_dir: Path = typer.Argument(..., help="a run directory made by 'supersub train'"),
    discovered: Optional[Path] = typer.Option(None, "--discovered", help="a folder written by 'supersub discover': "
                                              "its clusters to name", show_default="none"),
    images: Optional[Path] = typer.Option(None, "--images", help="images whose predictions to browse",
                                          show_default="the folder discover looked at"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels CSV the edits are saved to",
                                          show_default="DISCOVERED/labels.csv"),
    port: int = typer.Option(8765, "--port", help="port of the local web server"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (another than 127.0.0.1 exposes the "
                             "images and labels to the network)"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP, show_default="the run's accelerator"),
) -> None:
    """A local web page: browse the predictions, name the discovered clusters, save the labels (Ctrl-C stops it)."""
    from . import api

    console.print(f"review of {run_dir}: open http://{host}:{port} in a browser (Ctrl-C stops the server)",
                  markup=False, highlight=False, soft_wrap=True)
    api.review(run_dir, images=images, discovered=discovered, labels=labels, host=host, port=port, device=device)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory made by 'supersub train'"),
    images: Path = typer.Option(..., "--images", help="folder of the labelled images, or a nested folder "
                                "<superclass>/<subclass>/ labelled by its folder names"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV: image,superclass_index,subclass_index[,kind]",
                                          show_default="the folder names of --images"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for the metrics JSON and the open-set report",
                                       show_default="RUN_DIR/evaluations"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP, show_default="the run's accelerator"),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images/--no-skip-bad-images",
                                         help="warn and skip unreadable images"),
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
    run_dir: Path = typer.Argument(..., help="a run directory made by 'supersub train'"),
    test: Optional[Path] = typer.Option(None, "--test", help="labelled folder: test_truth.csv + test_images/, or "
                                        "<superclass>/<subclass>/ folders; adds metrics, confusions and image grids",
                                        show_default="none: the page shows what the run directory holds"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write", show_default="RUN_DIR/report.html"),
    images: int = typer.Option(24, "--images", help="thumbnails per image grid"),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP, show_default="the run's accelerator"),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="replace an existing report"),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images/--no-skip-bad-images",
                                         help="warn and skip unreadable images"),
) -> None:
    """One self-contained HTML page: config, metrics, training curves, sweeps, confusions, image grids."""
    from . import api

    path = api.report(run_dir, test, out, overwrite=overwrite, device=device, skip_bad=skip_bad_images, images=images)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory made by 'supersub train'"),
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
                                            show_default=_default("trainer.progress")),
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

    result = api.experiment(grid, out, overwrite=overwrite, dry_run=dry_run, **_parse_sets(set_))
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


def _click_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage/click exceptions, abort exceptions) of the typer in use.

    Recent typer (0.29 here) raises its own bundled copy of click's exceptions (``typer._click.exceptions``, all
    subclasses of :class:`typer.TyperException`), which are not ``click.ClickException``; older typers raise
    click's own. Both are caught, so either typer gives one line.
    """
    errors: list[type[BaseException]] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    aborts: list[type[BaseException]] = [typer.Abort]
    try:
        import click

        errors.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover - recent typer no longer needs click
        pass
    return tuple(errors), tuple(aborts)


def usage_message(e: BaseException) -> str:
    """A typer/click usage error as one line: the message (keeping the "Did you mean" hint) and where to look."""
    format_message = getattr(e, "format_message", None)
    message = format_message() if callable(format_message) else str(e)
    possibilities = getattr(e, "possibilities", None)
    option = getattr(e, "option_name", None)
    if option and possibilities:  # an unknown option close to known ones (closest first, as difflib ranks them)
        best, *others = possibilities
        # only near ties are named too: --epoch is --epochs, and naming --approach beside it only misleads
        closeness = {o: difflib.SequenceMatcher(None, option, o).ratio() for o in possibilities}
        others = [o for o in others if closeness[o] >= closeness[best] - 0.05]
        also = f" (or {', '.join(others)})" if others else ""
        message = f"No such option: {option}. Did you mean {best}{also}?"
    message = " ".join(message.split())
    ctx = getattr(e, "ctx", None)
    if ctx is not None and getattr(ctx, "command_path", None):
        message += f" (see '{ctx.command_path} --help')"
    return message


RESUMABLE = ("train", "pretrain")  # commands with --resume; `experiment` resumes its runs by itself
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2); typer returns it for a Ctrl-C


def continue_command(argv: list[str]) -> str:
    """The command that continues an interrupted ``supersub ARGV``: train and pretrain with ``--resume``
    (and never ``--overwrite``, which would delete the checkpoints), every other command as it was given."""
    import shlex

    args = list(argv)
    command = next((a for a in args if not a.startswith("-")), "")
    if command in RESUMABLE:
        args = [a for a in args if a not in ("--overwrite", "--no-overwrite", "--resume", "--no-resume")]
        args.append("--resume")
    return shlex.join(["supersub", *args])


def _interrupted() -> None:
    """A Ctrl-C in any phase: one line saying how to go on, exit 130 (never 0, never a traceback)."""
    err_console.print(f"interrupted; continue with: {continue_command(sys.argv[1:])}", markup=False,
                      highlight=False, soft_wrap=True)
    sys.exit(INTERRUPTED)


def main() -> None:
    """Console-script entry point: user errors are one line and exit code 2, never a traceback; a Ctrl-C is
    one line and exit code 130."""
    _setup_logging()
    click_errors, aborts = _click_errors()
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
    except click_errors as e:  # usage mistakes: unknown option or command, bad or missing value
        if type(e).__name__ == "NoArgsIsHelpError":  # bare 'supersub' / 'supersub data': the help, as typer shows it
            text = getattr(e, "format_message", lambda: "")()
            if text.strip():
                err_console.print(text, highlight=False, markup=False)
            sys.exit(2)
        err_console.print(f"[bold red]error:[/] {escape(usage_message(e))}", highlight=False, soft_wrap=True)
        sys.exit(int(getattr(e, "exit_code", 2) or 2))


if __name__ == "__main__":
    main()
