"""The trainer keeps torch's deterministic algorithms but not their NaN fill of every new tensor (a speed cost)."""

from pathlib import Path

import torch
import torch.utils.deterministic

from supersub.config import load_config
from supersub.training.lightning_fit import build_trainer


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
