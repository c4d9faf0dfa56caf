"""`supersub experiment`: a grid of runs on the built-in data trains once, skips finished runs, resumes an
interrupted one, and bad grid files are one-line errors naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import pytest
import yaml

import supersub.pipeline.experiment as experiment_module
import supersub.training.lightning_fit as fit_module
from conftest import run_cli
from supersub import api
from supersub.pipeline.compare import METRICS
from supersub.config import build_config, config_yaml
from supersub.errors import SupersubError
from supersub.pipeline.grid import load_grid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# tiny from-scratch runs with hand-set thresholds: one model per run (no calibration model), a second each
TINY_BASE: dict[str, Any] = {
    "model.backbone": "cnn", "model.width": 8, "model.depth": [1], "data.image_size": 24, "optim.epochs": 2,
    "optim.batch_size": 16, "trainer.progress": False, "novelty.score": "msp", "novelty.tau_super": 0.5,
    "novelty.tau_sub": 0.3,
}


def _grid_file(folder: Path, synth: Path, **fields: Any) -> Path:
    grid = {"data": str(synth), "test": {"images": str(synth / "test_images"), "labels": str(synth / "test_truth.csv")},
            "base": TINY_BASE, "grid": {"model.approach": ["two-heads", "two-models"]}, "seeds": [0, 1], **fields}
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False), encoding="utf-8")
    return path


class _Counter:
    """Counts the calls of a wrapped function (here: how many runs train)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_a_grid_trains_every_point_once_and_skips_finished_runs(synth_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    grid, out = _grid_file(tmp_path, synth_dir), tmp_path / "exp"
    trains = _Counter(experiment_module.train_run)
    monkeypatch.setattr(experiment_module, "train_run", trains)
    first = api.experiment(grid, out)
    names = ["approach=two-heads,seed=0", "approach=two-heads,seed=1", "approach=two-models,seed=0",
             "approach=two-models,seed=1"]
    assert list(first.table["run"]) == names and trains.calls == 4
    assert set(first.table["status"]) == {"trained"}
    for name, row in zip(names, first.table.to_dict("records")):
        run = out / name
        assert (run / "supersub-run.json").is_file() and (run / "model.pt").is_file()
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["model"]["approach"] == row["model.approach"] and saved["seed"] == row["seed"]
        scores = json.loads((run / "evaluations" / "test_truth.json").read_text())
        assert all(row[m] == scores[m] or (row[m] is None and scores[m] is None) for m in METRICS)
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and table["super_acc_overall"].notna().all()
    assert "| approach=two-models,seed=1 |" in (out / "results.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}
    assert run_cli(["experiment", str(grid), "--out", str(out)]) == 0  # the same command again, through the CLI
    assert trains.calls == 4  # nothing retrained ...
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}  # or rewritten
    again = pd.read_csv(out / "results.csv")
    assert set(again["status"]) == {"skipped"}
    pd.testing.assert_frame_equal(again[list(METRICS)], table[list(METRICS)])

    # the runs are ordinary run directories: compare groups the two seeds of each approach
    c = api.compare([out], baseline=out / names[2])  # an experiment folder stands for its runs
    assert [g.label for g in c.groups] == ["approach=two-heads", "approach=two-models"]
    assert c.baseline == "approach=two-models"
    heads = [json.loads((out / n / "evaluations" / "test_truth.json").read_text())["sub_acc_overall"] for n in names[:2]]
    assert c.summary.loc[0, "sub_acc_overall_mean"] == pytest.approx(sum(heads) / 2)


class _CrashAfter(L.Callback):
    """A crash (not a Ctrl-C) at the end of one epoch of the final model, as a killed job would leave it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class _EpochCount(L.Callback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs += 1


def test_an_interrupted_run_resumes_from_its_checkpoint(synth_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    grid = _grid_file(tmp_path, synth_dir, grid={}, seeds=[0], test=None,
                      base={**TINY_BASE, "optim.epochs": 3})
    out, original = tmp_path / "exp", fit_module.build_trainer
    extra: list[L.Callback] = [_CrashAfter(epoch=1)]
    monkeypatch.setattr(fit_module, "build_trainer",
                        lambda cfg, path, stage, epochs, callbacks: original(cfg, path, stage, epochs, callbacks + extra))
    with pytest.raises(RuntimeError, match="simulated crash"):
        api.experiment(grid, out)
    run = out / "seed=0"
    assert (run / "checkpoints" / "final" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    assert list(api.experiment(grid, out, dry_run=True).table["status"]) == ["interrupted"]

    counter = _EpochCount()
    extra[:] = [counter]
    result = api.experiment(grid, out)
    assert list(result.table["status"]) == ["resumed"]
    assert 1 <= counter.epochs < 3  # continued from the last checkpoint, not trained from epoch 0
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["final"]["epochs_run"] == 3 and (run / "open_set_head.pt").is_file()
    assert list(api.experiment(grid, out, dry_run=True).table["status"]) == ["finished"]


def test_a_folder_of_another_configuration_is_not_reused(synth_dir: Path, tmp_path: Path) -> None:
    grid, out = _grid_file(tmp_path, synth_dir), tmp_path / "exp"
    (out / "approach=two-heads,seed=0").mkdir(parents=True)
    (out / "approach=two-heads,seed=0" / "notes.txt").write_text("mine")
    with pytest.raises(SupersubError, match="not a supersub run directory"):
        api.experiment(grid, out, dry_run=True)
    assert (out / "approach=two-heads,seed=0" / "notes.txt").read_text() == "mine"


def test_a_run_of_another_configuration_needs_overwrite(synth_dir: Path, tmp_path: Path) -> None:
    """A run folder whose config.yaml differs from its grid point (the grid was edited) is never skipped."""
    grid, out = _grid_file(tmp_path, synth_dir), tmp_path / "exp"
    run = out / "approach=two-heads,seed=0"
    run.mkdir(parents=True)
    (out / "supersub-experiment.json").write_text("{}")  # an experiment folder made before the grid was edited
    (run / "supersub-run.json").write_text("{}")
    (run / "config.yaml").write_text(config_yaml(build_config({"model": {"approach": "two-heads"},
                                                               "optim": {"epochs": 5}})))
    assert api.experiment(grid, out, dry_run=True).table["status"].tolist() == ["changed", "new", "new", "new"]
    with pytest.raises(SupersubError, match=r"holds a run of another configuration \(data.image_size is 64 there, 24"):
        api.experiment(grid, out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [run.name]  # nothing trained


@pytest.mark.parametrize("change, field", [
    ({"tset": 1}, "grid.yaml: tset: unknown field"),
    ({"seeds": [0, "x"]}, "grid.yaml: seeds.1: Input should be a valid integer"),
    ({"seeds": [1, 1]}, "grid.yaml: seeds: Value error, seeds must be distinct"),
    ({"grid": {"model.approach": "two-heads"}}, "grid.yaml: grid.model.approach: Input should be a valid list"),
    ({"grid": {"model.aproach": ["two-heads"]}}, "grid.yaml: grid: model.aproach: unknown config key (did you mean "
                                                "model.approach?)"),
    ({"grid": {"model.approach": ["two-heads", "three-heads"]}}, "grid.yaml: grid point approach=three-heads,seed=0: "
                                                                  "model.approach: Input should be"),
    ({"base": {"optim.lr": -1}}, "optim.lr: Input should be greater than 0"),
    ({"base": {"optim": 3}}, "grid.yaml: base: optim: is a section"),
    ({"data": "nowhere"}, "grid.yaml: data: nowhere: no such folder"),
])
def test_a_bad_grid_file_is_one_line_naming_the_file_and_the_field(
        synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], field: str) -> None:
    grid = _grid_file(tmp_path, synth_dir, **change)
    assert run_cli(["experiment", str(grid), "--out", str(tmp_path / "exp"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert field.replace("grid.yaml", str(grid)) in " ".join(err.split()) if field.startswith("grid.yaml") else field in err
    assert str(grid) in " ".join(err.split()) and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "exp").exists()


def test_set_may_not_name_a_grid_key(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = _grid_file(tmp_path, synth_dir)
    assert run_cli(["experiment", str(grid), "--dry-run", "--set", "model.approach=cosine"]) == 2
    assert "--set model.approach: is a grid key" in capsys.readouterr().err


def test_the_paper_grid_expands_to_its_figures(synth_dir: Path) -> None:
    """configs/paper_table1.yaml on stand-in paths: 6 settings x 3 seeds with the paper's values."""
    raw = yaml.safe_load((CONFIGS / "paper_table1.yaml").read_text())
    raw["data"], raw["test"] = str(synth_dir), {"images": str(synth_dir / "test_images")}
    raw["base"]["data.novel_data"] = str(synth_dir / "novel_images")
    g = load_grid(raw)
    settings = sorted({r.name.rsplit(",seed=", 1)[0] for r in g.runs})
    assert len(g.runs) == 18 and settings == [
        "approach=cosine,novel_count=5000,finetune=frozen,lr=0.01",
        "approach=two-heads,novel_count=1000,finetune=frozen,lr=0.01,input_size=64",
        "approach=two-heads,novel_count=1000,finetune=full,input_size=64",
        "approach=two-heads,novel_count=5000,finetune=frozen,lr=0.01",
        "approach=two-models,novel_count=1000,finetune=frozen,lr=0.01",
        "approach=two-models,novel_count=5000,finetune=frozen,lr=0.01"]
    for run in g.runs:
        cfg = run.config
        assert (cfg.optim.optimizer, cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.weight_decay) == ("adam", 64, 15, 1e-4)
        assert cfg.optim.lr == (0.01 if cfg.optim.finetune == "frozen" else 1e-4)
        assert (cfg.loss.alpha, cfg.loss.temperature, cfg.model.backbone) == (0.1, 1.0, "efficientnet_lite0")
        assert cfg.novelty.tau_super is None and cfg.novelty.tau_sub is None  # calibrated, not hand-set
