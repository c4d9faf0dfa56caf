"""A backbone cut in two: a frozen trunk (stem + early stages) and a trainable top (last stages + final conv).

``finetune=partial`` trains only the top. The trunk never changes, so its activations are computed once
and cached (:mod:`.feature_cache`), and an epoch costs the top's forward and backward pass only: close to
the cost of frozen features, with the last stages still adapting to the new task.

The two halves are ``nn.Sequential`` views over the backbone's *own* submodules (shared parameters, no
copies), so the backbone keeps its state-dict keys and a saved model runs on raw images unchanged.
Supported: timm EfficientNet/MobileNet-style models (``conv_stem``, ``bn1``, ``blocks``, ``conv_head``,
``bn2``), timm ResNets (``layer1..4``) and supersub's from-scratch CNN (one stage per residual block).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import SupersubError


@dataclass
class StageSplit:
    trunk: nn.Sequential  # frozen: its output is what the cache holds
    top: nn.Sequential  # trained: cached trunk activations -> (N, num_features)
    n_stages: int


def split_backbone(backbone: nn.Module, trainable_stages: int) -> StageSplit:
    """Cut ``backbone`` before its last ``trainable_stages`` stages (0 = only the final conv/pool trains)."""
    if all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")):
        stem, stages = [backbone.conv_stem, backbone.bn1], list(backbone.blocks)
        tail = [backbone.conv_head, backbone.bn2, backbone.global_pool, nn.Flatten(1)]
    elif all(hasattr(backbone, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer4", "global_pool")):
        stem = [backbone.conv1, backbone.bn1, backbone.act1, backbone.maxpool]
        stages = [getattr(backbone, f"layer{i}") for i in range(1, 5)]
        tail = [backbone.global_pool, nn.Flatten(1)]
    elif all(hasattr(backbone, a) for a in ("stem", "stages", "final")):
        stem, stages, tail = [backbone.stem], list(backbone.stages), [backbone.final]
    else:
        raise SupersubError(
            f"optim.finetune=partial: cannot find the stages of {type(backbone).__name__} (supported: EfficientNet/"
            "MobileNet-style and ResNet timm models, 'cnn'); use finetune=frozen or full"
        )
    if trainable_stages > len(stages):
        raise SupersubError(
            f"optim.trainable_stages: {trainable_stages} is more than the {len(stages)} stages of this backbone"
        )
    cut = len(stages) - trainable_stages
    return StageSplit(nn.Sequential(*stem, *stages[:cut]), nn.Sequential(*stages[cut:], *tail), len(stages))
