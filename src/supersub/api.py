"""The Python API: one short function per verb; :mod:`supersub.pipeline` does the work. The CLI calls these.

    >>> import supersub.api as ss
    >>> ss.synth("data/synth")
    >>> ss.train("data/synth", "runs/a", epochs=10)
    >>> preds = ss.predict("runs/a", "data/synth/test_images", out="preds.csv", probs=True)
    >>> metrics = ss.evaluate("runs/a", "data/synth/test_images", "data/synth/test_truth.csv")
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .config import TrainConfig
from .data.synth import write_synth
from .errors import SupersubError
from .pipeline.calibration import calibration_evidence, recalibrate  # noqa: F401 - calibration_evidence is API
from .pipeline.configure import resolve_config  # noqa: F401 - part of the API
from .pipeline.evaluate import evaluate_run
from .pipeline.evidence import Evidence
from .pipeline.inputs import LabelledImages, load_labelled  # noqa: F401 - part of the API
from .pipeline.predict import Prediction, predict_images, predict_tensors  # noqa: F401 - part of the API
from .pipeline.train import train_run
from .run import RunDir  # noqa: F401 - part of the API

log = logging.getLogger("supersub")

__all__ = ["synth", "resolve_config", "train", "calibration_evidence", "calibrate", "predict", "evaluate", "demo",
           "predict_tensors", "Prediction", "load_labelled"]


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a model (any approach) on ``data`` into run directory ``out``; returns the run's summary.

    Unless both thresholds are given, a calibration model is first trained with a share of each
    superclass's subclasses held out, the thresholds are chosen on it, and then the final model is trained
    on every subclass (seed 001). ``overrides`` are dotted config keys, e.g. ``**{"optim.epochs": 5}`` or
    the short names ``epochs``, ``lr``, ``batch_size``, ``seed``. ``resolve_config(config, **overrides)``
    is the configuration it runs with.
    """
    return train_run(data, out, config, overwrite=overwrite, resume=resume, **overrides)


def calibrate(run_dir: str | Path, *, evidence: dict[str, Evidence] | None = None, **novelty: Any) -> dict[str, Any]:
    """Re-choose a trained run's novelty score and thresholds without retraining.

    ``novelty`` are :class:`~supersub.config.NoveltyConfig` fields (``score``, ``score_options``,
    ``objective``, ``transfer``, ``super_protocol``, ``tau_super``, ``tau_sub``, ...); the others keep the
    run's values, except that thresholds are re-calibrated unless given, and a new ``score`` starts from its
    own default options unless ``score_options`` is given. ``evidence`` (:func:`calibration_evidence`)
    saves re-running the models when trying several scores. Rewrites thresholds.json, detectors.pt, the
    sweeps and the novelty section of config.yaml; returns the calibration summary.
    """
    return recalibrate(run_dir, evidence=evidence, **novelty)


def predict(
    run_dir: str | Path,
    images: str | Path,
    out: str | Path | None = None,
    *,
    probs: bool = False,
    names: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    device: str | None = None,
) -> pd.DataFrame:
    """Predict every image of a flat folder, a nested folder or a CSV of image paths; write the CSV to ``out``.

    ``names`` adds the class names beside the indices; ``device`` (cpu, cuda, cuda:1, mps, auto) overrides the
    run's ``trainer.accelerator`` for inference.
    """
    return predict_images(run_dir, images, out, probs=probs, names=names, overwrite=overwrite, skip_bad=skip_bad,
                          device=device)


def evaluate(
    run_dir: str | Path, images: str | Path, labels: str | Path | None = None, *, skip_bad: bool = False,
    save: bool = True, out: str | Path | None = None, device: str | None = None,
) -> dict[str, Any]:
    """Competition metrics (accuracy overall/seen/unseen, cross-entropy, per level) on labelled images.

    ``labels`` is a CSV (image,superclass_index,subclass_index) of the images in ``images``; without it
    ``images`` is a labelled nested folder ``<superclass>/<subclass>/`` matched to the run's classes by name.
    The metrics and the open-set report go to ``out`` (default: ``RUN/evaluations``) unless ``save`` is off.
    """
    return evaluate_run(run_dir, images, labels, skip_bad=skip_bad, save=save, out=out, device=device)


def synth(out: str | Path, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Write the built-in procedural dataset (see :mod:`supersub.data.synth`)."""
    return write_synth(Path(out), seed=seed, **kwargs)


DEMO_MARKER = ".supersub-demo"
# sized to finish in a few minutes on a 2-core laptop CPU: the built-in shapes are legible at 32 px, which
# makes an epoch ~4x cheaper than at 64 px and buys 30 epochs for both the calibration and the final model
DEMO_CONFIG: dict[str, Any] = {"model.backbone": "cnn", "optim.epochs": 30, "data.image_size": 32, "model.width": 32}


def demo(out: str | Path = "runs/demo", *, overwrite: bool = False, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Synthesise the built-in data, train with calibration, evaluate on its test folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SupersubError(f"{out}: exists and is not empty (pass --overwrite to replace the demo)")
        if not (out / DEMO_MARKER).is_file():
            raise SupersubError(f"{out}: not a supersub demo folder (no {DEMO_MARKER}); refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("created by supersub demo\n", encoding="utf-8")
    t0 = time.perf_counter()
    counts = synth(out / "data", seed=seed)
    log.info("built-in dataset: %s (%.1fs)", counts, time.perf_counter() - t0)
    # the built-in data ships an outlier pool of another unseen family: the recommended recipe uses it
    novel = {"data.novel_data": str(out / "data" / "novel_images")}
    summary = train(out / "data", out / "run", None, **{**DEMO_CONFIG, **novel, "seed": seed, **overrides})
    metrics = evaluate(out / "run", out / "data" / "test_images", out / "data" / "test_truth.csv")
    predict(out / "run", out / "data" / "test_images", out / "predictions.csv", probs=True)
    return {"train": summary, "test": metrics, "seconds": round(time.perf_counter() - t0, 1)}
