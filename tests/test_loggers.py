"""Tracking loggers (wandb, mlflow): one run per stage, grouped by the run directory, each closed when its stage's
fit ends (wandb kept one run per process, so every stage of a `train` wrote into the first stage's run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, Logger

from conftest import TINY_TRAIN_ARGS, run_cli
from supersub.training import loggers
from supersub.training.loggers import end_stage_runs, mlflow_options, wandb_options

STAGES = ["calibration", "calibration-1", "final", "final/member-0"]


def test_each_stage_is_its_own_run_in_one_group(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "mine"
    w = [wandb_options(run, s, online=False) for s in STAGES]
    assert len({o["name"] for o in w}) == len(STAGES) and {o["group"] for o in w} == {"mine"}
    assert [o["job_type"] for o in w] == ["calibration", "calibration-1", "final", "final"]
    m = [mlflow_options(run, s, "file:///x") for s in STAGES]
    assert len({o["run_name"] for o in m}) == len(STAGES)
    assert {o["tags"]["supersub.run"] for o in m} == {"mine"}  # type: ignore[index]
    assert [o["tags"]["supersub.stage"] for o in m] == STAGES  # type: ignore[index]


class _Run:
    def __init__(self, name: str, group: str) -> None:
        self.name, self.group, self.finished, self.logged = name, group, False, False

    def finish(self) -> None:
        self.finished = True


OPENED: list[_Run] = []


class WandbLogger(Logger):  # named as Lightning's: what end_stage_runs looks for
    """A stand-in for Lightning's WandbLogger (wandb is not installed here): it opens its run at once, as
    WandbLogger does on first use, and, like wandb, keeps reusing an open run."""

    name = "wandb"
    version = "0"

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._experiment.logged = True

    def log_hyperparams(self, params: object, *args: object, **kwargs: object) -> None:
        pass

    def __init__(self, run_path: Path, stage: str) -> None:
        super().__init__()
        o = wandb_options(run_path, stage, online=False)
        still_open = [r for r in OPENED if not r.finished]
        self._experiment = still_open[0] if still_open else _Run(str(o["name"]), str(o["group"]))
        if not still_open:
            OPENED.append(self._experiment)


def test_train_opens_and_closes_one_run_per_stage(synth_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    OPENED.clear()
    monkeypatch.setitem(loggers._LOGGERS, "wandb", WandbLogger)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else find_spec(name, *a))
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(run), *TINY_TRAIN_ARGS, "--epochs", "1",
                    "--score", "msp", "--set", "trainer.loggers=[csv,wandb]"]) == 0
    assert [r.name for r in OPENED] == ["run-calibration", "run-final"]  # a run per stage, not one for all
    assert {r.group for r in OPENED} == {"run"} and all(r.finished and r.logged for r in OPENED)


def test_a_logger_that_never_opened_a_run_is_left_alone() -> None:
    class Unused(WandbLogger):
        def __init__(self) -> None:
            self._experiment = None

    end_stage_runs([Unused(), CSVLogger("/tmp", name="x")])  # no error, nothing to finish
