"""Novelty detectors on precomputed logits and features, one small class per score, and their registry.

Sign convention (the only place it is stated): every ``confidence`` is "higher = more seen", the
orientation of :mod:`supersub.novelty.decide` (seen iff ``conf >= tau``). pytorch-ood's detectors return
outlier scores (higher = more novel), so where we reuse them we return the *negative* of their score.

Each detector works on one level (superclass or subclass): fit it with that level's logits, the shared
features and that level's labels. Rows with a negative label (:data:`supersub.losses.OUTLIER`,
outlier-exposure images) are ignored when fitting, since the detectors model the seen classes only.
All confidences are float32 tensors of shape ``(N,)`` on the CPU. A fitted detector's ``state_dict()``
holds only its name, plain numbers and tensors, so it reloads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import torch
from pytorch_ood.detector import GEN, KNN, EnergyBased, Entropy, MaxLogit, MaxSoftmax
from sklearn.covariance import LedoitWolf

from ..errors import SupersubError
from ..threads import dense_threads
from .outputs import IndexedRows
from ..score_catalog import (  # noqa: F401 - re-exported
    AVERAGE_SEPARATOR, SCORE_SPECS, average_parts, check_options, level_scores, options_for_detector, positive_option,
)

D = TypeVar("D", bound="Detector")
log = logging.getLogger("supersub")
Tensor = torch.Tensor
OptTensor = Tensor | None


class FitError(SupersubError):
    """A detector cannot be fitted on these features (too few rows or directions, no variance, no residual).

    A property of the model's outputs, not of the options: the pipeline may replace the level's score by one
    that needs no fitting (:data:`supersub.novelty.level_scorer.FALLBACK_SCORE`) instead of failing after training.
    """


class Detector(ABC):
    """Common interface: ``fit`` on in-distribution training outputs, then ``confidence``.

    Subclasses list their constructor options in ``params`` (plain numbers) and their fitted tensors in
    ``fitted``; ``state_dict``/``from_state`` are built from those two lists.
    """

    name: ClassVar[str]
    # options and confidence range come from the score's entry in supersub.score_catalog (set below), which
    # the config reads without importing this module
    confidence_range: ClassVar[tuple[float, float] | None] = None
    params: ClassVar[tuple[str, ...]] = ()
    fitted: ClassVar[tuple[str, ...]] = ()
    needs_features: ClassVar[bool] = False
    # ensemble scores read the members' logits (N, K, C) instead of the combined (N, C) ones (see NoveltyScorer);
    # set from the score's entry in supersub.score_catalog like the options
    needs_members: ClassVar[bool] = False
    # fits that pass over their training rows a block at a time take a run's rows where they are (IndexedRows)
    reads_blocks: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name in SCORE_SPECS:  # AveragedScore takes its parts' specs
            spec = SCORE_SPECS[cls.name]
            cls.params, cls.confidence_range, cls.needs_members = spec.params, spec.confidence_range, spec.needs_members

    @property
    def is_fitted(self) -> bool:
        return all(getattr(self, key, None) is not None for key in self.fitted)

    def fit(
        self: D,
        logits: Tensor,
        features: OptTensor = None,
        labels: OptTensor = None,
        *,
        head_weight: OptTensor = None,
        head_bias: OptTensor = None,
    ) -> D:
        """Fit on the training rows; only ``vim`` uses the head, but every score takes the same arguments.
        A detector with ``reads_blocks`` also takes :class:`~supersub.novelty.outputs.IndexedRows` as features."""
        _check_logits(self.name, logits, 3 if self.needs_members else 2)
        with dense_threads():  # eigh, pinv, covariances: barrier waits, not speed, with more threads (threads.py)
            self._fit(logits, features, labels, head_weight, head_bias)
        return self

    def _fit(self, logits: Tensor, features: OptTensor, labels: OptTensor, weight: OptTensor, bias: OptTensor) -> None:
        """Logit scores need no fitting."""

    def confidence(self, logits: Tensor, features: Rows | None = None) -> Tensor:
        """``(N,)`` float32, higher = more seen. Features given as :class:`IndexedRows` (a run's rows where they
        are) are scored a block of rows at a time: every score is a function of each row alone."""
        _check_logits(self.name, logits, 3 if self.needs_members else 2)
        if not self.is_fitted:
            raise SupersubError(f"score '{self.name}': not fitted (call fit on training outputs first)")
        if self.needs_features:
            _check_features(self.name, features, logits.shape[0])
        if isinstance(features, IndexedRows):
            starts = range(0, len(features), CONFIDENCE_BLOCK)
            parts = [self._confidence(logits[start:start + len(block)], block).float().cpu()
                     for start, block in zip(starts, features.blocks(CONFIDENCE_BLOCK))]
            return torch.cat(parts) if parts else torch.empty(0)
        return self._confidence(logits, features).float().cpu()

    @abstractmethod
    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        """The score itself, higher = more seen; inputs are already checked."""

    def training_confidence(self, logits: Tensor, features: OptTensor = None) -> Tensor:
        """Confidences of the rows the detector was fitted on, as an unseen image of the same classes would get
        them (neighbour scores leave the row itself out); what :class:`AveragedScore` standardises with."""
        return self.confidence(logits, features)

    def state_dict(self) -> dict[str, Any]:
        if not self.is_fitted:
            raise SupersubError(f"score '{self.name}': cannot save a detector that was never fitted")
        state: dict[str, Any] = {"name": self.name}
        state.update({key: getattr(self, key) for key in self.params})
        state.update({key: getattr(self, key).detach().cpu() for key in self.fitted})
        return state

    @classmethod
    def from_state(cls: type[D], state: dict[str, Any]) -> D:
        """Rebuild a detector saved by :meth:`state_dict` (checks its name and keys)."""
        if not isinstance(state, dict) or state.get("name") != cls.name:
            found = state.get("name") if isinstance(state, dict) else type(state).__name__
            raise SupersubError(f"detector state: expected score '{cls.name}', found {found!r}")
        missing = [key for key in (*cls.params, *cls.fitted) if key not in state]
        if missing:
            raise SupersubError(f"detector state for '{cls.name}': missing key(s) {', '.join(missing)}")
        bad = [key for key in cls.fitted if not isinstance(state[key], Tensor)]
        if bad:
            raise SupersubError(f"detector state for '{cls.name}': {bad[0]} is not a tensor")
        detector = cls(**{key: state[key] for key in cls.params})
        for key in cls.fitted:
            setattr(detector, key, state[key])
        return detector


# ---- input checks -------------------------------------------------------------------------------


def _check_logits(score: str, logits: Tensor, ndim: int = 2) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != ndim or 0 in logits.shape[1:]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        expected = "(N, C)" if ndim == 2 else "(N, K, C): one row of logits per ensemble member"
        raise SupersubError(f"score '{score}': logits must have shape {expected}, got {shape}")
    if not torch.isfinite(logits).all():
        raise SupersubError(f"score '{score}': logits contain a non-finite value")


# rows at a time in the row-wise passes over a whole training matrix (5 MB per float64 temporary at 1,280 columns)
UNIT_CHUNK = 512
CONFIDENCE_BLOCK = 1024  # rows a time when scoring a run's rows where they are (IndexedRows)
PROBE_BLOCK = 1024  # rows a time in each evaluation of the probe's loss (5 MB of unit rows at 1,280 columns)


Rows = Tensor | IndexedRows  # training features: a matrix, or a run's rows read in blocks (reads_blocks fits)


def _row_blocks(x: Rows, size: int = UNIT_CHUNK) -> Iterator[Tensor]:
    """The rows of ``x`` a block at a time (views of a matrix, gathered blocks of :class:`IndexedRows`)."""
    return x.blocks(size) if isinstance(x, IndexedRows) else iter(x.split(size))


def _check_features(score: str, features: Rows | None, n: int) -> Rows:
    if features is None:
        raise SupersubError(f"score '{score}': needs the model's features, got none")
    if len(features.shape) != 2 or features.shape[0] != n:
        raise SupersubError(f"score '{score}': features have shape {tuple(features.shape)}, expected ({n}, D)")
    if not all(bool(torch.isfinite(block).all()) for block in _row_blocks(features)):  # no (N, D) mask
        raise SupersubError(f"score '{score}': features contain a non-finite value")
    return features


def _seen_rows(
    score: str, features: Rows | None, labels: OptTensor, n: int, need_labels: bool, float64: bool = True
) -> tuple[Any, OptTensor]:
    """CPU features (and labels) of the in-distribution rows: negative labels are dropped. float64 unless
    ``float64=False`` (then the caller's own dtype, and no copy when every row is kept: a fit on the training images
    of a large run would otherwise hold the matrix twice over, in float64). Rows read in blocks
    (:class:`IndexedRows`, ``float64=False`` only) stay so."""
    x: Any = _check_features(score, features, n)
    if not isinstance(x, IndexedRows):
        x = x.detach().cpu()
        x = x.double() if float64 else x
    y = None
    if labels is None and need_labels:
        raise SupersubError(f"score '{score}': fitting needs the class labels, got none")
    if labels is not None:
        if labels.shape != (n,) or labels.is_floating_point():
            raise SupersubError(f"score '{score}': labels must be {n} integers, got shape {tuple(labels.shape)}")
        y = labels.detach().cpu().long()
        if not bool((y >= 0).all()):
            x, y = x[y >= 0], y[y >= 0]
    if len(x) < 2:
        raise FitError(f"score '{score}': fitting needs at least 2 seen-class samples, got {len(x)}")
    return x, y


def _spectrum(second_moment: Tensor) -> tuple[Tensor, Tensor, int]:
    """Ascending eigenvalues and eigenvectors of a symmetric second-moment matrix, and its numerical rank.

    Why a rank and not the width: rank-deficient features (one backbone's features twice, constant channels,
    fewer images than columns) have fewer directions than columns, and a subspace or covariance sized by the
    width alone covers directions that hold only rounding noise. The tolerance is numpy's ``matrix_rank`` rule
    (largest eigenvalue x size x machine epsilon).
    """
    values, vectors = torch.linalg.eigh(second_moment)
    tol = values.max().clamp_min(0) * values.shape[0] * torch.finfo(values.dtype).eps
    return values, vectors, int((values > tol).sum())


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _unit_float32(x: Tensor, scale: float | None = None) -> Tensor:
    """``(_unit(x.double()) * scale).float()`` computed a block of rows at a time (row by row the same numbers):
    the float64 intermediates of a whole training matrix cost 4x the float32 result."""
    out = torch.empty(x.shape, dtype=torch.float32)
    for start in range(0, len(x), UNIT_CHUNK):
        block = _unit(x[start:start + UNIT_CHUNK].double())
        out[start:start + UNIT_CHUNK] = block if scale is None else block * scale
    return out


def _spans_no_direction(blocks: Iterable[Tensor], tolerance: float) -> bool:
    """Whether every row of the blocks equals the mean row within ``tolerance``: ``max |z - mean|`` read off each
    column's extremes (rounding is monotone, so it is the same number) without an (N, D) temporary."""
    total, high, low, n = None, None, None, 0
    for z in blocks:
        block_sum, block_high, block_low = z.double().sum(dim=0), z.amax(dim=0), z.amin(dim=0)
        total = block_sum if total is None else total + block_sum
        high = block_high if high is None else torch.maximum(high, block_high)
        low = block_low if low is None else torch.minimum(low, block_low)
        n += len(z)
    assert total is not None and high is not None and low is not None
    mean = total / n
    spread = torch.maximum(high.double() - mean, mean - low.double())
    return float(spread.max()) <= tolerance


# ---- logit scores --------------------------------------------------------------------------------


class MSPScore(Detector):
    """Maximum softmax probability of ``logits / temperature``.

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
    Neural Networks", ICLR 2017. Via pytorch-ood ``MaxSoftmax.score``.
    """

    name = "msp"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = positive_option(self.name, "temperature", temperature)

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        return -MaxSoftmax.score(logits.float(), t=self.temperature)


class MaxLogitScore(Detector):
    """The largest logit.

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022.
    Via pytorch-ood ``MaxLogit.score``.
    """

    name = "maxlogit"

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        return -MaxLogit.score(logits.float())


class EnergyScore(Detector):
    """Negative free energy ``T * logsumexp(logits / T)``.

    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020. Via pytorch-ood
    ``EnergyBased.score`` (which returns the energy ``-T * logsumexp(logits / T)``).
    """

    name = "energy"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = positive_option(self.name, "temperature", temperature)

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        return -EnergyBased.score(logits.float(), t=self.temperature)


class EntropyScore(Detector):
    """Negative Shannon entropy of the softmax, ``sum_i p_i log p_i`` (peaked = seen).

    As used by Chan et al., "Entropy Maximization and Meta Classification for Out-of-Distribution
    Detection in Semantic Segmentation", ICCV 2021. Via pytorch-ood ``Entropy.score``.
    """

    name = "entropy"

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        return -Entropy.score(logits.float())


class GENScore(Detector):
    """Negative generalized entropy ``-mean_{j in top-M} p_j^gamma (1 - p_j)^gamma``.

    Liu et al., "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection", CVPR 2023
    (gamma = 0.1, M = 100 in the paper; M is capped by the number of classes). The paper sums over the
    top M; pytorch-ood's ``GEN.score`` (used here) averages, which only rescales by 1/M, keeps the
    ranking and bounds the confidence in [-0.5^(2 gamma), 0].
    """

    name = "gen"

    def __init__(self, gamma: float = 0.1, top_m: int = 100) -> None:
        self.gamma = positive_option(self.name, "gamma", gamma)
        self.top_m = positive_option(self.name, "top_m", top_m, integer=True)

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        return -GEN.score(logits.float(), gamma=self.gamma, M=min(self.top_m, logits.shape[1]))


# ---- ensemble scores: the members' logits (N, K, C) ------------------------------------------------


def _mean_probs_logits(members: Tensor) -> Tensor:
    """log of the members' mean probability: logits whose softmax is the ensemble's averaged distribution."""
    return members.float().log_softmax(dim=-1).logsumexp(dim=1) - torch.log(torch.tensor(float(members.shape[1])))


def _member_entropy(members: Tensor) -> Tensor:
    """(N, K) entropy of each member's softmax."""
    n, k, c = members.shape
    return Entropy.score(members.float().reshape(n * k, c)).reshape(n, k)


class MutualInformationScore(Detector):
    """Member disagreement: negative mutual information between the prediction and the member,
    ``H(mean_k p_k) - mean_k H(p_k)``.

    Depeweg et al., "Decomposition of Uncertainty in Bayesian Deep Learning", ICML 2018; Lakshminarayanan et al.,
    "Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles", NeurIPS 2017. Zero when every
    member predicts the same distribution, large when confident members disagree: the epistemic part of the total
    entropy, which grows away from the training data. Entropies via pytorch-ood ``Entropy.score``.
    """

    name = "mi"

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        total = Entropy.score(_mean_probs_logits(logits))
        return -(total - _member_entropy(logits).mean(dim=1)).clamp_min(0)


class ExpectedEntropyScore(Detector):
    """Negative expected entropy of the members, ``-mean_k H(p_k)``: the aleatoric part of the total entropy
    (Depeweg et al., ICML 2018), each member's own doubt averaged. Entropies via pytorch-ood ``Entropy.score``."""

    name = "expected-entropy"

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        return -_member_entropy(logits).mean(dim=1)


# ---- feature scores ------------------------------------------------------------------------------


class MahalanobisScore(Detector):
    """Negative squared Mahalanobis distance to the nearest class mean, shared (tied) covariance.

    Hand-written: pytorch-ood's ``Mahalanobis`` inverts a scatter matrix that is singular with few images.

    Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
    Attacks", NeurIPS 2018: ``max_c -(f - mu_c)^T Sigma^-1 (f - mu_c)`` on the penultimate features.
    Implemented directly rather than with pytorch-ood's ``Mahalanobis``, whose covariance is an
    unnormalised scatter matrix with a 1e-6 ridge and becomes singular when there are fewer training
    images than feature dimensions; here ``Sigma`` is the Ledoit-Wolf shrinkage estimate of the pooled
    within-class covariance, which stays well conditioned with few samples. Its dimension is the numerical rank
    of the within-class deviations, not the feature width: when they span fewer directions than there are
    columns (duplicated or constant channels, fewer images than columns) the estimate is made in that span and
    said in the log (see :meth:`_span_precision`); two copies of the same features then give the distances of
    one copy.
    """

    name = "mahalanobis"
    fitted = ("means", "precision")
    needs_features = True

    def __init__(self) -> None:
        self.means: OptTensor = None
        self.precision: OptTensor = None

    def _fit(self, logits: Tensor, features: OptTensor, labels: OptTensor, weight: OptTensor, bias: OptTensor) -> None:
        x, y = _seen_rows(self.name, features, labels, logits.shape[0], need_labels=True)
        assert y is not None
        classes, index = torch.unique(y, return_inverse=True)
        means = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, index, x)
        means /= torch.bincount(index, minlength=len(classes)).unsqueeze(1).to(x.dtype)
        centered = x - means[index]
        _, vectors, rank = _spectrum(centered.T @ centered / len(centered))
        if rank == 0 or not centered.abs().max() > 0:
            raise FitError(f"score '{self.name}': the training features have no within-class variance")
        precision = _shrunk_precision(centered) if rank == x.shape[1] else self._span_precision(centered, vectors, rank)
        if not torch.isfinite(precision).all():
            raise FitError(f"score '{self.name}': the feature covariance could not be inverted")
        self.means, self.precision = means, precision

    def _span_precision(self, centered: Tensor, vectors: Tensor, rank: int) -> Tensor:
        """Ledoit-Wolf in the ``rank`` directions the within-class deviations span; every direction outside
        (where no training image varies) gets the variance Ledoit-Wolf gives a direction without sample variance,
        its shrinkage times the span's mean variance. Estimated over all columns instead, that mean would be
        diluted by the empty directions (two copies of one backbone's features would halve it)."""
        n_dim = centered.shape[1]
        basis = vectors[:, -rank:]
        lw = LedoitWolf(assume_centered=True).fit((centered @ basis).numpy())
        outside = float(lw.shrinkage_) * float(torch.from_numpy(lw.covariance_).diagonal().mean())
        if not outside > 0:  # no shrinkage at all: the least variance of any spanned direction
            outside = float(torch.linalg.eigvalsh(torch.from_numpy(lw.covariance_))[0])
        log.info("mahalanobis: covariance estimated in the %d directions the training features span (numerical "
                 "rank %d of %d columns); the other directions get variance %.3g", rank, rank, n_dim, outside)
        inside = torch.from_numpy(lw.precision_)
        return basis @ (inside - torch.eye(rank, dtype=inside.dtype) / outside) @ basis.T + \
            torch.eye(n_dim, dtype=inside.dtype) / outside

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        assert features is not None and self.means is not None and self.precision is not None
        _check_dim(self.name, features, self.precision.shape[0])
        x = features.detach().cpu().double()
        xp = x @ self.precision
        # (x - m)^T P (x - m) = x^T P x - 2 x^T P m + m^T P m, for every class mean m at once
        d2 = (xp * x).sum(1, keepdim=True) - 2 * xp @ self.means.T + ((self.means @ self.precision) * self.means).sum(1)
        return -d2.clamp_min(0).min(dim=1).values


def _shrunk_precision(centered: Tensor) -> Tensor:
    """Inverse of the Ledoit-Wolf shrinkage estimate of the covariance of within-class deviations."""
    return torch.from_numpy(LedoitWolf(assume_centered=True).fit(centered.numpy()).precision_)


class KNNScore(Detector):
    """Negative distance of the L2-normalised feature to its k-th nearest normalised training feature.


    Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022:
    ``-||z - z_(k)||`` with ``z = f / ||f||``, i.e. ``-sqrt(2 * cosine distance)`` to the k-th neighbour.
    The search is pytorch-ood's ``KNN``; the fitted state is one tensor (the normalised training bank), from
    which its scikit-learn index is rebuilt, so a saved detector loads with ``weights_only``. ``k`` is capped by
    the bank size. Score images that are not in the bank (a bank image is its own nearest neighbour).
    """

    name = "knn"
    fitted = ("bank",)
    needs_features = True

    def __init__(self, k: int = 10) -> None:
        self.k = positive_option(self.name, "k", k, integer=True)
        self.bank: OptTensor = None

    def _fit(self, logits: Tensor, features: OptTensor, labels: OptTensor, weight: OptTensor, bias: OptTensor) -> None:
        x, _ = _seen_rows(self.name, features, labels, logits.shape[0], need_labels=False, float64=False)
        self.bank = _unit_float32(x)

    def _confidence(self, logits: Tensor, features: OptTensor, k: int | None = None) -> Tensor:
        assert features is not None and self.bank is not None
        _check_dim(self.name, features, self.bank.shape[1])
        return -_kth_distance(_unit(features.detach().cpu().float()), self.bank, k or self.k)

    def training_confidence(self, logits: Tensor, features: OptTensor = None) -> Tensor:
        """On the bank's own rows each row is its nearest neighbour: the (k+1)-th is the k-th of the others."""
        return self._confidence(logits, _check_features(self.name, features, logits.shape[0]), self.k + 1).float()

    def left_out_confidence(self, groups: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
        """Each bank row's confidence against the rest of the bank, and against the rows of other groups only.

        ``groups`` labels the bank's rows (the subclass of each training image, in fit order). The first tensor
        scores a seen image of a seen class (the row left out, its class still in the bank), the second a new class
        of a known kind (its whole group left out): the final model's own evidence for a threshold, on the bank
        the test images meet. NaN where no row is left to compare with. Hand-written masked search: pytorch-ood's
        ``KNN`` has no way to leave rows out.
        """
        assert self.bank is not None
        if groups.shape != (len(self.bank),):
            raise SupersubError(f"score '{self.name}': {len(self.bank)} bank rows but {tuple(groups.shape)} groups")
        groups = groups.detach().cpu().long()
        n = len(self.bank)
        alone, others = torch.full((n,), float("nan")), torch.full((n,), float("nan"))
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(start + chunk, n))
            sims = self.bank[rows] @ self.bank.T
            sims[torch.arange(len(rows)), rows] = float("-inf")
            for out, masked in ((alone, sims), (others, sims.masked_fill(groups[rows, None] == groups[None, :],
                                                                          float("-inf")))):
                available = torch.isfinite(masked).sum(dim=1)
                full = available >= self.k
                if full.any():
                    out[rows[full]] = _sim_to_confidence(masked[full].topk(self.k, dim=1).values[:, -1])
                for i in torch.nonzero(~full & (available > 0)).flatten().tolist():  # k capped by what is left
                    out[rows[i]] = _sim_to_confidence(masked[i].topk(int(available[i])).values[-1])
        return alone, others


class KNNClassScore(Detector):
    """Class-conditional kNN: negative distance to the k-th nearest training feature of the predicted class.

    Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022 score ``-||z - z_(k)||``
    on L2-normalised features (as in :class:`KNNScore`, same units and range), but the neighbours are
    searched only among the training features labelled with the class the logits predict (``argmax``).
    Why: ``knn`` ignores labels, so fitted on the shared features it gives the same confidence at both
    levels; restricting the bank to the predicted class is what makes the subclass score subclass-aware
    (an image of a new species sits near its superclass's bank but far from the subclass it is assigned
    to). A seen image the head misclassifies is also scored low, since it is far from the predicted class.
    ``k`` is capped by the predicted class's bank size. A predicted class with no training rows falls back
    to the k-th neighbour in the whole bank (the ``knn`` score).
    """

    name = "knn-class"
    fitted = ("bank", "labels")
    needs_features = True

    def __init__(self, k: int = 10) -> None:
        self.k = positive_option(self.name, "k", k, integer=True)
        self.bank: OptTensor = None
        self.labels: OptTensor = None

    def _fit(self, logits: Tensor, features: OptTensor, labels: OptTensor, weight: OptTensor, bias: OptTensor) -> None:
        x, y = _seen_rows(self.name, features, labels, logits.shape[0], need_labels=True, float64=False)
        assert y is not None
        self.bank, self.labels = _unit_float32(x), y

    def _confidence(self, logits: Tensor, features: OptTensor, k: int | None = None) -> Tensor:
        assert features is not None and self.bank is not None and self.labels is not None
        _check_dim(self.name, features, self.bank.shape[1])
        z = _unit(features.detach().cpu().float())
        # group the query rows by predicted class, and find each class's bank rows once
        pred = logits.detach().cpu().argmax(dim=1)
        rows_by_pred = torch.argsort(pred, stable=True)
        classes, counts = torch.unique_consecutive(pred[rows_by_pred], return_counts=True)
        by_label = torch.argsort(self.labels, stable=True)
        sorted_labels = self.labels[by_label]
        starts = torch.searchsorted(sorted_labels, classes).tolist()
        ends = torch.searchsorted(sorted_labels, classes, right=True).tolist()
        distance = torch.empty(len(z), dtype=z.dtype)
        for rows, start, end in zip(rows_by_pred.split(counts.tolist()), starts, ends):
            bank = self.bank[by_label[start:end]] if end > start else self.bank  # unseen class: global bank
            distance[rows] = _kth_distance(z[rows], bank, k or self.k)
        return -distance

    def training_confidence(self, logits: Tensor, features: OptTensor = None) -> Tensor:
        """Leave-one-out on the bank's own rows, as :meth:`KNNScore.training_confidence`."""
        return self._confidence(logits, _check_features(self.name, features, logits.shape[0]), self.k + 1).float()


class ProbeScore(Detector):
    """The decided class's logit in a logistic-regression probe on the L2-normalised features.

    A linear read-out fitted by cross-entropy alone (L-BFGS, full batch taken in blocks of rows, an L2 penalty on
    the weights) on unit features times ``scale``: the model's own head is trained with auxiliary losses, on
    unnormalised features whose norm varies between images, and its max logit mixes "how typical of the class"
    with "how large the feature vector is". On frozen EfficientNet-Lite0 features this probe's logit ranked novel
    subclasses better than the head's max logit (docs/results/novelty-suite.md). The class scored is the one the
    logits passed to :meth:`confidence` pick (``argmax``), so at the subclass level it is the decided subclass j*.
    Fitted with torch's L-BFGS (float32, at most 100 iterations) rather than scikit-learn's LogisticRegression,
    whose float64 solver took 2-4x longer per fit on 4,000 x 1,280 features in the probe, for the same AUROC;
    a test checks both reach the same read-out.
    """

    name = "probe"
    fitted = ("weight", "bias")
    needs_features = True
    reads_blocks = True
    _PENALTY = 1.0  # scikit-learn's C = 1: the weights' squared norm over 2 N added to the mean cross-entropy

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = positive_option(self.name, "scale", scale)
        self.weight: OptTensor = None
        self.bias: OptTensor = None

    def _fit(self, logits: Tensor, features: OptTensor, labels: OptTensor, weight: OptTensor, bias: OptTensor) -> None:
        x, y = _seen_rows(self.name, features, labels, logits.shape[0], need_labels=True, float64=False)
        assert y is not None
        n_classes = logits.shape[1]
        if int(y.max()) >= n_classes:
            raise SupersubError(f"score '{self.name}': label {int(y.max())} outside the {n_classes} classes of the logits")
        # each row's factor scale / ||x|| (a float64 norm); the scaled unit rows are made a block at a time in every
        # evaluation of the loss, so the fit holds no matrix of the rows besides the caller's (a large run's rows:
        # read where they are, IndexedRows); by blocks it also ran faster than on one matrix (its temporaries)
        factors = torch.cat([(self.scale / block.double().norm(dim=1).clamp_min(1e-12)).float()
                             for block in _row_blocks(x)])

        def unit_rows() -> Iterator[Tensor]:
            for block, factor in zip(_row_blocks(x, PROBE_BLOCK), factors.split(PROBE_BLOCK)):
                yield block.float() * factor[:, None]

        if _spans_no_direction(unit_rows(), 1e-6 * self.scale):
            # identical (or all-zero) unit features: every class would get the same logit up to its bias
            raise FitError(f"score '{self.name}': the training features span 0 directions once L2-normalised; the "
                           "probe needs features that vary between images")
        w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
        n = len(y)
        penalty = 1.0 / (2 * self._PENALTY * n)
        optimiser = torch.optim.LBFGS([w, b], lr=1.0, max_iter=100, tolerance_grad=1e-5, tolerance_change=1e-9,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            """The mean cross-entropy plus the penalty; its gradient accumulated a block of rows at a time."""
            optimiser.zero_grad()
            regulariser = penalty * (w * w).sum()
            regulariser.backward()
            loss = float(regulariser.detach())
            for z, y_block in zip(unit_rows(), y.split(PROBE_BLOCK)):
                part = torch.nn.functional.cross_entropy(z @ w.T + b, y_block, reduction="sum") / n
                part.backward()
                loss += float(part.detach())
            return torch.tensor(loss)

        with torch.enable_grad():
            optimiser.step(closure)
        self.weight, self.bias = w.detach(), b.detach()

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        assert features is not None and self.weight is not None and self.bias is not None
        _check_dim(self.name, features, self.weight.shape[1])
        z = _unit(features.detach().cpu().float()) * self.scale
        decided = logits.detach().cpu().argmax(dim=1)
        return (z * self.weight[decided]).sum(dim=1) + self.bias[decided]


def _sim_to_confidence(cosine: Tensor) -> Tensor:
    """kNN's confidence, ``-||z - z_(k)||``, from the cosine similarity of unit rows."""
    return -torch.sqrt(torch.clamp(2 - 2 * cosine.float(), min=0))


def _kth_distance(z: Tensor, bank: Tensor, k: int) -> Tensor:
    """Euclidean distance of each unit row of ``z`` to its k-th nearest unit row of ``bank`` (k capped by the
    bank size), by pytorch-ood's ``KNN`` on float64 rows (its scikit-learn index is rebuilt from the bank)."""
    knn = KNN(None, k=min(k, bank.shape[0]), normalize=False)  # the rows are unit vectors already
    knn.fit_features(bank.double(), torch.zeros(bank.shape[0], dtype=torch.long))
    return knn.predict_features(z.double()).float().cpu()


class ViMScore(Detector):
    """Virtual-logit matching: ``logsumexp(logits) - alpha * ||x^{P-perp}||``.

    Hand-written: pytorch-ood's ``ViM`` runs in float32 and needs the head's W and b (here optional).

    Wang et al., "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022. Features are
    centred at the origin ``u = -pinv(W) b`` of the final linear layer (logits = W f + b); ``P`` is the
    span of the top ``dim`` eigenvectors of the centred training features' second-moment matrix and
    ``x^{P-perp}`` the residual outside it; ``alpha = mean max-logit / mean residual norm`` on the
    training data, so the virtual logit is on the scale of the real ones. Same math as pytorch-ood's
    ``ViM``, implemented here because that class recomputes logits from W and b and needs them up front.

    Pass the level's head as ``fit(..., head_weight=W (C, D), head_bias=b (C,))``. Without them W and b
    are recovered by least squares from the training logits and features, which is exact when the
    logits are an affine function of the features and there are more training rows than dimensions.
    ``dim`` defaults to the reference code's rule (1000 if D >= 2048, 512 if D >= 768, else D // 2)
    and is capped at ``N - 1`` and below the numerical rank of the centred training features (one log line
    says so), so training images keep a non-zero residual. Fitting raises :class:`FitError` when the features
    span fewer than 2 directions.
    """

    name = "vim"
    fitted = ("origin", "basis", "alpha")
    needs_features = True
    reads_blocks = True

    def __init__(self, dim: int | None = None) -> None:
        self.dim = None if dim is None else positive_option(self.name, "dim", dim, integer=True)
        self.origin: OptTensor = None
        self.basis: OptTensor = None
        self.alpha: OptTensor = None

    def _fit(self, logits: Tensor, features: OptTensor, labels: OptTensor, weight: OptTensor, bias: OptTensor) -> None:
        # every pass over the training rows goes a block at a time in float64 (no float64 copy of the matrix, no
        # (N, D) temporaries): a large run's fit holds its input rows and D x D matrices only
        x, _ = _seen_rows(self.name, features, labels, logits.shape[0], need_labels=False, float64=False)
        seen_logits = logits.detach().cpu().double()
        if labels is not None:
            seen_logits = seen_logits[labels.detach().cpu() >= 0]
        weight, bias = self._head(weight, bias, x, seen_logits)
        origin = -(torch.linalg.pinv(weight) @ bias)
        dim = self._principal_dim(x.shape)
        second_moment = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        for block in _centred_blocks(x, origin):
            second_moment += block.T @ block
        # the subspace must leave a residual: rank-deficient features have fewer directions than columns, so the
        # width rule alone can cover them all (issue 28: two frozen copies of resnet18 gave 1,024 columns of rank 512)
        _, vectors, rank = _spectrum(second_moment / len(x))
        if dim >= rank:
            if rank < 2:
                raise FitError(f"score '{self.name}': the training features span {rank} direction(s); ViM needs "
                               "at least 2")
            log.info("vim: principal dimension %d capped at %d (the features' numerical rank is %d of %d columns)",
                     dim, rank - 1, rank, x.shape[1])
            dim = rank - 1
        basis = vectors[:, -dim:]
        residual = torch.cat([_residual_norm(block, basis) for block in _centred_blocks(x, origin)]).mean()
        norm = torch.cat([block.norm(dim=1) for block in _centred_blocks(x, origin)]).mean()
        if not residual > 1e-12 * norm:
            raise FitError(f"score '{self.name}': training features have no residual outside {dim} dimensions")
        self.dim, self.origin, self.basis = dim, origin, basis
        self.alpha = seen_logits.max(dim=1).values.mean() / residual

    def _head(
        self, weight: OptTensor, bias: OptTensor, x: Tensor, logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The given head (checked), or the least-squares affine map from features to logits."""
        n_classes, n_dim = logits.shape[1], x.shape[1]
        if (weight is None) != (bias is None):
            raise SupersubError(f"score '{self.name}': pass both head_weight and head_bias, or neither")
        if weight is None or bias is None:
            solution = _least_squares(x, logits)
            return solution[:-1].T, solution[-1]
        if tuple(weight.shape) != (n_classes, n_dim) or tuple(bias.shape) != (n_classes,):
            raise SupersubError(
                f"score '{self.name}': head_weight {tuple(weight.shape)} / head_bias {tuple(bias.shape)} do not "
                f"match {n_classes} logits and {n_dim} features"
            )
        return weight.detach().cpu().double(), bias.detach().cpu().double()

    def _principal_dim(self, shape: torch.Size) -> int:
        n, n_dim = shape
        if self.dim is not None and self.dim >= n_dim:
            raise FitError(f"score '{self.name}': dim must be below the feature dimension {n_dim}, got {self.dim}")
        default = 1000 if n_dim >= 2048 else 512 if n_dim >= 768 else n_dim // 2
        dim = min(self.dim or default, n - 1)
        if dim < 1:
            raise FitError(f"score '{self.name}': needs at least 2 feature dimensions, got {n_dim}")
        return dim

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        assert features is not None and self.origin is not None and self.basis is not None
        _check_dim(self.name, features, self.origin.shape[0])
        residual = _residual_norm(features.detach().cpu().double() - self.origin, self.basis)
        return logits.detach().cpu().double().logsumexp(dim=1) - self.alpha * residual


def _residual_norm(centered: Tensor, basis: Tensor) -> Tensor:
    """Norm of each row after removing its projection on the orthonormal columns of ``basis`` (the exported graph
    traces this: no Python-side blocks here)."""
    return (centered - (centered @ basis) @ basis.T).norm(dim=1)


def _centred_blocks(x: Rows, origin: Tensor) -> Iterator[Tensor]:
    """``x.double() - origin`` a block of :data:`UNIT_CHUNK` rows at a time (the whole matrix in float64 would be
    twice a float32 input's size, once more for each temporary of a pass over it)."""
    for block in _row_blocks(x):
        yield block.double() - origin


LSQ_BLOCK = 1024  # rows a time in the least-squares head's QR updates (2.6 MB in float64 at 320 columns)


def _least_squares(x: Rows, targets: Tensor) -> Tensor:
    """``pinv([x, 1]) @ targets`` (the minimum-norm least-squares solution, ``(D + 1, C)``) without ``[x, 1]``:
    its R factor is updated a block of rows at a time (``[R; block] = Q R'``, the targets rotated with it), and
    ``pinv([x, 1]) = pinv(R) Q^T`` with the same cut-off on the same singular values.

    Why: the pseudo-inverse of the whole matrix held three ``N x (D + 1)`` float64 matrices (its SVD's), the
    largest memory of a large run's calibration; the normal equations would hold none but square the
    condition number (features on a line through the origin then centred off it)."""
    n, n_dim = len(x), x.shape[1] + 1
    r = torch.zeros(0, n_dim, dtype=torch.float64)
    rotated = torch.zeros(0, targets.shape[1], dtype=torch.float64)
    for block, target in zip(_row_blocks(x, LSQ_BLOCK), targets.split(LSQ_BLOCK)):
        a = torch.cat([block.double(), torch.ones(len(block), 1, dtype=torch.float64)], 1)
        q, r = torch.linalg.qr(torch.cat([r, a]))
        rotated = q.T @ torch.cat([rotated, target.double()])
    return torch.linalg.pinv(r, rtol=torch.finfo(torch.float64).eps * max(n, n_dim)) @ rotated


def _check_dim(score: str, features: Tensor, n_dim: int) -> None:
    if features.shape[1] != n_dim:
        raise SupersubError(f"score '{score}': features have {features.shape[1]} dimensions, fitted on {n_dim}")


# ---- averages of scores -----------------------------------------------------------------------------


class AveragedScore(Detector):
    """The mean of two or more scores, each standardised by its own training confidences: ``maxlogit,knn-class``.

    Scores on different scales (logits, cosine distances) cannot be added as they are; each part's confidence is
    turned into a z-score with the mean and spread of its confidences on the training rows (neighbour scores
    leave each row out, :meth:`Detector.training_confidence`), then the z-scores are averaged. A z-average rather
    than a rank average: ranks saturate beyond the training range, where novel images lie, and would tie them.
    Options go to the parts that take them (``k`` to knn / knn-class).
    """

    name = "average"
    needs_features = True

    def __init__(self, parts: list[str], **options: Any) -> None:
        self.parts = [create_detector(p, **options_for_detector(p, options)) for p in parts]
        self.means: OptTensor = None
        self.stds: OptTensor = None

    @property
    def label(self) -> str:
        return AVERAGE_SEPARATOR.join(p.name for p in self.parts)

    @property
    def is_fitted(self) -> bool:
        return self.means is not None and all(p.is_fitted for p in self.parts)

    def _fit(self, logits: Tensor, features: OptTensor, labels: OptTensor, weight: OptTensor, bias: OptTensor) -> None:
        stats = []
        for part in self.parts:
            part.fit(logits, features, labels, head_weight=weight, head_bias=bias)
            keep = labels >= 0 if labels is not None else slice(None)
            c = part.training_confidence(logits[keep], None if features is None else features[keep]).double()
            stats.append((c.mean(), c.std().clamp_min(1e-12)))
        self.means = torch.stack([m for m, _ in stats])
        self.stds = torch.stack([s for _, s in stats])

    def _confidence(self, logits: Tensor, features: OptTensor) -> Tensor:
        assert self.means is not None and self.stds is not None
        z = [(p.confidence(logits, features).double() - m) / s for p, m, s in zip(self.parts, self.means, self.stds)]
        return torch.stack(z).mean(dim=0)

    def state_dict(self) -> dict[str, Any]:
        if not self.is_fitted:
            raise SupersubError(f"score '{self.label}': cannot save a detector that was never fitted")
        assert self.means is not None and self.stds is not None
        return {"name": self.name, "parts": [p.state_dict() for p in self.parts], "means": self.means,
                "stds": self.stds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AveragedScore:
        parts = state.get("parts") if isinstance(state, dict) else None
        if not isinstance(parts, list) or not all(isinstance(x, Tensor) for x in (state.get("means"), state.get("stds"))):
            raise SupersubError("detector state for an averaged score: needs 'parts', 'means' and 'stds'")
        detector = cls.__new__(cls)
        detector.parts = [detector_from_state(p) for p in parts]
        detector.means, detector.stds = state["means"], state["stds"]
        return detector


# ---- registry -------------------------------------------------------------------------------------

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        MSPScore, MaxLogitScore, EnergyScore, EntropyScore, GENScore, MahalanobisScore, KNNScore,
        KNNClassScore, ViMScore, ProbeScore, MutualInformationScore, ExpectedEntropyScore,
    )
}


def _detector_class(name: str) -> type[Detector]:
    check_options(name, {})  # an unknown name is a one-line error
    return DETECTORS[name]


def create_detector(name: str, **options: Any) -> Detector:
    """A new detector by CLI name (``--score``), e.g. ``create_detector("knn", k=50)``; ``"maxlogit,knn-class"`` is
    an :class:`AveragedScore` of both."""
    if AVERAGE_SEPARATOR in name:
        return AveragedScore(average_parts(name), **check_options(name, options))
    return _detector_class(name)(**check_options(name, options))


def detector_from_state(state: dict[str, Any]) -> Detector:
    """Rebuild any detector from its :meth:`Detector.state_dict` (dispatches on ``state['name']``)."""
    if not isinstance(state, dict) or not isinstance(state.get("name"), str):
        raise SupersubError("detector state: not a dictionary with a score 'name'")
    if state["name"] == AveragedScore.name:
        return AveragedScore.from_state(state)
    return _detector_class(state["name"]).from_state(state)
