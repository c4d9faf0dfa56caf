"""The Python API: one short function per verb; :mod:`supersub.pipeline` does the work. The CLI calls these.

    >>> import supersub.api as ss
    >>> ss.synth("data/synth")
    >>> ss.train("data/synth", "runs/a", epochs=10)
    >>> preds = ss.predict("runs/a", "data/synth/test_images", out="preds.csv", probs=True)
    >>> metrics = ss.evaluate("runs/a", "data/synth/test_images", "data/synth/test_truth.csv")
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from .config import TrainConfig
from .errors import SupersubError
from .data.synth import write_synth
from .memory import freed_memory_kept
from .pipeline.calibrate import calibration_evidence as _calibration_evidence, recalibrate
from .pipeline.compare import Comparison, compare_runs  # noqa: F401 - part of the API
from .run_config import resolve_config  # noqa: F401 - part of the API
from .pipeline.demo import run_demo
from .pipeline.discover import Discovery, discover_images
from .pipeline.evaluate import evaluate_run
from .pipeline.extend import extend_run
from .pipeline.experiment import Experiment, run_experiment  # noqa: F401 - part of the API
from .pipeline.export import export_run
from .pipeline.evidence import Evidence
from .pipeline.inputs import LabelledImages, load_labelled  # noqa: F401 - part of the API
from .pipeline.predict import Prediction, predict_images, predict_tensors as _predict_tensors
from .pipeline.report import build_report
from .pipeline.train import train_run
from .run_dir import RunDir  # noqa: F401 - part of the API
from .training.lightning_fit import global_rng_kept

log = logging.getLogger("supersub")
P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["synth", "resolve_config", "train", "pretrain", "calibration_evidence", "calibrate", "predict", "evaluate", "report",
           "export", "demo", "experiment", "compare", "predict_tensors", "Prediction", "load_labelled", "discover", "Discovery",
           "review", "review_app"]


@contextmanager
def call_scope() -> Iterator[None]:
    """What an API call changes in the process lasts for the call only: glibc's malloc settings
    (:mod:`supersub.memory`) and the global random states; fits also scope what Lightning changes
    (:func:`supersub.training.lightning_fit.scoped_process_state`)."""
    with freed_memory_kept(), global_rng_kept():
        yield


def _verb(function: Callable[P, R], name: str, doc: str | None = None) -> Callable[P, R]:
    """``function`` of the pipeline as the API's verb ``name``, run in a :func:`call_scope`: its signature (what
    ``help()`` and ``inspect.signature`` show) is the pipeline function's, stated once, with the API's ``doc`` (by
    default the function's own)."""

    @functools.wraps(function)
    def verb(*args: P.args, **kwargs: P.kwargs) -> R:
        with call_scope():
            return function(*args, **kwargs)

    verb.__name__ = verb.__qualname__ = name
    verb.__module__ = __name__
    verb.__doc__ = inspect.cleandoc(doc if doc is not None else function.__doc__ or "")
    return verb


calibration_evidence = _verb(_calibration_evidence, "calibration_evidence")
predict_tensors = _verb(_predict_tensors, "predict_tensors")


def train(
    data: str | Path,
    out: str | Path | None,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    extend: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a model (any approach) on ``data`` into run directory ``out``; returns the run's summary.

    With ``extend=RUN``, ``data`` is a labels CSV (``image,superclass,subclass`` names, e.g. the labels.csv of
    :func:`discover` once named): RUN's training data plus these images are trained with RUN's own config (and
    its feature cache, so only new images are encoded) into ``out`` (default ``RUN-extended``); the taxonomy
    grows by the new names.

    Unless both thresholds are given, a calibration model is first trained with a share of each
    superclass's subclasses held out, the thresholds are chosen on it, and then the final model is trained
    on every subclass (seed 001). ``overrides`` are dotted config keys, e.g. ``**{"optim.epochs": 5}`` or
    the short names ``epochs``, ``lr``, ``batch_size``, ``seed``. ``resolve_config(config, **overrides)``
    is the configuration it runs with.
    """
    if extend is not None:
        if config is not None or resume:
            raise SupersubError("--extend reuses the run's config and starts a new run: no --config or --resume "
                                "(set options with --set KEY=VALUE)")
        with call_scope():
            return extend_run(extend, data, out, overwrite=overwrite, **overrides)
    with call_scope():
        return train_run(data, out, config, overwrite=overwrite, resume=resume, **overrides)


def pretrain(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    test_data: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train a backbone on the class folder ``data`` (``root/<class>/*.jpg``) and save it to ``out``.

    ``out`` loads with ``train(..., **{"model.weights": out})``. Seed 002's binary-partition heads are
    ``pretrain.binary_partition`` (B) and ``pretrain.partitions`` (K); ``pretrain.classes`` restricts the
    classes. With ``test_data`` (same class folder names) the summary holds its accuracy. Given starting
    weights, the run is a fine-tuning: a new class head, the backbone at ``lr`` and the head at
    ``head_lr_mult`` x ``lr`` (finetune discriminative); ``optim.finetune="partial"`` trains only the last
    ``optim.trainable_stages`` stages, on the cached outputs of the others (a light source tuning: docs/results/
    novelty-suite.md). Returns the summary (also written to ``out.json``).
    """
    from .pretrain.pretrain_run import pretrain_run  # Lightning and the backbone registry load here

    with call_scope():
        return pretrain_run(data, out, config, test_data=test_data, overwrite=overwrite, resume=resume, **overrides)


def calibrate(run_dir: str | Path, *, evidence: dict[str, Evidence] | None = None, **novelty: Any) -> dict[str, Any]:
    """Re-choose a trained run's novelty score and thresholds without retraining.

    ``novelty`` are :class:`~supersub.config.NoveltyConfig` fields (``score``, ``score_options``,
    ``objective``, ``transfer``, ``super_protocol``, ``tau_super``, ``tau_sub``, ...); the others keep the
    run's values, except that thresholds are re-calibrated unless given, and a new ``score`` starts from its
    own default options unless ``score_options`` is given. ``evidence`` (:func:`calibration_evidence`)
    saves re-running the models when trying several scores. Rewrites the open-set head (open_set_head.pt), the
    sweeps and the novelty section of config.yaml; returns the calibration summary.
    """
    RunDir.open(run_dir).require_finished()  # never calibrate an interrupted run (it would then look finished)
    with call_scope():
        return recalibrate(run_dir, evidence=evidence, **novelty)


def review_app(run_dir: str | Path, *, images: str | Path | None = None, discovered: str | Path | None = None,
               labels: str | Path | None = None, device: str | None = None) -> Any:
    """The FastAPI app of ``review`` (to serve it yourself, or to test it): predicts ``images`` (default: the
    folder ``discover`` looked at) with the run, shows the clusters of ``discovered`` and saves the edits to
    ``labels`` (default ``DISCOVERED/labels.csv``)."""
    try:
        from .review.app import create_app
    except ImportError as e:  # fastapi is the optional 'review' extra
        raise SupersubError(f"supersub review needs FastAPI and uvicorn: pip install 'supersub[review]' ({e})") from None
    from .review.session import ReviewSession

    with call_scope():
        session = ReviewSession.open(run_dir, images, discovered, labels, device)
    return create_app(session)


def review(run_dir: str | Path, *, images: str | Path | None = None, discovered: str | Path | None = None,
           labels: str | Path | None = None, host: str = "127.0.0.1", port: int = 8765,
           device: str | None = None) -> None:
    """Serve :func:`review_app` on ``http://HOST:PORT`` (this machine only by default) until Ctrl-C."""
    app = review_app(run_dir, images=images, discovered=discovered, labels=labels, device=device)
    try:
        import uvicorn
    except ImportError as e:
        raise SupersubError(f"supersub review needs FastAPI and uvicorn: pip install 'supersub[review]' ({e})") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("review: serving on %s: anyone who can reach it can see the images and edit the labels", host)
    log.info("review: open http://%s:%d (Ctrl-C stops it)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def synth(out: str | Path, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Write the built-in procedural dataset (see :mod:`supersub.data.synth`)."""
    return write_synth(Path(out), seed=seed, **kwargs)


predict = _verb(predict_images, "predict", """
    Predict every image of a flat folder, a nested folder or a CSV of image paths; write the CSV to ``out``.

    ``names`` adds the class names beside the indices; ``device`` (cpu, cuda, cuda:1, mps, auto) overrides the
    run's ``trainer.accelerator`` for inference. Cached backbone outputs of these images are read, and kept on
    disk only with ``cache`` (by default a prediction leaves the caches as they were). Images are read and
    predicted in chunks (the CSV grows as they finish, under a temporary name); ``devices`` and ``strategy``
    spread the chunks over several devices through Lightning (which then runs this script once per device, as
    for training; by default one device of the run's accelerator, or ``accelerator``). The keywords after
    ``strategy`` are what the command line sets (``frame`` off: only the count is returned).
    """)

discover = _verb(discover_images, "discover", """
    Group the images of ``images`` that the run flags novel into candidate new classes, in folder ``out``.

    Novel-superclass images are grouped among themselves, novel-subclass images within their predicted
    superclass; the number of groups of each set is estimated (silhouette over Ward clusterings of the
    features) unless ``groups`` forces it (at most ``max_groups`` are tried). Writes ``clusters.csv``,
    ``labels.csv`` (a template to rename, read by ``train(extend=...)``), the contact sheet ``clusters.html``
    and ``discover.json``; existing ones are replaced only with ``overwrite``.
    """)

evaluate = _verb(evaluate_run, "evaluate", """
    Competition metrics (accuracy overall/seen/unseen, cross-entropy, per level) on labelled images.

    ``labels`` is a CSV (image,superclass_index,subclass_index) of the images in ``images``; without it
    ``images`` is a labelled nested folder ``<superclass>/<subclass>/`` matched to the run's classes by name
    (a folder matching no class is novel, with a warning naming the closest class; ``strict`` refuses it).
    The metrics and the open-set report go to ``out`` (default: ``RUN/evaluations``) unless ``save`` is off.
    """)

report = _verb(build_report, "report", """
    Write one self-contained HTML page about a run (default ``RUN_DIR/report.html``) and return its path.

    ``test`` is a labelled folder (``test_truth.csv`` + ``test_images/``, or ``<superclass>/<subclass>/``
    folders): with it the page adds the metrics ``evaluate`` computes, sweeps and confusions on it and grids of
    the most confident mistakes and of the images flagged novel (``images`` thumbnails each).
    """)

export = _verb(export_run, "export", """
    Write the run's model *with its open-set decision* as one ONNX graph (``out``) and its class names
    (``out`` with suffix ``.json``): uint8 images in; superclass index, subclass index and both levels'
    probabilities with the novel column out. Scores that search training features (kNN) are refused.
    """)

demo = _verb(run_demo, "demo", """
    Synthesise the built-in data, train with calibration, evaluate on its test folder, write predictions.

    Returns ``{"train": summary, "test": metrics, "discovered": {...}, "seconds": ...}`` (``discovered``: the
    novel-flagged test images grouped by :func:`discover` into ``OUT/discovered``); ``overrides`` are dotted config keys.
    """)

experiment = _verb(run_experiment, "experiment", """
    Train every run of a grid file (one after another), evaluate each on the grid's test folder, and
    write ``OUT/results.csv`` and ``results.md``.

    Each run is an ordinary run directory ``OUT/<name>/``. Finished runs are skipped, interrupted ones
    resumed; a folder holding another configuration is an error unless ``overwrite``. ``overrides`` are
    dotted config keys for every run; ``dry_run`` only lists each run's state. See
    :mod:`supersub.pipeline.grid` for the file's fields.
    """)

compare = _verb(compare_runs, "compare", """
    Competition metrics and AUROCs of evaluated runs, mean ± std per group (runs differing only by seed,
    or by ``group_by`` keys), and each group's change against the baseline run's group (default: the
    first run's). With ``out``: compare.csv, compare.md, compare_deltas.csv and the chart compare_delta.png.
    """)
