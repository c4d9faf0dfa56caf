"""Experiment configuration: pydantic models, YAML loading and CLI overrides.

Unknown keys and bad values are errors naming the key (``extra="forbid"``). The resolved config is saved
in every run directory, so a run directory alone is enough to reproduce a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SupersubError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where images come from and how they are split."""

    image_size: int = Field(64, ge=8, le=1024, description="images are resized to image_size x image_size")
    val_fraction: float = Field(0.1, ge=0.0, lt=0.9, description="share of training images kept for validation")
    holdout_fraction: float = Field(
        0.15, ge=0.0, lt=1.0, description="share of each superclass's subclasses held out as pseudo-novel"
    )
    skip_bad_images: bool = Field(False, description="drop unreadable images with a warning instead of failing")
    cache_dir: Path | None = Field(None, description="where decoded image tensors are cached between runs")
    num_workers: int = Field(0, ge=0, description="DataLoader workers (tensors are in memory: 0 is usually best)")
    novel_data: Path | None = Field(
        None, description="outlier-exposure images (novel at both levels): a flat folder, or a CSV beside its images"
    )
    novel_count: int | None = Field(None, ge=1, description="use at most this many novel_data images (seeded sample)")
    novel_calibration_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of novel_data kept out of training to calibrate tau_super"
    )


class ModelConfig(_Strict):
    """Backbone and heads (seed 001, approach A: a shared backbone with two heads)."""

    backbone: str = Field("cnn", description="'cnn' = supersub's from-scratch residual CNN")
    width: int = Field(32, ge=4, le=512, description="channels of the first CNN stage (doubled per stage)")
    depth: list[int] = Field(default_factory=lambda: [1, 1, 1], description="residual blocks per CNN stage")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the heads")
    block_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside CNN residual blocks")
    bottleneck: int = Field(0, ge=0, description="width of a linear bottleneck before the heads (0 = none)")

    @model_validator(mode="after")
    def _depth_positive(self) -> ModelConfig:
        if not self.depth or any(d < 1 for d in self.depth):
            raise ValueError("depth must be a non-empty list of positive block counts")
        return self


class LossConfig(_Strict):
    """CE_super + CE_sub + alpha * KL interaction loss (seed 001)."""

    alpha: float = Field(0.1, ge=0.0, description="weight of the KL interaction loss")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature inside the KL term")
    kl_direction: Literal["implied||head", "head||implied"] = Field(
        "implied||head", description="KL(p_implied || p_super_head) as in the seed, or the opposite"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    outlier_weight: float = Field(
        0.5, ge=0.0, description="weight of the uniform-target outlier-exposure loss (used with novel_data)"
    )


class OptimConfig(_Strict):
    """Optimiser, schedule and stopping."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    scheduler: Literal["cosine", "step", "onecycle", "none"] = "onecycle"
    step_size: int = Field(5, ge=1, description="epochs between LR decays (scheduler=step)")
    gamma: float = Field(0.5, gt=0.0, le=1.0, description="LR decay factor (scheduler=step)")
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(5, ge=1, description="early stopping: epochs without val-loss improvement")
    grad_clip: float | None = Field(None, gt=0.0)


class AugmentConfig(_Strict):
    """Batched tensor augmentation (kornia), applied on the device after batch transfer."""

    hflip: bool = True
    vflip: bool = False
    rotation: float = Field(10.0, ge=0.0, le=180.0, description="max rotation in degrees (0 = off)")
    translate: float = Field(0.05, ge=0.0, le=0.5, description="max shift as a fraction of the size")
    scale: tuple[float, float] = Field((1.0, 1.0), description="random zoom range (1,1 = off)")
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation strength")
    noise_std: float = Field(0.0, ge=0.0, le=1.0, description="Gaussian pixel noise (0..1 scale)")


class NoveltyConfig(_Strict):
    """Max-softmax thresholds; ``None`` means: calibrate on held-out pseudo-novel subclasses."""

    tau_super: float | None = Field(None, ge=0.0, le=1.0)
    tau_sub: float | None = Field(None, ge=0.0, le=1.0)
    objective: Literal["balanced", "eer", "recall"] = Field(
        "balanced", description="how tau_sub is chosen from held-out subclasses"
    )
    super_recall: float = Field(
        0.95, gt=0.0, le=1.0,
        description="without novel_data, tau_super keeps this share of seen validation images",
    )
    calibration_epochs: int | None = Field(None, ge=1, description="epochs of the calibration run (default: epochs)")


class TrainerConfig(_Strict):
    """Passed through to Lightning so the same run works on CPU, one GPU or many."""

    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = True
    progress: bool = True


class TrainConfig(_Strict):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    novelty: NoveltyConfig = Field(default_factory=NoveltyConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def build_config(data: dict[str, Any] | None = None, source: str = "config") -> TrainConfig:
    """Validate a nested dict into a TrainConfig; errors name the offending key."""
    try:
        return TrainConfig.model_validate(data or {})
    except ValidationError as e:
        raise SupersubError(_format_validation_error(e, source)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML experiment file (optional) and apply dotted-key overrides such as ``{"optim.lr": 1e-3}``."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise SupersubError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise SupersubError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SupersubError(f"{path}: top level must be a mapping of sections (data, model, optim, ...)")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SupersubError(f"{source}: {dotted}: {p} is not a section")
        node[leaf] = value
    return build_config(data, source)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
