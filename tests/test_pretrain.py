"""supersub pretrain: seed 002's partitions and loss, the class folder reader, the checkpoint -> train --weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from supersub.config import ModelConfig, TrainConfig
from supersub.errors import SupersubError
from supersub.io import load_checkpoint
from supersub.models.hierarchical import build_model
from supersub.pretrain.folder import read_class_folder, read_class_list
from supersub.pretrain.partition_network import PretrainNet
from supersub.pretrain.partitions import binary_partition_loss, partition_targets, random_partitions
from supersub.taxonomy import Taxonomy

TINY = ["--backbone", "cnn", "--image-size", "16", "--batch-size", "8", "--no-progress",
        "--set", "model.width=8", "--set", "model.depth=[1]"]


@pytest.mark.parametrize("n", [2, 7, 10, 101])
def test_partitions_are_balanced(n: int) -> None:
    rows = random_partitions(n, 5, seed=3)
    assert rows.shape == (5, n)
    assert set(rows.unique().tolist()) <= {0.0, 1.0}
    assert (rows.sum(dim=1) == n - n // 2).all()  # halves: equal, or one more on side 1 when n is odd


def test_partitions_are_reproducible_per_seed() -> None:
    assert torch.equal(random_partitions(20, 3, seed=1), random_partitions(20, 3, seed=1))
    assert not torch.equal(random_partitions(20, 3, seed=1), random_partitions(20, 3, seed=2))
    rows = random_partitions(20, 3, seed=1)
    assert not torch.equal(rows[0], rows[1])  # K splits are independent draws, not copies


def test_partition_loss_on_hand_built_tensors() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
    y = torch.tensor([0, 3])
    partitions = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])  # K=2
    binary = torch.tensor([[1.5, -0.5], [0.2, 2.0]])
    # by hand: class 0 is on sides (1, 0), class 3 on sides (0, 1)
    ce = (-(2.0 - np.log(np.exp(2) + 1 + np.exp(-1) + np.exp(0.5))) - (0.0 - np.log(3 + np.exp(1)))) / 2

    def bce(z: float, t: float) -> float:
        p = 1 / (1 + np.exp(-z))
        return -(t * np.log(p) + (1 - t) * np.log(1 - p))

    bce_mean = (bce(1.5, 1) + bce(-0.5, 0) + bce(0.2, 0) + bce(2.0, 1)) / 4
    assert torch.equal(partition_targets(partitions, y), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    total, got_ce, got_bce = binary_partition_loss(logits, binary, y, partitions, 0.3)
    assert got_ce.item() == pytest.approx(ce, rel=1e-6)
    assert got_bce.item() == pytest.approx(bce_mean, rel=1e-6)
    assert total.item() == pytest.approx(0.7 * ce + 0.3 * bce_mean, rel=1e-6)
    plain, _, zero = binary_partition_loss(logits, None, y, None, 0.0)
    assert plain.item() == pytest.approx(ce, rel=1e-6) and zero.item() == 0.0


def _class_folder(root: Path, n_classes: int = 4, per_class: int = 6, seed: int = 0) -> Path:
    """Learnable tiny classes: each class a colour, with noise."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        colour = np.array([(c * 70) % 256, (c * 130 + 40) % 256, (255 - c * 60) % 256])
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.jpg")
    return root


def _saved_network_accuracy(saved: dict, root: Path) -> tuple[PretrainNet, float, int]:
    """The saved network (rebuilt from the checkpoint), its top-1 accuracy in percent on ``root``'s images through a
    plain forward pass on raw images, and how many images that is."""
    from supersub.data.cache import decode_images

    cfg = TrainConfig.model_validate(saved["config"])
    net = PretrainNet(cfg.model, len(saved["classes"]))
    net.load_state_dict(saved["state_dict"])
    records = read_class_folder(root, saved["classes"])
    images = decode_images(records, cfg.data.image_size).images
    with torch.no_grad():
        predicted = net.eval()(images)[0].argmax(dim=1)
    truth = torch.tensor([r.sub_index for r in records])
    return net, round(100 * float((predicted == truth).float().mean()), 2), len(records)


def test_class_folder_reader(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "data", n_classes=3, per_class=5)
    names = tmp_path / "classes.txt"
    names.write_text("# chosen\nclass2\n\nclass0\n")
    classes = read_class_list(names)
    assert classes == ["class2", "class0"]
    records = read_class_folder(root, classes, per_class=3, seed=1)
    assert [r.sub_index for r in records] == [0, 0, 0, 1, 1, 1]
    assert all(r.path.parent.name == ("class2" if r.sub_index == 0 else "class0") for r in records)
    assert records == read_class_folder(root, classes, per_class=3, seed=1)
    (tmp_path / "dup.txt").write_text("class0\nclass0\n")
    with pytest.raises(SupersubError, match="line 2"):
        read_class_list(tmp_path / "dup.txt")
    with pytest.raises(SupersubError, match="classX"):
        read_class_folder(root, ["class0", "classX"])


def test_pretrain_checkpoint_round_trips_into_train_weights(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "data")
    out = tmp_path / "pre.pt"
    code = run_cli(["pretrain", "--data", str(root), "--out", str(out), "--epochs", "2", "--seed", "3",
                    "--binary-partition", "0.3", "--partitions", "2", "--test-data", str(root), *TINY])
    assert code == 0
    saved = load_checkpoint(out)
    assert not any(k.startswith("binary.") for k in saved["state_dict"])  # the binary heads are dropped
    assert len(saved["partitions"]) == 2
    assert (tmp_path / "pre.pt.json").is_file() and (tmp_path / "pre.pt.d" / "checkpoints" / "last.ckpt").is_file()

    # the summary's test accuracy is the saved network's, recomputed here by hand on the --test-data images
    net, accuracy, n_images = _saved_network_accuracy(saved, root)
    assert saved["summary"]["test_acc"] == accuracy
    assert saved["summary"]["n_test_images"] == n_images
    model_cfg = ModelConfig(backbone="cnn", width=8, depth=[1], weights=out)
    taxonomy = Taxonomy(["a", "b"], ["a1", "b1", "b2"], [0, 1, 1])
    model = build_model(model_cfg, taxonomy, load_weights=True)  # what train --weights does
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    net.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(net.features(images), model.backbone_features(images))
    fresh = build_model(model_cfg.model_copy(update={"weights": None}), taxonomy)
    with torch.no_grad():
        assert not torch.allclose(fresh.eval().backbone_features(images), model.backbone_features(images))


def test_pretrain_resume_and_refusals(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "data", n_classes=3, per_class=4)
    out = tmp_path / "pre.pt"
    args = ["pretrain", "--data", str(root), "--out", str(out), "--epochs", "2", *TINY]
    assert run_cli(args) == 0
    first = load_checkpoint(out)["state_dict"]
    assert run_cli(args) == 2  # exists: neither --overwrite nor --resume
    assert run_cli([*args, "--resume"]) == 0  # the finished run continues from last.ckpt: nothing left to train
    again = load_checkpoint(out)["state_dict"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert run_cli([*args, "--overwrite", "--finetune", "frozen"]) == 2  # pretrain trains the backbone
    assert run_cli([*args, "--overwrite", "--binary-partition", "1.0"]) == 2  # B must stay below 1


def test_pretrain_regime_from_weights_is_discriminative(tmp_path: Path) -> None:
    from supersub.api import resolve_config
    from supersub.pretrain.pretrain_run import finetune_chosen, resolve_regime

    overrides = {"model.backbone": "cnn", "model.weights": str(tmp_path / "w.pt")}
    cfg = resolve_config(None, **overrides)
    assert cfg.optim.finetune == "frozen" and not finetune_chosen(None, overrides)
    resolve_regime(cfg, chosen=False)
    assert cfg.optim.finetune == "discriminative"  # seed 002: a new head at head_lr_mult x lr, backbone at lr
    scratch = resolve_config(None, **{"model.backbone": "cnn"})
    resolve_regime(scratch, chosen=False)
    assert scratch.optim.finetune == "full"
    assert finetune_chosen(None, {**overrides, "optim.finetune": "full"})


def test_partial_pretrain_tunes_only_the_last_stages_on_cached_trunk_outputs(tmp_path: Path) -> None:
    """The light source tuning of the novelty suite: the trunk stays the starting one, the top moves, and the
    summary's accuracy (computed from cached float16 trunk rows) is the saved network's on raw images."""
    root = _class_folder(tmp_path / "data", n_classes=4, per_class=8)
    two_stages = ["--set", "model.depth=[1,1]"]  # after TINY's depth=[1]: the later --set wins
    start, tuned = tmp_path / "start.pt", tmp_path / "tuned.pt"
    assert run_cli(["pretrain", "--data", str(root), "--out", str(start), "--epochs", "1", *TINY, *two_stages]) == 0
    base = ["pretrain", "--data", str(root), "--out", str(tuned), "--epochs", "3", "--test-data", str(root), *TINY,
            *two_stages, "--set", "optim.trainable_stages=1", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    assert run_cli([*base, "--finetune", "partial"]) == 2  # from random weights: nothing worth keeping frozen
    assert run_cli([*base, "--weights", str(start), "--finetune", "partial"]) == 0
    before, after = load_checkpoint(start)["state_dict"], load_checkpoint(tuned)
    state = after["state_dict"]
    assert after["summary"]["finetune"] == "partial"
    trunk = [k for k in before if k.startswith(("backbone.stem.", "backbone.stages.0."))]
    top = [k for k in before if k.startswith(("backbone.stages.1.", "backbone.final."))
           and before[k].is_floating_point()]
    assert trunk and top
    assert all(torch.equal(before[k], state[k]) for k in trunk)
    assert any(not torch.equal(before[k], state[k]) for k in top)
    assert any((tmp_path / "cache").rglob("*")), "the trunk's outputs were not cached"
    assert after["summary"]["test_acc"] == _saved_network_accuracy(after, root)[1]
