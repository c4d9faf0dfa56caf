"""Bagging (seed 000; Breiman, "Bagging Predictors", 1996): K networks, each trained on a resample of the
training set (:mod:`supersub.training.bagging`), their probabilities averaged.

:class:`BaggingEnsemble` is a model like any other: raw images (or cached rows) in, ``(super_logits,
sub_logits, features)`` out, so prediction, calibration and the probabilities need no special case. Its logits
are ``log(mean_k p_k)`` plus a per-row shift, the members' mean log-sum-exp: the softmax is the averaged
probability exactly (a softmax ignores a per-row shift), and ``logsumexp(logits)`` is the members' mean
energy, so logit scores keep their scale (``msp`` is the mean confidence, ``energy`` the mean energy).
:meth:`BaggingEnsemble.outputs` also returns each member's logits for the disagreement scores (``mi``,
``expected-entropy`` in :mod:`supersub.novelty.detectors`).

Members whose backbones hold identical weights (always so with ``finetune: frozen``, where no backbone trains)
share one backbone module: the features are computed once per image, not K times, and ``model.pt`` stores one
copy (``torch.save`` writes a shared storage once). With any other regime every member keeps its own backbone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..taxonomy import Taxonomy
from .hierarchical import HierarchicalClassifier, _same_weights
from ..novelty.outputs import Outputs
from .trunk_split import StageSplit, split_backbone

Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def average_logits(member_logits: torch.Tensor) -> torch.Tensor:
    """(N, K, C) member logits -> (N, C) logits whose softmax is the members' mean probability and whose
    log-sum-exp is the members' mean log-sum-exp."""
    log_mean = member_logits.log_softmax(dim=-1).logsumexp(dim=1) - math.log(member_logits.shape[1])
    return log_mean + member_logits.logsumexp(dim=-1).mean(dim=1, keepdim=True)


class BaggingEnsemble(nn.Module):
    """K :class:`HierarchicalClassifier` members of one approach; probabilities averaged."""

    def __init__(self, members: Sequence[HierarchicalClassifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("a bagging ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        self.input_size = members[0].input_size
        self.shared_features = False
        # a loaded ensemble shares the backbones its saved members had in common (see share_identical_backbones)
        self.register_load_state_dict_post_hook(lambda module, _keys: module.share_identical_backbones())

    @classmethod
    def build(cls, cfg: ModelConfig, taxonomy: Taxonomy, load_weights: bool = False) -> BaggingEnsemble:
        """``cfg.members`` untrained members of ``cfg.member_approach`` (what a saved ensemble loads into)."""
        member_cfg = cfg.model_copy(update={"approach": cfg.member_approach})
        return cls([HierarchicalClassifier(member_cfg, taxonomy.n_super, taxonomy.n_sub, taxonomy.sub_to_super,
                                           load_weights) for _ in range(cfg.members)])

    @classmethod
    def from_members(cls, members: Sequence[HierarchicalClassifier]) -> BaggingEnsemble:
        """The ensemble of trained members, identical backbones shared."""
        ensemble = cls(members)
        ensemble.share_identical_backbones()
        return ensemble.eval()

    def share_identical_backbones(self) -> None:
        """Point every member's backbone with the same weights as the first member's at that module."""
        first = self.members[0]
        for member in self.members[1:]:
            for name in ("backbone", "sub_backbone"):
                mine, theirs = getattr(member, name), getattr(first, name)
                if mine is not None and theirs is not None and mine is not theirs and _same_weights(mine, theirs):
                    setattr(member, name, theirs)
        # identical features from every member: a shared backbone and no trained neck in between
        self.shared_features = len(self.backbones()) == len(first.backbones()) and not any(
            p.numel() for m in self.members for neck in (m.neck, m.sub_neck) if neck is not None
            for p in neck.parameters())

    # ---- pieces shared with HierarchicalClassifier -----------------------------------------------
    def backbones(self) -> list[nn.Module]:
        """The distinct backbone modules of all members, in order."""
        seen: dict[int, nn.Module] = {}
        for member in self.members:
            for b in member.backbones():
                seen.setdefault(id(b), b)
        return list(seen.values())

    @property
    def num_features(self) -> int:
        widths = [m.num_features for m in self.members]
        return widths[0] if self.shared_features else sum(widths)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.members[0].normalize(images)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return self.members[0].prepare(images)

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Each distinct backbone's outputs side by side (one backbone when the members share it)."""
        x = self.prepare(images)
        return torch.cat([b(x) for b in self.backbones()], dim=1)

    def stage_splits(self, trainable_stages: int) -> list[StageSplit]:
        """``finetune=partial``: each distinct backbone cut; the members' frozen trunks must be identical."""
        splits = [split_backbone(b, trainable_stages) for b in self.backbones()]
        if not all(_same_weights(splits[0].trunk, s.trunk) for s in splits[1:]):
            raise ValueError("finetune=partial needs identical trunks in every member of a bagging ensemble")
        return splits

    def linear_readout(self, level: str) -> None:
        """Averaged probabilities are not an affine map of the features (ViM then fits one by least squares)."""
        return None

    # ---- forward ---------------------------------------------------------------------------------
    def members_from_rows(self, rows: torch.Tensor) -> Triple:
        """(super (N, K, C), sub (N, K, M), features) from :meth:`backbone_features` rows."""
        columns, start = {}, 0
        for b in self.backbones():
            columns[id(b)] = slice(start, start + int(b.num_features))
            start += int(b.num_features)
        outs = [m.head_forward(torch.cat([rows[:, columns[id(b)]] for b in m.backbones()], dim=1))
                for m in self.members]
        features = outs[0][2] if self.shared_features else torch.cat([o[2] for o in outs], dim=1)
        return torch.stack([o[0] for o in outs], dim=1), torch.stack([o[1] for o in outs], dim=1), features

    def head_forward(self, rows: torch.Tensor) -> Triple:
        super_m, sub_m, features = self.members_from_rows(rows)
        return average_logits(super_m), average_logits(sub_m), features

    def top_forward(self, trunk_out: torch.Tensor, splits: Sequence[StageSplit]) -> Triple:
        return self.head_forward(torch.cat([s.top(trunk_out) for s in splits], dim=1))

    def forward(self, images: torch.Tensor) -> Triple:
        return self.head_forward(self.backbone_features(images))

    def outputs(self, images: torch.Tensor) -> Outputs:
        return self._outputs(self.backbone_features(images))

    def outputs_from_rows(self, rows: torch.Tensor, splits: Sequence[StageSplit] | None = None) -> Outputs:
        return self._outputs(rows if splits is None else torch.cat([s.top(rows) for s in splits], dim=1))

    def _outputs(self, rows: torch.Tensor) -> Outputs:
        super_m, sub_m, features = self.members_from_rows(rows)
        return Outputs(average_logits(super_m), average_logits(sub_m), features, super_m, sub_m)
