"""Calibration folds: several calibration models, each holding out other subclasses, pooled for thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli
from supersub import api
from supersub.config import build_config
from supersub.errors import SupersubError
from supersub.data.splits import holdout_folds, holdout_subclasses
from supersub.losses import OUTLIER
from supersub.novelty.head_fit import calibrate_run
from supersub.pipeline.calibrate import calibration_evidence
from supersub.pipeline.stage_plan import Pool, calibration_stage_names, plan_stages
from supersub.run_dir import RunDir
from supersub.taxonomy import Taxonomy

# superclass 0 owns subclasses 0..5, superclass 1 owns 6..8, superclass 2 only 9
TAX = Taxonomy(("a", "b", "c"), tuple(f"s{j}" for j in range(10)), (0, 0, 0, 0, 0, 0, 1, 1, 1, 2))


def test_one_fold_is_the_single_held_out_set_of_before() -> None:
    assert holdout_folds(TAX, 0.34, seed=3, folds=1) == [holdout_subclasses(TAX, 0.34, seed=3)]
    assert holdout_folds(TAX, 0.0, seed=3, folds=4) == []


def test_folds_cover_every_subclass_once_when_folds_is_one_over_the_fraction() -> None:
    folds = holdout_folds(TAX, 1 / 3, seed=0, folds=3)
    assert folds[0] == holdout_subclasses(TAX, 1 / 3, seed=0)
    held_a = [[j for j in f if TAX.sub_to_super[j] == 0] for f in folds]
    assert [len(h) for h in held_a] == [2, 2, 2]
    assert sorted(j for h in held_a for j in h) == [0, 1, 2, 3, 4, 5]  # disjoint and complete
    assert all(9 not in f for f in folds)  # a superclass's only subclass is never held out
    assert holdout_folds(TAX, 1 / 3, seed=0, folds=3) == folds
    assert holdout_folds(TAX, 1 / 3, seed=1, folds=3) != folds


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4), fraction=st.floats(0.05, 0.9),
       folds=st.integers(1, 8), seed=st.integers(0, 99))
def test_every_fold_holds_the_same_share_and_never_a_whole_superclass(sizes: list[int], fraction: float, folds: int,
                                                                     seed: int) -> None:
    sub_to_super = tuple(k for k, n in enumerate(sizes) for _ in range(n))
    tax = Taxonomy(tuple(f"S{k}" for k in range(len(sizes))), tuple(f"s{j}" for j in range(len(sub_to_super))),
                   sub_to_super)
    result = holdout_folds(tax, fraction, seed, folds)
    first = holdout_subclasses(tax, fraction, seed)
    if not first:
        assert result == []
        return
    assert 1 <= len(result) <= folds and result[0] == first
    assert len({tuple(f) for f in result}) == len(result)  # no fold repeats another
    if len(result) < folds:  # cut short: there is no other distinct fold, however many are asked for
        assert holdout_folds(tax, fraction, seed, folds + 10) == result
    for k, n in enumerate(sizes):
        counts = {sum(tax.sub_to_super[j] == k for j in f) for f in result}
        assert len(counts) == 1 and counts.pop() < max(n, 2)  # same count in every fold, never all of k


def test_folds_stop_at_the_number_of_distinct_holdout_sets(caplog: pytest.LogCaptureFixture) -> None:
    """Superclasses of 2 and 4 subclasses at 15%: one held out of each, so the walk repeats after lcm(2, 4) = 4
    folds; asking for 7 used to train folds 4-6 as copies of 0-2 and count those holdouts twice."""
    tax = Taxonomy(("a", "b"), tuple(f"s{j}" for j in range(6)), (0, 0, 1, 1, 1, 1))
    folds = holdout_folds(tax, 0.15, seed=0, folds=7)
    assert len(folds) == 4 and len({tuple(f) for f in folds}) == 4
    assert sorted(j for f in folds for j in f if tax.sub_to_super[j] == 1) == [2, 3, 4, 5]  # each once
    assert sorted(j for f in folds for j in f if tax.sub_to_super[j] == 0) == [0, 0, 1, 1]  # each twice, paired
    y_sub = torch.arange(6).repeat_interleave(8)
    pool = Pool(torch.zeros(48, 3, 4, 4, dtype=torch.uint8), torch.tensor(tax.sub_to_super)[y_sub], y_sub, 48)
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 0.15}, "novelty": {"calibration_folds": 7}})
    with caplog.at_level("INFO", logger="supersub"):
        stages = plan_stages(pool, tax, cfg)
    assert calibration_stage_names(stages) == ["calibration", "calibration-1", "calibration-2", "calibration-3"]
    assert "calibration_folds: 7 asked, but these subclasses allow only 4 distinct held-out sets" in caplog.text


def _pool(per_class: int = 8) -> Pool:
    y_sub = torch.arange(TAX.n_sub).repeat_interleave(per_class)
    y_super = torch.tensor(TAX.sub_to_super)[y_sub]
    y_super = torch.cat([y_super, torch.full((6,), OUTLIER)])
    y_sub = torch.cat([y_sub, torch.full((6,), OUTLIER)])
    return Pool(torch.zeros(len(y_sub), 3, 4, 4, dtype=torch.uint8), y_super, y_sub, per_class * TAX.n_sub)


def test_stages_hold_out_each_folds_subclasses() -> None:
    pool = _pool()
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 1 / 3},
                        "novelty": {"calibration_folds": 3}})
    stages = plan_stages(pool, TAX, cfg)
    names = calibration_stage_names(stages)
    assert names == ["calibration", "calibration-1", "calibration-2"] and len(stages) == 4
    held_subs = [{int(pool.y_sub[i]) for i in stages[n].held} for n in names]
    assert set().union(*held_subs) == set(range(9)) and sum(len(h) for h in held_subs) == 9
    for name, held in zip(names, held_subs):
        stage = stages[name]
        assert set(stage.keep_sub) == set(range(10)) - held
        assert {int(pool.y_sub[i]) for i in stage.train + stage.val} <= set(stage.keep_sub) | {OUTLIER}
        assert sorted(stage.train + stage.val + stage.held + stage.novel) == list(range(len(pool.y_sub)))


def test_folds_default_to_one_per_holdout_share_only_when_frozen() -> None:
    assert build_config({"optim": {"finetune": "frozen"}, "data": {"holdout_fraction": 0.25}}).novelty.calibration_folds == 4
    assert build_config({"optim": {"finetune": "partial"}}).novelty.calibration_folds == 1
    assert build_config({"optim": {"finetune": "frozen"}, "novelty": {"calibration_folds": 2}}).novelty.calibration_folds == 2
    assert calibration_stage_names(["final", "calibration-10", "calibration-2", "calibration", "loso-0",
                                    "calibration-x"]) == ["calibration", "calibration-2", "calibration-10"]


@pytest.fixture(scope="module")
def folded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from supersub.data.synth import write_synth

    root = tmp_path_factory.mktemp("folds")
    write_synth(root / "data", train_per_class=4, test_per_class=1)
    run = root / "run"
    assert run_cli(["train", "--data", str(root / "data"), "--out", str(run), "--epochs", "1", "--image-size", "24",
                    "--batch-size", "16", "--no-progress", "--val-fraction", "0.25", "--backbone", "cnn",
                    "--set", "model.width=4", "--set", "model.depth=[1]", "--set", "novelty.calibration_folds=3",
                    "--set", "data.holdout_fraction=0.34", "--set", "novelty.super_protocol=recall"]) == 0  # folds set both cuts
    return run


def test_a_folded_run_trains_every_fold_and_averages_their_thresholds(folded_run: Path) -> None:
    import json

    metrics = json.loads((folded_run / "metrics.json").read_text())
    cal = metrics["calibration"]
    names = ["calibration", "calibration-1", "calibration-2"]
    assert cal["calibration_folds"] == 3 and "calibration-2" in metrics
    assert all((folded_run / "checkpoints" / n / "model.pt").is_file() for n in names)
    split = json.loads((folded_run / "calibration" / "split.json").read_text())
    held = [set(split["stages"][n]["held"]) for n in names]
    assert not held[0] & held[1] and not held[1] & held[2]
    # each threshold is the mean of the three single-fold thresholds on the final model, computed here fold by fold
    run_cfg = RunDir.open(folded_run).load_config()
    evidence = calibration_evidence(folded_run, run_cfg)
    single = [calibrate_run(run_cfg.novelty.score, run_cfg.novelty, evidence["final"], evidence[n]).thresholds for n in names]
    for level in ("super", "sub"):
        per_fold = [getattr(t, f"tau_{level}") for t in single]
        assert cal[f"{level}_tau_per_fold"] == pytest.approx(per_fold, abs=1e-4)
        assert metrics["thresholds"][f"tau_{level}"] == pytest.approx(sum(per_fold) / 3, rel=1e-5, abs=1e-6)
    # the folds disagree somewhere, so the mean is not simply fold 0's threshold
    assert any(len({round(getattr(t, f"tau_{level}"), 6) for t in single}) > 1 for level in ("super", "sub"))
    again = api.calibrate(folded_run)
    assert again["calibration_folds"] == 3 and again["thresholds"] == metrics["thresholds"]
    with pytest.raises(SupersubError, match="calibration_folds is fixed when the models are trained"):
        api.calibrate(folded_run, calibration_folds=5)


def test_held_back_outliers_are_a_seeded_random_draw_not_the_first_files() -> None:
    """The 20% of --novel-data kept for tau_super used to be the first 20% in file-name order, which is
    clustered by source class: here the first 50 outlier rows are one class and the last 50 another."""
    n_lab = 8 * TAX.n_sub
    y_sub = torch.cat([torch.arange(TAX.n_sub).repeat_interleave(8), torch.full((100,), OUTLIER)])
    y_super = torch.cat([torch.tensor(TAX.sub_to_super)[y_sub[:n_lab]], torch.full((100,), OUTLIER)])
    pool = Pool(torch.zeros(len(y_sub), 3, 4, 4, dtype=torch.uint8), y_super, y_sub, n_lab)
    cfg = build_config({"data": {"val_fraction": 0.25, "holdout_fraction": 1 / 3}, "novelty": {"calibration_folds": 2}})
    stages = plan_stages(pool, TAX, cfg)
    held = stages["calibration"].novel
    outliers = list(range(n_lab, n_lab + 100))
    assert len(held) == 20 and held == sorted(held) and held != outliers[:20]
    first_class = sum(i < n_lab + 50 for i in held)
    assert 0 < first_class < 20  # both source classes are in the held-back share
    for name in ("calibration", "calibration-1"):  # every fold holds back the same rows and trains on the rest
        assert stages[name].novel == held
        assert sorted(set(stages[name].train) & set(outliers)) == sorted(set(outliers) - set(held))
    assert set(stages["final"].train) >= set(outliers)  # the final model trains on all of them
    assert plan_stages(pool, TAX, cfg)["calibration"].novel == held  # seeded
    other = plan_stages(pool, TAX, build_config({**cfg.model_dump(mode="json"), "seed": 1}))["calibration"].novel
    assert other != held and len(other) == 20
    # its own stream: not the rows the novel_count / novel_sub_count samples (default_rng(seed)) would pick
    import numpy as np

    assert held != sorted(n_lab + int(i) for i in np.random.default_rng(cfg.seed).choice(100, 20, replace=False))
