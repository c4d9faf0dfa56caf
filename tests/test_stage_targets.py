"""A stage carries its relabelled targets and taxonomy, computed once per stage (train, evidence and the saved
model file read them from the stage), and the split file records the rows only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import supersub.api as api
import supersub.pipeline.evidence as evidence
import supersub.pipeline.stage_plan as stages


def test_each_stage_computes_its_targets_once(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = stages.stage_targets

    def counted(pool, taxonomy, stage, oe):  # type: ignore[no-untyped-def]
        calls.append(stage.name)
        return real(pool, taxonomy, stage, oe)

    monkeypatch.setattr(stages, "stage_targets", counted)
    monkeypatch.setattr(evidence, "stage_targets", counted)
    run = tmp_path / "run"
    api.train(synth_dir, run, epochs=1, **{"model.backbone": "cnn", "data.image_size": 24, "optim.batch_size": 16,
              "model.width": 8, "model.depth": [1], "novelty.calibration_folds": 2, "trainer.progress": False})
    split = json.loads((run / "calibration" / "split.json").read_text())
    assert sorted(calls) == sorted(split["stages"]) == ["calibration", "calibration-1", "final"]
    assert all("targets" not in s for s in split["stages"].values())
