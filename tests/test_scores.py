"""Novelty detectors (supersub.novelty.detectors) and open-set metrics, on small synthetic data with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_ood.detector import KNN, ViM

from supersub.errors import SupersubError
from supersub.novelty.ood_metrics import fpr_at_tpr, open_set_metrics
from supersub.novelty.detectors import DETECTORS, FitError, create_detector, detector_from_state

N_DIM, N_CLASSES, PER_CLASS = 12, 3, 50
LOGITS = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


class Clusters:
    """Gaussian classes whose spread lives in dims 0..3, with an affine head that only reads dims 0..2.

    Novel points are in-distribution points pushed 8 units along dims 4..11: the head cannot see the
    push (identical logits), so only the feature-based scores can tell them apart.
    """

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.means = torch.zeros(N_CLASSES, N_DIM)
        self.means[torch.arange(N_CLASSES), torch.arange(N_CLASSES)] = 6.0
        self.weight = self.means.clone()
        self.bias = -0.5 * (self.means**2).sum(1)
        self.x, self.y = self.sample(PER_CLASS, g)
        self.x_test, _ = self.sample(20, g)
        push = torch.zeros(len(self.x_test), N_DIM)
        push[:, 4:] = torch.randn(len(self.x_test), N_DIM - 4, generator=g)
        self.x_novel = self.x_test + 8.0 * push / push.norm(dim=1, keepdim=True)

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(N_CLASSES).repeat_interleave(n)
        scale = torch.cat([torch.ones(4), torch.full((N_DIM - 4,), 0.05)])
        return self.means[y] + torch.randn(len(y), N_DIM, generator=g) * scale, y

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias

    def fit(self, name: str, **options: object):
        det = create_detector(name, **options)
        return det.fit(self.logits(self.x), self.x, self.y, head_weight=self.weight, head_bias=self.bias)

    def confidences(self, det) -> tuple[torch.Tensor, torch.Tensor]:
        return det.confidence(self.logits(self.x_test), self.x_test), det.confidence(
            self.logits(self.x_novel), self.x_novel
        )


@pytest.fixture(scope="module")
def data() -> Clusters:
    return Clusters()


# ---- logit scores against hand formulas -----------------------------------------------------------


def _softmax_row0() -> tuple[float, float]:
    z = math.exp(2) + 2
    return math.exp(2) / z, 1 / z


def test_msp_maxlogit_energy_match_hand_formulas() -> None:
    a, _ = _softmax_row0()
    msp = create_detector("msp").fit(LOGITS).confidence(LOGITS)
    assert torch.allclose(msp, torch.tensor([a, 1 / 3]), atol=1e-6)
    assert torch.equal(create_detector("maxlogit").fit(LOGITS).confidence(LOGITS), torch.tensor([2.0, 1.0]))
    energy = create_detector("energy").confidence(LOGITS)
    assert torch.allclose(energy, torch.tensor([math.log(math.exp(2) + 2), 1 + math.log(3)]), atol=1e-6)
    energy_t2 = create_detector("energy", temperature=2.0).confidence(LOGITS)
    assert torch.allclose(energy_t2, torch.tensor([2 * math.log(math.e + 2), 1 + 2 * math.log(3)]), atol=1e-6)
    msp_t2 = create_detector("msp", temperature=2.0).confidence(LOGITS)
    assert msp_t2[0].item() == pytest.approx(math.e / (math.e + 2), abs=1e-6)


def test_entropy_and_gen_match_hand_formulas() -> None:
    a, b = _softmax_row0()
    entropy = create_detector("entropy").confidence(LOGITS)
    assert torch.allclose(entropy, torch.tensor([a * math.log(a) + 2 * b * math.log(b), -math.log(3)]), atol=1e-6)

    def g(p: float) -> float:
        return p**0.1 * (1 - p) ** 0.1

    gen = create_detector("gen").confidence(LOGITS)  # top_m = 100 is capped at the 3 classes
    assert torch.allclose(gen, torch.tensor([-(g(a) + 2 * g(b)) / 3, -g(1 / 3)]), atol=1e-6)
    gen2 = create_detector("gen", gamma=0.5, top_m=2).confidence(LOGITS)
    assert gen2[0].item() == pytest.approx(-((a * (1 - a)) ** 0.5 + (b * (1 - b)) ** 0.5) / 2, abs=1e-6)


def test_logit_scores_rank_a_peaked_row_above_a_flat_one() -> None:
    for name in ("msp", "maxlogit", "energy", "entropy", "gen"):
        conf = create_detector(name).confidence(LOGITS)
        assert conf.shape == (2,) and conf.dtype == torch.float32
        assert conf[0] > conf[1], name


# ---- feature scores -------------------------------------------------------------------------------


def test_mahalanobis_known_answer() -> None:
    # each class's centred points are (+-1, 0), (0, +-1): covariance 0.5 I, which Ledoit-Wolf keeps
    # (it shrinks towards trace/D * I = 0.5 I), so the precision is 2 I and d^2 = 2 |x - mu|^2
    offsets = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    x = torch.cat([offsets, offsets + torch.tensor([10.0, 0.0])])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    det = create_detector("mahalanobis").fit(torch.zeros(8, 2), x, y)
    query = torch.tensor([[3.0, 4.0], [10.0, 0.0], [9.0, 1.0]])
    conf = det.confidence(torch.zeros(3, 2), query)
    assert torch.allclose(conf, torch.tensor([-50.0, 0.0, -4.0]), atol=1e-4)


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "knn-class", "vim"])
def test_feature_scores_flag_points_the_head_cannot_see(data: Clusters, name: str) -> None:
    seen, novel = data.confidences(data.fit(name))
    assert open_set_metrics(seen, novel)["auroc"] > 0.95
    assert seen.dtype == torch.float32 and seen.shape == (len(data.x_test),)


def test_logit_scores_are_blind_to_those_points(data: Clusters) -> None:
    seen, novel = data.confidences(data.fit("energy"))
    assert torch.allclose(seen, novel, atol=1e-4)


def test_knn_matches_pytorch_ood(data: Clusters) -> None:
    ours = data.fit("knn", k=5).confidence(data.logits(data.x_novel), data.x_novel)
    ref = -KNN(None, k=5).fit_features(data.x, data.y).predict_features(data.x_novel)
    assert torch.allclose(ours, ref.float(), atol=1e-5)


def test_knn_k_is_capped_by_the_bank() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    det = create_detector("knn", k=10).fit(torch.zeros(2, 1), bank, torch.tensor([0, 0]))
    # the 2nd (farthest) of two neighbours of (1, 0) is (0, 1): distance sqrt(2)
    assert det.confidence(torch.zeros(1, 1), torch.tensor([[2.0, 0.0]])).item() == pytest.approx(-math.sqrt(2))


def test_vim_matches_pytorch_ood(data: Clusters) -> None:
    ours = data.fit("vim", dim=5).confidence(data.logits(data.x_novel), data.x_novel)
    ref = ViM(None, d=5, w=data.weight, b=data.bias).fit_features(data.x, data.y)
    assert torch.allclose(ours, -ref.predict_features(data.x_novel), rtol=1e-4, atol=1e-3)


def test_vim_recovers_the_head_from_logits(data: Clusters) -> None:
    with_head = data.fit("vim")
    without = create_detector("vim").fit(data.logits(data.x), data.x, data.y)
    assert with_head.dim == without.dim == N_DIM // 2
    feats = torch.cat([data.x_test, data.x_novel])
    a, b = with_head.confidence(data.logits(feats), feats), without.confidence(data.logits(feats), feats)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)



def test_mahalanobis_measures_in_the_span_of_rank_deficient_features(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 28: one network's 8 features twice (16 columns of rank 8). Ledoit-Wolf over all 16 columns shrank
    towards a mean variance halved by the 8 empty directions; in the span the two copies give one copy's distances,
    and a query that leaves the span is farther than its projection."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(40)
    h = 3 * torch.randn(3, 8, generator=g)[y] + torch.randn(120, 8, generator=g)
    q = 2 * torch.randn(10, 8, generator=g)
    once = create_detector("mahalanobis").fit(torch.zeros(120, 3), h, y)
    with caplog.at_level("INFO", logger="supersub"):
        twice = create_detector("mahalanobis").fit(torch.zeros(120, 3), torch.cat([h, h], dim=1), y)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mahalanobis:")]
    assert len(said) == 1 and said[0].startswith("mahalanobis: covariance estimated in the 8 directions the training "
                                                 "features span (numerical rank 8 of 16 columns)"), said
    expected = once.confidence(torch.zeros(10, 3), q)
    assert torch.allclose(twice.confidence(torch.zeros(10, 3), torch.cat([q, q], dim=1)), expected, rtol=1e-5)
    off_span = twice.confidence(torch.zeros(10, 3), torch.cat([q, q + 0.5], dim=1))
    projected = twice.confidence(torch.zeros(10, 3), torch.cat([q + 0.25, q + 0.25], dim=1))
    assert torch.isfinite(off_span).all() and (off_span < projected).all()
    with pytest.raises(FitError, match="no within-class variance"):
        create_detector("mahalanobis").fit(torch.zeros(120, 3), torch.ones(120, 16), y)


def test_vim_caps_its_subspace_below_the_rank_of_rank_deficient_features(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 28: 8 features twice (16 columns of rank 8): the width rule (16 // 2 = 8) would leave no residual;
    ViM keeps 7 directions, says so in one line, and still scores a query off the span as more novel."""
    g = torch.Generator().manual_seed(0)
    h = 3 * torch.randn(3, 8, generator=g)[torch.arange(3).repeat_interleave(40)] + torch.randn(120, 8, generator=g)
    twice = torch.cat([h, h], dim=1)
    logits = twice[:, :3].clone()
    with caplog.at_level("INFO", logger="supersub"):
        vim = create_detector("vim").fit(logits, twice)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("vim:")]
    assert said == ["vim: principal dimension 8 capped at 7 (the features' numerical rank is 8 of 16 columns)"]
    assert vim.dim == 7
    q = torch.randn(10, 8, generator=g)
    on_span, off_span = torch.cat([q, q], dim=1), torch.cat([q, q + 3.0], dim=1)
    assert (vim.confidence(on_span[:, :3], off_span) < vim.confidence(on_span[:, :3], on_span)).all()


def test_a_detector_that_cannot_fit_its_features_raises_fit_error() -> None:
    """FitError (a SupersubError the pipeline may answer with a fallback score) is about the features, never
    about a misused call."""
    g = torch.Generator().manual_seed(0)
    flat = torch.ones(50, 1) @ torch.randn(1, 6, generator=g)  # every row the same direction
    logits = torch.randn(50, 3, generator=g)
    y = torch.arange(50) % 3
    for name, x, match in [("vim", flat, "span 1 direction"), ("vim", torch.randn(50, 1, generator=g), "at least 2"),
                           ("mahalanobis", torch.zeros(50, 6), "no within-class variance"),
                           ("knn", torch.randn(1, 6, generator=g), "at least 2 seen-class samples")]:
        with pytest.raises(FitError, match=match):
            create_detector(name).fit(logits[: len(x)], x, y[: len(x)])
    with pytest.raises(SupersubError) as not_fit:
        create_detector("mahalanobis").fit(logits, flat)  # no labels: the caller's mistake
    assert not isinstance(not_fit.value, FitError)

def test_outlier_rows_are_ignored_when_fitting(data: Clusters) -> None:
    x = torch.cat([data.x, data.x_novel])
    y = torch.cat([data.y, torch.full((len(data.x_novel),), -1)])
    for name in ("mahalanobis", "knn", "knn-class"):
        plain = data.fit(name)
        mixed = create_detector(name).fit(data.logits(x), x, y)
        feats = data.x_novel
        assert torch.equal(plain.confidence(data.logits(feats), feats), mixed.confidence(data.logits(feats), feats))


# ---- class-conditional kNN ------------------------------------------------------------------------


def _angles(degrees: list[float], radius: float = 1.0) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return (radius * torch.stack([rad.cos(), rad.sin()], dim=1)).float()


def test_knn_class_scores_a_point_far_from_its_predicted_class_low() -> None:
    # class 0 around 0 degrees, class 1 around 90 degrees; the query sits on class 0 but its logits say 1
    x = torch.cat([_angles([-3, -1, 1, 3], radius=5.0), _angles([87, 89, 91, 93], radius=2.0)])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    train_logits = torch.nn.functional.one_hot(y, 2).float()
    query, says_one, says_zero = _angles([0]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    knn = create_detector("knn", k=3).fit(train_logits, x, y)
    per_class = create_detector("knn-class", k=3).fit(train_logits, x, y)
    near = knn.confidence(says_one, query).item()
    assert near > -0.1  # the global bank has class 0 right there, whatever the logits say
    assert per_class.confidence(says_one, query).item() < near - 1.0  # ~ -sqrt(2): 90 degrees away
    assert per_class.confidence(says_zero, query).item() == pytest.approx(near, abs=1e-6)



def test_probe_ignores_the_feature_norm_and_scores_the_decided_class() -> None:
    # classes at 0 and 90 degrees, training radii 1..4; a query on class 0's direction at radius 50 is as typical
    # of class 0 as any training row for the probe (unit features), while a head's max logit grows with the norm
    x = torch.cat([_angles([-4, -2, 2, 4] * 2, radius=1.0) * torch.tensor([[1.0], [2.0], [3.0], [4.0]] * 2),
                   _angles([86, 88, 92, 94] * 2, radius=2.0)])
    y = torch.tensor([0] * 8 + [1] * 8)
    logits = torch.nn.functional.one_hot(y, 2).float()
    probe = create_detector("probe").fit(logits, x, y)
    says_zero, says_one = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    near, far = _angles([0], radius=1.0), _angles([0], radius=50.0)
    assert probe.confidence(says_zero, far).item() == pytest.approx(probe.confidence(says_zero, near).item(), rel=1e-5)
    # the decided class is what is scored: the same features judged as class 1 are far less typical
    assert probe.confidence(says_one, near).item() < probe.confidence(says_zero, near).item() - 5.0
    # between the two classes (45 degrees) the probe is less sure of either than on a class direction
    between = _angles([45])
    assert probe.confidence(says_zero, between).item() < probe.confidence(says_zero, near).item() - 1.0


def test_probe_fits_the_same_read_out_as_scikit_learns_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(3)
    y = torch.arange(3).repeat_interleave(30)
    x = torch.randn(3, 6, generator=g)[y] + 0.8 * torch.randn(90, 6, generator=g)
    probe = create_detector("probe", scale=4.0).fit(torch.zeros(90, 3), x, y)
    z = (x / x.norm(dim=1, keepdim=True) * 4.0).double().numpy()
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, y.numpy())
    query = torch.randn(20, 6, generator=g)
    logits = torch.tensor(reference.decision_function((query / query.norm(dim=1, keepdim=True) * 4.0).double().numpy()))
    # both fits share their optimum up to the softmax's free shift per row, so compare the decided logit minus the mean
    ours = probe.confidence(logits, query).double() - ((query / query.norm(dim=1, keepdim=True) * 4.0) @ probe.weight.T
                                                        + probe.bias).double().mean(dim=1)
    theirs = logits.max(dim=1).values - logits.mean(dim=1)
    assert torch.allclose(ours, theirs, atol=2e-3)


def test_fits_on_rows_read_in_blocks_are_the_fits_on_the_gathered_rows() -> None:
    """A run's rows given where they are (IndexedRows: rows of the held matrix, gathered a block at a time, a tapped
    layer L2-normalised per block) fit the probe and ViM bit for bit as the gathered matrix does, across several
    blocks and with unlabelled rows dropped, and the matrix is left as it was."""
    from supersub.novelty import detectors
    from supersub.novelty.level_scorer import layer_features
    from supersub.novelty.outputs import IndexedRows, Outputs, RowSelection

    g = torch.Generator().manual_seed(5)
    y = torch.arange(4).repeat_interleave(40)
    y[::17] = -1  # unlabelled rows: left out of both fits
    x = torch.randn(4, 24, generator=g)[y.clamp_min(0)] + 0.7 * torch.randn(160, 24, generator=g)
    matrix = torch.cat([torch.randn(30, 24, generator=g), x])  # other images' rows around the selection
    index = torch.arange(30, 190)
    logits = torch.nn.functional.one_hot(y.clamp_min(0), 4).float() + 0.1 * torch.randn(160, 4, generator=g)
    logits_all = torch.zeros(len(matrix), 4)
    before = matrix.clone()
    with pytest.MonkeyPatch.context() as mp:  # several blocks in every pass
        for name, size in (("UNIT_CHUNK", 16), ("PROBE_BLOCK", 32), ("LSQ_BLOCK", 48)):
            mp.setattr(detectors, name, size)
        for unit in (False, True):
            rows = IndexedRows(matrix, index, unit=unit)
            # the rows as the scorer read them before (gathered, a tapped layer normalised by layer_features)
            selection = RowSelection.pick(Outputs(logits_all, logits_all, matrix, layers={"block-1": matrix}), index)
            gathered = layer_features(selection, "block-1" if unit else "final")
            for name in ("probe", "vim"):
                options = {"dim": 8} if name == "vim" else {}
                in_blocks = create_detector(name, **options).fit(logits, rows, y)
                at_once = create_detector(name, **options).fit(logits, gathered, y)
                for key in in_blocks.fitted:
                    assert torch.equal(getattr(in_blocks, key), getattr(at_once, key)), (name, unit, key)
    assert torch.equal(matrix, before)


@pytest.mark.parametrize("features", [torch.zeros(12, 5), torch.ones(12, 5) * torch.arange(1, 13).unsqueeze(1)])
def test_probe_refuses_features_that_do_not_vary_once_normalised(features: torch.Tensor) -> None:
    # all-zero rows, or rows on one ray (different norms, one direction): unit features are all alike, so a probe
    # would give every image its decided class's bias; FitError lets the pipeline fall back to maxlogit instead
    y = torch.arange(12) % 3
    with pytest.raises(FitError, match="span 0 directions"):
        create_detector("probe").fit(torch.zeros(12, 3), features, y)
    varied = features + torch.eye(12, 5)
    create_detector("probe").fit(torch.zeros(12, 3), varied, y)  # one differing row is enough


def _brute_force_knn_class(bank: torch.Tensor, labels: torch.Tensor, logits, feats, k: int) -> torch.Tensor:
    """Explicit loop over rows: k-th smallest Euclidean distance to the predicted class's unit features."""
    unit_bank = bank.double() / bank.double().norm(dim=1, keepdim=True)
    out = []
    for row_logits, f in zip(logits, feats.double()):
        same = unit_bank[labels == row_logits.argmax()]
        if len(same) == 0:  # a class with no training rows: the whole bank
            same = unit_bank
        d = torch.cdist((f / f.norm()).unsqueeze(0), same)[0]
        out.append(-d.sort().values[min(k, len(same)) - 1])
    return torch.stack(out)


@pytest.mark.parametrize("k", [1, 4, 100])
def test_knn_class_matches_brute_force(k: int) -> None:
    g = torch.Generator().manual_seed(1)
    # class 0: 9 rows, class 1: 2 rows (below k=4), class 2: 6 rows, class 3: none; plus 3 outlier rows
    y = torch.tensor([0] * 9 + [1] * 2 + [2] * 6 + [-1] * 3)
    y = y[torch.randperm(len(y), generator=g)]
    x = torch.randn(len(y), 5, generator=g)
    det = create_detector("knn-class", k=k).fit(torch.randn(len(y), 4, generator=g), x, y)
    feats = torch.randn(40, 5, generator=g)
    logits = torch.randn(40, 4, generator=g)
    logits[:4] = 5 * torch.eye(4)  # every class, the empty one included, is predicted at least once
    expected = _brute_force_knn_class(x[y >= 0], y[y >= 0], logits, feats, k)
    conf = det.confidence(logits, feats)
    assert conf.dtype == torch.float32 and conf.shape == (40,)
    assert torch.allclose(conf.double(), expected, atol=1e-5)
    assert ((conf >= -2) & (conf <= 0)).all()


def test_knn_class_state_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    det = create_detector("knn-class", k=4).fit(torch.randn(30, 4, generator=g), x, y)
    state = det.state_dict()
    assert state["bank"].dtype == torch.float32 and state["bank"].shape == (30, 6)
    assert state["labels"].dtype == torch.int64 and state["labels"].shape == (30,)
    torch.save(state, tmp_path / "det.pt")
    again = detector_from_state(torch.load(tmp_path / "det.pt", weights_only=True))
    assert type(again) is type(det) and again.k == 4
    feats, logits = torch.randn(25, 6, generator=g), torch.randn(25, 4, generator=g)  # class 3 has no rows
    assert torch.equal(again.confidence(logits, feats), det.confidence(logits, feats))


def test_knn_class_is_registered() -> None:
    det = create_detector("knn-class", k=3)
    assert det.k == 3 and DETECTORS["knn-class"].confidence_range == DETECTORS["knn"].confidence_range
    with pytest.raises(SupersubError, match="unknown option"):
        create_detector("knn-class", kk=3)
    with pytest.raises(SupersubError, match="k must be a positive integer"):
        create_detector("knn-class", k=0)


# ---- saving, registry and errors ------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, cls in DETECTORS.items() if not cls.needs_members])  # members: test_ensembles
def test_state_round_trip_is_exact(data: Clusters, name: str, tmp_path: Path) -> None:
    det = data.fit(name)
    torch.save(det.state_dict(), tmp_path / "det.pt")
    state = torch.load(tmp_path / "det.pt", weights_only=True)
    again = detector_from_state(state)
    assert type(again) is type(det)
    feats = torch.cat([data.x_test, data.x_novel])
    assert torch.equal(again.confidence(data.logits(feats), feats), det.confidence(data.logits(feats), feats))


def test_options_survive_the_round_trip() -> None:
    det = detector_from_state(create_detector("gen", gamma=0.3, top_m=7).state_dict())
    assert (det.gamma, det.top_m) == (0.3, 7)


def test_the_config_takes_every_registered_score_alone_or_as_a_level_pair() -> None:
    from supersub.config import build_config
    from supersub.novelty.detectors import level_scores

    for name, cls in DETECTORS.items():
        model = {"approach": "bagging"} if cls.needs_members else {}  # ensemble scores need an ensemble
        assert build_config({"model": model, "novelty": {"score": name}}).novelty.score == name
        assert level_scores(name) == (name, name)
    assert level_scores("vim+knn-class") == ("vim", "knn-class")
    for bad in ("x", "vim+", "vim+knn+msp", "vim+x"):
        with pytest.raises(SupersubError, match="novelty.score"):
            build_config({"novelty": {"score": bad}})


def test_a_level_pair_scores_each_level_with_its_own_detector() -> None:
    from supersub.inference import Outputs
    from supersub.novelty.level_scorer import NoveltyScorer, seen_view

    g = torch.Generator().manual_seed(0)
    feats, sup, sub = torch.randn(40, 6, generator=g), torch.randn(40, 2, generator=g), torch.randn(40, 4, generator=g)
    y_sub = torch.randint(0, 4, (40,), generator=g)
    y_super = y_sub // 2
    view = seen_view(Outputs(sup, sub, feats), 2, 4)
    pair = NoveltyScorer.fit("energy+knn", view, y_super, y_sub, options={"k": 3})
    energy = create_detector("energy").fit(sup, feats, y_super)
    knn = create_detector("knn", k=3).fit(sub, feats, y_sub)
    conf = pair.confidences(view, [0, 0, 1, 1])
    assert torch.equal(conf.super_conf, energy.confidence(sup, feats))
    assert torch.equal(conf.sub_conf, knn.confidence(sub, feats))
    assert pair.sub_detector.k == 3 and not hasattr(pair.super_detector, "k")


def test_unknown_score_and_options_are_one_line_errors() -> None:
    with pytest.raises(SupersubError, match=r"unknown score 'x' \(choose from msp, maxlogit, .*vim, probe, mi, expected-entropy\)"):
        create_detector("x")
    with pytest.raises(SupersubError, match="unknown option"):
        create_detector("knn", kk=3)
    with pytest.raises(SupersubError, match="k must be a positive integer"):
        create_detector("knn", k=0)
    with pytest.raises(SupersubError, match="unknown score"):
        detector_from_state({"name": "nope"})
    with pytest.raises(SupersubError, match="missing key"):
        detector_from_state({"name": "knn", "k": 3})


def test_misuse_raises_supersub_error(data: Clusters) -> None:
    logits = data.logits(data.x)
    with pytest.raises(SupersubError, match="not fitted"):
        create_detector("knn").confidence(logits, data.x)
    with pytest.raises(SupersubError, match="never fitted"):
        create_detector("vim").state_dict()
    with pytest.raises(SupersubError, match="needs the class labels"):
        create_detector("mahalanobis").fit(logits, data.x)
    with pytest.raises(SupersubError, match="needs the class labels"):
        create_detector("knn-class").fit(logits, data.x)
    with pytest.raises(SupersubError, match="needs the model's features"):
        create_detector("knn").fit(logits)
    with pytest.raises(SupersubError, match="fitted on 12"):
        data.fit("mahalanobis").confidence(logits, data.x[:, :5])
    with pytest.raises(SupersubError, match="head_weight"):
        create_detector("vim").fit(logits, data.x, head_weight=data.weight[:, :5], head_bias=data.bias)
    with pytest.raises(SupersubError, match=r"logits must have shape \(N, C\)"):
        create_detector("msp").confidence(torch.zeros(3))


# ---- open-set metrics -----------------------------------------------------------------------------


def test_metrics_on_separated_scores() -> None:
    m = open_set_metrics(np.linspace(1, 2, 100), np.linspace(-2, 0, 50))
    assert (m["auroc"], m["fpr95"], m["aupr"]) == (1.0, 0.0, 1.0)
    assert (m["n_seen"], m["n_novel"]) == (100, 50)


def test_metrics_on_identical_scores() -> None:
    scores = np.linspace(0, 1, 100)
    m = open_set_metrics(scores, scores)
    assert m["auroc"] == pytest.approx(0.5)
    assert m["fpr95"] == pytest.approx(0.95)


def test_metrics_on_reversed_scores_and_a_hand_case() -> None:
    m = open_set_metrics([0.0, 0.1], [0.9, 1.0])
    assert (m["auroc"], m["fpr95"]) == (0.0, 1.0)
    # 20 seen 1..20: keeping 95% (19) puts tau at 2; novel 1.5 and 3 -> half accepted
    assert fpr_at_tpr(np.arange(1.0, 21.0), np.array([1.5, 3.0])) == 0.5


def test_metrics_reject_empty_input() -> None:
    with pytest.raises(SupersubError, match="needs seen and novel"):
        open_set_metrics([], [0.5])


def test_every_detector_matches_its_score_spec() -> None:
    """The config validates against supersub.score_catalog; the detectors must take exactly those options."""
    import inspect

    from supersub.score_catalog import SCORE_SPECS

    assert set(DETECTORS) == set(SCORE_SPECS)
    for name, cls in DETECTORS.items():
        spec = SCORE_SPECS[name]
        init = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        assert tuple(init) == spec.params == cls.params, name
        assert cls.confidence_range == spec.confidence_range, name
