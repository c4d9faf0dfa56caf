"""``novelty.score: auto``: each level's detector chosen on the run's own calibration evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_TRAIN_ARGS, run_cli, saved_thresholds
from test_loso_two_superclasses import _two_superclasses

from supersub.config import build_config
from supersub.novelty.score_choice import AUTO_MARGIN, SEPARATES_AT, choose_score
from supersub.score_catalog import AUTO_CANDIDATES

SUPER = AUTO_CANDIDATES["super"]


def test_the_default_stays_unless_another_candidate_beats_it_by_the_margin() -> None:
    close = {"vim": 0.90, "knn": 0.90 + AUTO_MARGIN / 2, "mahalanobis": 0.80}
    assert choose_score("super", SUPER, close).detector == "vim"
    clear = {"vim": 0.80, "knn": 0.80 + AUTO_MARGIN + 0.01, "mahalanobis": 0.82}
    choice = choose_score("super", SUPER, clear)
    assert choice.detector == "knn" and choice.separates
    assert choice.summary() == {"super_score_auto": "knn",
                                "super_score_auto_auroc": {"vim": 0.8, "knn": 0.86, "mahalanobis": 0.82}}


def test_a_default_that_could_not_be_fitted_gives_way_to_the_best() -> None:
    assert choose_score("sub", AUTO_CANDIDATES["sub"], {"maxlogit": 0.71, "energy": 0.75}).detector == "energy"


def test_no_evidence_keeps_the_default_and_says_why() -> None:
    choice = choose_score("super", SUPER, None, "no LOSO models")
    assert choice.detector == "vim" and choice.aurocs is None and "no LOSO models" in choice.message


def test_no_candidate_separating_is_said_in_one_line() -> None:
    low = {"vim": SEPARATES_AT - 0.1, "knn": SEPARATES_AT - 0.05}
    choice = choose_score("super", SUPER, low)
    assert not choice.separates and choice.summary()["super_score_auto_no_separation"] is True
    assert "no candidate separates" in choice.message and "\n" not in choice.message


def test_a_hand_set_threshold_needs_a_named_score() -> None:
    with pytest.raises(Exception, match="hand-set threshold needs a named score"):
        build_config({"novelty": {"score": "auto", "tau_super": 0.5}})
    assert build_config({"novelty": {"score": "vim+auto", "tau_super": 0.5}}).novelty.tau_super == 0.5
    with pytest.raises(Exception, match="unknown option"):
        build_config({"novelty": {"score": "auto", "score_options": {"k": 5}}})


def _calibration(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["calibration"]


def test_train_and_predict_with_auto_from_the_cli(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(run), "--score", "auto", *TINY_TRAIN_ARGS]) == 0
    cal = _calibration(run)
    # >= 3 superclasses: the LOSO models are trained as the superclass evidence, one per superclass
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("loso-")) == \
        ["loso-0", "loso-1", "loso-2"]
    for level in ("super", "sub"):
        aurocs = cal[f"{level}_score_auto_auroc"]
        assert set(aurocs) <= set(AUTO_CANDIDATES[level]) and aurocs
        assert cal[f"{level}_score_auto"] == choose_score(level, AUTO_CANDIDATES[level], aurocs).detector
    chosen = (cal["super_score_auto"], cal["sub_score_auto"])
    score = saved_thresholds(run)["score"]
    assert cal["score_requested"] == "auto" and score == (chosen[0] if chosen[0] == chosen[1] else "+".join(chosen))
    out = tmp_path / "pred.csv"
    assert run_cli(["predict", str(run), str(synth_dir / "test_images"), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(list((synth_dir / "test_images").iterdir()))


def test_two_superclasses_keep_the_default_superclass_score(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "two"
    _two_superclasses(synth_dir, data)
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--out", str(run), "--score", "vim+maxlogit", *TINY_TRAIN_ARGS]) == 0
    assert not any(p.name.startswith("loso-") for p in (run / "checkpoints").iterdir())
    assert run_cli(["calibrate", str(run), "--score", "auto"]) == 0
    cal = json.loads((run / "metrics.json").read_text())["novelty"]
    assert cal["super_score_auto"] == "vim" and "super_score_auto_auroc" not in cal
    assert cal["sub_score_auto"] in AUTO_CANDIDATES["sub"] and cal["sub_score_auto_auroc"]


def test_the_python_api_resolves_one_auto_level(trained_run: Path, tmp_path: Path) -> None:
    """``supersub.api.calibrate(run, score="vim+auto")``: the superclass keeps vim, the subclass is chosen."""
    import shutil

    import supersub.api as ss

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    summary = ss.calibrate(run, score="vim+auto")
    assert summary["score_requested"] == "vim+auto" and "super_score_auto" not in summary
    assert summary["thresholds"]["score"] == f"vim+{summary['sub_score_auto']}"
