"""Determinism and interrupted runs: same seed -> byte-identical predictions; SIGKILL + --resume -> the
weights of the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import supersub.api as api
from supersub.data.module import EpochShuffleSampler

TINY = {"data.image_size": 16, "model.backbone": "cnn", "model.width": 4, "model.depth": [1], "optim.batch_size": 8,
        "trainer.progress": False}


def test_epoch_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        orders.append(list(a))
    b.set_epoch(2)  # a fresh sampler (a resumed run) jumping straight to epoch 2
    assert list(b) == orders[2]
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(50))
    other = EpochShuffleSampler(50, seed=4)
    assert list(other) != orders[0]


def test_same_seed_gives_byte_identical_predictions(synth_dir: Path, tmp_path: Path) -> None:
    """The whole pipeline (calibration model, thresholds, final model, calibrated probabilities) twice."""
    files = []
    for name in ("a", "b"):
        api.train(synth_dir, tmp_path / name, epochs=2, **TINY, **{"data.novel_data": str(synth_dir / "novel_images")})
        out = tmp_path / f"{name}.csv"
        api.predict(tmp_path / name, synth_dir / "test_images", out=out, probs=True)
        files.append(out.read_bytes())
    assert files[0] == files[1]
    # and the seed matters: another seed gives another model
    api.train(synth_dir, tmp_path / "c", epochs=2, seed=1, **TINY, **{"data.novel_data": str(synth_dir / "novel_images")})
    api.predict(tmp_path / "c", synth_dir / "test_images", out=tmp_path / "c.csv", probs=True)
    assert (tmp_path / "c.csv").read_bytes() != files[0]


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from supersub.cli import main; main()", "train", "--data", str(data),
            "--out", str(out), "--epochs", "6", "--image-size", "24", "--batch-size", "4", "--no-progress",
            "--backbone", "cnn", "--set", "model.width=8", "--set", "model.depth=[1]", "--score", "msp", "--tau-super", "0.5", "--tau-sub", "0.5",
            "--set", "optim.patience=6", *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


@pytest.mark.timeout(300)
def test_sigkill_mid_training_then_resume_matches_the_uninterrupted_run(synth_dir: Path, tmp_path: Path) -> None:
    """SIGKILL at a known point (tests/pause_driver.py pauses the process when the final model's 4th epoch starts,
    so last.ckpt holds its 3rd), then --resume: exactly the uninterrupted run's weights and predictions."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_train_cmd(synth_dir, full), check=True, env=env, capture_output=True)

    flag = tmp_path / "paused.flag"
    driver = Path(__file__).with_name("pause_driver.py")
    proc = subprocess.Popen([sys.executable, str(driver), str(flag), "epoch-start:final:3", *_train_cmd(synth_dir, cut)[3:]],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flag.exists(), "the pause point was never reached"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = cut / "checkpoints" / "final" / "last.ckpt"
    assert last.is_file() and not (cut / "model.pt").exists()
    assert torch.load(last, weights_only=True)["epoch"] == 2  # killed in epoch 3 (0-based) of 6

    subprocess.run(_train_cmd(synth_dir, cut, "--resume"), check=True, env=env, capture_output=True)
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # exactly, not approximately
    for run in (full, cut):
        api.predict(run, synth_dir / "test_images", out=tmp_path / f"{run.name}.csv", probs=True)
    assert (tmp_path / "full.csv").read_bytes() == (tmp_path / "cut.csv").read_bytes()
    # the resumed run really continued (its epoch log holds the epochs before the kill, once each)
    import pandas as pd

    epochs = pd.read_csv(cut / "logs" / "final" / "metrics.csv")["epoch"].dropna().astype(int).tolist()
    assert sorted(set(epochs)) == list(range(6))
