"""Model-level checks of the approaches, heads, input sizes, fine-tuning groups and saved-model compatibility."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from supersub.config import ModelConfig, OptimConfig, TrainConfig, build_config
from supersub.errors import SupersubError
from supersub.models.heads import CosineClassifier
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.run_dir import RunDir
from supersub.taxonomy import Taxonomy
from supersub.training.finetune import GradualUnfreeze, parameter_groups
from supersub.training.lightning_fit import check_resumable
from supersub.training.module import HierarchicalModule
from supersub.training.objective import build_loss

TAXONOMY = Taxonomy(("bird", "dog"), ("a", "b", "c"), (0, 0, 1))
TINY = {"backbone": "cnn", "width": 4, "depth": [1]}


def _model(**kw) -> HierarchicalClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, **kw})
    return HierarchicalClassifier(cfg, TAXONOMY.n_super, TAXONOMY.n_sub, TAXONOMY.sub_to_super).eval()


def _images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_two_models_share_nothing_so_each_level_ignores_the_other():
    model = _model(approach="two-models")
    x = _images()
    sup, sub, feats = model(x)
    assert feats.shape == (4, 2 * model.backbone.num_features) and model.num_features == feats.shape[1]
    with torch.no_grad():  # change the whole subclass network: the superclass output must not move
        for p in [*model.sub_backbone.parameters(), *model.sub_head.parameters()]:
            p.add_(1.0)
    sup2, sub2, _ = model(x)
    assert torch.equal(sup, sup2) and not torch.allclose(sub, sub2)
    assert build_loss(TrainConfig(model=ModelConfig(approach="two-models")), TAXONOMY).cfg.alpha == 0.0
    levels = model.level_parameters()
    assert len(levels) == 2 and sum(map(len, levels)) == len(list(model.parameters()))
    assert not {id(p) for p in levels[0]} & {id(p) for p in levels[1]}


def test_cosine_approach_bounds_subclass_logits_by_the_scale():
    model = _model(approach="cosine")
    classifier = model.sub_head[-1]
    assert isinstance(classifier, CosineClassifier) and isinstance(model.super_head[-1], nn.Linear)
    _, sub, _ = model(_images())
    assert sub.abs().max() <= classifier.scale.item() + 1e-5
    assert model.linear_readout("sub") is None and model.linear_readout("super") is not None


def test_sub_only_derives_superclasses_from_summed_subclass_probabilities():
    model = _model(approach="sub-only")
    assert model.super_head is None
    sup, sub, _ = model(_images())
    p = sub.softmax(1)
    expected = torch.stack([p[:, 0] + p[:, 1], p[:, 2]], dim=1)  # a, b are birds; c is a dog
    assert torch.allclose(sup.softmax(1), expected, atol=1e-6) and torch.allclose(sup.exp(), expected, atol=1e-6)
    loss = build_loss(TrainConfig(model=ModelConfig(approach="sub-only")), TAXONOMY)
    parts = loss(sup, sub, torch.tensor([0, 0, 1, -1]), torch.tensor([0, 1, 2, -1]))
    ce = torch.nn.functional.cross_entropy(sub[:3], torch.tensor([0, 1, 2]))
    uniform = -sub[3:].log_softmax(1).mean()
    assert torch.allclose(parts.total, ce + 0.5 * uniform) and parts.ce_super == 0


@pytest.mark.parametrize("approach", ["two-heads", "two-models"])
def test_linear_readout_reproduces_the_logits_from_the_features(approach):
    model = _model(approach=approach, bottleneck=6)
    sup, sub, feats = model(_images())
    for level, logits in (("super", sup), ("sub", sub)):
        w, b = model.linear_readout(level)
        assert torch.allclose(feats @ w.t() + b, logits, atol=1e-5)


def test_mlp_head_uses_the_bottleneck_as_its_hidden_width():
    model = _model(head="mlp", bottleneck=5)
    assert isinstance(model.neck, nn.Sequential) and len(model.neck) == 0
    assert model.sub_head[0].out_features == 5 and model.linear_readout("sub") is None
    with pytest.raises(SupersubError, match="head 'mlp' needs bottleneck >= 1"):
        build_config({"model": {"head": "mlp"}})


def test_input_size_resizes_inside_the_model_and_vits_default_to_their_pretrained_size():
    seen: list[tuple[int, ...]] = []
    model = _model(input_size=32)
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    model(_images(size=24))
    assert seen == [(32, 32)]
    assert _model().input_size is None  # CNNs take the images as they are
    vit = _model(backbone="test_vit")
    assert vit.input_size == 160 and vit(_images(n=1, size=24))[1].shape == (1, 3)


def test_backbone_normalisation_comes_from_the_pretrained_config():
    model = _model(backbone="test_resnet")
    cfg = timm.create_model("test_resnet", num_classes=0).pretrained_cfg
    assert torch.allclose(model.mean.flatten(), torch.tensor(cfg["mean"]))
    assert torch.allclose(model.std.flatten(), torch.tensor(cfg["std"]))
    with pytest.raises(SupersubError, match="the 'cnn' backbone has no hub weights"):
        _model(pretrained=True)


def test_a_model_file_from_before_the_heads_registry_still_loads(tmp_path: Path):
    """Foundation-era model.pt files named the linear heads 'super_head.weight'; they load unchanged."""
    cfg = TrainConfig(model=ModelConfig(**TINY))
    model = _model()
    old_keys = {k.replace("_head.1.", "_head."): v for k, v in model.state_dict().items()}
    assert "super_head.weight" in old_keys
    run = RunDir.create(tmp_path / "run")
    torch.save({"format": "supersub-model-1", "config": cfg.model_dump(mode="json"), "taxonomy": TAXONOMY.to_dict(),
                "state_dict": old_keys}, run.model_file)
    loaded, _, _ = run.load_model()
    x = _images()
    assert all(torch.equal(a, b) for a, b in zip(loaded(x), model(x)))


def _merged_groups(groups: list[dict]) -> dict[str, dict]:
    """The regime's groups with each decayed half and its ``-no-decay`` half joined again (same lr)."""
    out: dict[str, dict] = {}
    for g in groups:
        base = g["name"].removesuffix("-no-decay")
        if base in out:
            assert out[base]["lr"] == g["lr"]
            out[base] = {**out[base], "params": out[base]["params"] + g["params"]}
        else:
            out[base] = dict(g)
    return out


def test_parameter_groups_of_each_regime():
    model = _model(approach="two-models")
    backbone = {id(p) for b in model.backbones() for p in b.parameters()}
    everything = {id(p) for p in model.parameters()}
    groups = _merged_groups(parameter_groups(model, OptimConfig(lr=0.01, finetune="discriminative")))
    assert groups["heads"]["lr"] == pytest.approx(0.1) and groups["backbone"]["lr"] == 0.01
    assert {id(p) for p in groups["backbone"]["params"]} == backbone
    assert {id(p) for p in groups["heads"]["params"]} == everything - backbone
    (full,) = _merged_groups(parameter_groups(model, OptimConfig(lr=0.01, finetune="full"))).values()
    assert {id(p) for p in full["params"]} == everything and full["lr"] == 0.01
    (frozen,) = _merged_groups(parameter_groups(model, OptimConfig(lr=0.01, finetune="frozen"))).values()
    assert {id(p) for p in frozen["params"]} == everything - backbone


def test_norms_biases_and_the_cosine_scale_get_no_weight_decay():
    model = _model(approach="cosine")
    model.backbone.requires_grad_(False)  # frozen when the optimizer is built (gradual): still sorted, not dropped
    groups = parameter_groups(model, OptimConfig(lr=0.01, finetune="discriminative", weight_decay=0.05))
    free = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    decayed = {id(p) for g in groups if "weight_decay" not in g for p in g["params"]}
    named = dict(model.named_parameters())
    assert free and decayed and free | decayed == {id(p) for p in model.parameters()} and not free & decayed
    for name, p in named.items():
        expected_free = p.ndim <= 1 or name.endswith(".bias")
        assert (id(p) in free) == expected_free, name
    assert any(name.endswith("scale") and p.ndim == 0 for name, p in named.items())  # the cosine head's scale
    assert not any(p.requires_grad for p in model.backbone.parameters())  # asking timm changed no flag


def test_gradual_unfreeze_freezes_until_its_epoch_and_stays_unfrozen_after_a_resume():
    cfg = TrainConfig(model=ModelConfig(**TINY), optim=OptimConfig(finetune="gradual", unfreeze_epoch=2, epochs=4))
    module = HierarchicalModule(cfg.model_dump(mode="json"), TAXONOMY.to_dict())
    callback = GradualUnfreeze(2)

    def trainable() -> bool:
        return all(p.requires_grad for p in module.model.backbone.parameters())

    callback.freeze_before_training(module)
    assert not trainable() and all(p.requires_grad for p in module.model.new_parameters())
    callback.finetune_function(module, 1, None)
    assert not trainable()
    callback.finetune_function(module, 2, None)
    assert trainable()
    callback.freeze_before_training(module)  # a resumed run starts frozen again ...
    callback.finetune_function(module, 3, None)  # ... and its first epoch is past the unfreeze epoch
    assert trainable()
    with pytest.raises(SupersubError, match="unfreeze_epoch .* must be below epochs"):
        build_config({"optim": {"finetune": "gradual", "unfreeze_epoch": 5, "epochs": 5}})


def test_resuming_one_cycle_needs_the_same_schedule(tmp_path: Path):
    saved = TrainConfig(optim=OptimConfig(epochs=3)).model_dump(mode="json")
    checkpoint = {"hyper_parameters": {"config": saved}}
    check_resumable(checkpoint, TrainConfig(optim=OptimConfig(epochs=3)), tmp_path / "last.ckpt")
    check_resumable(checkpoint, TrainConfig(optim=OptimConfig(epochs=5, scheduler="cosine")), tmp_path)
    with pytest.raises(SupersubError, match=r"needs the interrupted run's optim\.epochs \(3\), not 5"):
        check_resumable(checkpoint, TrainConfig(optim=OptimConfig(epochs=5)), tmp_path / "last.ckpt")
