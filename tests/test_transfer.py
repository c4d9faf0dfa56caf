"""Transfer learning end to end on tiny built-in data: approaches x fine-tuning regimes, weights, configs, loggers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants

from conftest import interrupt_at_epoch, run_cli
from supersub import api
from supersub.config import ignored_options, load_config
from supersub.data.synth import write_synth
from supersub.models.scratch_cnn import ScratchCNN
from supersub.run_dir import RunDir
from supersub.training.lightning_fit import fit_stage

APPROACHES = ["two-heads", "two-models", "cosine", "sub-only"]
REGIMES = ["frozen", "full", "discriminative", "gradual"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {"data.image_size": 24, "model.backbone": "cnn", "model.width": 4, "model.depth": [1], "optim.batch_size": 16,
        "novelty.score": "msp", "novelty.tau_super": 0.5, "novelty.tau_sub": 0.5, "trainer.progress": False}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("transfer") / "data"
    write_synth(out, seed=0, train_per_class=4, test_per_class=2)
    return out


@pytest.fixture(scope="module")
def cnn_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A known starting backbone, so a test can tell whether training changed it."""
    torch.manual_seed(7)
    state = ScratchCNN(width=4, depth=[1]).state_dict()
    path = tmp_path_factory.mktemp("weights") / "cnn.pth"
    torch.save(state, path)
    return path, state


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _check_predictions(df: pd.DataFrame, synth: Path) -> None:
    truth = pd.read_csv(synth / "test_truth.csv")
    assert sorted(df["image"]) == sorted(truth["image"])
    assert df["superclass_index"].between(0, 3).all() and df["subclass_index"].between(0, 18).all()
    assert (df.loc[df["superclass_index"] == 3, "subclass_index"] == 18).all()  # novel super -> novel sub
    sub = df[[f"sub_prob_{j}" for j in range(19)]].to_numpy()
    assert abs(sub.sum(1) - 1).max() < 1e-4


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("approach", APPROACHES)
def test_every_approach_and_regime_trains_and_predicts(approach, regime, synth, cnn_weights, tmp_path):
    path, start = cnn_weights
    epochs = 2 if regime == "gradual" else 1  # gradual unfreezes in epoch 1
    summary = api.train(synth, tmp_path / "run", epochs=epochs, **TINY, **{
        "model.approach": approach, "optim.finetune": regime, "optim.unfreeze_epoch": 1, "model.weights": str(path)})
    assert summary["final"]["epochs_run"] == epochs
    model, cfg, _ = RunDir.open(tmp_path / "run").load_model()
    assert cfg.model.approach == approach and cfg.optim.finetune == regime
    # every backbone started from the file; only the frozen regime leaves it exactly as it was
    assert len(model.backbones()) == (2 if approach in ("two-models", "cosine") else 1)
    for backbone in model.backbones():
        assert _same(backbone.state_dict(), start) == (regime == "frozen")
    _check_predictions(api.predict(tmp_path / "run", synth / "test_images", probs=True), synth)


def _count_backbone_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = ScratchCNN.forward

    def counting(self: ScratchCNN, x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(ScratchCNN, "forward", counting)
    return calls


@pytest.mark.parametrize("regime", ["frozen", "full"])
def test_frozen_regime_runs_the_backbone_once_per_image(regime, synth, tmp_path, monkeypatch):
    cached = {"augment.cached_hflip": True} if regime == "frozen" else {}  # two cached views: both computed once
    cfg = load_config(None, {**TINY, "optim.epochs": 3, "optim.finetune": regime, "optim.patience": 5,
                             "data.cache_dir": str(tmp_path / "cache"), **cached})
    data = api.load_labelled(synth, cfg)
    val = list(range(0, 72, 4))  # 18 validation images, 54 training images
    train = [i for i in range(72) if i % 4]
    calls = _count_backbone_calls(monkeypatch)
    result = fit_stage(data.images, data.y_super, data.y_sub, train, val, data.dataset.taxonomy, cfg, tmp_path,
                       "final")
    assert result.epochs_run == 3
    if regime == "frozen":  # all 72 images once per cached view (original, mirrored), in batches of 16
        assert calls == [16, 16, 16, 16, 8] * 2 and result.feature_seconds is not None
        calls.clear()  # a second stage on the same images reads the disk cache: the backbone never runs
        fit_stage(data.images, data.y_super, data.y_sub, train, val, data.dataset.taxonomy, cfg, tmp_path, "again")
        assert calls == []
    else:  # per epoch: 3 full training batches of 16 (the last partial one is dropped) + 18 validation images
        assert sum(calls) == 3 * (3 * 16 + 18) and result.feature_seconds is None


def test_timm_weights_through_the_cli_give_identical_features(synth, tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("test_resnet", num_classes=0).eval()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    code = run_cli(["train", "--data", str(synth), "--out", str(tmp_path / "run"), "--backbone", "test_resnet",
                    "--weights", str(tmp_path / "w.pth"), "--finetune", "frozen", "--epochs", "1",
                    "--image-size", "24", "--score", "msp", "--tau-super", "0.5", "--tau-sub", "0.5", "--no-progress"])
    assert code == 0
    model, _, _ = RunDir.open(tmp_path / "run").load_model()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.backbone.eval()(x), source(x))
    # the saved model rebuilds from model.pt alone: the weights file is not needed any more
    (tmp_path / "w.pth").unlink()
    assert len(api.predict(tmp_path / "run", synth / "test_images")) == 75


def test_pretrained_without_network_is_a_one_line_error(synth, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code = run_cli(["train", "--data", str(synth), "--out", str(tmp_path / "run"), "--backbone", "test_resnet",
                    "--pretrained", "--epochs", "1", "--image-size", "24", "--score", "msp", "--tau-super", "0.5", "--tau-sub", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "test_resnet: pretrained weights unavailable" in err and "--weights PATH" in err
    assert "Traceback" not in err


# train configs; grid files of `supersub experiment` (a top-level `grid:`) are checked in test_experiment.py
TRAIN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if "\ngrid:" not in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid_and_set_nothing_their_approach_ignores(path):
    cfg = load_config(path)
    assert ignored_options(cfg) == []


def test_config_file_trains_through_the_cli_with_tensorboard(synth, tmp_path):
    code = run_cli(["train", "--data", str(synth), "--out", str(tmp_path / "run"),
                    "--config", str(CONFIGS / "approach_c.yaml"), "--epochs", "1", "--image-size", "24",
                    "--batch-size", "16", "--no-progress", "--backbone", "cnn", "--set", "model.width=4", "--set", "model.depth=[1]",
                    "--set", "trainer.loggers=[csv,tensorboard]"])
    assert code == 0
    cfg = RunDir.open(tmp_path / "run").load_config()
    assert cfg.model.approach == "cosine" and cfg.optim.lr == 1e-4 and cfg.optim.epochs == 1
    assert list((tmp_path / "run" / "logs" / "tensorboard" / "final").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "logs" / "final" / "metrics.csv").is_file()


@pytest.mark.parametrize("logger,package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_missing_optional_logger_is_a_one_line_error(logger, package, synth, tmp_path, capsys, monkeypatch):
    # runs whether or not the package is installed: find_spec is made to report it missing
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find_spec(name, *a))
    code = run_cli(["train", "--data", str(synth), "--out", str(tmp_path / "run"), "--epochs", "1",
                    "--image-size", "24", "--score", "msp", "--tau-super", "0.5", "--tau-sub", "0.5",
                    "--set", f"trainer.loggers=[csv,{logger}]"])
    assert code == 2
    assert f"trainer.loggers: '{logger}' needs the {package} package" in capsys.readouterr().err


def _backbone_in(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {k.removeprefix("model.backbone."): v for k, v in state.items() if k.startswith("model.backbone.")}


@pytest.mark.parametrize("regime", ["frozen", "gradual"])
def test_resume_continues_a_run_in_every_regime(regime, synth, cnn_weights, tmp_path, monkeypatch):
    path, start = cnn_weights
    opts = {**TINY, "optim.finetune": regime, "optim.unfreeze_epoch": 1, "model.weights": str(path),
            "optim.scheduler": "cosine"}
    interrupt_at_epoch(monkeypatch, "final", 2)  # a Ctrl-C when the 3rd epoch starts: last.ckpt holds the 2nd
    with pytest.raises(KeyboardInterrupt):
        api.train(synth, tmp_path / "run", epochs=3, **opts)
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "final" / "last.ckpt"
    before = _backbone_in(last)
    import supersub.pipeline.train as train_module

    monkeypatch.setattr(train_module, "_drop_lightning_checkpoints", lambda folder: None)  # to read last.ckpt after
    summary = api.train(synth, tmp_path / "run", resume=True, epochs=3, **opts)
    after = _backbone_in(last)
    assert summary["final"]["epochs_run"] == 3
    # the epoch log keeps the epochs from before the interruption
    assert sorted(pd.read_csv(tmp_path / "run/logs/final/metrics.csv")["epoch"].dropna().unique()) == [0, 1, 2]
    if regime == "frozen":
        assert _same(before, start) and _same(after, start)
    else:  # resumed at epoch 2 >= unfreeze_epoch: the backbone trains again
        assert not _same(before, after)
