"""`supersub compare` on hand-made run directories whose metrics are known: grouping by seed, mean ± std,
deltas against the baseline (paired by seed or not), the files and the chart."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli
from supersub import api
from supersub.config import build_config, config_yaml
from supersub.errors import SupersubError
from supersub.pipeline.compare import METRICS

# super_acc_overall of each (approach, seed); every other metric is derived from it so each one is checked
KNOWN = {("two-heads", 0): 80.0, ("two-heads", 1): 90.0, ("two-heads", 2): 85.0,
         ("two-models", 0): 70.0, ("two-models", 1): 75.0, ("two-models", 2): 90.0,
         ("cosine", 0): 60.0, ("cosine", 1): 64.0}


def _metrics(x: float) -> dict[str, Any]:
    values: dict[str, Any] = {m: x + i for i, m in enumerate(METRICS) if "_acc_" in m}
    values.update({"super_ce": x / 100, "sub_ce": x / 50, "super_auroc": x / 100, "sub_auroc": None})
    return values


def _run(root: Path, approach: str, seed: int, x: float, **config: Any) -> Path:
    """A run directory as train + evaluate leave it, with the metrics ``_metrics(x)``."""
    path = root / f"{approach}-{seed}"
    (path / "evaluations").mkdir(parents=True)
    (path / "supersub-run.json").write_text("{}")
    cfg = build_config({"seed": seed, "model": {"approach": approach, "backbone": "cnn"}, **config})
    (path / "config.yaml").write_text(config_yaml(cfg))
    (path / "metrics.json").write_text(json.dumps({"data": "/data/train", "seconds": 1.0}))
    (path / "evaluations" / "test_truth.json").write_text(json.dumps({"labels": "/data/test_truth.csv", **_metrics(x)}))
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    return [_run(tmp_path / "runs", a, s, x) for (a, s), x in KNOWN.items()]


def test_runs_differing_by_seed_form_a_group_with_mean_and_std(runs: list[Path]) -> None:
    c = api.compare(runs)
    assert [g.label for g in c.groups] == ["approach=two-heads", "approach=two-models", "approach=cosine"]
    assert c.baseline == "approach=two-heads"
    for (_, row), approach in zip(c.summary.iterrows(), ("two-heads", "two-models", "cosine")):
        xs = [x for (a, _), x in KNOWN.items() if a == approach]
        assert row["n"] == len(xs)
        for i, m in enumerate(METRICS):
            if "_acc_" in m:  # accuracies are x + i
                assert row[f"{m}_mean"] == pytest.approx(statistics.mean(xs) + i)
                assert row[f"{m}_std"] == pytest.approx(statistics.stdev(xs))
        assert row["sub_ce_mean"] == pytest.approx(statistics.mean(xs) / 50)
        assert row["sub_ce_std"] == pytest.approx(statistics.stdev(xs) / 50)
        assert math.isnan(row["sub_auroc_mean"])  # no value in any run: not a number, never a zero


def test_deltas_pair_by_seed_when_the_seeds_match(runs: list[Path]) -> None:
    c = api.compare(runs, baseline=runs[3])  # two-models, seed 0: its group is the baseline
    assert c.baseline == "approach=two-models"
    heads, cosine = c.deltas.iloc[0], c.deltas.iloc[1]
    diffs = [KNOWN[("two-heads", s)] - KNOWN[("two-models", s)] for s in range(3)]  # 10, 15, -5
    assert heads["paired"] and heads["super_acc_overall_delta"] == pytest.approx(statistics.mean(diffs))
    assert heads["super_acc_overall_std"] == pytest.approx(statistics.stdev(diffs))
    # cosine has seeds 0 and 1 only: difference of the means, stds combined
    cos, models = [60.0, 64.0], [70.0, 75.0, 90.0]
    assert not cosine["paired"]
    assert cosine["sub_acc_seen_delta"] == pytest.approx(statistics.mean(cos) - statistics.mean(models))
    assert cosine["sub_acc_seen_std"] == pytest.approx(math.hypot(statistics.stdev(cos), statistics.stdev(models)))


def test_group_by_a_key_and_the_one_run_case(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "two-heads", 0, 80.0, optim={"lr": 0.01}), _run(tmp_path, "two-heads", 1, 90.0),
            _run(tmp_path, "two-models", 0, 70.0)]
    by_config = api.compare(runs)  # lr differs too: three groups, labelled by both keys
    assert [g.label for g in by_config.groups] == ["approach=two-heads, lr=0.01", "approach=two-heads, lr=0.003",
                                                   "approach=two-models, lr=0.003"]
    assert math.isnan(by_config.summary.loc[0, "super_acc_overall_std"])  # one run: no spread
    by_approach = api.compare(runs, group_by=["model.approach"])
    assert [g.label for g in by_approach.groups] == ["approach=two-heads", "approach=two-models"]
    assert by_approach.summary.loc[0, "super_acc_overall_mean"] == pytest.approx(85.0)
    with pytest.raises(SupersubError, match="--group-by: model.aproach: unknown config key"):
        api.compare(runs, group_by=["model.aproach"])


def test_cli_writes_the_tables_and_a_png_chart_and_keeps_them(runs: list[Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert run_cli(["compare", *map(str, runs), "--baseline", str(runs[0]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "85.00 ± 5.00" in printed  # two-heads super overall: 80, 90, 85
    table = pd.read_csv(out / "compare.csv")
    assert table["super_acc_overall_mean"].tolist() == pytest.approx([85.0, 235 / 3, 62.0])
    md = (out / "compare.md").read_text()
    assert "| approach=two-heads (baseline) | 3 | 85.00 ± 5.00 |" in md and "## Change against approach=two-heads" in md
    png = out / "compare_delta.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 400
    assert len(pd.read_csv(out / "compare_deltas.csv")) == 2
    assert run_cli(["compare", *map(str, runs), "--out", str(out)]) == 2  # never overwritten unasked
    assert "compare.csv: exists (pass --overwrite" in capsys.readouterr().err
    assert run_cli(["compare", *map(str, runs), "--out", str(out), "--overwrite"]) == 0


def test_a_run_without_an_evaluation_is_a_one_line_error(runs: list[Path]) -> None:
    (runs[0] / "evaluations" / "test_truth.json").unlink()
    with pytest.raises(SupersubError, match="no evaluation in"):
        api.compare(runs)
