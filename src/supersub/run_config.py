"""The configuration of a run: a YAML file, a dict or a TrainConfig, with dotted overrides on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig, build_config, load_config


def resolve_config(config: TrainConfig | dict[str, Any] | str | Path | None = None, **overrides: Any) -> TrainConfig:
    """The configuration ``train`` would run with (``supersub train --print-config`` prints it as YAML)."""
    short = {"epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size"}
    cfg = _config(config, {short.get(k, k): v for k, v in overrides.items()})
    _absolute_paths(cfg)
    return cfg


def _config(config: TrainConfig | dict[str, Any] | str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        # only the keys the caller set, so the rebuilt config still tells them from defaults (ignored options)
        given = config.model_dump(mode="json", exclude_unset=True)
        return build_config(given, "config") if not overrides else load_config(None, {**_flatten(given), **overrides})
    if isinstance(config, dict):
        return load_config(None, {**_flatten(config), **overrides})
    return load_config(config, overrides)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _absolute_paths(cfg: TrainConfig) -> None:
    """The saved config must mean the same files wherever ``supersub calibrate`` is run from later."""
    for key in ("novel_data", "novel_sub_data", "cache_dir"):
        value = getattr(cfg.data, key)
        if value is not None:
            setattr(cfg.data, key, Path(value).resolve())
    if cfg.model.weights is not None:
        cfg.model.weights = Path(cfg.model.weights).resolve()
    if cfg.pretrain.classes is not None:
        cfg.pretrain.classes = Path(cfg.pretrain.classes).resolve()
