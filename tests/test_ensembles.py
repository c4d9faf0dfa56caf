"""Seed 000's ensembles: bagging, XGBoost heads and the mixture of experts, from their maths to the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from conftest import TINY_TRAIN_ARGS, run_cli, saved_detectors, saved_thresholds
from supersub import api
from supersub.config import BoostConfig, ModelConfig, build_config, ignored_options
from supersub.errors import SupersubError
from supersub.inference import Outputs
from supersub.models.boosted import XGBoostHead
from supersub.models.ensemble import BaggingEnsemble, average_logits
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.models.moe import mixture_sub_logits
from supersub.novelty.detectors import create_detector, detector_from_state
from supersub.novelty.level_scorer import NoveltyScorer, seen_view
from supersub.run_dir import RunDir
from supersub.training.bagging import member_indices

pytest.importorskip("xgboost")

# ---- the maths ---------------------------------------------------------------------------------------------


def test_averaged_logits_give_the_mean_probability_and_the_mean_energy():
    members = torch.randn(7, 4, 5, generator=torch.Generator().manual_seed(0)) * 3
    combined = average_logits(members)
    assert torch.allclose(combined.softmax(1), members.softmax(-1).mean(1), atol=1e-6)
    assert torch.allclose(combined.logsumexp(1), members.logsumexp(-1).mean(1), atol=1e-5)
    # one member: its own logits back
    assert torch.allclose(average_logits(members[:, :1]), members[:, 0], atol=1e-5)


def test_mixture_logits_are_the_joint_and_the_routed_expert_raw_logits():
    g = torch.Generator().manual_seed(1)
    owner = torch.tensor([0, 0, 1, 1, 1, 3])  # superclass 2 has no subclass
    gate, experts = torch.randn(6, 4, generator=g) * 2, torch.randn(6, 6, generator=g) * 2
    logits = mixture_sub_logits(gate, experts, owner)
    assert torch.isfinite(logits).all()
    p_gate = gate.softmax(1)
    for k in (0, 1, 3):
        block = owner == k
        # p(k) p(j | k), over the superclasses that have subclasses (the empty one's gate mass is left out)
        joint = p_gate[:, k:k + 1] * experts[:, block].softmax(1) / (1 - p_gate[:, 2:3])
        assert torch.allclose(logits.softmax(1)[:, block], joint, atol=1e-6)
    for i, r in enumerate(gate.argmax(1).tolist()):
        if r != 2:  # the routed expert's block holds its raw logits
            assert torch.allclose(logits[i, owner == r], experts[i, owner == r], atol=1e-5)


def test_the_gate_learns_from_the_subclass_loss_end_to_end():
    model = HierarchicalClassifier(ModelConfig(backbone="cnn", width=8, depth=[1], approach="moe"), 2, 5,
                                   [0, 0, 1, 1, 1])
    _, sub, _ = model(torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8))
    torch.nn.functional.cross_entropy(sub, torch.tensor([0, 1, 2, 4])).backward()
    gate_grad = model.super_head[1].weight.grad
    assert gate_grad is not None and gate_grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.sub_head.parameters())
    assert model.linear_readout("super") is not None and model.linear_readout("sub") is None


def _members(same_backbone: bool) -> list[HierarchicalClassifier]:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="cnn", width=8, depth=[1])
    members = [HierarchicalClassifier(cfg, 2, 5, [0, 0, 1, 1, 1]).eval() for _ in range(3)]
    if same_backbone:  # as after frozen training: every member starts from (and keeps) the same weights
        for m in members[1:]:
            m.backbone.load_state_dict(members[0].backbone.state_dict())
    return members


@pytest.mark.parametrize("same_backbone", [True, False])
def test_an_ensemble_runs_each_distinct_backbone_once_and_averages_its_members(same_backbone: bool):
    members = _members(same_backbone)
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    alone = [m.outputs(images) for m in members]
    ensemble = BaggingEnsemble.from_members(members)
    assert len(ensemble.backbones()) == (1 if same_backbone else 3) and ensemble.shared_features == same_backbone
    out = ensemble.outputs(images)
    assert torch.allclose(out.sub_members, torch.stack([o.sub_logits for o in alone], 1), atol=1e-5)
    assert torch.allclose(out.super_probs, torch.stack([o.super_probs for o in alone]).mean(0), atol=1e-6)
    width = members[0].num_features
    assert out.features.shape[1] == (width if same_backbone else 3 * width)  # concatenated when they differ
    rows = ensemble.outputs_from_rows(ensemble.backbone_features(images))  # the cached-features path
    assert torch.allclose(rows.sub_logits, out.sub_logits, atol=1e-6)
    assert torch.equal(ensemble(images)[1], out.sub_logits)


def _disagreement_example(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic-regression members on bootstrap samples of two 2-D Gaussian classes; their (N, K, 2) logits on
    points inside the training data and on points 10x farther out along random directions."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal((-2, 0), 1, (100, 2)), rng.normal((2, 0), 1, (100, 2))])
    y = np.repeat([0, 1], 100)
    members = []
    for _ in range(8):
        pick = rng.integers(0, len(x), len(x))
        members.append(LogisticRegression(C=10.0).fit(x[pick], y[pick]))
    near = rng.normal(0, 1.5, (200, 2))
    angle = rng.uniform(0, 2 * np.pi, 200)
    far = 15.0 * np.stack([np.cos(angle), np.sin(angle)], 1)

    def logits(points: np.ndarray) -> torch.Tensor:
        z = np.stack([m.decision_function(points) for m in members], 1)  # the log-odds of class 1
        return torch.tensor(np.stack([np.zeros_like(z), z], -1), dtype=torch.float32)

    return logits(near), logits(far)


def test_member_disagreement_is_higher_far_from_the_training_data():
    near, far = _disagreement_example()
    mi = create_detector("mi").fit(near)
    c_near, c_far = mi.confidence(near), mi.confidence(far)
    assert c_near.shape == (200,) and (c_near <= 0).all() and (c_far <= 0).all()
    assert c_far.mean() < c_near.mean() / 3  # three times the mutual information, on average
    # members that agree disagree by nothing: identical members give zero mutual information
    same = near[:, :1].expand(-1, 5, -1)
    assert torch.allclose(mi.confidence(same), torch.zeros(200), atol=1e-5)
    # expected entropy is each member's own doubt: high between the classes, low far out where members are sure
    ee = create_detector("expected-entropy").fit(near)
    assert ee.confidence(far).mean() > ee.confidence(near).mean()


def test_member_scores_round_trip_and_refuse_single_model_outputs(tmp_path: Path):
    near, far = _disagreement_example()
    for name in ("mi", "expected-entropy"):
        det = create_detector(name).fit(near)
        torch.save(det.state_dict(), tmp_path / "d.pt")
        again = detector_from_state(torch.load(tmp_path / "d.pt", weights_only=True))
        assert torch.equal(again.confidence(far), det.confidence(far))
        with pytest.raises(SupersubError, match=r"shape \(N, K, C\)"):
            det.confidence(near[:, 0])
    single = seen_view(Outputs(torch.randn(6, 2), torch.randn(6, 3), torch.randn(6, 4)), 2, 3)
    with pytest.raises(SupersubError, match="reads the members of an ensemble"):
        NoveltyScorer.fit("vim+mi", single, torch.tensor([0, 1] * 3), torch.tensor([0, 1, 2] * 2))


def test_members_draw_seeded_resamples():
    cfg = build_config({"model": {"approach": "bagging"}})
    train = list(range(100, 300))
    a, b = member_indices(train, 0, cfg), member_indices(train, 1, cfg)
    assert a == member_indices(train, 0, cfg) and a != b
    assert len(a) == 200 and len(set(a)) < 170 and set(a) <= set(train)  # a bootstrap repeats ~37% of rows
    sub = build_config({"model": {"approach": "bagging", "subsample": 0.6}})
    assert not sub.model.with_replacement
    c = member_indices(train, 0, sub)
    assert len(c) == 120 and len(set(c)) == 120
    both = build_config({"model": {"approach": "bagging", "subsample": 0.6, "bootstrap": True}})
    assert both.model.with_replacement and len(set(member_indices(train, 0, both))) < 120


def test_xgboost_head_is_seeded_and_reloads_exactly(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 10, generator=g) @ torch.randn(10, 24, generator=g)  # 24 columns spanning 10 directions
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    heads = [XGBoostHead(24, 3) for _ in range(2)]
    cfg = BoostConfig(rounds=60, early_stopping=5, learning_rate=0.1, components=10)
    fits = [h.fit(x[:240], y[:240], x[240:], y[240:], cfg, seed=3) for h in heads]
    assert fits[0] == fits[1] and torch.equal(heads[0].booster_bytes, heads[1].booster_bytes)
    assert heads[0].projection.shape == (10, 24)  # trees split on 10 principal components
    assert 1 <= fits[0]["rounds"] <= 60 and fits[0]["val_mlogloss"] < 1.0  # chance is log(3) = 1.1
    accuracy = (heads[0](x[240:]).argmax(1) == y[240:]).float().mean()
    assert accuracy > 0.7
    torch.save(heads[0].state_dict(), tmp_path / "h.pt")
    loaded = XGBoostHead(24, 3)
    loaded.load_state_dict(torch.load(tmp_path / "h.pt", weights_only=True))
    assert torch.equal(loaded(x), heads[0](x))
    with pytest.raises(SupersubError, match="not fitted"):
        XGBoostHead(24, 3)(x)


# ---- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data,match", [
    ({"model": {"backbone": "cnn", "head": "xgboost"}, "optim": {"finetune": "full"}}, "needs optim.finetune frozen"),
    ({"model": {"head": "xgboost", "approach": "moe"}}, "cannot serve approach moe"),
    ({"model": {"head": "xgboost", "bottleneck": 64}}, "bottleneck must be 0"),
    ({"novelty": {"score": "vim+mi"}}, "reads the members of an ensemble"),
    ({"model": {"approach": "bagging", "members": 1}}, "model.members"),
])
def test_impossible_combinations_are_one_line_errors(data, match):
    with pytest.raises(SupersubError, match=match):
        build_config(data)


def test_xgboost_resolves_finetune_auto_to_frozen_and_names_what_it_ignores():
    cfg = build_config({"model": {"backbone": "cnn", "head": "xgboost"}, "optim": {"lr": 0.1}})
    assert cfg.optim.finetune == "frozen"
    assert any("optim.lr" in line and "head xgboost" in line for line in ignored_options(cfg))
    plain = build_config({"model": {"members": 3}, "boost": {"rounds": 5}})
    lines = ignored_options(plain)
    assert any("model.members" in line and "only approach bagging" in line for line in lines)
    assert any("boost.rounds" in line and "only head xgboost" in line for line in lines)
    moe = build_config({"model": {"approach": "moe"}, "loss": {"alpha": 0.3}})
    assert any("loss.alpha" in line and "moe trains with alpha 0" in line for line in ignored_options(moe))
    bagged = build_config({"model": {"approach": "bagging", "members": 3}, "loss": {"alpha": 0.3}})
    assert ignored_options(bagged) == []  # its two-heads members use alpha


# ---- end to end through the CLI --------------------------------------------------------------------------------

FROZEN_CNN = [*TINY_TRAIN_ARGS, "--finetune", "frozen"]


@pytest.fixture(scope="module")
def shared_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One starting backbone for every member, as pretrained weights are: frozen members then share it."""
    from supersub.models.scratch_cnn import ScratchCNN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "cnn.pt"
    torch.save(ScratchCNN(width=8, depth=[1]).state_dict(), path)
    return path


RUNS = {
    "bagging": ["--approach", "bagging", "--members", "3", "--score", "vim+mi"],
    "xgboost": ["--head", "xgboost", "--set", "boost.rounds=30"],
    "moe": ["--approach", "moe"],
}


@pytest.fixture(scope="module")
def trained(synth_dir: Path, shared_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """``trained(name)``: the run of ``RUNS[name]``, trained once per module on the tiny built-in data."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp(name) / "run"
            assert run_cli(["train", "--data", str(synth_dir), "--out", str(out), *FROZEN_CNN, "--weights",
                            str(shared_weights), *RUNS[name]]) == 0
            made[name] = out
        return made[name]

    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_each_trains_saves_reloads_and_predicts_identically(trained, name: str, synth_dir: Path, tmp_path: Path):
    path = trained(name)
    payload = torch.load(path / "model.pt", weights_only=True)
    assert payload["config"]["model"]["approach"] == RUNS[name][1] if name != "xgboost" else \
        payload["config"]["model"]["head"] == "xgboost"
    first = tmp_path / "a.csv"
    assert run_cli(["predict", str(path), str(synth_dir / "test_images"), "--out", str(first), "--probs"]) == 0
    a = pd.read_csv(first)
    sub = a[[c for c in a.columns if c.startswith("sub_prob_")]].to_numpy()
    assert abs(sub.sum(1) - 1).max() < 1e-4 and (sub.argmax(1) == a["subclass_index"]).all()
    # the model reloaded from model.pt in a fresh object gives the same outputs as a second reload
    m1, _, _ = RunDir.open(path).load_model()
    m2, _, _ = RunDir.open(path).load_model()
    images = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    o1, o2 = m1.outputs(images), m2.outputs(images)
    assert torch.equal(o1.super_logits, o2.super_logits) and torch.equal(o1.sub_logits, o2.sub_logits)
    pd.testing.assert_frame_equal(a, api.predict(path, synth_dir / "test_images", probs=True), check_dtype=False,
                                  atol=1e-6)
    if name == "bagging":  # its score reads the members: vim on the superclass, mutual information on the subclass
        detectors = saved_detectors(path)
        assert (detectors["super"]["name"], detectors["sub"]["name"]) == ("vim", "mi")
    # calibrate re-reads every stage's saved model (checkpoints/<stage>/model.pt) and rewrites the thresholds
    assert (path / "checkpoints" / "calibration" / "model.pt").is_file()
    assert run_cli(["calibrate", str(path), "--score", "energy"]) == 0
    assert saved_thresholds(path)["score"] == "energy"
    metrics = api.evaluate(path, synth_dir / "test_images", synth_dir / "test_truth.csv")
    assert metrics["super_ce"] is not None and 0 <= metrics["sub_acc_overall"] <= 100


def test_bagging_members_share_one_frozen_backbone(trained):
    path = trained("bagging")
    model, cfg, _ = RunDir.open(path).load_model()
    assert isinstance(model, BaggingEnsemble) and len(model.members) == 3
    assert len(model.backbones()) == 1 and model.shared_features  # one backbone in memory, computed once
    summary = json.loads((path / "metrics.json").read_text())
    assert len(summary["final"]["members"]) == 3
    assert (path / "checkpoints" / "final" / "stage.json").is_file()  # the members' checkpoints went with the stage
    assert not list((path / "checkpoints" / "final").rglob("*.ckpt"))
    # members differ (own resample and seed), so the ensemble is not any one member
    heads = [m.sub_head[1].weight for m in model.members]
    assert not torch.equal(heads[0], heads[1])
    # the shared backbone is stored once: in model.pt every member's backbone tensors are one storage
    state = torch.load(path / "model.pt", weights_only=True)["state_dict"]
    keys = [k for k in state if k.startswith("members.0.backbone.")]
    assert keys and all(state[k].untyped_storage().data_ptr() == state[k.replace("members.0.", f"members.{m}.")]
                        .untyped_storage().data_ptr() for k in keys for m in (1, 2))


def test_xgboost_members_bag_too(synth_dir: Path, shared_weights: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(out), *FROZEN_CNN, "--weights",
                    str(shared_weights), "--approach", "bagging", "--members", "2", "--subsample", "0.7", "--head",
                    "xgboost", "--set", "boost.rounds=10", "--score", "msp", "--tau-super", "0.5",
                    "--tau-sub", "0.3"]) == 0
    model, cfg, _ = RunDir.open(out).load_model()
    assert cfg.model.with_replacement is False and isinstance(model.members[0].sub_head, XGBoostHead)
    assert not torch.equal(model.members[0].sub_head.booster_bytes[:64], model.members[1].sub_head.booster_bytes[:64]) \
        or len(model.members[0].sub_head.booster_bytes) != len(model.members[1].sub_head.booster_bytes)
    predicted = api.predict(out, synth_dir / "test_images", probs=True)
    taxonomy = RunDir.open(out).load_taxonomy()
    assert sorted(predicted["image"]) == sorted(p.name for p in (synth_dir / "test_images").iterdir())
    assert predicted["superclass_index"].between(0, taxonomy.n_super).all()
    assert predicted["subclass_index"].between(0, taxonomy.n_sub).all()
    # the ensemble's probabilities are the mean of its two members' (each member's trees matter)
    import numpy as np

    from supersub.data.cache import decode_images
    from supersub.data.formats import read_flat

    ds = read_flat(synth_dir / "test_images")
    images = decode_images(ds.records, cfg.data.image_size).images
    with torch.no_grad():
        ensemble = model.eval().outputs(images).sub_probs
        members = [m.eval().outputs(images).sub_probs for m in model.members]
    assert np.allclose(ensemble.numpy(), ((members[0] + members[1]) / 2).numpy(), atol=1e-5)
    assert not torch.allclose(members[0], members[1])


def test_a_frozen_model_predicts_from_the_feature_cache_exactly_as_from_images(trained, synth_dir: Path):
    from supersub.api import predict_tensors
    from supersub.data.cache import decode_images
    from supersub.data.formats import read_flat

    path = trained("bagging")
    run = RunDir.open(path)
    model, cfg, _ = run.load_model()
    head = run.load_open_set_head()
    ds = read_flat(synth_dir / "test_images")
    images = decode_images(ds.records, cfg.data.image_size).images
    cached = predict_tensors(model, head, images, ds.names, "cpu", cfg=cfg)
    raw = predict_tensors(model, head, images, ds.names, "cpu")  # no cfg: on the images
    assert torch.equal(cached.sub_probs, raw.sub_probs) and torch.equal(cached.super_conf, raw.super_conf)
