"""Candidate new classes from feature vectors: how many groups, which image in which, how central each is.

The images a run flags novel are grouped on the features its heads read (frozen backbone features in the
default recipe): L2-normalised, reduced by PCA, then clustered by Ward's agglomerative method. The number of
groups is estimated, not asked: the tree is built once (scipy) and cut at every k in ``2..max_groups``, and each
cut gets its silhouette (scikit-learn). On frozen features the silhouette curve is flat near its top, so its argmax
jumps between plateaus (k=4 or k=14 for the same 29 reptile species, by PCA noise alone): the largest k whose
silhouette is within ``tolerance`` (90%) of the best is kept, which raised the clustering accuracy at every level
of the dev protocols (docs/results/discover.md). If even the best silhouette is below ``min_silhouette``, the
images are one group. Arrays in, arrays out; nothing here reads images or a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from .errors import SupersubError

# above this many images the silhouette is estimated on a seeded sample (its cost is quadratic)
SILHOUETTE_SAMPLE = 3000


@dataclass
class Grouping:
    """Group of every row (0..k-1, group 0 the largest), its distance to its group's centre, and how k was chosen."""

    labels: np.ndarray
    distances: np.ndarray
    k: int
    silhouettes: dict[int, float] = field(default_factory=dict)  # k -> silhouette; empty when k was given

    @property
    def estimated(self) -> bool:
        return bool(self.silhouettes)


def embed(features: np.ndarray, dims: int = 64, seed: int = 0) -> np.ndarray:
    """Rows on the unit sphere, reduced to at most ``dims`` principal components and normalised again, so a
    Euclidean distance is a cosine one and the clustering is not dominated by a few loud dimensions."""
    x = _unit(np.asarray(features, dtype=np.float64).reshape(len(features), -1))
    n_components = min(dims, x.shape[0] - 1, x.shape[1])
    if n_components >= 2:
        # the exact SVD: a randomised one moves the flat silhouette curve with the seed
        x = _unit(PCA(n_components=n_components, svd_solver="full", random_state=seed).fit_transform(x))
    return x


def group_features(features: np.ndarray, groups: int | None = None, *, max_groups: int = 40,
                   min_silhouette: float = 0.02, tolerance: float = 0.9, dims: int = 64, seed: int = 0) -> Grouping:
    """Group the rows of ``features``; ``groups`` forces k, otherwise it is estimated (see the module)."""
    n = len(features)
    if n == 0:
        raise SupersubError("grouping: no images to group")
    if groups is not None and not 1 <= groups <= n:
        raise SupersubError(f"--groups {groups}: must be between 1 and the number of images to group ({n})")
    if max_groups < 2 and groups is None:
        raise SupersubError(f"--max-groups {max_groups}: must be at least 2")
    x = embed(features, dims, seed)
    if groups == 1 or (groups is None and n < 3):
        return _finish(x, np.zeros(n, dtype=int), {})
    tree = linkage(x, method="ward")
    if groups is not None:
        return _finish(x, fcluster(tree, groups, criterion="maxclust") - 1, {})
    distances = squareform(pdist(x)) if n <= SILHOUETTE_SAMPLE else None
    scores: dict[int, float] = {}
    for k in range(2, min(max_groups, n - 1) + 1):
        labels = fcluster(tree, k, criterion="maxclust") - 1
        if len(np.unique(labels)) < 2:
            continue
        if distances is not None:
            scores[k] = float(silhouette_score(distances, labels, metric="precomputed"))
        else:
            scores[k] = float(silhouette_score(x, labels, sample_size=SILHOUETTE_SAMPLE, random_state=seed))
    if not scores:
        return _finish(x, np.zeros(n, dtype=int), {})
    top = max(scores.values())
    if top < min_silhouette:
        return _finish(x, np.zeros(n, dtype=int), scores)
    chosen = max(k for k, score in scores.items() if score >= tolerance * top)
    labels = fcluster(tree, chosen, criterion="maxclust") - 1
    return _finish(x, labels, scores)


def _finish(x: np.ndarray, labels: np.ndarray, scores: dict[int, float]) -> Grouping:
    """Renumber the groups by size (largest first, ties by first row) and measure each row's distance to its centre."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    remap = {int(ids[i]): new for new, i in enumerate(order)}
    labels = np.array([remap[int(v)] for v in labels], dtype=int)
    centres = np.stack([x[labels == g].mean(axis=0) for g in range(len(ids))])
    distances = np.linalg.norm(x - centres[labels], axis=1)
    return Grouping(labels, distances, len(ids), scores)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
