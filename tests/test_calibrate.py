"""Threshold selection on synthetic confidences whose best threshold is known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from supersub.errors import SupersubError
from supersub.novelty.threshold_search import choose_threshold, sweep
from supersub.reporting import save_sweep


def test_balanced_perfect_split_is_the_midpoint_of_the_gap() -> None:
    seen, novel = [0.6, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.4]
    assert choose_threshold(seen, novel) == 0.5
    assert choose_threshold(torch.tensor([0.6, 0.9]), torch.tensor([0.1, 0.2])) == pytest.approx(0.4)


def test_balanced_picks_the_widest_of_two_best_plateaus() -> None:
    # balanced = .75 on (0.1, 0.5] (width .4) and on (0.7, 0.9] (width .2), lower everywhere else
    assert choose_threshold([0.5, 0.9], [0.1, 0.7]) == pytest.approx(0.3)


def test_balanced_uses_seen_correctness_and_takes_the_middle_of_the_plateau() -> None:
    seen, novel = [0.3, 0.5, 0.9], [0.1]
    # keep-rate alone: best is (0.1, 0.3] -> 0.2; with only the 0.9 image correct, every tau in (0.1, 0.9]
    # scores (1/3 + 1) / 2, so the answer is the middle of that plateau
    assert choose_threshold(seen, novel) == pytest.approx(0.2)
    assert choose_threshold(seen, novel, correct_seen=[0, 0, 1]) == pytest.approx(0.5)


def test_eer_equalises_keep_and_flag_rates() -> None:
    seen, novel = [0.2, 0.6, 0.7, 0.8], [0.1, 0.3, 0.4, 0.65]
    # on (0.4, 0.6] 3/4 of seen are kept and 3/4 of novel flagged; nowhere else are the rates equal
    assert choose_threshold(seen, novel, objective="eer") == pytest.approx(0.5)


def test_recall_is_the_largest_threshold_keeping_the_target_share() -> None:
    seen = np.arange(1, 21) / 20  # 0.05 .. 1.00
    tau = choose_threshold(seen, None, objective="recall", target_recall=0.95)
    assert tau == pytest.approx(0.075)  # keeps 19 of 20: between 0.05 and 0.10
    assert np.mean(seen >= tau) == 0.95
    assert choose_threshold(seen, [], objective="recall", target_recall=0.5) == pytest.approx(0.525)
    assert choose_threshold(seen, None, objective="recall", target_recall=1.0) < 0.05


def test_choice_is_exact_not_a_grid_approximation() -> None:
    """The chosen tau scores as well as the best of a very fine brute-force search."""
    rng = np.random.default_rng(0)
    seen = np.round(rng.beta(5, 2, 80), 2)
    novel = np.round(rng.beta(2, 4, 60), 2)
    correct = (rng.random(80) < 0.8).astype(float)

    def balanced(t: float) -> float:
        return (np.mean((seen >= t) * correct) + np.mean(novel < t)) / 2

    fine = np.linspace(-0.01, 1.01, 20_001)
    tau = choose_threshold(seen, novel, correct_seen=correct)
    assert balanced(tau) == pytest.approx(max(balanced(t) for t in fine), abs=1e-12)
    assert 0.0 < tau < 1.0


def test_expected_weights_the_two_rates_by_the_novel_share() -> None:
    # tau in (0.1, 0.2] keeps all 3 seen and flags 1 of 2 novel; tau in (0.85, 0.9] keeps 1 seen and flags
    # both novel; expected accuracy prefers the first while novel_share < 4/7 and the second above it
    seen, novel = [0.2, 0.8, 0.9], [0.1, 0.85]
    assert choose_threshold(seen, novel) == pytest.approx(0.15)
    assert choose_threshold(seen, novel, objective="expected", novel_share=0.5) == pytest.approx(0.15)
    assert choose_threshold(seen, novel, objective="expected", novel_share=0.1) == pytest.approx(0.15)
    assert choose_threshold(seen, novel, objective="expected", novel_share=0.6) == pytest.approx(0.875)


def test_expected_is_the_best_weighted_accuracy_of_a_fine_search() -> None:
    rng = np.random.default_rng(1)
    seen, novel = np.round(rng.beta(5, 2, 70), 2), np.round(rng.beta(2, 4, 90), 2)
    correct = (rng.random(70) < 0.7).astype(float)
    for share in (0.2, 0.5, 0.79):
        def expected(t: float) -> float:
            return (1 - share) * np.mean((seen >= t) * correct) + share * np.mean(novel < t)

        tau = choose_threshold(seen, novel, objective="expected", correct_seen=correct, novel_share=share)
        assert expected(tau) == pytest.approx(max(expected(t) for t in np.linspace(-0.01, 1.01, 10_001)), abs=1e-12)


@pytest.mark.parametrize("objective", ["balanced", "expected", "eer", "recall"])
def test_empty_seen_set_names_the_objective(objective: str) -> None:
    with pytest.raises(SupersubError, match=f"choose_threshold\\({objective}\\): no seen"):
        choose_threshold([], [0.1], objective=objective)


@pytest.mark.parametrize("objective", ["balanced", "expected", "eer"])
def test_objectives_needing_novel_data_say_so(objective: str) -> None:
    with pytest.raises(SupersubError, match=f"choose_threshold\\({objective}\\): needs novel"):
        choose_threshold([0.5, 0.7], None, objective=objective)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"objective": "f1"}, "unknown objective 'f1'"),
        ({"objective": "recall", "target_recall": 0.0}, "target_recall must be in"),
        ({"objective": "expected", "novel_share": 1.0}, "novel_share must be in"),
        ({"correct_seen": [1.0]}, "correct_seen has 1 entries"),
        ({"conf_seen": [0.5, float("nan")]}, "conf_seen: contains a non-finite"),
    ],
)
def test_bad_arguments(kwargs: dict, fragment: str) -> None:
    args = {"conf_seen": [0.5, 0.7], "conf_novel": [0.1]}
    args.update(kwargs)
    with pytest.raises(SupersubError, match=fragment):
        choose_threshold(**args)


def test_sweep_columns_and_rates() -> None:
    seen, novel = np.array([0.6, 0.7, 0.8, 0.9]), np.array([0.1, 0.2, 0.3, 0.4])
    df = sweep(seen, novel, correct_seen=[1, 1, 0, 1], n=11)
    assert list(df.columns) == ["tau", "seen_acc", "unseen_acc", "balanced"]
    assert len(df) == 11 and df["tau"].is_monotonic_increasing
    first, last = df.iloc[0], df.iloc[-1]
    assert (first.seen_acc, first.unseen_acc) == (0.75, 0.0)  # everything kept: 3 of 4 seen correct
    assert (last.seen_acc, last.unseen_acc) == (0.0, 1.0)  # everything flagged
    for row in df.itertuples():
        assert row.seen_acc == np.mean((seen >= row.tau) * [1, 1, 0, 1])
        assert row.unseen_acc == np.mean(novel < row.tau)
        assert row.balanced == pytest.approx((row.seen_acc + row.unseen_acc) / 2)


def test_sweep_without_novel_data_leaves_unseen_empty() -> None:
    df = sweep([0.2, 0.4], None, n=5)
    assert df["unseen_acc"].isna().all() and df["balanced"].isna().all()
    assert df["seen_acc"].tolist() == [1.0, 0.5, 0.5, 0.5, 0.0]
    with pytest.raises(SupersubError, match="no seen"):
        sweep([], [0.1])


def test_save_sweep_writes_csv_and_png(tmp_path: Path) -> None:
    df = sweep([0.6, 0.7, 0.8], [0.1, 0.5], n=21)
    csv_path, png_path = tmp_path / "cal" / "sweep.csv", tmp_path / "cal" / "sweep.png"
    save_sweep(df, csv_path, png_path, "subclass", 0.55)
    back = pd.read_csv(csv_path)
    assert list(back.columns) == list(df.columns) and len(back) == 21
    assert np.allclose(back.to_numpy(), df.to_numpy())
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "cal").iterdir()) == ["sweep.csv", "sweep.png"]


def test_save_sweep_rejects_a_foreign_frame(tmp_path: Path) -> None:
    with pytest.raises(SupersubError, match="lacks column"):
        save_sweep(pd.DataFrame({"tau": [0.1]}), tmp_path / "a.csv", tmp_path / "a.png", "x")
