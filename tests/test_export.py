"""``supersub export``: the run's model with its open-set decision as one ONNX graph, checked with onnxruntime
against ``supersub predict`` on the built-in data (identical indices, probabilities within 1e-4), for the
from-scratch CNN and for the default recipe (EfficientNet-Lite0 frozen, ViM on its last block + max logit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from supersub import api
from supersub.data.cache import decode_images
from supersub.data.formats import read_images
from supersub.errors import SupersubError
from supersub.pipeline.export import EXPORTABLE_SCORES, check_exportable
from supersub.run_dir import RunDir

ort = pytest.importorskip("onnxruntime")


def _check_against_predict(run: Path, images: Path, tmp_path: Path) -> dict:
    onnx_file = tmp_path / "model.onnx"
    assert run_cli(["export", str(run), "--out", str(onnx_file)]) == 0
    names = json.loads(onnx_file.with_suffix(".json").read_text(encoding="utf-8"))
    expected = api.predict(run, images, probs=True)
    cfg = RunDir.open(run).load_config()
    pixels = decode_images(read_images(images).records, cfg.data.image_size).images.numpy()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    sup, sub, p_super, p_sub = session.run(None, {"images": pixels})
    assert np.array_equal(sup, expected["superclass_index"].to_numpy())
    assert np.array_equal(sub, expected["subclass_index"].to_numpy())
    np.testing.assert_allclose(p_super, expected.filter(like="super_prob_").to_numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(p_sub, expected.filter(like="sub_prob_").to_numpy(), rtol=0, atol=1e-4)
    # another batch size: the graph was traced on two images, nothing in it is fixed to that
    few = session.run(None, {"images": pixels[3:8]})
    assert np.array_equal(few[1], sub[3:8]) and np.allclose(few[3], p_sub[3:8], atol=1e-5)
    # both kinds of decision occur, so the graph's novel branches were exercised
    assert (sub == len(names["subclasses"]) - 1).any() and (sub < len(names["subclasses"]) - 1).any()
    assert p_super.shape[1] == len(names["superclasses"]) and p_sub.shape[1] == len(names["subclasses"])
    return names


def test_exported_cnn_run_decides_as_predict_does(trained_run: Path, synth_dir: Path, tmp_path: Path):
    names = _check_against_predict(trained_run, synth_dir / "test_images", tmp_path)
    tax = RunDir.open(trained_run).load_taxonomy()
    assert names["superclasses"] == [*tax.super_names, "novel"] and names["subclasses"] == [*tax.sub_names, "novel"]
    assert names["subclass_superclass"] == list(tax.sub_to_super) and names["score"] == "vim+maxlogit"


def test_exported_default_recipe_decides_as_predict_does(recipe_run: Path, synth_dir: Path, tmp_path: Path):
    cfg = RunDir.open(recipe_run).load_config()
    # the default subclass score, the probe (a linear map on unit features, scored at the decided subclass), is in
    # the graph
    assert (cfg.model.backbone, cfg.optim.finetune, cfg.novelty.score) == ("efficientnet_lite0", "frozen", "vim+probe")
    _check_against_predict(recipe_run, synth_dir / "test_images", tmp_path)


def test_exported_head_max_logit_decides_as_predict_does(recipe_run: Path, synth_dir: Path, tmp_path: Path):
    """The subclass head's max logit (the default before the probe) at the decided subclass, in the graph too."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(recipe_run, run)
    api.calibrate(run, score="vim+maxlogit")
    names = _check_against_predict(run, synth_dir / "test_images", tmp_path)
    assert names["score"] == "vim+maxlogit"


def test_a_score_the_graph_cannot_hold_is_one_line_naming_those_it_can(trained_run: Path):
    model = RunDir.open(trained_run).load_model()[0]
    for score in ("knn", "vim+knn-class", "maxlogit,knn-class"):
        with pytest.raises(SupersubError) as e:
            check_exportable(model, score, 24)
        assert "\n" not in str(e.value) and ", ".join(EXPORTABLE_SCORES) in str(e.value)
    check_exportable(model, "vim+maxlogit", 24)


def test_export_never_overwrites_without_asking(trained_run: Path, tmp_path: Path, capsys):
    target = tmp_path / "model.onnx"
    target.write_text("mine")
    assert run_cli(["export", str(trained_run), "--out", str(target)]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err and target.read_text() == "mine"
