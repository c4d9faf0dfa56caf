"""The open-set head: one object from a model's outputs to decisions, saved as one file, and the runs written
before it (thresholds.json + detectors.pt) still predict the same decisions and probabilities."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli
from supersub.errors import SupersubError
from supersub.novelty.detectors import create_detector
from supersub.novelty.level_scorer import NoveltyScorer
from supersub.novelty.open_set import OpenSetHead
from supersub.novelty.thresholds import Thresholds
from supersub.run_dir import RunDir

BEFORE = Path(__file__).parent / "data" / "run_before_open_set_head"


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    run = Path(shutil.copytree(BEFORE, tmp_path / "run", ignore=shutil.ignore_patterns("README.md", "predictions.csv")))
    assert not (run / "open_set_head.pt").exists() and (run / "thresholds.json").is_file()
    return run


def test_a_run_written_before_the_head_was_one_file_predicts_the_same(old_run: Path, synth_dir: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    assert run_cli(["predict", str(old_run), str(synth_dir / "test_images"), "--out", str(out), "--probs"]) == 0
    # the same rows, columns and decisions; the probabilities to the float noise of another torch release
    # (torch 2.13 and 2.14 differ in the sixth significant digit of a few of them)
    got, want = pd.read_csv(out), pd.read_csv(BEFORE / "predictions.csv")
    assert list(got.columns) == list(want.columns) and got["image"].tolist() == want["image"].tolist()
    assert got[["superclass_index", "subclass_index"]].equals(want[["superclass_index", "subclass_index"]])
    probs = [c for c in want.columns if "_prob_" in c]
    assert len(probs) > 10
    np.testing.assert_allclose(got[probs].to_numpy(), want[probs].to_numpy(), rtol=1e-4, atol=1e-7)
    head = RunDir.open(old_run).load_open_set_head()
    assert head.score == "vim+probe" and head.n_super == 3 and head.n_sub == len(head.sub_to_super)


def _outputs(run: Path, n: int = 12) -> tuple[OpenSetHead, object]:
    model, _, _ = RunDir.open(run).load_model()
    images = torch.randint(0, 256, (n, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return RunDir.open(run).load_open_set_head(), model.eval().outputs(images)


def test_the_head_saved_as_one_file_decides_as_before(old_run: Path, tmp_path: Path) -> None:
    head, outputs = _outputs(old_run)
    path = tmp_path / "head.pt"
    torch.save(head.state_dict(), path)
    again = OpenSetHead.from_state_dict(torch.load(path, weights_only=True), str(path))
    a, b = head.decide(outputs), again.decide(outputs)
    for name in ("super_pred", "sub_pred", "super_conf", "sub_conf", "super_probs", "sub_probs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the distributions' argmax is the decision, with the novel column last
    assert torch.equal(a.super_probs.argmax(1), a.super_pred) and torch.equal(a.sub_probs.argmax(1), a.sub_pred)


def test_a_recalibrated_old_run_keeps_one_head_file(old_run: Path) -> None:
    run = RunDir.open(old_run)
    head = run.load_open_set_head()
    raised = Thresholds(**{**head.thresholds.to_dict(), "tau_super": head.thresholds.tau_super + 1.0})
    run.save_open_set_head(OpenSetHead(head.scorer, raised, head.sub_to_super, head.n_super))
    assert not (old_run / "thresholds.json").exists() and not (old_run / "detectors.pt").exists()
    assert run.load_thresholds().tau_super == pytest.approx(head.thresholds.tau_super + 1.0)


def test_closed_set_is_the_rule_without_thresholds(old_run: Path) -> None:
    head, outputs = _outputs(old_run)
    everything_novel = OpenSetHead(head.scorer, Thresholds(**{**head.thresholds.to_dict(), "tau_super": 1e9}),
                                   head.sub_to_super, head.n_super)
    decided = everything_novel.decide(outputs)
    assert (decided.super_pred == head.n_super).all() and (decided.sub_pred == head.n_sub).all()
    closed = everything_novel.closed_set(outputs, decided)
    assert (closed.super_pred < head.n_super).all() and (closed.sub_pred < head.n_sub).all()
    assert torch.equal(closed.super_pred, outputs.super_logits.argmax(1))
    owner = torch.tensor(head.sub_to_super)
    assert torch.equal(owner[closed.sub_pred], closed.super_pred)  # the subclass lies in the decided superclass


@pytest.mark.parametrize(("state", "message"), [
    ({"format": "other"}, "not a supersub open-set head file"),
    ({"format": "supersub-open-set-head-1", "thresholds": {}, "detectors": {}, "sub_to_super": [0, 5], "n_super": 2},
     "sub_to_super must map every subclass into 0..n_super-1"),
])
def test_a_foreign_or_inconsistent_head_is_one_line(state: dict, message: str) -> None:
    with pytest.raises(SupersubError, match=message):
        OpenSetHead.from_state_dict(state, "h.pt")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda r: (r / "thresholds.json").write_text("{tau"), "thresholds.json: not valid JSON"),
    (lambda r: (r / "thresholds.json").write_text('{"tau_super": "high", "tau_sub": 0.5}'),
     "thresholds.json: tau_super must be a finite number"),
    (lambda r: (r / "detectors.pt").unlink(), "detectors.pt: checkpoint not found"),
    (lambda r: torch.save(NoveltyScorer("msp", create_detector("msp"), create_detector("msp")).state_dict(),
                          r / "detectors.pt"),
     r"detectors.pt: scorer 'msp' does not match the thresholds' score 'vim\+probe'"),
])
def test_an_old_runs_damaged_files_are_one_line(old_run: Path, damage, message: str) -> None:
    damage(old_run)
    with pytest.raises(SupersubError, match=message):
        RunDir.open(old_run).load_open_set_head()
