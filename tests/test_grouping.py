"""The grouping maths: the number of groups is found on separable data, forced when asked; the scores are right."""

from __future__ import annotations

import numpy as np
import pytest

from supersub.errors import SupersubError
from supersub.grouping import group_features
from supersub.metrics import clustering_scores


def blobs(k: int, per: int, dims: int = 32, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tight clusters around random directions (features of k classes), rows shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dims))
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] + spread * rng.normal(size=(k * per, dims))
    order = rng.permutation(len(x))
    return x[order], truth[order]


@pytest.mark.parametrize("k", [3, 7])
def test_the_number_of_groups_is_estimated(k: int) -> None:
    x, truth = blobs(k, 20, seed=k)
    g = group_features(x, seed=0)
    assert g.estimated and g.k == k
    assert clustering_scores(truth, g.labels)["acc"] == 100.0
    assert max(g.silhouettes, key=g.silhouettes.get) == k  # type: ignore[arg-type]


def test_groups_forces_k_and_groups_are_numbered_by_size() -> None:
    x, _ = blobs(4, 10)
    g = group_features(x, groups=2)
    assert g.k == 2 and not g.estimated
    sizes = np.bincount(g.labels)
    assert list(sizes) == sorted(sizes, reverse=True)
    assert g.distances.shape == (40,) and (g.distances >= 0).all()


def test_noise_is_one_group_and_tiny_sets_are_fine() -> None:
    rng = np.random.default_rng(0)
    assert group_features(rng.normal(size=(60, 16)), min_silhouette=0.2).k == 1
    assert group_features(rng.normal(size=(1, 16))).k == 1
    assert group_features(rng.normal(size=(2, 16)), groups=2).k == 2


def test_bad_requests_are_one_line_errors() -> None:
    x, _ = blobs(2, 5)
    with pytest.raises(SupersubError, match="--groups 11"):
        group_features(x, groups=11)
    with pytest.raises(SupersubError, match="no images"):
        group_features(np.zeros((0, 4)))


def test_clustering_scores() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    assert clustering_scores(truth, [5, 5, 1, 1, 9, 9]) == {"acc": 100.0, "nmi": 100.0, "ari": 100.0}
    # one group for everything: the best matching keeps one class (2 of 6)
    s = clustering_scores(truth, [0] * 6)
    assert s["acc"] == pytest.approx(100 / 3) and s["nmi"] == 0.0 and s["ari"] == 0.0
    # an extra group is left unmatched: its images count as wrong
    assert clustering_scores(truth, [0, 3, 1, 1, 2, 2])["acc"] == pytest.approx(500 / 6)
    with pytest.raises(SupersubError):
        clustering_scores(["a"], [0, 1])
