"""Epoch loggers selected by ``trainer.loggers``; every one of them writes under ``RUN_DIR/logs``.

* ``csv``         ``logs/<stage>/metrics.csv`` (always available; the default)
* ``tensorboard`` ``logs/tensorboard/<stage>/`` (``tensorboard --logdir RUN_DIR/logs/tensorboard``)
* ``wandb``       ``logs/wandb/``, offline unless ``WANDB_MODE=online`` (``wandb sync`` uploads later)
* ``mlflow``      a local file store ``logs/mlruns`` unless ``MLFLOW_TRACKING_URI`` names a server

The last three are optional packages (``pip install 'supersub[loggers]'``); asking for a missing one is
a one-line error before any training starts.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from lightning.pytorch.loggers import CSVLogger, Logger

from ..errors import SupersubError
from ..io import write_text_atomic

# the importable module(s) each logger needs; any one of them is enough
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def build_loggers(names: Sequence[str], run_path: Path, stage: str) -> list[Logger]:
    """One Lightning logger per name, in order (the first one is where Lightning puts its own files)."""
    for name in names:
        _require(name)
    return [_LOGGERS[name](run_path, stage) for name in dict.fromkeys(names)]


def _require(name: str) -> None:
    if name not in _LOGGERS:
        raise SupersubError(f"trainer.loggers: unknown logger {name!r} (choose from {', '.join(_LOGGERS)})")
    packages = _PACKAGES.get(name, ())
    if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
        raise SupersubError(
            f"trainer.loggers: {name!r} needs the {packages[0]} package (pip install 'supersub[loggers]')"
        )


@contextmanager
def keep_csv_history(run_path: Path, stage: str, resuming: bool) -> Iterator[None]:
    """Keep the epochs logged before an interruption: Lightning's CSV logger starts the file afresh."""
    path = run_path / "logs" / stage / "metrics.csv"
    before = path.read_text(encoding="utf-8") if resuming and path.is_file() else None
    try:
        yield
    finally:
        if before is not None:
            frames = [pd.read_csv(io.StringIO(before))] + ([pd.read_csv(path)] if path.is_file() else [])
            merged = pd.concat(frames, ignore_index=True)
            for column in {"epoch", "step"} & set(merged.columns):
                merged[column] = merged[column].astype("Int64")  # integers with gaps, not 0.0, 1.0, ...
            write_text_atomic(path, merged.to_csv(index=False))


def _csv(run_path: Path, stage: str) -> Logger:
    return CSVLogger(run_path, name="logs", version=stage)


def _tensorboard(run_path: Path, stage: str) -> Logger:
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(run_path / "logs", name="tensorboard", version=stage, default_hp_metric=False)


def stage_run_name(run_path: Path, stage: str) -> str:
    """The tracking run of one stage (``final``, ``calibration-3``, ``final/member-0``): one per stage."""
    return f"{run_path.name}-{stage.replace('/', '-')}"


def wandb_options(run_path: Path, stage: str, online: bool) -> dict[str, object]:
    """One wandb run per stage, grouped by the run directory (wandb's ``group``, the stage as ``job_type``)."""
    return {"name": stage_run_name(run_path, stage), "group": run_path.name, "job_type": stage.split("/")[0],
            "save_dir": str(run_path / "logs"), "project": "supersub", "offline": not online}


def mlflow_options(run_path: Path, stage: str, uri: str) -> dict[str, object]:
    """One MLflow run per stage, grouped by tags naming the run directory and the stage."""
    return {"experiment_name": "supersub", "run_name": stage_run_name(run_path, stage), "tracking_uri": uri,
            "tags": {"supersub.run": run_path.name, "supersub.run_dir": str(run_path.resolve()),
                     "supersub.stage": stage}}


def _wandb(run_path: Path, stage: str) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    (run_path / "logs").mkdir(parents=True, exist_ok=True)
    online = os.environ.get("WANDB_MODE", "offline") == "online"
    return WandbLogger(**wandb_options(run_path, stage, online))  # type: ignore[arg-type]


def _mlflow(run_path: Path, stage: str) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger

    uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_path / "logs" / "mlruns").resolve().as_uri()
    return MLFlowLogger(**mlflow_options(run_path, stage, uri))  # type: ignore[arg-type]


def end_stage_runs(loggers: Sequence[Logger]) -> None:
    """Close each stage's tracking run when its fit ends: wandb keeps one run per process, so without this every
    later stage of ``train`` (seven calibration folds, the final model) wrote into the first stage's run."""
    for logger in loggers:
        run = getattr(logger, "_experiment", None) if type(logger).__name__ == "WandbLogger" else None
        if run is not None and hasattr(run, "finish"):
            run.finish()


_LOGGERS = {"csv": _csv, "tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}
