"""The options of ``train``, ``pretrain`` and ``calibrate`` that set config keys, declared once.

A :class:`Flag` is one row of the table: option name, the config key(s) it sets, help text, type, ``--help``
panel. :func:`with_flags` adds a command's flags to its signature as typer options, :func:`flag_overrides`
turns what was parsed back into dotted config keys, and :func:`readme_table` writes the README's table of
``train`` flags (a test checks the README holds it). ``--help`` defaults read one default config, built once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer

from .errors import SupersubError

# the panels of `train --help` (and of the options other commands share with it)
DATA, MODEL, TRAINING, NOVELTY, HARDWARE, RUN = ("Data", "Model", "Training", "Novelty detection", "Hardware",
                                                 "Settings and the run folder")
Command = TypeVar("Command", bound=Callable[..., Any])


@lru_cache(maxsize=1)
def config_defaults() -> dict[str, Any]:
    """The default configuration as a dict: built once, for every option's ``--help`` default."""
    from .config import TrainConfig, config_to_dict

    return config_to_dict(TrainConfig())


def default_text(key: str) -> str:
    """The config default of a dotted key as ``--help`` shows it (``none``, ``true``, lists comma-separated)."""
    node: Any = config_defaults()
    for part in key.split("."):
        node = node[part]
    if isinstance(node, list):
        return ",".join(str(v) for v in node)
    return "none" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


def parse_sets(items: Sequence[str], option: str = "--set", example: str = "optim.lr=0.001") -> dict[str, Any]:
    """``--set optim.lr=0.001`` style items; values are parsed as YAML scalars/lists."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SupersubError(f"{option} {item!r}: expected KEY=VALUE, e.g. {example}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise SupersubError(f"{option} {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out


def parse_pair(text: str, option: str, example: str) -> tuple[float, float]:
    """``--novel-share 0.28,0.79`` style SUPER,SUB values."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2:
        raise SupersubError(f"{option} {text!r}: expected two numbers SUPER,SUB, e.g. {option} {example}")
    return values[0], values[1]


@dataclass(frozen=True)
class Flag:
    """One config-backed option: ``option`` is ``--name`` or ``--name/--no-name`` (a switch); ``keys`` are the
    config keys it sets (two for a SUPER,SUB pair); ``type`` is what typer parses (``list``: a repeatable
    KEY=VALUE); ``shown`` is the ``--help`` default where it is not the config's; ``example`` goes in errors."""

    option: str
    keys: tuple[str, ...]
    help: str
    type: type = str
    panel: Optional[str] = None
    shown: Optional[str] = None
    example: str = ""

    @property
    def flag(self) -> str:
        """The option's name, without a switch's ``--no-`` form."""
        return self.option.split("/")[0]

    @property
    def name(self) -> str:
        """The parameter name typer passes the value as."""
        return self.flag.lstrip("-").replace("-", "_")

    def parameter(self) -> inspect.Parameter:
        """This flag as a keyword parameter whose default is its typer option."""
        repeatable = self.type is list
        shown = self.shown if self.shown is not None else ",".join(default_text(k) for k in self.keys)
        option = typer.Option([] if repeatable else None, self.option, help=self.help, show_default=shown,
                              rich_help_panel=self.panel, metavar="KEY=VALUE" if repeatable else None)
        annotation = list[str] if repeatable else Optional[self.type]
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)

    def overrides(self, value: Any) -> dict[str, Any]:
        """The config keys the parsed ``value`` sets; none when the flag was not given."""
        if value is None or value == []:
            return {}
        if self.type is list:
            return {self.keys[0]: parse_sets(value, self.flag, self.example)}
        if len(self.keys) == 2:
            return dict(zip(self.keys, parse_pair(value, self.flag, self.example)))
        return {self.keys[0]: str(value) if isinstance(value, Path) else value}


SCORE_OPTION_HELP = ("an option of the score's detector, KEY=VALUE, e.g. k=50 (knn, knn-class), dim=64 (vim), "
                     "temperature=2 (energy); repeatable (novelty.score_options)")
NOVEL_SHARE_HELP = ("expected objective: shares of test images with a novel superclass and with a novel subclass "
                    "(SUPER,SUB; the default is the competition's)")
RECALL_HELP = "recall objective: share of seen validation images each threshold keeps (SUPER,SUB)"

TRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--novel-data", ("data.novel_data",), "images of none of your classes (a folder or a CSV with an image "
         "column): the model learns to call such images novel, and they help set the superclass threshold", Path,
         DATA),
    Flag("--novel-count", ("data.novel_count",), "use at most this many --novel-data images", int, DATA, "all"),
    Flag("--novel-sub-data", ("data.novel_sub_data",), "images of new subclasses of your superclasses: a folder of "
         "superclass folders, or a CSV (image, superclass_index)", Path, DATA),
    Flag("--novel-sub-count", ("data.novel_sub_count",), "use at most this many --novel-sub-data images", int, DATA,
         "all"),
    Flag("--image-size", ("data.image_size",), "images are decoded at this side length (pixels)", int, DATA),
    Flag("--val-fraction", ("data.val_fraction",), "share of each subclass's images kept to validate", float, DATA),
    Flag("--holdout-fraction", ("data.holdout_fraction",), "share of each superclass's subclasses hidden from the "
         "calibration models to stand for new ones", float, DATA),
    Flag("--skip-bad-images/--no-skip-bad-images", ("data.skip_bad_images",),
         "warn about unreadable images and skip them", bool, RUN),
    Flag("--backbone", ("model.backbone",), "the image network: efficientnet_lite0/1/2 (ImageNet weights "
         "included), cnn (trained from scratch) or any timm model name", str, MODEL),
    Flag("--pretrained/--no-pretrained", ("model.pretrained",), "start from ImageNet weights (included for "
         "efficientnet_lite*, else downloaded by timm)", bool, MODEL, "yes for efficientnet_lite*"),
    Flag("--weights", ("model.weights",), "start the backbone from this file (a state dict or a model.pt)", Path,
         MODEL),
    Flag("--input-size", ("model.input_size",), "images are resized to this inside the model", int, MODEL,
         "224 for efficientnet_lite*"),
    Flag("--approach", ("model.approach",), "two-heads (one network, two outputs), two-models (a network per "
         "level), cosine, sub-only, moe (one subclass expert per superclass) or bagging (several networks; see "
         "--members)", str, MODEL),
    Flag("--head", ("model.head",), "the layer on top of the network: linear, cosine, mlp or xgboost (boosted "
         "trees)", str, MODEL),
    Flag("--members", ("model.members",), "bagging: how many networks", int, MODEL),
    Flag("--bootstrap/--no-bootstrap", ("model.bootstrap",), "bagging: each network draws its training images with "
         "replacement", bool, MODEL, "yes unless --subsample < 1"),
    Flag("--subsample", ("model.subsample",), "bagging: share of the training images each network draws", float,
         MODEL),
    Flag("--epochs", ("optim.epochs",), "passes over the training images", int, TRAINING),
    Flag("--batch-size", ("optim.batch_size",), "images per training step", int, TRAINING),
    Flag("--lr", ("optim.lr",), "learning rate", float, TRAINING),
    Flag("--weight-decay", ("optim.weight_decay",), "weight decay (AdamW)", float, TRAINING),
    Flag("--finetune", ("optim.finetune",), "what trains: frozen (only the heads, on features computed once), "
         "partial (also the last --trainable-stages), full, discriminative or gradual (the whole network)", str,
         TRAINING, "frozen with starting weights, else full"),
    Flag("--trainable-stages", ("optim.trainable_stages",), "partial: how many of the backbone's last stages train",
         int, TRAINING),
    Flag("--alpha", ("loss.alpha",), "weight of the loss that keeps the two levels' answers consistent", float,
         TRAINING),
    Flag("--temperature", ("loss.temperature",), "temperature of that consistency loss", float, TRAINING),
    Flag("--seed", ("seed",), "random seed: the same seed, the same run", int, TRAINING),
    Flag("--ptr/--no-ptr", ("ptr.enabled",), "pseudo-task regularisation: an extra regression onto random targets "
         "that keeps features general (not with --finetune frozen)", bool, TRAINING),
    Flag("--ptr-ratio", ("ptr.ratio",), "--ptr: how much weaker the extra task's gradient is kept than the "
         "classification's", float, TRAINING),
    Flag("--ptr-loss", ("ptr.loss",), "--ptr: smooth-l1 or l2", str, TRAINING),
    Flag("--ptr-target", ("ptr.target",), "--ptr: random targets drawn from normal or uniform", str, TRAINING),
    Flag("--score", ("novelty.score",), "how \"novel\" is measured: msp, maxlogit, energy, entropy, gen, "
         "mahalanobis, knn, knn-class, vim, probe (bagging also mi, expected-entropy); one per level as SUPER+SUB; "
         "auto: chosen per level on the run's calibration evidence; unset with a backbone from random weights "
         "(--backbone cnn): energy+probe",
         str, NOVELTY),
    Flag("--score-option", ("novelty.score_options",), SCORE_OPTION_HELP, list, NOVELTY, "none", "k=50"),
    Flag("--objective", ("novelty.objective",), "what the thresholds aim for: balanced (seen and novel accuracy "
         "alike), expected, eer or recall", str, NOVELTY),
    Flag("--novel-share", ("novelty.novel_share_super", "novelty.novel_share_sub"), NOVEL_SHARE_HELP, str, NOVELTY,
         example="0.28,0.79"),
    Flag("--recall", ("novelty.super_recall", "novelty.sub_recall"), RECALL_HELP, str, NOVELTY, example="0.95,0.5"),
    Flag("--tau-super", ("novelty.tau_super",), "set the superclass threshold by hand, in the score's units", float,
         NOVELTY, "calibrated"),
    Flag("--tau-sub", ("novelty.tau_sub",), "set the subclass threshold by hand, in the score's units", float,
         NOVELTY, "calibrated"),
    Flag("--oe", ("novelty.oe",), "how --novel-data trains: uniform (no class is likely) or class (an extra "
         "\"novel\" output)", str, NOVELTY),
    Flag("--accelerator", ("trainer.accelerator",), "where to train: auto, cpu, gpu, mps", str, HARDWARE),
    Flag("--devices", ("trainer.devices",), "how many devices: auto, 1, 2, '0,1'", str, HARDWARE),
    Flag("--strategy", ("trainer.strategy",), "several devices: auto, ddp, ...", str, HARDWARE),
    Flag("--num-nodes", ("trainer.num_nodes",), "machines of a multi-node job (SLURM: --nodes); --devices is per "
         "machine", int, HARDWARE),
    Flag("--precision", ("trainer.precision",), "number format: 32-true, 16-mixed, bf16-mixed", str, HARDWARE),
    Flag("--progress/--no-progress", ("trainer.progress",),
         "a progress bar on a terminal (one line per epoch in a log file)", bool, RUN),
)
_TRAIN = {flag.keys[0]: flag for flag in TRAIN_FLAGS}


def _unpanelled(key: str, help: str, shown: Optional[str] = None) -> Flag:
    """A train flag with another command's help text, in that command's plain Options panel."""
    return replace(_TRAIN[key], help=help, panel=None, shown=shown if shown is not None else _TRAIN[key].shown)


PRETRAIN_FLAGS: tuple[Flag, ...] = (
    Flag("--classes", ("pretrain.classes",), "text file of class folders to use, one a line", Path,
         shown="all folders"),
    Flag("--per-class", ("pretrain.per_class",), "at most N images per class (seeded sample)", int, shown="all"),
    Flag("--binary-partition", ("pretrain.binary_partition",), "weight B of the extra binary tasks on random "
         "halves of the classes: (1-B) x classification + B x binary (0 = off)", float),
    Flag("--partitions", ("pretrain.partitions",), "how many random halvings of the classes (binary tasks)", int),
    _TRAIN["optim.epochs"], _TRAIN["optim.batch_size"],
    _unpanelled("optim.lr", "learning rate (of the backbone when fine-tuning from weights)"),
    _unpanelled("seed", "random seed: also fixes the partitions"),
    _unpanelled("model.backbone", "as for train: efficientnet_lite0/1/2, 'cnn' or a timm name"),
    _unpanelled("model.pretrained", "start from ImageNet weights", "yes for the bundled backbones"),
    _unpanelled("model.weights", "start from a local backbone state dict"),
    _unpanelled("optim.finetune", "full, discriminative (backbone at lr, new head at head_lr_mult x lr), or partial "
                "(only the last optim.trainable_stages stages train, on the cached outputs of the others)",
                "full from scratch, discriminative from weights"),
    _TRAIN["data.image_size"], _TRAIN["data.val_fraction"], _TRAIN["trainer.accelerator"],
    _TRAIN["trainer.progress"],
)

THE_RUNS = "the run's"
CALIBRATE_FLAGS: tuple[Flag, ...] = (  # novelty keys; calibrate passes them without the "novelty." prefix
    _unpanelled("novelty.score", "novelty score", THE_RUNS),
    _unpanelled("novelty.score_options", SCORE_OPTION_HELP, "the run's for the same score, else none"),
    _unpanelled("novelty.objective", "balanced, expected, eer or recall", THE_RUNS),
    _unpanelled("novelty.novel_share_super", NOVEL_SHARE_HELP, THE_RUNS),
    _unpanelled("novelty.super_recall", RECALL_HELP, THE_RUNS),
    Flag("--transfer", ("novelty.transfer",), "quantile or absolute", shown=THE_RUNS),
    Flag("--super-protocol", ("novelty.super_protocol",), "auto, outliers, recall, bank (knn superclass score), "
         "val (the final model's validation images) or loso (needs a run trained with loso)", shown=THE_RUNS),
    _unpanelled("novelty.tau_super", "hand-set superclass threshold"),
    _unpanelled("novelty.tau_sub", "hand-set subclass threshold"),
)


def with_flags(flags: Sequence[Flag]) -> Callable[[Command], Command]:
    """Give a command ``flags`` as typer options, after its positional-or-keyword parameters and before its
    keyword-only ones (the order ``--help`` lists them in); the command takes their values as ``**flags``."""

    def add(command: Command) -> Command:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
        first = [p for p in own if p.kind == p.POSITIONAL_OR_KEYWORD]
        last = [p for p in own if p.kind == p.KEYWORD_ONLY]
        params = [*first, *(f.parameter() for f in flags), *last]
        command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        return command

    return add


def flag_overrides(flags: Sequence[Flag], values: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted config keys the given flags set; flags left out set nothing."""
    out: dict[str, Any] = {}
    for flag in flags:
        out.update(flag.overrides(values[flag.name]))
    return out


# train's options that set no config key, as the README's table lists them
README_EXTRAS = (("`--config FILE`", "YAML experiment file"), ("`--set KEY=VALUE`", "any key, repeatable"),
                 ("`--overwrite`, `--resume`", "see [Reliability](docs/guide.md#reliability)"),
                 ("`--print-config`", "print the resolved YAML and exit"))


def readme_cell(flag: Flag) -> tuple[str, str]:
    """(flag, keys) as the README's table shows a flag: a switch with its ``--no-`` form, an argument's shape."""
    shape = {list: " KEY=VALUE", Path: " PATH"}.get(flag.type, " SUPER,SUB" if len(flag.keys) == 2 else "")
    names = " / ".join(f"`{name}`" for name in flag.option.split("/")) if "/" in flag.option else f"`{flag.flag}{shape}`"
    return names, ", ".join(f"`{key}`" for key in flag.keys)


def readme_table() -> str:
    """The README's table of ``train`` flags and the config keys they set, two flags a row."""
    cells = [readme_cell(flag) for flag in TRAIN_FLAGS] + list(README_EXTRAS)
    cells += [("", "")] * (len(cells) % 2)
    rows = ["| Flag | Key | Flag | Key |", "|---|---|---|---|"]
    rows += ["|" + "|".join(f" {c} " if c else " " for c in (*left, *right)) + "|"
             for left, right in zip(cells[::2], cells[1::2])]
    return "\n".join(rows) + "\n"
