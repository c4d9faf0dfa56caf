"""super_protocol=loso on a taxonomy with two superclasses: each LOSO model keeps one superclass and trains."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from conftest import TINY_TRAIN_ARGS, run_cli


def _two_superclasses(src: Path, dst: Path) -> None:
    """The built-in data without its third superclass, subclasses renumbered 0..m-1 (images linked, not copied)."""
    dst.mkdir(parents=True)
    train = pd.read_csv(src / "train_data.csv")
    train = train[train.superclass_index < 2].copy()
    subs = pd.read_csv(src / "subclass_mapping.csv")
    kept = sorted(train.subclass_index.unique())
    new_index = {old: new for new, old in enumerate(kept)}
    train["subclass_index"] = train.subclass_index.map(new_index)
    train.to_csv(dst / "train_data.csv", index=False)
    names = subs.set_index("index")["class"]
    rows = [{"index": new_index[j], "class": names[j]} for j in kept] + [{"index": len(kept), "class": "novel"}]
    pd.DataFrame(rows).to_csv(dst / "subclass_mapping.csv", index=False)
    supers = pd.read_csv(src / "superclass_mapping.csv")
    pd.DataFrame({"index": [0, 1, 2], "class": [*supers["class"][:2], "novel"]}).to_csv(
        dst / "superclass_mapping.csv", index=False)
    (dst / "train_images").symlink_to(src / "train_images")


def test_loso_with_two_superclasses_trains_single_superclass_models(synth_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "two"
    _two_superclasses(synth_dir, data)
    run = tmp_path / "run"
    code = run_cli(["train", "--data", str(data), "--out", str(run), "--score", "knn",
                    "--set", "novelty.super_protocol=loso", *TINY_TRAIN_ARGS])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["calibration"]["super_protocol"] == "loso"
    assert (run / "checkpoints" / "loso-0").is_dir() and (run / "checkpoints" / "loso-1").is_dir()
