"""``supersub train --extend RUN --data NEW_LABELS``: the run's training data plus newly labelled images, trained
again with the run's own configuration into a new run; the taxonomy grows.

NEW_LABELS is the named layout (``image,superclass,subclass``; ``discover``'s labels.csv once renamed): a row
naming a class the run knows adds an image to it, any other name is a new subclass (of a known superclass, or of
a new one). The combined set is written as ``OUT/training_data.csv`` in the same layout (absolute paths; the
run's classes first, so they keep their indices) and recorded as the run's data, so ``calibrate`` can re-read
it. With a frozen backbone and the run's ``data.cache_dir`` only the new images go through the backbone:
the feature cache is content-addressed per image.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..config import build_config
from ..data.formats import read_dataset, read_named
from ..errors import SupersubError
from ..io import write_json_atomic
from ..run_dir import RunDir
from .stage_plan import SPLIT_FILE
from .train import train_run

log = logging.getLogger("supersub")

EXTENDED_DATA = "training_data.csv"


def extend_run(run_dir: str | Path, new_labels: str | Path, out: str | Path | None = None, *,
               overwrite: bool = False, **overrides: Any) -> dict[str, Any]:
    """:func:`supersub.api.train` with ``extend``: returns the new run's summary (with ``extended_from``)."""
    run = RunDir.open(run_dir)
    run.require_finished()
    out = Path(out) if out is not None else Path(f"{run.path}-extended")
    if out.resolve() == run.path.resolve():
        raise SupersubError(f"{out}: --out must be a new run directory, not the run being extended")
    RunDir.check_creatable(out, overwrite)
    base = _base_data(run)
    old, new = read_dataset(Path(base)), read_named(Path(new_labels))
    rows, added = combined_rows(old, new, str(new_labels))
    # the run's own recipe (overrides such as epochs on top); only its non-default values count as set, as they did
    # when it was trained, so no option is reported as ignored that the user never chose
    cfg = build_config(run.load_config().model_dump(mode="json", exclude_defaults=True), str(run.config_file))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".csv", dir=out.parent)
    os.close(fd)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([["image", "superclass", "subclass"], *rows])
        summary = train_run(tmp, out, cfg, overwrite=overwrite, **overrides)
        final = out / EXTENDED_DATA
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _record_data(out, final)
    summary.update(data=str(final), extended_from=str(run.path), new_labels=str(new_labels), **added)
    new_run = RunDir.open(out)
    new_run.save_metrics(summary)
    return summary


def _base_data(run: RunDir) -> str:
    """The training data the run recorded (calibration/split.json)."""
    try:
        data = json.loads((run.calibration_dir / SPLIT_FILE).read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError) as e:
        raise SupersubError(f"{run.calibration_dir / SPLIT_FILE}: cannot read the run's training data ({e})") from None
    if not Path(data).exists():
        raise SupersubError(f"{run.path}: its training data {data} is gone; --extend needs it")
    return str(data)


def combined_rows(old: Any, new: Any, source: str) -> tuple[list[list[str]], dict[str, Any]]:
    """The run's images (its classes first, in index order) then the new ones, as named rows; and what grew."""
    tax, new_tax = old.taxonomy, new.taxonomy
    owner = {sub: tax.super_names[k] for sub, k in zip(tax.sub_names, tax.sub_to_super)}
    by_sub = sorted(old.records, key=lambda r: (r.sub_index, r.name))
    rows = [[str(Path(r.path).resolve()), tax.super_names[r.super_index], tax.sub_names[r.sub_index]] for r in by_sub]
    present = {row[0] for row in rows}
    new_subs: dict[str, str] = {}
    known_added = skipped = 0
    for r in new.records:
        sup, sub = new_tax.super_names[r.super_index], new_tax.sub_names[r.sub_index]
        path = str(Path(r.path).resolve())
        if path in present:
            skipped += 1
            continue
        if sub in owner and owner[sub] != sup:
            raise SupersubError(f"{source}: image {r.name}: subclass {sub!r} is a subclass of {owner[sub]!r} in the "
                                f"run, not of {sup!r}")
        if sub in owner:
            known_added += 1
        else:
            new_subs.setdefault(sub, sup)
        rows.append([path, sup, sub])
    if skipped:
        log.warning("%s: %d image(s) already in the run's training data were left out", source, skipped)
    new_supers = sorted({sup for sup in new_subs.values() if sup not in tax.super_names})
    log.info("extend: %d new image(s); %d new subclass(es) (%s), %d new superclass(es); %d image(s) of known classes",
             len(new.records) - skipped, len(new_subs), ", ".join(new_subs) or "none", len(new_supers), known_added)
    return rows, {"new_subclasses": new_subs, "new_superclasses": new_supers, "n_new_images": len(new.records) - skipped}


def _record_data(out: Path, data: Path) -> None:
    """Point the new run's split file at the combined CSV in its own folder (calibrate re-reads it)."""
    split = out / "calibration" / SPLIT_FILE
    d = json.loads(split.read_text(encoding="utf-8"))
    d["data"] = str(data.resolve())
    write_json_atomic(split, d)
