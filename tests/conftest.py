"""Shared fixtures: a tiny built-in dataset and a tiny trained run, made once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

# tiny models, tiny images: the whole suite must stay fast on 2 CPU cores
TINY_TRAIN_ARGS = [
    "--backbone", "cnn", "--epochs", "2", "--image-size", "24", "--batch-size", "16", "--no-progress",
    "--set", "model.width=8", "--set", "model.depth=[1]",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two test processes on two cores: one thread each (and in their subprocesses), not two fighting for a core
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
# frozen backbone outputs go to a per-session folder, never into the user cache
os.environ["SUPERSUB_CACHE_DIR"] = tempfile.mkdtemp(prefix="supersub-test-cache-")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from supersub.data.synth import write_synth

    out = tmp_path_factory.mktemp("synth") / "data"
    write_synth(out, seed=0, train_per_class=8, test_per_class=3)
    return out


def run_cli(args: list[str]) -> int:
    """Run ``supersub ARGS`` in-process through the real entry point; returns the exit code."""
    import sys

    from supersub.cli import main

    old = sys.argv
    sys.argv = ["supersub", *args]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0


@pytest.fixture(scope="session")
def trained_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    code = run_cli(["train", "--data", str(synth_dir), "--out", str(run),
                    "--novel-data", str(synth_dir / "novel_images"), "--score", "vim+maxlogit", *TINY_TRAIN_ARGS])
    assert code == 0
    return run


@pytest.fixture(scope="session")
def recipe_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default recipe (bundled Lite0, frozen, seven calibration models, vim+probe on block-1 / final), one epoch,
    on tiny images enlarged to 32 px: the export and the report pages read it."""
    run = tmp_path_factory.mktemp("recipe") / "recipe"
    code = run_cli(["train", "--data", str(synth_dir), "--out", str(run), "--novel-data", str(synth_dir / "novel_images"),
                    "--epochs", "1", "--image-size", "24", "--input-size", "32", "--batch-size", "32", "--no-progress"])
    assert code == 0
    return run


def interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, stage: str, epoch: int) -> None:
    """Raise KeyboardInterrupt (what a Ctrl-C raises) in-process when 0-based ``epoch`` of ``stage`` starts, so
    that stage's last.ckpt holds epoch ``epoch - 1``: an interrupted run, made on an event, not a timer."""
    from supersub.training import lightning_fit as fit

    original = fit.EpochTimer.on_train_epoch_start

    def hook(self: object, trainer: object, module: object) -> None:
        if Path(trainer.checkpoint_callback.dirpath).name == stage and trainer.current_epoch == epoch:  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        original(self, trainer, module)  # type: ignore[arg-type]

    monkeypatch.setattr(fit.EpochTimer, "on_train_epoch_start", hook)


def saved_thresholds(run: Path) -> dict[str, Any]:
    """The thresholds a run directory holds, as plain data (read back from its open-set head file)."""
    return torch.load(run / "open_set_head.pt", weights_only=True)["thresholds"]


def saved_detectors(run: Path) -> dict[str, Any]:
    """The fitted detectors' state a run directory holds (from its open-set head file)."""
    return torch.load(run / "open_set_head.pt", weights_only=True)["detectors"]
