"""The hierarchical classifier: backbone(s) -> optional neck -> a superclass and a subclass head.

Approaches (seed 001 and seed 000), all returning ``(super_logits, sub_logits, features)``; each is one
:class:`Approach` entry in :data:`APPROACHES`:

* ``two-heads`` (A): one shared backbone, both heads on its features; trained with the KL interaction loss.
* ``two-models`` (B): an independent backbone (and neck) per level, each with its own head. Both train in
  one loop on ``CE_super + CE_sub`` with no shared parameter, so the objective separates into two
  independent trainings; their outputs are combined at inference by the usual decision rule.
* ``cosine`` (C): B whose subclass head is a cosine classifier.
* ``sub-only``: a single-level baseline: one subclass network; the superclass scores are the log of the
  summed subclass probabilities of each superclass. (The super-only baseline is B's superclass half.)
* ``moe``: one backbone; the superclass head gates one subclass expert per superclass (:mod:`.moe`).

``bagging`` is not a network but an ensemble of them (:mod:`.ensemble`); :func:`.build.create_model` builds either.

Module names: ``backbone``/``neck``/``super_head`` belong to the superclass side (or are shared), and
``sub_backbone``/``sub_neck`` exist only in the two-model approaches, so a two-heads model keeps the
state-dict keys it always had and :func:`supersub.models.hub.load_backbone_weights` finds ``backbone.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..losses import implied_super_log_probs
from ..taxonomy import Taxonomy
from .backbones import Backbone, create_backbone
from .heads import create_head
from .moe import ExpertHeads, mixture_sub_logits
from ..novelty.outputs import Outputs
from .trunk_split import StageSplit, split_backbone
from .taps import TappedBackbone, supports_taps, tap_names, tap_widths

Logits = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Approach:
    """What an approach changes in the network; the model, the objective and the config rules read these flags."""

    two_networks: bool = False  # one backbone (+ neck) per level
    super_head: bool = True  # a trained superclass head (sub-only derives the superclass scores)
    sub_head: str | None = None  # forced subclass head kind (None: model.head)
    experts: bool = False  # the subclass head is one expert per superclass, gated by the superclass head
    interaction: bool = False  # trains with the KL interaction term (alpha); the others train with alpha 0


APPROACHES: dict[str, Approach] = {
    "two-heads": Approach(interaction=True),
    "two-models": Approach(two_networks=True),
    "cosine": Approach(two_networks=True, sub_head="cosine"),
    "sub-only": Approach(super_head=False),
    "moe": Approach(experts=True),
}
TWO_MODELS = tuple(name for name, a in APPROACHES.items() if a.two_networks)


class HierarchicalClassifier(nn.Module):
    """uint8 or float images -> (super_logits, sub_logits, features).

    Normalisation and resizing live inside the model so a checkpoint is self-contained: callers feed raw
    0..255 images (or 0..1 floats) at any size and never need the backbone's mean/std or input size.
    ``load_weights`` reads the configured starting weights (hub / file); leave it off when a state dict
    is loaded next, so that rebuilding a saved model never needs the network.
    """

    def __init__(self, cfg: ModelConfig, n_super: int, n_sub: int, sub_to_super: Sequence[int] | None = None,
                 load_weights: bool = False) -> None:
        super().__init__()
        self.approach = cfg.approach
        spec = APPROACHES[cfg.approach]
        main = create_backbone(cfg, load_weights)
        self.input_size = main.input_size
        self.register_buffer("mean", torch.tensor(main.norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(main.norm.std).view(1, 3, 1, 1), persistent=False)
        self.backbone = main.module
        self.neck, feat = _neck(main, cfg)
        self.sub_backbone: nn.Module | None = None
        self.sub_neck: nn.Module | None = None
        sub_feat = feat
        if spec.two_networks:
            other = create_backbone(cfg, load_weights)
            self.sub_backbone = other.module
            self.sub_neck, sub_feat = _neck(other, cfg)
        hidden = cfg.bottleneck if cfg.head == "mlp" else 0
        self.super_head: nn.Module | None = None
        if spec.super_head:
            self.super_head = create_head(cfg.head, feat, n_super, cfg.dropout, hidden)
        sub_kind = spec.sub_head or cfg.head
        sub_hidden = hidden if sub_kind == "mlp" else 0
        if spec.experts or not spec.super_head:
            if sub_to_super is None or len(sub_to_super) != n_sub:
                raise ValueError(f"approach {cfg.approach!r} needs sub_to_super for every subclass")
            owner = torch.as_tensor(list(sub_to_super))
            self.register_buffer("membership", F.one_hot(owner, n_super).float(), persistent=False)
            self.register_buffer("owner", owner, persistent=False)
        if spec.experts:
            assert sub_to_super is not None
            self.sub_head: nn.Module = ExpertHeads(sub_kind, sub_feat, sub_to_super, n_super, cfg.dropout, sub_hidden)
        else:
            self.sub_head = create_head(sub_kind, sub_feat, n_sub, cfg.dropout, sub_hidden)
        self.combine: Callable[[HierarchicalClassifier, torch.Tensor | None, torch.Tensor], Logits] = (
            _mixture if spec.experts else _implied_super if not spec.super_head else _as_is)
        self.num_features = feat + (sub_feat if self.sub_backbone is not None else 0)
        # width of backbone_features(): the pooled representation before any neck
        self.num_backbone_features = sum(int(b.num_features) for b in self.backbones())
        # pooled outputs of the main backbone's last blocks, for novelty scores (see .taps); never trained on
        self.tap_blocks = cfg.tap_blocks if supports_taps(self.backbone) else 0
        self.tap_widths = tap_widths(self.backbone, self.tap_blocks, self.input_size)
        self.register_load_state_dict_pre_hook(_legacy_linear_heads)

    # ---- pieces ------------------------------------------------------------------------------
    def backbones(self) -> list[nn.Module]:
        """The pretrained-or-scratch feature extractors (what fine-tuning regimes freeze or slow down)."""
        return [self.backbone] + ([self.sub_backbone] if self.sub_backbone is not None else [])

    def new_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the layers added on top of the backbones (necks and heads)."""
        inside = {id(p) for b in self.backbones() for p in b.parameters()}
        return (p for p in self.parameters() if id(p) not in inside)

    def level_parameters(self) -> list[list[nn.Parameter]]:
        """The parameters of each independently trained network: one list per level for two-model approaches."""
        if self.sub_backbone is None:
            return [list(self.parameters())]
        sub = [self.sub_backbone, self.sub_neck, self.sub_head]
        inside = {id(p) for m in sub for p in m.parameters()}
        return [[p for p in self.parameters() if id(p) not in inside], [p for m in sub for p in m.parameters()]]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_images(images, self.mean, self.std)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's input: normalised, then resized to ``input_size`` when one is set."""
        return prepare_images(images, self.mean, self.std, self.input_size)

    # ---- forward -----------------------------------------------------------------------------
    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw backbone outputs (both backbones side by side for two-model approaches): what ``frozen`` caches."""
        x = self.prepare(images)
        return torch.cat([b(x) for b in self.backbones()], dim=1)

    def head_inputs(self, backbone_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What each level's head reads (neck outputs): ``(superclass side, subclass side)``; tapped columns after
        the backbones' own (:meth:`feature_extractors`) are ignored."""
        split = int(self.backbone.num_features)
        f = self.neck(backbone_features[:, :split])
        g = f if self.sub_neck is None else self.sub_neck(backbone_features[:, split:self.num_backbone_features])
        return f, g

    def feature_extractors(self) -> list[nn.Module]:
        """What the frozen cache runs: the main backbone with its taps (one pass), then the other backbone."""
        main = TappedBackbone(self.backbone, self.tap_blocks) if self.tap_blocks else self.backbone
        return [main] + ([self.sub_backbone] if self.sub_backbone is not None else [])

    def arrange_rows(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`feature_extractors` outputs -> rows ``[backbone features | tapped layers]``."""
        split = int(self.backbone.num_features)
        return torch.cat([parts[0][:, :split], *parts[1:], parts[0][:, split:]], dim=1)

    def tapped_rows(self, images: torch.Tensor) -> torch.Tensor:
        """Rows of :meth:`arrange_rows` computed from images (what the frozen cache holds)."""
        x = self.prepare(images)
        return self.arrange_rows([e(x) for e in self.feature_extractors()])

    def feature_columns(self) -> slice | None:
        """The columns of cached rows that :meth:`head_forward` returns as its features unchanged (one network,
        no trained neck), else None: evidence can then point at the rows instead of copying them."""
        if self.sub_neck is not None or not isinstance(self.neck, nn.Sequential) or len(self.neck) > 0:
            return None
        return slice(0, int(self.backbone.num_features))

    def layers_of_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The tapped layers of rows that carry them (``block-n`` .. ``block-1``), else None."""
        if not self.tap_blocks or rows.shape[1] <= self.num_backbone_features:
            return None
        layers, start = {}, self.num_backbone_features
        for name, width in zip(tap_names(self.tap_blocks), self.tap_widths):
            layers[name] = rows[:, start:start + width]
            start += width
        return layers

    def head_forward(self, backbone_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything after the backbones, from :meth:`backbone_features` rows."""
        f, g = self.head_inputs(backbone_features)
        sub_raw = self.sub_head(g)  # before the superclass head: dropout draws in the order runs always had
        super_logits, sub_logits = self.combine(self, None if self.super_head is None else self.super_head(f), sub_raw)
        features = f if self.sub_neck is None else torch.cat([f, g], dim=1)
        return super_logits, sub_logits, features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head_forward(self.backbone_features(images))

    def outputs(self, images: torch.Tensor) -> Outputs:
        """:meth:`forward` as :class:`Outputs`, with the tapped layers (what inference and calibration collect)."""
        return self.outputs_from_rows(self.tapped_rows(images))

    def outputs_from_rows(self, rows: torch.Tensor, splits: Sequence[StageSplit] | None = None) -> Outputs:
        """Outputs from cached rows: backbone features (and tapped layers), or trunk activations when ``splits``
        is given."""
        if splits is not None:
            return Outputs(*self.top_forward(rows, splits))
        return Outputs(*self.head_forward(rows), layers=self.layers_of_rows(rows))

    def stage_splits(self, trainable_stages: int) -> list[StageSplit]:
        """Each backbone cut into a frozen trunk and a trainable top (``finetune=partial``).

        Two-model approaches start both backbones from the same weights and never train the trunks, so
        one trunk's activations feed both tops; a model whose trunks differ is refused.
        """
        splits = [split_backbone(b, trainable_stages) for b in self.backbones()]
        if len(splits) == 2 and not _same_weights(splits[0].trunk, splits[1].trunk):
            raise ValueError("finetune=partial needs identical trunks in both backbones of a two-model approach")
        return splits

    def top_forward(self, trunk_out: torch.Tensor, splits: Sequence[StageSplit]) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything after the trunk, from cached trunk activations."""
        return self.head_forward(torch.cat([s.top(trunk_out) for s in splits], dim=1))

    def linear_readout(self, level: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W, b) with ``logits = features @ W.T + b`` for ``level`` ("super"/"sub"), when that map is affine.

        Feature-space novelty scores such as ViM need it. None for cosine and MLP heads and for the derived
        superclass scores of ``sub-only``; two-model weights are zero-padded over the other level's features.
        """
        head = self.super_head if level == "super" else self.sub_head
        if self.combine is _mixture and level == "sub":
            return None  # moe: the subclass logits mix the gate and the experts
        if not (isinstance(head, nn.Sequential) and len(head) == 2 and isinstance(head[1], nn.Linear)):
            return None  # linear heads are (Dropout, Linear)
        w, b = head[1].weight.detach(), head[1].bias.detach()
        if self.sub_neck is not None:
            pad = w.new_zeros(w.shape[0], self.num_features - w.shape[1])
            w = torch.cat([w, pad] if level == "super" else [pad, w], dim=1)
        return w, b


def _as_is(model: HierarchicalClassifier, super_logits: torch.Tensor | None, sub_logits: torch.Tensor) -> Logits:
    assert super_logits is not None
    return super_logits, sub_logits


def _implied_super(model: HierarchicalClassifier, super_logits: torch.Tensor | None, sub_logits: torch.Tensor) -> Logits:
    """sub-only: the superclass scores are the log of the summed subclass probabilities."""
    return implied_super_log_probs(sub_logits, model.membership, 1.0), sub_logits


def _mixture(model: HierarchicalClassifier, gate_logits: torch.Tensor | None, expert_logits: torch.Tensor) -> Logits:
    """moe: the gate is the superclass head; the subclass logits are the mixture's (see :mod:`.moe`)."""
    assert gate_logits is not None
    return gate_logits, mixture_sub_logits(gate_logits, expert_logits, model.owner)


def normalize_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 or float 0..1 images -> the backbone's normalised floats."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    return (x - mean) / std


def prepare_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, size: int | None) -> torch.Tensor:
    """Normalised, then resized to ``size`` when one is set: what every backbone of supersub is fed."""
    x = normalize_images(images, mean, std)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _neck(backbone: Backbone, cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The shared Linear-BN-ReLU bottleneck of linear/cosine heads; an MLP head has its own hidden layer."""
    feat = int(backbone.module.num_features)
    if cfg.bottleneck and cfg.head != "mlp":
        layers = [nn.Linear(feat, cfg.bottleneck), nn.BatchNorm1d(cfg.bottleneck), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers), cfg.bottleneck
    return nn.Sequential(), feat


def _legacy_linear_heads(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Model files written before heads came from :mod:`.heads` held ``sub_head.weight``; now ``sub_head.1.weight``."""
    for head in ("super_head", "sub_head"):
        for param in ("weight", "bias"):
            old, new = f"{prefix}{head}.{param}", f"{prefix}{head}.1.{param}"
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)


def build_model(cfg: ModelConfig, taxonomy: Taxonomy, load_weights: bool = False) -> HierarchicalClassifier:
    """One network of ``cfg.approach`` (an ensemble's members too; :func:`.build.create_model` builds any model)."""
    return HierarchicalClassifier(cfg, taxonomy.n_super, taxonomy.n_sub, taxonomy.sub_to_super, load_weights)


def model_spec(cfg: ModelConfig, taxonomy: Taxonomy) -> dict[str, Any]:
    """Plain-data description saved beside the weights so a checkpoint rebuilds without pickle."""
    return {"model": cfg.model_dump(mode="json"), "taxonomy": taxonomy.to_dict()}
