"""The frozen regime trains its heads on one CPU thread and gives the caller's thread count back."""

import pytest
import torch

from supersub.training.lightning_fit import cpu_threads


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


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")


def test_dense_threads_limits_torch_and_blas_and_restores_both() -> None:
    from supersub.threads import dense_threads

    torch_before, blas_before = torch.get_num_threads(), _blas_threads()
    torch.set_num_threads(2)
    try:
        with dense_threads():
            assert torch.get_num_threads() == 1
            assert all(n == 1 for n in _blas_threads())
        assert torch.get_num_threads() == 2 and _blas_threads() == blas_before
        with pytest.raises(ValueError), dense_threads():
            raise ValueError("boom")
        assert torch.get_num_threads() == 2 and _blas_threads() == blas_before
    finally:
        torch.set_num_threads(torch_before)


def test_a_detector_fits_on_one_thread_and_gives_the_threads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """ViM's eigh of a 1280x1280 covariance took 88 of a small run's 101 s with 2 threads on a loaded 2-core CPU."""
    from supersub.novelty.detectors import ViMScore, create_detector

    seen: list[int] = []
    real = ViMScore._fit
    monkeypatch.setattr(ViMScore, "_fit", lambda self, *a: (seen.append(torch.get_num_threads()), real(self, *a))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(64, 16, generator=g), torch.randn(4, 16, generator=g)
        create_detector("vim").fit(x @ w.T, x, torch.randint(0, 4, (64,), generator=g), head_weight=w,
                                   head_bias=torch.zeros(4))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
