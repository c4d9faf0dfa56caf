"""The boost extra installs xgboost-cpu (no CUDA libraries) where plain xgboost pulled ~300 MB of GPU wheels: the
XGBoost head must predict exactly what it predicted with the full build. The margins below were recorded with
``xgboost`` (the CUDA build) by ``python tests/test_xgboost_build.py --record``; this test checks whichever build
is installed against them, so CI (xgboost-cpu) and a GPU user's install (xgboost) are held to the same numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "data" / "xgboost_head_margins.json"


def _fit_and_predict() -> tuple[np.ndarray, dict]:
    from supersub.config import BoostConfig
    from supersub.models.boosted import XGBoostHead

    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 8, generator=g) @ torch.randn(8, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    head = XGBoostHead(16, 3)
    fit = head.fit(x[:200], y[:200], x[200:], y[200:],
                   BoostConfig(rounds=25, early_stopping=5, learning_rate=0.2, components=6, threads=1), seed=7)
    return head(x[200:]).numpy(), fit


def test_the_installed_xgboost_build_predicts_what_the_cuda_build_recorded():
    xgboost = pytest.importorskip("xgboost")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    margins, fit = _fit_and_predict()
    expected = np.asarray(golden["margins"], dtype=np.float32)
    assert fit["rounds"] == golden["rounds"], (xgboost.__version__, golden["xgboost"])
    assert np.array_equal(margins.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(margins, expected, rtol=0, atol=1e-5)


if __name__ == "__main__" and "--record" in sys.argv:
    import xgboost

    margins, fit = _fit_and_predict()
    GOLDEN.write_text(json.dumps({"xgboost": xgboost.__version__, "distribution": "xgboost (CUDA build)",
                                  "rounds": fit["rounds"], "margins": margins.round(7).tolist()}) + "\n",
                      encoding="utf-8")
    print(f"recorded {GOLDEN} with xgboost {xgboost.__version__}, {fit['rounds']} rounds")
