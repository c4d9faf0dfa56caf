"""The trainer's settings: torch's deterministic algorithms without their NaN fill of every new tensor (a speed
cost), and ``trainer.num_nodes`` reaching every Lightning Trainer a run builds (no real multi-node job here)."""

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.utils.deterministic

from supersub.cli_options import TRAIN_FLAGS, flag_overrides
from supersub.config import load_config
from supersub.errors import SupersubError
from supersub.pipeline.predict import run_devices
from supersub.training import extract, lightning_fit
from supersub.training.lightning_fit import build_trainer
from supersub.training.stream import Devices


def test_deterministic_trainer_does_not_fill_new_tensors(tmp_path: Path) -> None:
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    try:
        torch.utils.deterministic.fill_uninitialized_memory = True
        build_trainer(load_config(None, {"trainer.progress": False}), tmp_path, "final", 1, [])
        assert torch.are_deterministic_algorithms_enabled()  # trainer.deterministic (the default) still holds
        assert not torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def test_num_nodes_reaches_the_training_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``trainer.num_nodes`` (``train --num-nodes``) is what Lightning's Trainer is built with."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(lightning_fit.L, "Trainer", lambda **kwargs: seen.update(kwargs))
    build_trainer(load_config(None, {"trainer.progress": False, "trainer.num_nodes": 3}), tmp_path, "final", 1, [])
    assert seen["num_nodes"] == 3


def test_num_nodes_reaches_the_sharded_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Devices] = []
    monkeypatch.setattr(extract, "run_chunks", lambda *args, **kwargs: seen.append(args[5]))
    cfg = load_config(None, {"trainer.num_nodes": 2, "trainer.devices": "4", "data.cache_dir": str(tmp_path)})
    extract.extract_on_devices(torch.nn.Identity(), torch.zeros(2, 3, 8, 8), cfg, ["identity"])
    assert seen[0].num_nodes == 2 and seen[0].devices == "4"


def test_num_nodes_is_one_or_more() -> None:
    with pytest.raises(SupersubError, match=r"^config: trainer\.num_nodes: Input should be greater than or equal to 1$"):
        load_config(None, {"trainer.num_nodes": 0})


def test_train_flag_sets_num_nodes() -> None:
    flags = [flag for flag in TRAIN_FLAGS if flag.flag == "--num-nodes"]
    assert flags[0].type is int and flag_overrides(flags, {"num_nodes": 2}) == {"trainer.num_nodes": 2}


@pytest.mark.parametrize("given,runs_devices,expected", [(None, True, 2), (None, False, 1), (1, True, 1), (4, False, 4)])
def test_predict_runs_on_the_runs_nodes_unless_told(given: int | None, runs_devices: bool, expected: int) -> None:
    """The command line (``runs_devices``) defaults to the run's ``trainer.num_nodes``; a library call to one
    machine, as it does to one device."""
    cfg = load_config(None, {"trainer.num_nodes": 2})
    assert run_devices(cfg, None, None, None, None, given, runs_devices).num_nodes == expected
