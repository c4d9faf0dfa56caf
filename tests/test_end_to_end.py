"""The CLI contract end to end on the built-in data: train -> predict -> evaluate, and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY_TRAIN_ARGS, run_cli, saved_detectors, saved_thresholds
from supersub import api
from supersub.run_dir import RunDir


def test_train_writes_a_complete_run_directory(trained_run: Path):
    for name in ("config.yaml", "taxonomy.json", "model.pt", "open_set_head.pt", "metrics.json",
                 "calibration/sweep_sub.csv", "calibration/sweep_sub.png", "calibration/sweep_super.png",
                 "logs/final/metrics.csv", "logs/calibration/metrics.csv", "checkpoints/final/stage.json",
                 "checkpoints/calibration/stage.json", "checkpoints/calibration/model.pt"):
        assert (trained_run / name).is_file(), name
    # a finished stage keeps its model.pt and stage.json only: Lightning's best/last checkpoints are deleted
    assert not list(trained_run.rglob("*.ckpt"))
    thresholds = saved_thresholds(trained_run)
    # the fixture's score vim+maxlogit (the recipe's without outlier images): ViM at the superclass level, the
    # subclass head's max logit at the subclass level; the saved detectors are one of each
    assert thresholds["score"] == "vim+maxlogit"
    detectors = saved_detectors(trained_run)
    assert (detectors["super"]["name"], detectors["sub"]["name"]) == ("vim", "maxlogit")
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["n_images"] == 18 * 8 and metrics["n_novel_images"] == 80
    assert metrics["calibration"]["n_held_out"] > 0 and metrics["calibration"]["n_novel_calibration"] == 16
    log = pd.read_csv(trained_run / "logs/final/metrics.csv")
    assert log["epoch"].max() == 1 and log["val_loss"].notna().any() and log["train_outlier"].notna().any()


def test_predict_writes_competition_columns_and_probabilities(trained_run: Path, synth_dir: Path, tmp_path: Path):
    out = tmp_path / "pred.csv"
    assert run_cli(["predict", str(trained_run), str(synth_dir / "test_images"), "--out", str(out), "--probs"]) == 0
    df = pd.read_csv(out)
    truth = pd.read_csv(synth_dir / "test_truth.csv")
    assert sorted(df["image"]) == sorted(truth["image"])
    assert list(df.columns[:3]) == ["image", "superclass_index", "subclass_index"]
    sup = df[[f"super_prob_{i}" for i in range(4)]].to_numpy()
    sub = df[[f"sub_prob_{j}" for j in range(19)]].to_numpy()
    assert abs(sup.sum(1) - 1).max() < 1e-4 and abs(sub.sum(1) - 1).max() < 1e-4
    assert df["superclass_index"].between(0, 3).all() and df["subclass_index"].between(0, 18).all()
    novel_super = (df["superclass_index"] == 3).to_numpy()
    novel_sub = (df["subclass_index"] == 18).to_numpy()
    assert novel_sub[novel_super].all()
    # the probabilities agree with the decisions, in both directions and at both levels: a novel column is
    # above 0.5 exactly when that level's decision is novel, and each level's argmax is its decision
    assert ((sup[:, 3] > 0.5) == novel_super).all() and ((sub[:, 18] > 0.5) == novel_sub).all()
    assert (sup.argmax(1) == df["superclass_index"].to_numpy()).all()
    assert (sub.argmax(1) == df["subclass_index"].to_numpy()).all()
    assert novel_super.any() and (~novel_sub).any()  # both kinds of rows occur, so the checks can fail
    # a second predict without --overwrite refuses to replace the file
    assert run_cli(["predict", str(trained_run), str(synth_dir / "test_images"), "--out", str(out)]) == 2


def test_evaluate_matches_the_scored_predictions(trained_run: Path, synth_dir: Path):
    metrics = api.evaluate(trained_run, synth_dir / "test_images", synth_dir / "test_truth.csv")
    assert metrics["super_n_overall"] == len(pd.read_csv(synth_dir / "test_truth.csv"))
    assert metrics["super_ce"] is not None and metrics["sub_ce"] is not None
    df = api.predict(trained_run, synth_dir / "test_images", probs=False)
    truth = pd.read_csv(synth_dir / "test_truth.csv").set_index("image").loc[df["image"]]
    acc = 100 * (df["superclass_index"].to_numpy() == truth["superclass_index"].to_numpy()).mean()
    assert metrics["super_acc_overall"] == pytest.approx(round(acc, 2))
    assert run_cli(["evaluate", str(trained_run), "--images", str(synth_dir / "test_images"),
                    "--labels", str(synth_dir / "test_truth.csv")]) == 0


def test_saved_model_loads_weights_only_and_reproduces_predictions(trained_run: Path, synth_dir: Path,
                                                                    tmp_path: Path):
    payload = torch.load(trained_run / "model.pt", weights_only=True)
    assert payload["format"] == "supersub-model-1"
    model, cfg, taxonomy = RunDir.open(trained_run).load_model()
    assert taxonomy.n_sub == 18 and cfg.model.width == 8
    # predictions of this process (which trained the run) against a fresh interpreter that only reloads the run
    # directory: byte for byte, so nothing a prediction needs lives outside the run directory
    here, fresh = tmp_path / "here.csv", tmp_path / "fresh.csv"
    api.predict(trained_run, synth_dir / "test_images", out=here, probs=True)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from supersub.cli import main; main()", "predict", str(trained_run),
                           str(synth_dir / "test_images"), "--out", str(fresh), "--probs"], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert here.read_bytes() == fresh.read_bytes()
    assert len(pd.read_csv(here)) == len(list((synth_dir / "test_images").iterdir()))


def test_python_api_with_hand_set_thresholds(synth_dir: Path, tmp_path: Path):
    summary = api.train(
        synth_dir, tmp_path / "run", epochs=1, **{"data.image_size": 24, "model.backbone": "cnn", "model.width": 8, "model.depth": [1],
                                                   "novelty.score": "msp", "novelty.tau_super": 0.99, "novelty.tau_sub": 0.85,
                                                   "trainer.progress": False},
    )
    assert summary["thresholds"]["tau_super"] == 0.99 and summary["calibration"] == {"hand_set": True}
    assert not (tmp_path / "run" / "checkpoints" / "calibration").exists()


def test_nested_folder_layout_trains(tmp_path: Path, synth_dir: Path):
    import shutil

    truth = pd.read_csv(synth_dir / "train_data.csv")
    subs = pd.read_csv(synth_dir / "subclass_mapping.csv")["class"].tolist()
    nested = tmp_path / "nested"
    for row in truth.head(60).itertuples():
        sup, sub = subs[row.subclass_index].split("/")
        (nested / sup / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_dir / "train_images" / row.image, nested / sup / sub / row.image)
    code = run_cli(["train", "--data", str(nested), "--out", str(tmp_path / "run"), *TINY_TRAIN_ARGS,
                    "--epochs", "1", "--score", "msp", "--tau-super", "0.9", "--tau-sub", "0.5"])
    assert code == 0 and (tmp_path / "run" / "model.pt").is_file()
