"""Seed 004's PtR: the weight w from gradient norms, the switch-on rule, and PtR inside real training runs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_TRAIN_ARGS, run_cli
from supersub.config import PtrConfig, build_config
from supersub.errors import SupersubError
from supersub.training.ptr import PseudoTaskRegressor, ptr_active


@pytest.mark.parametrize("kind", ["l2", "smooth-l1"])
def test_weight_is_the_gradient_norm_ratio_by_hand(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    n, d, c, ratio = 6, 4, 3, 10.0
    x = torch.randn(n, 5)
    trunk = torch.nn.Linear(5, d)
    head = torch.nn.Linear(d, c)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ptr = PseudoTaskRegressor(d, PtrConfig(enabled=True, ratio=ratio, loss=kind))
    targets = torch.rand(n, d) * 3 - 1  # some beyond the smooth-L1 knee at 1
    monkeypatch.setattr(ptr, "targets", lambda like: targets)
    rep = trunk(x)
    ce = F.cross_entropy(head(rep), y)
    step = ptr.step(ce, rep)

    with torch.no_grad():  # the gradients with respect to rep, written out
        r = rep.detach()
        d_ce = (torch.softmax(head(r), dim=1) - F.one_hot(y, c).float()) / n @ head.weight
        diff = ptr.regressor(r) - targets
        d_out = 2 * diff / diff.numel() if kind == "l2" else diff.clamp(-1, 1) / diff.numel()
        d_ptr = d_out @ ptr.regressor.weight
        g_ce, g_ptr = d_ce.norm(dim=1).mean(), d_ptr.norm(dim=1).mean()
    assert step.grad_ce.item() == pytest.approx(g_ce.item(), rel=1e-5)
    assert step.grad_ptr.item() == pytest.approx(g_ptr.item(), rel=1e-5)
    assert step.weight.item() == pytest.approx((g_ce / (g_ptr * ratio)).item(), rel=1e-5)
    assert not step.weight.requires_grad and step.loss.requires_grad
    # the weighted term's gradient on rep is then 1/R of the CE's, in batch-mean norm
    (g_weighted,) = torch.autograd.grad(step.loss, rep, retain_graph=True)
    assert g_weighted.norm(dim=1).mean().item() == pytest.approx(g_ce.item() / ratio, rel=1e-4)


def test_targets_follow_the_configured_distribution() -> None:
    torch.manual_seed(0)
    like = torch.empty(4000, 8)
    normal = PseudoTaskRegressor(8, PtrConfig(target="normal")).targets(like)
    uniform = PseudoTaskRegressor(8, PtrConfig(target="uniform")).targets(like)
    assert abs(normal.mean().item()) < 0.02 and abs(normal.std().item() - 1) < 0.02 and normal.min() < 0
    assert uniform.min() >= 0 and uniform.max() <= 1 and abs(uniform.mean().item() - 0.5) < 0.01
    again = PseudoTaskRegressor(8, PtrConfig())
    assert torch.equal(normal, again.targets(like))  # the same seed, the same stream
    assert not torch.equal(normal, again.targets(like))  # fresh every draw


def test_targets_leave_the_global_rng_alone_and_restart_with_reseed() -> None:
    """Switching PtR on must change the loss only: dropout masks and view choices keep their random numbers."""
    regressor = PseudoTaskRegressor(8, PtrConfig())
    torch.manual_seed(5)
    expected = torch.rand(6)
    torch.manual_seed(5)
    regressor.reseed(11)
    first = regressor.targets(torch.empty(3, 8))
    assert torch.equal(torch.rand(6), expected)
    regressor.reseed(11)
    assert torch.equal(regressor.targets(torch.empty(3, 8)), first)
    regressor.reseed(12)
    assert not torch.equal(regressor.targets(torch.empty(3, 8)), first)


def test_switch_on_rule() -> None:
    assert not ptr_active(0, 0.1, warmup_epochs=1, ce_below=None)  # warm-up: CE alone
    assert ptr_active(1, 5.0, warmup_epochs=1, ce_below=None)
    assert ptr_active(0, 5.0, warmup_epochs=0, ce_below=None)
    assert not ptr_active(3, 2.0, warmup_epochs=1, ce_below=1.5)  # CE still far from its minimum
    assert ptr_active(3, 1.0, warmup_epochs=1, ce_below=1.5)
    assert not ptr_active(0, 1.0, warmup_epochs=1, ce_below=1.5)  # both conditions must hold


def test_ptr_refuses_the_frozen_regime() -> None:
    with pytest.raises(SupersubError, match="PtR needs a trainable representation"):
        build_config({"model": {"backbone": "efficientnet_lite0"}, "ptr": {"enabled": True}})
    build_config({"model": {"backbone": "cnn"}, "ptr": {"enabled": True}})  # from scratch: full, fine


def _epoch_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "final" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if r.get("ptr_on")]


@pytest.mark.parametrize("regime,approach", [("full", "two-models"), ("partial", "two-heads"), ("discriminative", "sub-only")])
def test_ptr_trains_and_logs_w_per_epoch(synth_dir: Path, tmp_path: Path, regime: str, approach: str) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(synth_dir), "--out", str(run), *TINY_TRAIN_ARGS, "--finetune", regime,
            "--approach", approach, "--ptr", "--ptr-ratio", "5", "--ptr-loss", "l2", "--tau-super", "0.5",
            "--tau-sub", "0.5", "--score", "msp", "--set", "model.depth=[1,1]"]
    assert run_cli(args) == 0
    rows = _epoch_rows(run)
    assert [float(r["ptr_on"]) for r in rows] == [0.0, 1.0]  # warm-up epoch 0: CE alone
    assert rows[0]["ptr_w"] == "" and float(rows[1]["ptr_w"]) > 0
    assert float(rows[1]["ptr_grad_ce"]) > 0 and float(rows[1]["ptr_grad_ptr"]) > 0
    assert run_cli([*args[:4], str(tmp_path / "frozen"), *args[5:], "--finetune", "frozen"]) == 2
