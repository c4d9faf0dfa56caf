"""Two CPU processes under DDP through the real command line: Lightning re-runs the command for rank 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supersub import api
from supersub.data.synth import write_synth
from supersub.training.distributed import is_global_zero

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "WORLD_SIZE",
                  "MASTER_ADDR", "MASTER_PORT")


def _command() -> list[str]:
    script = Path(sys.executable).parent / "supersub"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "supersub.cli"]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch build cannot run CPU process groups (gloo)")
def test_two_cpu_processes_train_and_only_rank_zero_writes(tmp_path: Path):
    write_synth(tmp_path / "data", seed=0, train_per_class=4, test_per_class=2)
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES} | {"HF_HUB_OFFLINE": "1"}
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--image-size", "24", "--batch-size", "8", "--val-fraction", "0.5", "--no-progress",
            "--backbone", "cnn", "--set", "model.width=4", "--set", "model.depth=[1]",
            "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(_command() + args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    # both processes ran the command and reached both fits (calibration, then final) ...
    assert done.stderr.count("calibration model:") == 2 and done.stderr.count("final model:") == 2
    # ... and only rank 0 reported and wrote the run (rank 1 creating it again would have failed: it exists)
    assert done.stdout.count("trained") == 1
    for name in ("model.pt", "open_set_head.pt", "metrics.json", "logs/final/metrics.csv", "checkpoints/final/stage.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert len(api.predict(tmp_path / "run", tmp_path / "data" / "test_images")) == 75


@pytest.mark.parametrize("variable,value,lead", [(None, None, True), ("LOCAL_RANK", "0", True),
                                                 ("LOCAL_RANK", "1", False), ("NODE_RANK", "1", False),
                                                 ("RANK", "3", False), ("SLURM_PROCID", "0", True)])
def test_rank_zero_comes_from_the_launcher_environment(variable, value, lead, monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, value)
    assert is_global_zero() is lead
