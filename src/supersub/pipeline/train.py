"""``supersub train``: decode the data, plan the stages, fit each model, calibrate, write the run directory."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from ..config import TrainConfig, warn_ignored_options
from ..data.cache_limit import cache_policy
from ..errors import SupersubError
from ..io import write_json_atomic
from ..models.hierarchical import HierarchicalClassifier
from ..models.feature_cache import held_for_the_run
from ..run_dir import MARKER, RunDir, load_model_file, save_model_file
from ..training.distributed import is_global_zero
from ..training.fit_by_approach import fit_model
from .calibrate import calibrate_and_save
from ..run_config import resolve_config
from .evidence import STAGE_MODEL_FILE, Evidence, SharedRows, StageEvidence, collect_evidence, load_stage_model
from .inputs import load_labelled, training_pool
from .stage_plan import Pool, Stage, plan_stages, save_split

log = logging.getLogger("supersub")


def train_run(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """:func:`supersub.api.train`: every stage's model, then calibration; rank 0 writes the run directory."""
    cfg = resolve_config(config, **overrides)
    # the caches' size limit of this run's config
    with cache_policy(max_gb=cfg.data.cache_max_gb):
        return _train(data, out, cfg, overwrite, resume)


def _train(data: str | Path, out: str | Path, cfg: TrainConfig, overwrite: bool, resume: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    # under DDP every rank runs train() (Lightning re-runs the command) and joins each fit; only rank 0 writes
    lead = is_global_zero()
    if lead:
        warn_ignored_options(cfg)  # options this approach would silently drop: one warning line per reason
    if lead and not resume:
        RunDir.check_creatable(out, overwrite)  # fail before the slow decode, and touch nothing yet
    # bad input (images, CSVs, novel data, split options) fails here, before a run directory exists
    data_ = load_labelled(data, cfg)
    taxonomy = data_.dataset.taxonomy
    assert taxonomy is not None
    log.info("%s: %d images, %d superclasses, %d subclasses", data, len(data_.dataset), taxonomy.n_super, taxonomy.n_sub)
    summary: dict[str, Any] = {"data": str(data), "n_images": len(data_.dataset)}
    pool = training_pool(data_, cfg, summary)
    stages = plan_stages(pool, taxonomy, cfg)
    run = RunDir(out) if not lead else _open_run(out, overwrite, resume)
    evidence = StageEvidence()
    shared = SharedRows()  # the frozen features every stage's evidence reads, held once
    # every stage's fit and evidence read one copy of the frozen rows; they stay held through calibration when
    # some evidence is made there (from those rows), else they are released before it, which keeps only what the
    # evidence points at (a partial run's trunk activations do not live through calibration)
    rows = ExitStack()
    with rows:
        rows.enter_context(held_for_the_run())
        try:
            if lead:
                run.save_config(cfg)
                run.save_taxonomy(taxonomy)
                save_split(run.calibration_dir, str(Path(data).resolve()), pool, stages)
            for name, stage in sorted(stages.items(), key=lambda item: item[0] == "final"):  # final model last
                model_path = run.model_file if name == "final" else run.checkpoints_dir / name / STAGE_MODEL_FILE
                reused = _finished_stage(run, name, model_path) if resume else None
                if reused is not None:
                    model, summary[name] = reused
                else:
                    result = _fit_stage(pool, stage, cfg, run, resume)
                    model = result.model
                    summary[name] = {"epochs_run": result.epochs_run, result.monitor: result.best_score,
                                     "seconds_per_epoch": result.seconds_per_epoch and round(result.seconds_per_epoch, 2),
                                     **result.details}
                    if lead:  # every stage's model in one format: model.pt, checkpoints/<stage>/model.pt (for calibrate)
                        assert stage.targets is not None
                        save_model_file(model_path, model, cfg, stage.targets.fit_taxonomy)
                        # written after the model: its presence says the stage is done (a resume reuses the model)
                        write_json_atomic(run.checkpoints_dir / name / STAGE_DONE_FILE, summary[name])
                        _drop_lightning_checkpoints(run.checkpoints_dir / name)
                if name != "final" and _evidence_from_held_rows(cfg, model):
                    if lead:  # made when calibration reads it, from the saved model (a DDP worker does not calibrate)
                        evidence.make_when_read(name, partial(_saved_stage_evidence, run.path, name, pool, taxonomy,
                                                              stage, cfg, shared))
                else:
                    evidence.keep(name, collect_evidence(model, pool, taxonomy, stage, cfg.trainer.accelerator, cfg,
                                                         shared))
        except SupersubError:
            # a bad option found when the first stage starts (backbone, weights, trainer, logger): nothing was
            # trained, so leave no half-made run behind; a run with checkpoints stays for --resume
            if lead and not resume and not any(run.checkpoints_dir.rglob("*.ckpt")) \
                    and not any(run.checkpoints_dir.rglob(STAGE_DONE_FILE)):
                shutil.rmtree(run.path, ignore_errors=True)
            raise
        if not lead:
            return summary  # a DDP worker's share (the fits) is done: rank 0 calibrates and writes the run
        if not evidence.made_when_read:
            rows.close()
        cal = calibrate_and_save(run, cfg, evidence)
    if "calibration" in stages:
        held = [taxonomy.sub_names[j] for j in sorted(set(range(taxonomy.n_sub)) - set(stages["calibration"].keep_sub))]
        summary["calibration"] = {"held_out_subclasses": held, **summary["calibration"], **cal.summary}
    else:
        summary["calibration"] = {"hand_set": True}
        summary["novelty"] = cal.summary
    final_val = evidence["final"].val
    if final_val is not None:
        # each head's own argmax, as the epoch log's val_acc_* (the rule's subclass within the predicted superclass,
        # which the table used to show, differed from the log's best epoch: 86.67 against 83.33)
        out, ev = final_val.outputs, evidence["final"]
        summary["final"]["val_acc_super"] = round(100 * float((out.super_logits.argmax(1) == ev.val_y_super).float().mean()), 2)
        summary["final"]["val_acc_sub"] = round(100 * float((out.sub_logits.argmax(1) == ev.val_y_sub).float().mean()), 2)
    summary["thresholds"] = cal.thresholds.to_dict()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    run.save_metrics(summary)
    return summary


def _evidence_from_held_rows(cfg: TrainConfig, model: Any) -> bool:
    """Whether the stage's evidence is its head over the run's held frozen rows (cheap to make again when read:
    a frozen single network without a trained neck), rather than a forward pass worth keeping."""
    return cfg.optim.finetune == "frozen" and isinstance(model, HierarchicalClassifier) \
        and model.feature_columns() is not None


def _saved_stage_evidence(run_path: Path, name: str, pool: Pool, taxonomy: Any, stage: Stage, cfg: TrainConfig,
                          shared: SharedRows) -> Evidence:
    """A stage's evidence from its saved model (what ``supersub calibrate`` reads too)."""
    return collect_evidence(load_stage_model(run_path, name), pool, taxonomy, stage, cfg.trainer.accelerator, cfg,
                            shared)


STAGE_DONE_FILE = "stage.json"  # checkpoints/<stage>/stage.json: the stage's summary, written once it is done


def _open_run(out: str | Path, overwrite: bool, resume: bool) -> RunDir:
    """The run directory ``train`` writes: a new one, or with ``resume`` the interrupted one (a resume of a run
    that was interrupted before its folder existed simply starts it)."""
    if resume:
        path = Path(out)
        if (path / MARKER).is_file() or (path.exists() and (not path.is_dir() or any(path.iterdir()))):
            return RunDir.open(out)
        log.info("%s: nothing to resume yet: starting the run", out)
    return RunDir.create(out, overwrite=overwrite)


def _drop_lightning_checkpoints(folder: Path) -> None:
    """A finished stage's best.ckpt and last.ckpt (its members' too): its model.pt and stage.json are what reload,
    ``calibrate`` and a resume use, and the checkpoints held the same weights twice more (with optimiser state)."""
    for ckpt in folder.rglob("*.ckpt"):
        ckpt.unlink(missing_ok=True)


def _finished_stage(run: RunDir, name: str, model_path: Path) -> tuple[Any, dict[str, Any]] | None:
    """(model, summary) of a stage an interrupted run had finished, else None (the stage is (re)fitted).

    Reusing the saved model, rather than resuming Lightning from the stage's last.ckpt, keeps a finished stage
    exactly as it was: a resumed fit that had stopped early would train one more epoch before stopping again.
    """
    done = run.checkpoints_dir / name / STAGE_DONE_FILE
    if not (done.is_file() and model_path.is_file()):
        return None
    try:
        summary = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # damaged: train the stage again
    model = load_model_file(model_path)[0]
    log.info("resuming: stage %s was finished (%s epochs); reusing %s", name, summary.get("epochs_run"), model_path)
    return model, summary


def _fit_stage(pool: Pool, stage: Stage, cfg: TrainConfig, run: RunDir, resume: bool) -> Any:
    """Train one stage's model (final, calibration or LOSO) on its share of the pool."""
    assert stage.targets is not None  # plan_stages computed them
    t = stage.targets
    tax, y_super, y_sub = t.fit_taxonomy, t.fit_y_super, t.fit_y_sub
    log.info("%s model: %d subclasses, %d train / %d validation images", stage.name, len(stage.keep_sub),
             len(stage.train), len(stage.val))
    epochs = None if stage.name == "final" else cfg.novelty.calibration_epochs
    return fit_model(pool.images, y_super, y_sub, stage.train, stage.val, tax, cfg, run.path, stage.name,
                     epochs=epochs, resume=resume)
