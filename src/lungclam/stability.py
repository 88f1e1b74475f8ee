"""Whether a clustering reproduces: resampling criteria for K, label alignment, confidence.

All functions work on a feature matrix ``x`` (n samples x p features), the pretrained
autoencoder embedding of the subjects, and on integer label vectors (n,) in [0, K).
A K is trustworthy when clusterings of perturbed copies of the cohort agree with each
other; these criteria measure that directly, where the silhouette and the gap statistic
only score one clustering's geometry:

- **resampling stability** (Ben-Hur, Elisseeff & Guyon 2002, "A stability based method for
  discovering structure in clustered data", PSB 7:6-17; Lange, Roth, Braun & Buhmann 2004,
  "Stability-based validation of clustering solutions", Neural Computation 16:1299-1323):
  k-means on R seeded subsamples; each replica's centroids label every sample (nearest
  centroid, Lange et al.'s transfer by a classifier); the score is the mean adjusted Rand
  index over pairs of replicas. ARI is corrected for chance, so scores are comparable
  across K without Lange et al.'s random-labelling normalisation.
- **prediction strength** (Tibshirani & Walther 2005, "Cluster validation by prediction
  strength", JCGS 14:511-528): split the samples in two halves; cluster both; for each
  cluster of the test half, the share of its pairs that the training half's centroids also
  put together; the minimum over test clusters, averaged over splits.
- **consensus clustering** (Monti, Tamayo, Mesirov & Golub 2003, "Consensus clustering",
  Machine Learning 52:91-118) summarised by the proportion of ambiguous clustering, PAC
  (Senbabaoglu, Michailidis & Li 2014, "Critical limitations of consensus clustering in
  class discovery", Sci. Rep. 4:6207): the share of sample pairs whose co-clustering rate
  over the subsamples that hold both lies strictly between 0.1 and 0.9.

Every random step is seeded; k-means runs single-threaded (see :mod:`lungclam.kselect`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from lungclam.kmeans import fit_kmeans, single_threaded

#: Co-clustering rates inside (low, high) count as ambiguous in PAC (Senbabaoglu et al.).
PAC_INTERVAL = (0.1, 0.9)


def _kmeans_fit(x: np.ndarray, k: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels (n,) and centres (k, p) of ``x`` (n, p), without argument checks."""
    model = fit_kmeans(x, k, seed, n_init)
    return model.labels_.astype(np.int64), np.asarray(model.cluster_centers_, dtype=float)


def nearest_centre(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index (n,) of the nearest row of ``centres`` (k, p) for each row of ``x`` (n, p)."""
    d2 = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return np.argmin(d2, axis=1).astype(np.int64)


def subsample_indices(n: int, n_replicas: int, fraction: float, seed: int) -> list[np.ndarray]:
    """``n_replicas`` sorted index sets, each ``round(fraction * n)`` of ``range(n)`` drawn
    without replacement (seeded). Subsamples rather than bootstraps: duplicated points
    would form spurious tight clusters for k-means."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    size = max(2, int(round(fraction * n)))
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(n_replicas)]


@dataclass
class ReplicaClusterings:
    """k-means of one K on subsamples of ``x`` (see :func:`replicate_kmeans`).

    subsets: the R index sets. own: (R, n) labels from each replica's own k-means, -1 for
    samples outside its subset. transferred: (R, n) labels of every sample by the replica's
    nearest centroid.
    """

    k: int
    subsets: list[np.ndarray]
    own: np.ndarray
    transferred: np.ndarray


def replicate_kmeans(
    x: np.ndarray, k: int, subsets: Sequence[np.ndarray], seed: int = 0, n_init: int = 10
) -> ReplicaClusterings:
    """k-means with ``k`` clusters on each subset of the rows of ``x`` (n, p); replica r is
    seeded with ``seed + r``."""
    n = x.shape[0]
    own = np.full((len(subsets), n), -1, dtype=np.int64)
    transferred = np.empty((len(subsets), n), dtype=np.int64)
    for r, idx in enumerate(subsets):
        labels, centres = _kmeans_fit(x[idx], k, seed + r, n_init)
        own[r, idx] = labels
        transferred[r] = nearest_centre(x, centres)
    return ReplicaClusterings(k=k, subsets=list(subsets), own=own, transferred=transferred)


def mean_pairwise_ari(labels: np.ndarray) -> tuple[float, float]:
    """Mean and sd of the ARI over all pairs of rows of ``labels`` (R, n); NaN if R < 2."""
    r = labels.shape[0]
    scores = [adjusted_rand_score(labels[i], labels[j]) for i in range(r) for j in range(i + 1, r)]
    if not scores:
        return float("nan"), float("nan")
    return float(np.mean(scores)), float(np.std(scores))


def consensus_matrix(replicas: ReplicaClusterings) -> np.ndarray:
    """Consensus matrix (n, n) of Monti et al. (2003): for each pair, the share of the
    subsamples holding both in which their own k-means put them together; NaN for a pair
    never sampled together; the diagonal is 1."""
    own = replicas.own
    sampled = (own >= 0).astype(float)
    both = sampled.T @ sampled
    together = np.zeros_like(both)
    for c in range(replicas.k):
        member = (own == c).astype(float)
        together += member.T @ member
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(both > 0, together / np.where(both > 0, both, 1.0), np.nan)
    np.fill_diagonal(m, 1.0)
    return m


def pac(consensus: np.ndarray, interval: tuple[float, float] = PAC_INTERVAL) -> float:
    """Proportion of ambiguous clustering: share of pairs i < j (sampled together at least
    once) whose consensus lies strictly inside ``interval`` (Senbabaoglu et al. 2014)."""
    upper = consensus[np.triu_indices_from(consensus, k=1)]
    upper = upper[np.isfinite(upper)]
    if upper.size == 0:
        return float("nan")
    low, high = interval
    return float(np.mean((upper > low) & (upper < high)))


def prediction_strength(
    x: np.ndarray, k: int, n_splits: int = 10, seed: int = 0, n_init: int = 10
) -> tuple[float, float]:
    """Prediction strength of ``k`` clusters on ``x`` (n, p) (Tibshirani & Walther 2005).

    Each of ``n_splits`` seeded random halvings is used both ways (each half once as the
    test set, as in the paper's two-fold cross-validation). For test clusters A_1..A_k
    (k-means of the test half) and the training half's centroids C: ps = min over j with
    |A_j| >= 2 of the share of pairs in A_j that C assigns to one cluster. Returns the
    mean and sd of ps over the 2 * n_splits folds; (1, 0) for k = 1.
    """
    n = x.shape[0]
    if k == 1:
        return 1.0, 0.0
    rng = np.random.default_rng(seed)
    scores = []
    for s in range(n_splits):
        order = rng.permutation(n)
        halves = (order[: n // 2], order[n // 2 :])
        for test, train in (halves, halves[::-1]):
            if len(test) < k or len(train) < k:
                continue
            test_labels, _ = _kmeans_fit(x[test], k, seed + s, n_init)
            _, train_centres = _kmeans_fit(x[train], k, seed + s, n_init)
            scores.append(_prediction_strength_fold(test_labels, nearest_centre(x[test], train_centres), k))
    finite = [v for v in scores if np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite))


def _prediction_strength_fold(test_labels: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """min over test clusters (of 2+ members) of the share of their pairs co-predicted."""
    shares = []
    for c in range(k):
        members = predicted[test_labels == c]
        m = len(members)
        if m < 2:
            continue
        counts = np.bincount(members)
        shares.append(float((counts * (counts - 1)).sum()) / (m * (m - 1)))
    return min(shares) if shares else float("nan")


def align_labels(reference: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``labels`` (n,) renamed to agree best with ``reference`` (n,).

    The renaming maximises the number of samples with equal labels (Hungarian algorithm on
    the contingency table). Labels without a partner (when ``labels`` has more clusters than
    ``reference``) get new numbers above every reference label, in order of their size.
    """
    ref = np.asarray(reference, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    ref_ids, lab_ids = np.unique(ref), np.unique(lab)
    table = np.array([[np.sum((lab == a) & (ref == b)) for b in ref_ids] for a in lab_ids])
    rows, cols = linear_sum_assignment(-table)
    mapping = {int(lab_ids[r]): int(ref_ids[c]) for r, c in zip(rows, cols)}
    unmatched = [a for a in lab_ids if int(a) not in mapping]
    unmatched.sort(key=lambda a: -np.sum(lab == a))
    start = int(ref_ids.max()) + 1 if ref_ids.size else 0
    for i, a in enumerate(unmatched):
        mapping[int(a)] = start + i
    return np.array([mapping[int(v)] for v in lab], dtype=np.int64)


def confidence(reference: np.ndarray, replica_labels: np.ndarray) -> np.ndarray:
    """Per sample (n,), the share of replicas (rows of ``replica_labels``, (R, n)) whose
    labels, aligned to ``reference`` (n,) with :func:`align_labels`, agree with it."""
    aligned = np.array([align_labels(reference, row) for row in replica_labels])
    return (aligned == np.asarray(reference)[None, :]).mean(axis=0)


@dataclass
class StabilityRow:
    """Resampling criteria for one K (see :func:`stability_criteria`)."""

    k: int
    stability: float
    stability_sd: float
    prediction_strength: float
    prediction_strength_sd: float
    pac: float


@single_threaded
def stability_criteria(
    x: np.ndarray, k: int, subsets: Sequence[np.ndarray], seed: int = 0, n_init: int = 10, n_splits: int = 10
) -> tuple[StabilityRow, ReplicaClusterings | None]:
    """Resampling stability, prediction strength and PAC of ``k`` clusters on ``x`` (n, p);
    the replicas are returned too (their transferred labels give :func:`confidence`).

    A ``k`` larger than a subsample gives NaN for every criterion (and no replicas).
    """
    if k > min(len(idx) for idx in subsets):
        nan = float("nan")
        return StabilityRow(
            k=k, stability=nan, stability_sd=nan, prediction_strength=nan, prediction_strength_sd=nan, pac=nan
        ), None
    replicas = replicate_kmeans(x, k, subsets, seed, n_init)
    mean_ari, sd_ari = mean_pairwise_ari(replicas.transferred)
    ps, ps_sd = prediction_strength(x, k, n_splits, seed, n_init)
    row = StabilityRow(
        k=k,
        stability=mean_ari,
        stability_sd=sd_ari,
        prediction_strength=ps,
        prediction_strength_sd=ps_sd,
        pac=pac(consensus_matrix(replicas)),
    )
    return row, replicas


@single_threaded
def replica_confidence(x: np.ndarray, labels: np.ndarray, k: int, resampling, seed: int = 0) -> np.ndarray:
    """Each sample's confidence (n,) in ``labels`` (n,): the share of k-means clusterings
    (``k`` clusters) of seeded subsamples of ``x`` (n, p) that, aligned to ``labels``, agree.

    The subsamples are those of :func:`lungclam.kselect.select_k` with the same ``seed`` and
    ``resampling`` sizes (a :class:`lungclam.kselect.Resampling`), so this is the
    stability column's replicas at this K.
    """
    subsets = subsample_indices(x.shape[0], resampling.n_replicas, resampling.fraction, seed)
    replicas = replicate_kmeans(np.asarray(x, dtype=float), k, subsets, seed, resampling.n_init)
    return confidence(np.asarray(labels), replicas.transferred)
