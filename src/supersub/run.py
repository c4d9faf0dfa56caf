"""RunDir: everything a training run leaves behind, in one folder, written atomically.

    RUN_DIR/
      supersub-run.json   marker + versions (a folder without it is never deleted or overwritten)
      config.yaml         the resolved configuration
      taxonomy.json       class names and the sub->super map
      model.pt            final weights + plain-data spec (loads with weights_only=True)
      thresholds.json     tau_super / tau_sub and the novel-probability slopes
      metrics.json        training summary, calibration and validation figures
      calibration/        threshold sweeps (CSV + PNG) from the pseudo-novel holdout
      checkpoints/        Lightning best/last checkpoints per stage (for --resume)
      logs/               CSV log of every epoch per stage
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from . import __version__
from .config import TrainConfig, build_config, config_to_dict
from .errors import SupersubError
from .io import torch_save_atomic, write_json_atomic, write_text_atomic
from .models.model import HierarchicalClassifier, build_model
from .taxonomy import Taxonomy

MARKER = "supersub-run.json"


@dataclass(frozen=True)
class Thresholds:
    """Confidence thresholds (seen iff confidence >= tau) and the logistic slopes of the novel probability."""

    tau_super: float
    tau_sub: float
    slope_super: float = 20.0
    slope_sub: float = 20.0
    score: str = "msp"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Thresholds:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class RunDir:
    """Paths and (de)serialisation of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- layout ------------------------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.yaml")
    taxonomy_file = property(lambda self: self.path / "taxonomy.json")
    model_file = property(lambda self: self.path / "model.pt")
    thresholds_file = property(lambda self: self.path / "thresholds.json")
    metrics_file = property(lambda self: self.path / "metrics.json")
    calibration_dir = property(lambda self: self.path / "calibration")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")

    # ---- creation ----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        """Make a fresh run directory; refuse to touch an existing non-empty one unless ``overwrite``.

        Even with ``overwrite`` only a folder that supersub created (it has the marker file) is cleared,
        so a mistyped path can never wipe a user's own files.
        """
        run = cls(path)
        p = run.path
        if p.exists() and not p.is_dir():
            raise SupersubError(f"{p}: exists and is not a directory")
        if p.exists() and any(p.iterdir()):
            if not overwrite:
                raise SupersubError(f"{p}: run directory exists and is not empty (pass --overwrite to replace it)")
            if not (p / MARKER).is_file():
                raise SupersubError(f"{p}: not a supersub run directory (no {MARKER}); refusing to delete it")
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        write_json_atomic(p / MARKER, {"supersub": __version__, "torch": torch.__version__})
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not (run.path / MARKER).is_file():
            raise SupersubError(f"{run.path}: not a supersub run directory (no {MARKER})")
        return run

    # ---- config / taxonomy -------------------------------------------------------------------
    def save_config(self, cfg: TrainConfig) -> None:
        write_text_atomic(self.config_file, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def load_config(self) -> TrainConfig:
        return build_config(yaml.safe_load(self.config_file.read_text(encoding="utf-8")), str(self.config_file))

    def save_taxonomy(self, taxonomy: Taxonomy) -> None:
        write_json_atomic(self.taxonomy_file, taxonomy.to_dict())

    def load_taxonomy(self) -> Taxonomy:
        import json

        return Taxonomy.from_dict(json.loads(self.taxonomy_file.read_text(encoding="utf-8")), str(self.taxonomy_file))

    # ---- model -------------------------------------------------------------------------------
    def save_model(self, model: HierarchicalClassifier, cfg: TrainConfig, taxonomy: Taxonomy) -> None:
        payload = {
            "format": "supersub-model-1",
            "config": config_to_dict(cfg),
            "taxonomy": taxonomy.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        }
        torch_save_atomic(payload, self.model_file)

    def load_model(self) -> tuple[HierarchicalClassifier, TrainConfig, Taxonomy]:
        payload = load_checkpoint(self.model_file)
        if payload.get("format") != "supersub-model-1":
            raise SupersubError(f"{self.model_file}: not a supersub model file")
        cfg = build_config(payload["config"], str(self.model_file))
        taxonomy = Taxonomy.from_dict(payload["taxonomy"], str(self.model_file))
        model = build_model(cfg.model, taxonomy)
        model.load_state_dict(payload["state_dict"])
        return model.eval(), cfg, taxonomy

    # ---- thresholds / metrics ----------------------------------------------------------------
    def save_thresholds(self, t: Thresholds) -> None:
        write_json_atomic(self.thresholds_file, t.to_dict())

    def load_thresholds(self) -> Thresholds:
        import json

        if not self.thresholds_file.is_file():
            raise SupersubError(f"{self.thresholds_file}: missing (the run did not finish training)")
        return Thresholds.from_dict(json.loads(self.thresholds_file.read_text(encoding="utf-8")))

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.metrics_file, metrics)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain data only; a pickle payload is refused."""
    path = Path(path)
    if not path.is_file():
        raise SupersubError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a refusal, reported in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SupersubError(f"{path}: refused to load checkpoint (not plain tensors/data: {first[:200]})") from None
    if not isinstance(obj, dict):
        raise SupersubError(f"{path}: checkpoint is not a dictionary")
    return obj
