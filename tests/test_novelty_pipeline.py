"""Novelty end to end on tiny built-in data: detectors saved and used, calibrate without retraining,
explicit-novel-class exposure and novel-subclass exposure, evaluate's open-set report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import run_cli, saved_detectors, saved_thresholds
from supersub import api
from supersub.data.cache import decode_images
from supersub.data.formats import read_flat
from supersub.errors import SupersubError
from supersub.inference import run_model
from supersub.novelty.open_set import OpenSetHead
from supersub.novelty.detectors import create_detector
from supersub.novelty.level_scorer import NoveltyScorer
from supersub.run_dir import RunDir

TINY = ["--epochs", "1", "--image-size", "24", "--batch-size", "16", "--no-progress", "--val-fraction", "0.25",
        "--backbone", "cnn", "--set", "model.width=4", "--set", "model.depth=[1]"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from supersub.data.synth import write_synth

    out = tmp_path_factory.mktemp("novelty") / "data"
    write_synth(out, train_per_class=4, test_per_class=2)
    return out


@pytest.fixture(scope="module")
def knn_run(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "knn"
    assert run_cli(["train", "--data", str(synth), "--out", str(run), "--novel-data", str(synth / "novel_images"),
                    "--score", "knn", *TINY]) == 0
    return run


def _probabilities(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    return df[[c for c in df.columns if c.startswith(prefix)]]


def test_knn_detectors_are_fitted_saved_and_used(knn_run: Path, synth: Path) -> None:
    state = saved_detectors(knn_run)
    assert state["score"] == "knn" and state["super"]["bank"].ndim == 2
    thresholds = saved_thresholds(knn_run)
    assert thresholds["score"] == "knn" and thresholds["temperature_super"] > 0
    split = json.loads((knn_run / "calibration" / "split.json").read_text())
    assert set(split["stages"]) == {"final", "calibration"} and split["n_labelled"] == 18 * 4
    df = api.predict(knn_run, synth / "test_images", probs=True)
    sup, sub = _probabilities(df, "super_prob_").to_numpy(), _probabilities(df, "sub_prob_").to_numpy()
    assert sup.shape == (len(df), 4) and sub.shape == (len(df), 19)
    assert abs(sup.sum(1) - 1).max() < 1e-4 and abs(sub.sum(1) - 1).max() < 1e-4
    assert ((sup[:, 3] > 0.5) == (df["superclass_index"] == 3).to_numpy()).all()


def _knn_confidence(features: torch.Tensor, state: dict) -> torch.Tensor:
    """Sun et al.'s kNN confidence from a saved detector's bank and k, written out here by hand."""
    z = torch.nn.functional.normalize(features.double(), dim=1)
    bank = state["bank"].double()
    kth = (z @ bank.T).topk(min(int(state["k"]), len(bank)), dim=1).values[:, -1]
    return -(2 - 2 * kth).clamp_min(0).sqrt()


def test_knn_decisions_are_recomputed_from_the_saved_detectors(knn_run: Path, synth: Path) -> None:
    """predict's decisions = the thresholds applied to the kNN distances of the saved banks (not to the
    confidences predict reports itself)."""
    state = saved_detectors(knn_run)
    thresholds = saved_thresholds(knn_run)
    run = RunDir.open(knn_run)
    model, cfg, _ = run.load_model()
    taxonomy = run.load_taxonomy()
    listing = read_flat(synth / "test_images")
    images = decode_images(listing.records, cfg.data.image_size).images
    out = run_model(model, images, device=torch.device("cpu"))
    novel_super = _knn_confidence(out.features, state["super"]) < thresholds["tau_super"]
    novel_sub = novel_super | (_knn_confidence(out.features, state["sub"]) < thresholds["tau_sub"])
    super_arg = out.super_logits.argmax(1)
    own = torch.tensor(taxonomy.sub_to_super).unsqueeze(0) == super_arg.unsqueeze(1)  # subclasses of it
    sub_arg = out.sub_logits.masked_fill(~own, float("-inf")).argmax(1)
    expected_super = torch.where(novel_super, taxonomy.novel_super, super_arg)
    expected_sub = torch.where(novel_sub, taxonomy.novel_sub, sub_arg)
    df = api.predict(knn_run, synth / "test_images").set_index("image").loc[listing.names]
    assert 0 < int(novel_super.sum()) < len(df)  # both outcomes occur, so the comparison can fail
    assert df["superclass_index"].tolist() == expected_super.tolist()
    assert df["subclass_index"].tolist() == expected_sub.tolist()


def test_predict_tensors_uses_the_runs_score(knn_run: Path, synth: Path) -> None:
    """The thresholds are kNN distances: scoring with max softmax (the old fallback) would be meaningless, so a
    head whose detectors and thresholds disagree cannot be made, and the run's head predicts as ``predict`` does."""
    run = RunDir.open(knn_run)
    model, cfg, _ = run.load_model()
    head = run.load_open_set_head()
    assert head.score == "knn" and head.thresholds.score == "knn"
    listing = read_flat(synth / "test_images")
    images = decode_images(listing.records, cfg.data.image_size).images
    msp = NoveltyScorer("msp", create_detector("msp"), create_detector("msp"))
    with pytest.raises(SupersubError, match="scorer 'msp' does not match the thresholds' score 'knn'"):
        OpenSetHead(msp, head.thresholds, head.sub_to_super, head.n_super)
    pred = api.predict_tensors(model, head, images, listing.names, "cpu")
    expected = api.predict(knn_run, synth / "test_images").set_index("image").loc[listing.names]
    assert pred.super_pred.tolist() == expected["superclass_index"].tolist()
    assert pred.sub_pred.tolist() == expected["subclass_index"].tolist()


def test_score_options_reach_the_saved_detectors(knn_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(knn_run, tmp_path / "run"))
    assert run_cli(["calibrate", str(run), "--score-option", "k=3"]) == 0
    state = saved_detectors(run)
    assert state["super"]["k"] == 3 and state["sub"]["k"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["novelty"]["score_options"] == {"k": 3}
    # another score starts from its own defaults: knn's k does not follow it
    assert run_cli(["calibrate", str(run), "--score", "knn-class"]) == 0
    assert saved_detectors(run)["super"]["k"] == 10
    assert run_cli(["calibrate", str(run), "--score-option", "kk=3"]) == 2


def test_calibrate_cuts_knn_on_its_final_bank_from_the_cli(knn_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(knn_run, tmp_path / "run"))
    assert run_cli(["calibrate", str(run), "--super-protocol", "bank", "--recall", "0.9,0.5"]) == 0
    novelty = json.loads((run / "metrics.json").read_text())["novelty"]
    assert novelty["super_protocol"] == "bank" and "super_tau_per_fold" not in novelty
    kept = (novelty["super_bank_seen_kept"] + novelty["super_bank_new_subclass_kept"]) / 2
    assert kept == pytest.approx(90.0, abs=100 / novelty["super_bank_rows"] + 0.01)
    assert yaml.safe_load((run / "config.yaml").read_text())["novelty"]["super_protocol"] == "bank"
    assert run_cli(["calibrate", str(run), "--score", "vim+probe", "--super-protocol", "bank"]) == 2


def test_calibrate_cuts_on_the_final_models_validation_images_from_the_cli(knn_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(knn_run, tmp_path / "run"))
    assert run_cli(["calibrate", str(run), "--score", "energy+probe", "--super-protocol", "val", "--recall",
                    "0.8,0.5"]) == 0
    novelty = json.loads((run / "metrics.json").read_text())["novelty"]
    assert novelty["super_protocol"] == "val" and "super_tau_calibration" not in novelty
    n_val = novelty["n_seen_val"]  # the calibration model's; the final model's split is as large or larger
    assert novelty["final_super_seen_kept"] == pytest.approx(80.0, abs=100 / n_val + 0.01)
    assert yaml.safe_load((run / "config.yaml").read_text())["novelty"]["super_protocol"] == "val"


def test_evaluate_writes_open_set_metrics_and_confusion_matrices(knn_run: Path, synth: Path) -> None:
    metrics = api.evaluate(knn_run, synth / "test_images", synth / "test_truth.csv")
    for key in ("super_auroc", "super_fpr95", "super_aupr", "sub_auroc", "super_ece", "sub_ece"):
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, key
    folder = knn_run / "evaluations"
    confusion = pd.read_csv(folder / "test_truth_confusion_super.csv", index_col=0)
    truth = pd.read_csv(synth / "test_truth.csv")
    assert list(confusion.columns)[-1] == "novel" and confusion.shape == (4, 4)
    assert confusion.sum(axis=1).tolist() == truth["superclass_index"].value_counts().sort_index().tolist()
    assert confusion.to_numpy().trace() == round(metrics["super_acc_overall"] * len(truth) / 100)
    assert (folder / "test_truth_confusion_sub.png").stat().st_size > 0


def test_calibrate_rescores_without_retraining(knn_run: Path, synth: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(knn_run, tmp_path / "run"))
    weights = {p: p.stat().st_mtime_ns for p in [run / "model.pt", *run.glob("checkpoints/*/*.ckpt")]}
    before = api.predict(run, synth / "test_images", probs=True)
    assert run_cli(["calibrate", str(run), "--score", "energy", "--objective", "eer"]) == 0
    assert {p: p.stat().st_mtime_ns for p in weights} == weights  # no model was retrained or rewritten
    assert saved_detectors(run)["score"] == "energy"
    assert saved_thresholds(run)["score"] == "energy"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["novelty"]["score"] == "energy" and cfg["novelty"]["objective"] == "eer"
    after = api.predict(run, synth / "test_images", probs=True)
    assert not after.equals(before)
    # hand-set thresholds in the new score's units
    assert run_cli(["calibrate", str(run), "--score", "maxlogit", "--tau-super", "1e9", "--tau-sub", "-1e9"]) == 0
    flagged = api.predict(run, synth / "test_images")
    assert (flagged["superclass_index"] == 3).all()
    # a run whose training data vanished cannot be re-calibrated, and says why
    split = run / "calibration" / "split.json"
    split.write_text(split.read_text().replace(str(synth.resolve()), str(tmp_path / "gone")))
    assert run_cli(["calibrate", str(run)]) == 2


def test_recall_and_expected_objectives_per_level(knn_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the objectives' mechanics, on a one-epoch CNN whose subclass scores separate by chance at best: every AUROC
    # above 0.5 counts as separating here (the significance rule has its own test, tests/test_novelty_units.py)
    monkeypatch.setattr("supersub.novelty.head_fit.NO_SEPARATION_P", 1.0)
    run = Path(shutil.copytree(knn_run, tmp_path / "run"))
    assert run_cli(["calibrate", str(run), "--objective", "recall", "--recall", "1.0,0.5"]) == 0
    novelty = json.loads((run / "metrics.json").read_text())["novelty"]
    # the calibration model's operating point, carried to the final model by quantile: the same shares
    assert novelty["final_super_seen_kept"] == 100.0 and 45.0 <= novelty["final_sub_seen_kept"] <= 60.0
    assert yaml.safe_load((run / "config.yaml").read_text())["novelty"]["sub_recall"] == 0.5
    kept = []
    for shares in ("0.05,0.1", "0.05,0.95"):  # more novel subclasses expected -> tau_sub flags more
        assert run_cli(["calibrate", str(run), "--objective", "expected", "--novel-share", shares]) == 0
        kept.append(json.loads((run / "metrics.json").read_text())["novelty"]["final_sub_seen_kept"])
    assert kept[1] < kept[0]
    assert run_cli(["calibrate", str(run), "--objective", "expected", "--novel-share", "0.3"]) == 2
    assert run_cli(["calibrate", str(run), "--objective", "expected", "--novel-share", "0.5,0.4"]) == 2


def test_class_exposure_and_novel_subclass_exposure(synth: Path, tmp_path: Path) -> None:
    truth = pd.read_csv(synth / "test_truth.csv")
    supers = pd.read_csv(synth / "superclass_mapping.csv")["class"].tolist()
    nested = tmp_path / "novel_sub"
    for row in truth[truth["kind"] == "novel_sub"].itertuples():
        folder = nested / supers[row.superclass_index] / "unseen"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(synth / "test_images" / row.image, folder / row.image)
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(synth), "--out", str(run), "--novel-data", str(synth / "novel_images"),
                    "--novel-sub-data", str(nested), "--oe", "class", *TINY]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_novel_sub_images"] == (truth["kind"] == "novel_sub").sum()
    model, _, model_taxonomy = RunDir.open(run).load_model()
    super_logits, sub_logits, _ = model(torch.zeros(2, 3, 24, 24, dtype=torch.uint8))
    assert super_logits.shape == (2, 3 + 1) and sub_logits.shape == (2, 18 + 1)  # the explicit novel outputs
    assert model_taxonomy.sub_to_super[-1] == 3  # the novel subclass belongs to the novel superclass
    df = api.predict(run, synth / "test_images", probs=True)
    assert _probabilities(df, "super_prob_").shape[1] == 4 and _probabilities(df, "sub_prob_").shape[1] == 19
    assert df["superclass_index"].between(0, 3).all() and df["subclass_index"].between(0, 18).all()
