"""The frozen regime trains its heads on one CPU thread and gives the caller's thread count back."""

import pytest
import torch

from supersub.training.fit import cpu_threads


def test_cpu_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with cpu_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(target):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_cpu_threads_none_changes_nothing() -> None:
    before = torch.get_num_threads()
    with cpu_threads(None):
        assert torch.get_num_threads() == before
