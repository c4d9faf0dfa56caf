"""Issue 28: every approach x fine-tuning regime trains from a local weights file (the README's ``--weights PATH``)
with the default novelty score and predicts, or is refused in one line before training.

`--backbone resnet18 --weights r18.pth --approach two-models --finetune frozen` used to train and then die with
"score 'vim': training features have no residual outside 512 dimensions": two frozen copies of one backbone give
the same features twice. A tiny timm ResNet on 16-pixel images stands in for resnet18 here, so that the 30 cells
stay cheap; each trains its models for one epoch (gradual two: its backbone unfreezes in the second) on one
thread, which is as fast as two for such small networks and avoids barrier waits on a shared CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import run_cli, saved_thresholds

from supersub import api
from supersub.config import ModelConfig, OptimConfig, TrainConfig
from supersub.data.synth import write_synth
from supersub.run_dir import RunDir

ARCH = "test_resnet"  # timm's ~0.4 M-parameter test network: a real ResNet layout
SIZE = "16"
APPROACHES = list(ModelConfig.model_fields["approach"].annotation.__args__)
FINETUNES = [f for f in OptimConfig.model_fields["finetune"].annotation.__args__ if f != "auto"]
DEFAULT_SCORE = TrainConfig().novelty.score
# cells the config refuses before training, and cells whose default score falls back (none with these weights:
# the numerical-rank cap keeps ViM fittable on two copies of one backbone's features)
REFUSED: set[tuple[str, str]] = set()
FALLS_BACK: set[tuple[str, str]] = set()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(root: Path, per_class: int) -> Path:
    write_synth(root / "data", seed=0, train_per_class=per_class, test_per_class=1, size=16)
    return root / "data"


def _weights(path: Path, dead: bool = False) -> Path:
    """A tiny timm model's state dict; ``dead``: every norm layer outputs zero, so the features are all zero."""
    torch.manual_seed(0)
    state = timm.create_model(ARCH, num_classes=0).state_dict()
    if dead:
        state = {k: torch.zeros_like(v) if k.endswith(("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias",
                                                        "bn3.weight", "bn3.bias", "1.weight", "1.bias")) else v
                 for k, v in state.items()}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def grid_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("weights-grid")
    return _data(root, per_class=3), _weights(root / "w.pth")


def _train(data: Path, weights: Path, out: Path, approach: str, finetune: str, *extra: str) -> int:
    cell = ["--set", "model.members=2"] if approach == "bagging" else []
    if finetune == "gradual":
        cell += ["--epochs", "2", "--set", "optim.unfreeze_epoch=1"]
    return run_cli(["train", "--data", str(data), "--out", str(out), "--backbone", ARCH, "--weights", str(weights),
                    "--approach", approach, "--finetune", finetune, "--epochs", "1", "--image-size", SIZE,
                    "--batch-size", "16", "--no-progress", "--set", f"model.input_size={SIZE}",
                    "--set", "data.val_fraction=0.34", *cell, *extra])


def _predicts(run: Path, data: Path) -> dict:
    """Predict the test images; the score the run recorded, the one predict used."""
    n_test, tax = len(list((data / "test_images").iterdir())), RunDir.open(run).load_taxonomy()
    pred = api.predict(run, data / "test_images")
    assert len(pred) == n_test and pred["superclass_index"].between(0, tax.n_super).all()
    assert pred["subclass_index"].between(0, tax.n_sub).all()
    thresholds = saved_thresholds(run)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["calibration"]["score"] == thresholds["score"]
    return {"score": thresholds["score"], **metrics["calibration"]}


@pytest.mark.parametrize("finetune", FINETUNES)
@pytest.mark.parametrize("approach", APPROACHES)
def test_every_approach_and_regime_trains_from_a_weights_file_and_predicts(
    approach: str, finetune: str, grid_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, weights = grid_inputs
    code = _train(data, weights, tmp_path / "run", approach, finetune)
    err = capsys.readouterr().err
    if (approach, finetune) in REFUSED:
        assert code == 2 and err.count("\n") == 1 and not (tmp_path / "run").exists(), err
        return
    assert code == 0, err[-3000:]
    used = _predicts(tmp_path / "run", data)
    assert (used["score"] != DEFAULT_SCORE) == ((approach, finetune) in FALLS_BACK), used
    assert "Traceback" not in err


def test_the_issue_command_two_frozen_copies_of_one_backbone(tmp_path: Path) -> None:
    """The issue's command on tiny data: ViM on the final features of two frozen copies of the same weights (192
    columns of rank 96, more training images than that) left no residual outside its default 96 dimensions."""
    data = _data(tmp_path, per_class=8)
    code = _train(data, _weights(tmp_path / "w.pth"), tmp_path / "run", "two-models", "frozen",
                  "--set", "novelty.super_layer=final")
    assert code == 0
    used = _predicts(tmp_path / "run", data)
    assert used["score"] == DEFAULT_SCORE and "score_requested" not in used


def test_features_no_detector_can_fit_fall_back_to_maxlogit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A backbone whose features are all zero: ViM has no direction to fit. The run trains, warns once, records
    the score it used, and predicts with it. (Through the API: the CLI's logging set-up replaces caplog's handler.)"""
    data = _data(tmp_path, per_class=3)
    options = {"model.backbone": ARCH, "model.weights": str(_weights(tmp_path / "dead.pth", dead=True)),
               "optim.finetune": "frozen", "optim.epochs": 1, "data.image_size": int(SIZE), "model.input_size": int(SIZE),
               "data.val_fraction": 0.34, "trainer.progress": False}
    with caplog.at_level("WARNING", logger="supersub"):
        api.train(data, tmp_path / "run", **options)
    said = [r.getMessage() for r in caplog.records if "cannot be fitted" in r.getMessage()]
    # one line per level: the default's subclass probe has nothing to read on constant features either
    assert len(said) == 2 and said[0].startswith("superclass score vim cannot be fitted on this run's features "
                                                 "(score 'vim': the training features span 0 direction(s)"), said
    assert said[1].startswith("subclass score probe cannot be fitted on this run's features (score 'probe': the "
                              "training features span 0 directions once L2-normalised"), said
    used = _predicts(tmp_path / "run", data)
    assert used["score"] == "maxlogit" and used["score_requested"] == DEFAULT_SCORE
    assert "span 0 direction(s)" in used["super_score_fallback"] and "span 0 directions" in used["sub_score_fallback"]
