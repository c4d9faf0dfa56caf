"""finetune=partial: a frozen trunk whose outputs are cached, and a trained top; identical to the whole backbone."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import supersub.api as api
from supersub.config import ModelConfig, load_config
from supersub.errors import SupersubError
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.models.trunk_split import split_backbone
from supersub.training.lightning_fit import fit_stage

from conftest import run_cli


@pytest.fixture()
def synth(synth_dir):
    return synth_dir


@pytest.mark.parametrize("backbone, input_size", [("efficientnet_lite0", 32), ("test_resnet", 32), ("cnn", None)])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_top_of_trunk_is_the_whole_backbone(backbone, input_size, k):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, pretrained=False, input_size=input_size, width=4, depth=[1, 1])
    model = HierarchicalClassifier(cfg, 3, 6).eval()
    x = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8)
    split = split_backbone(model.backbone, k)
    with torch.no_grad():
        whole = model.backbone(model.prepare(x))
        parts = split.top(split.trunk(model.prepare(x)))
    assert torch.allclose(whole, parts, atol=1e-5)
    trunk_ids = {id(p) for p in split.trunk.parameters()}
    assert not trunk_ids & {id(p) for p in split.top.parameters()}  # the halves share no parameter
    assert trunk_ids | {id(p) for p in split.top.parameters()} == {id(p) for p in model.backbone.parameters()}


def test_too_many_trainable_stages_is_one_line():
    model = HierarchicalClassifier(ModelConfig(backbone="cnn", width=4, depth=[1]), 3, 6)
    with pytest.raises(SupersubError, match="trainable_stages: 2 is more than the 1 stages"):
        split_backbone(model.backbone, 2)


def _tiny(tmp_path, **extra):
    return load_config(None, {"model.backbone": "efficientnet_lite0", "model.pretrained": False,
                              "model.input_size": 32, "data.image_size": 24, "optim.finetune": "partial",
                              "optim.trainable_stages": 1, "optim.epochs": 2, "optim.batch_size": 16,
                              "trainer.progress": False, "data.cache_dir": str(tmp_path / "cache"), **extra})


def test_partial_trains_only_the_top_and_runs_the_trunk_once_per_view(synth, tmp_path, monkeypatch):
    cfg = _tiny(tmp_path, **{"augment.cached_hflip": True})
    data = api.load_labelled(synth, cfg)
    n = len(data.images)
    calls: list[int] = []
    prepare = HierarchicalClassifier.prepare  # every image the network sees passes through it once

    def counting(self, x):
        if x.shape[-1] > 2:  # the cache key hashes prepare's output on a 2x2 probe: not an image
            calls.append(len(x))
        return prepare(self, x)

    monkeypatch.setattr(HierarchicalClassifier, "prepare", counting)
    train, val = list(range(0, n, 2)), list(range(1, n, 2))
    result = fit_stage(data.images, data.y_super, data.y_sub, train, val, data.dataset.taxonomy, cfg, tmp_path, "a")
    assert sum(calls) == 2 * n  # every image once per cached view (original and mirrored), never per epoch
    split = result.model.stage_splits(1)[0]
    trunk = {id(p) for p in split.trunk.parameters()}
    L.seed_everything(cfg.seed, verbose=False)  # fit_stage seeds, then builds the model: the same start
    start = dict(HierarchicalClassifier(cfg.model, data.dataset.taxonomy.n_super,
                                        data.dataset.taxonomy.n_sub).backbone.named_parameters())
    for name, p in result.model.backbone.named_parameters():
        assert torch.equal(p, start[name]) == (id(p) in trunk), name  # the trunk never moves, the whole top trains
    calls.clear()
    fit_stage(data.images, data.y_super, data.y_sub, train, val, data.dataset.taxonomy, cfg, tmp_path, "b")
    assert calls == []  # a second stage reads the trunk outputs from the disk cache


def test_partial_through_the_cli_predicts_from_raw_images(synth, tmp_path):
    run = tmp_path / "run"
    code = run_cli(["train", "--data", str(synth), "--out", str(run), "--no-pretrained", "--input-size", "32",
                    "--image-size", "24", "--finetune", "partial", "--trainable-stages", "2", "--epochs", "2",
                    "--batch-size", "16", "--no-progress", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert code == 0
    saved = api.RunDir.open(run).load_config()
    assert (saved.model.backbone, saved.optim.finetune, saved.optim.trainable_stages) == ("efficientnet_lite0",
                                                                                          "partial", 2)
    preds = api.predict(run, synth / "test_images")
    assert len(preds) == len(list((synth / "test_images").iterdir()))


def test_source_tuning_recipe_from_tiny_imagenet(synth, tmp_path):
    """The README's source tuning: ``data tin-source`` writes a layout ``train`` reads (the classes the competition
    lacks, under their superclass or "other"), a partial run tunes on it, and its model.pt starts the task's run."""
    import numpy as np
    from PIL import Image

    tin = tmp_path / "tin"
    rows = [("n1", "cat", "", "no"), ("n2", "goldfish", "fish", "no"), ("n3", "robin", "bird", "yes"),
            ("n4", "husky", "dog", "no")]
    (tin / "train").mkdir(parents=True)
    (tin / "classes.csv").write_text("wnid,name,overlaps,in_competition\n" + "".join(",".join(r) + "\n" for r in rows))
    rng = np.random.default_rng(0)
    for c, (wnid, *_) in enumerate(rows):
        (tin / "train" / wnid).mkdir()
        for i in range(10):
            pixels = np.clip(rng.normal(60 * c, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tin / "train" / wnid / f"{wnid}_{i}.JPEG")
    source, source_run, run = tmp_path / "source", tmp_path / "source-run", tmp_path / "run"
    assert run_cli(["data", "tin-source", str(tin), str(source), "--per-class", "8"]) == 0
    assert run_cli(["data", "tin-source", str(tin), str(source)]) == 2  # never writes into a filled folder
    # the source run starts from a known backbone file (the recipe starts from the bundled ImageNet weights)
    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    torch.save(HierarchicalClassifier(ModelConfig(pretrained=False, input_size=32), 2, 3).backbone.state_dict(), start)
    tiny = ["--input-size", "32", "--image-size", "24", "--batch-size", "8", "--no-progress",
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    assert run_cli(["train", "--data", str(source), "--out", str(source_run), "--finetune", "partial", "--epochs",
                    "1", "--approach", "cosine", "--tau-super", "0", "--tau-sub", "0", "--weights", str(start),
                    *tiny]) == 0
    taxonomy = api.RunDir.open(source_run).load_taxonomy()
    assert sorted(taxonomy.super_names) == ["dog", "fish", "other"] and len(taxonomy.sub_names) == 3
    assert run_cli(["train", "--data", str(synth), "--out", str(run), "--weights", str(source_run / "model.pt"),
                    "--epochs", "1", *tiny]) == 0
    source_model = api.RunDir.open(source_run).load_model()[0].backbone.state_dict()
    model = api.RunDir.open(run).load_model()[0].backbone.state_dict()
    untouched = torch.load(start, weights_only=True)
    tuned = [k for k in source_model if k.startswith("blocks.6.") and source_model[k].is_floating_point()]
    trunk = [k for k in source_model if k.startswith(("conv_stem.", "blocks.0."))]
    assert tuned and all(torch.equal(source_model[k], model[k]) for k in tuned)  # the frozen run kept them
    assert any(not torch.equal(source_model[k], untouched[k]) for k in tuned)  # and the source run had moved them
    assert trunk and all(torch.equal(source_model[k], untouched[k]) for k in trunk)  # but not its frozen trunk
