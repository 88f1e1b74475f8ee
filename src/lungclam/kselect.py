"""Choosing the number of clusters K on a feature matrix (n samples x p features).

Used on the autoencoder features of the CT scans (n ~ 30-300 subjects, p ~ 60 features).
For every candidate K, :func:`select_k` reports

- the silhouette of plain k-means (Rousseeuw 1987, "Silhouettes: a graphical aid to the
  interpretation and validation of cluster analysis", J. Comput. Appl. Math. 20:53-65);
- the silhouette of sparse k-means (Witten & Tibshirani 2010, "A framework for feature
  selection in clustering", JASA 105:713-726), whose L1 bound is chosen for that K by the
  permutation gap of the same paper, together with the number of features it keeps;
- the gap statistic (Tibshirani, Walther & Hastie 2001, "Estimating the number of clusters
  in a data set via the gap statistic", JRSS B 63:411-423).

Every random step takes a seed (an int or a numpy Generator built from one), so the same
inputs and seed give the same output. k-means runs single-threaded (OpenMP limited to one
thread): on matrices this small that is faster than threading and keeps runs repeatable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import silhouette_score

from lungclam.kmeans import as_matrix as _as_matrix
from lungclam.kmeans import check_k as _check_k
from lungclam.kmeans import fit_kmeans as _fit_kmeans
from lungclam.kmeans import single_threaded as _single_threaded
from lungclam.runtime import forked_pool
from lungclam.splittest import no_split_is_real, split_is_real, weakest_split_p
from lungclam.stability import StabilityRow, stability_criteria, subsample_indices

SILHOUETTE_METHODS = ("silhouette_kmeans", "silhouette_sparse_kmeans")
RESAMPLING_METHODS = ("stability", "prediction_strength", "pac")
#: K-choice rules that read another criterion's column: the rule -> the column.
DERIVED_METHODS = {"most_stable": "stability", "stable_split": "stability"}
METHODS = (*SILHOUETTE_METHODS, "gap", *RESAMPLING_METHODS, *DERIVED_METHODS)
L1_RULES = ("one_sd", "max")
TABLE_COLUMNS = (
    "k",
    *SILHOUETTE_METHODS,
    "l1_bound",
    "n_features_used",
    "gap",
    "gap_sd",
    "stability",
    "stability_sd",
    "prediction_strength",
    "prediction_strength_sd",
    "pac",
    "smallest_cluster",
    "split_p",
)
RESAMPLING_COLUMNS = ("stability", "stability_sd", "prediction_strength", "prediction_strength_sd", "pac")
#: The columns that decide whether the resampling rules consider a K at all.
_CHECK_COLUMNS = ("smallest_cluster", "split_p")
#: Rules that only consider a K whose smallest k-means cluster holds at least
#: ``thresholds["min_cluster_share"]`` of the subjects and whose weakest split has a
#: p-value of at most ``thresholds["max_split_p"]`` (see :func:`choose`).
CHECKED_METHODS = (*RESAMPLING_METHODS, *DERIVED_METHODS)
#: Defaults of the rules that turn a resampling criterion into a K (see :func:`choose`);
#: ``most_stable`` is a tolerance below the largest stability, not a level;
#: ``min_cluster_share`` is the smallest cluster (share of the subjects) a K may have;
#: ``max_split_p`` the largest p-value its weakest split may have (1.0: no split test).
THRESHOLDS = {
    "stability": 0.9,
    "prediction_strength": 0.8,
    "pac": 0.05,
    "most_stable": 0.03,
    "min_cluster_share": 0.1,
    "max_split_p": 0.05,
}
_TIE = 1e-9
_BISECTION_STEPS = 100


@dataclass(frozen=True)
class Resampling:
    """Sizes of the resampling criteria (:mod:`lungclam.stability`), and the split test's null.

    n_replicas: subsamples for the stability and PAC; fraction: share of the samples in
    each; n_splits: random halvings for the prediction strength (each used both ways);
    n_init: k-means restarts per replica; split_null: the null group of the split test
    (``split_p``, :mod:`lungclam.splittest`), "gaussian" or "uniform"; split_statistic:
    the cluster index it tests, "total" (over all features), "axis" (along the split's
    own axis), "both" (the smaller p-value, doubled) or "auto" (along the axis where the
    pair has more subjects than features, else over all features).
    """

    n_replicas: int = 30
    fraction: float = 0.8
    n_splits: int = 10
    n_init: int = 10
    split_null: str = "uniform"
    split_statistic: str = "auto"


# ---------------------------------------------------------------------------- helpers


def _check_l1_bound(l1_bound: float, p: int) -> float:
    """``l1_bound`` as a float in [1, sqrt(p)]; ValueError otherwise."""
    top = float(np.sqrt(p))
    if not np.isfinite(l1_bound) or not 1.0 <= l1_bound <= top * (1 + 1e-12):
        raise ValueError(f"l1_bound must lie in [1, sqrt(p)] = [1, {top:.4g}] for p={p} features, got {l1_bound}")
    return float(min(l1_bound, top))


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Cluster means (k, p) of ``x`` (n, p); rows of empty clusters are NaN."""
    centres = np.full((k, x.shape[1]), np.nan)
    for c in range(k):
        members = labels == c
        if members.any():
            centres[c] = x[members].mean(axis=0)
    return centres


def _within_ss(x: np.ndarray, labels: np.ndarray) -> float:
    """Pooled within-cluster sum of squares W = sum_c sum_{i in c} ||x_i - mean_c||^2."""
    total = 0.0
    for c in np.unique(labels):
        block = x[labels == c]
        total += float(((block - block.mean(axis=0)) ** 2).sum())
    return total


def _between_ss(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-feature between-cluster sum of squares (p,): a_j = sum_c n_c (mean_cj - mean_j)^2.

    This equals total SS minus within-cluster SS per feature, but cannot go negative by
    rounding.
    """
    grand = x.mean(axis=0)
    a = np.zeros(x.shape[1])
    for c in np.unique(labels):
        block = x[labels == c]
        a += block.shape[0] * (block.mean(axis=0) - grand) ** 2
    return a


# ---------------------------------------------------------------------------- sparse k-means


@dataclass
class SparseKMeansResult:
    """Result of :func:`sparse_kmeans`.

    labels: (n,) int cluster labels. weights: (p,) feature weights, non-negative, with
    ||w||_2 = 1 and ||w||_1 <= l1_bound. objective: sum_j w_j * b_j, the weighted
    between-cluster sum of squares of ``labels``.
    """

    labels: np.ndarray
    weights: np.ndarray
    l1_bound: float
    objective: float


def _soft_threshold(a: np.ndarray, delta: float) -> np.ndarray:
    """S(a, delta) = sign(a) * max(|a| - delta, 0), elementwise on (p,)."""
    return np.sign(a) * np.maximum(np.abs(a) - delta, 0.0)


def _unit_l1(a: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    """w = S(a, delta) / ||S(a, delta)||_2 and its L1 norm; (zeros, 0.0) if S is zero."""
    s = _soft_threshold(a, delta)
    norm = float(np.linalg.norm(s))
    if norm == 0.0:
        return s, 0.0
    w = s / norm
    return w, float(np.abs(w).sum())


def _update_weights(a: np.ndarray, l1_bound: float) -> np.ndarray:
    """Weights (p,) maximising w'a subject to ||w||_2 <= 1, ||w||_1 <= l1_bound, w >= 0.

    The solution is S(a+, delta)/||S(a+, delta)||_2 with delta = 0 if that already meets the
    L1 bound, else the delta found by bisection where the L1 norm meets the bound (Witten &
    Tibshirani 2010). The upper end of the bisection is kept, so the bound always holds. If
    only ties at the maximum are left, all weight goes to the first.
    """
    a = np.maximum(a, 0.0)
    if not (a > 0).any():
        raise ValueError("no feature separates the clusters (between-cluster sum of squares is zero)")
    w, l1 = _unit_l1(a, 0.0)
    if l1 <= l1_bound:
        return w
    low, high = 0.0, float(a.max())
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        if _unit_l1(a, mid)[1] > l1_bound:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * float(a.max()):
            break
    w, l1 = _unit_l1(a, high)
    if l1 == 0.0:
        w = np.zeros_like(a)
        w[int(np.argmax(a))] = 1.0
    return w


def _weighted_labels(
    x: np.ndarray, weights: np.ndarray, k: int, seed: int, n_init: int, previous: np.ndarray | None
) -> np.ndarray:
    """k-means labels (n,) on ``x * sqrt(weights)``.

    Without ``previous`` labels this runs ``n_init`` restarts; with them it makes one run
    started from the previous clusters' means in the newly weighted space (as the authors'
    R package sparcl does), falling back to restarts if a previous cluster is empty.
    """
    scaled = x * np.sqrt(weights)
    init = None if previous is None else _centroids(scaled, previous, k)
    if init is not None and np.isnan(init).any():
        init = None
    return _fit_kmeans(scaled, k, seed, n_init, init).labels_.astype(np.int64)


def _sparse_kmeans(
    x: np.ndarray, k: int, bound: float, seed: int, n_init: int, max_iter: int, tol: float
) -> SparseKMeansResult:
    """Sparse k-means on a checked ``x`` (n, p) and bound; see :func:`sparse_kmeans`."""
    weights = np.full(x.shape[1], 1.0 / np.sqrt(x.shape[1]))
    labels: np.ndarray | None = None
    for _ in range(max_iter):
        labels = _weighted_labels(x, weights, k, seed, n_init, labels)
        new = _update_weights(_between_ss(x, labels), bound)
        change = np.abs(new - weights).sum() / np.abs(weights).sum()
        weights = new
        if change < tol:
            break
    assert labels is not None
    objective = float(weights @ _between_ss(x, labels))
    return SparseKMeansResult(labels=labels, weights=weights, l1_bound=bound, objective=objective)


@_single_threaded
def sparse_kmeans(
    x: np.ndarray,
    k: int,
    l1_bound: float,
    seed: int = 0,
    n_init: int = 20,
    max_iter: int = 20,
    tol: float = 1e-4,
) -> SparseKMeansResult:
    """Sparse k-means of Witten & Tibshirani (2010), JASA 105:713-726.

    Maximises the weighted between-cluster sum of squares sum_j w_j b_j over clusters and
    feature weights w (p,) with ||w||_2 <= 1, ||w||_1 <= l1_bound, w >= 0. Starting from
    w = 1/sqrt(p), it alternates (a) k-means on the features scaled by sqrt(w) and (b) the
    closed-form weight update for fixed clusters (soft-thresholding, :func:`_update_weights`),
    until sum|w_new - w_old| / sum|w_old| < tol or ``max_iter`` rounds.

    x: (n, p) float, usually standardised; k in [2, n - 1]; l1_bound in [1, sqrt(p)]
    (1 keeps a single feature; sqrt(p) leaves the weights unconstrained
    beyond ||w||_2 = 1, i.e. w proportional to the between-cluster sums of squares). ValueError otherwise.
    """
    arr = _as_matrix(x)
    n, p = arr.shape
    k = _check_k(k, 2, n - 1)
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    return _sparse_kmeans(arr, k, _check_l1_bound(l1_bound, p), seed, n_init, max_iter, tol)


def _default_bounds(p: int, count: int = 10) -> np.ndarray:
    """``count`` L1 bounds spaced geometrically from 1.1 to sqrt(p) (fewer if p is tiny)."""
    top = float(np.sqrt(p))
    low = min(1.1, top)
    if top - low < 1e-9:
        return np.array([top])
    return np.geomspace(low, top, count)


def _permute_columns(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``x`` (n, p) with every column shuffled independently (breaks clusters)."""
    return rng.permuted(x, axis=0)


def _pick_bound(table: pd.DataFrame, rule: str) -> float:
    """The bound chosen from a gap table: 'max' = argmax of the gap; 'one_sd' = the smallest
    bound whose gap is at least (maximum gap - sd of the gap at that maximum)."""
    valid = table.dropna(subset=["gap"])
    if valid.empty:
        raise ValueError("the permutation gap is undefined for every L1 bound")
    best = valid["gap"].idxmax()
    if rule == "max":
        return float(valid.loc[best, "l1_bound"])
    sd = valid.loc[best, "gap_sd"]
    threshold = valid.loc[best, "gap"] - (0.0 if np.isnan(sd) else sd)
    return float(valid.loc[valid["gap"] >= threshold, "l1_bound"].min())


def _log_objective(value: float) -> float:
    """log of a sparse k-means objective; NaN when it is not positive."""
    return float(np.log(value)) if value > 0 else float("nan")


def _permutation_gap(
    x: np.ndarray, k: int, bounds: np.ndarray, n_permutations: int, seed: int, n_init: int, rule: str
) -> tuple[float, pd.DataFrame, dict[float, SparseKMeansResult]]:
    """Chosen bound, gap table and the sparse k-means result on ``x`` for every bound."""
    rng = np.random.default_rng(seed)
    permuted = [_permute_columns(x, rng) for _ in range(n_permutations)]
    results: dict[float, SparseKMeansResult] = {}
    rows = []
    for bound in bounds:
        fit = _sparse_kmeans(x, k, bound, seed, n_init, 20, 1e-4)
        results[float(bound)] = fit
        null = np.array(
            [_log_objective(_sparse_kmeans(xb, k, bound, seed, n_init, 20, 1e-4).objective) for xb in permuted]
        )
        rows.append(
            {
                "l1_bound": float(bound),
                "gap": _log_objective(fit.objective) - float(np.mean(null)),
                "gap_sd": float(np.std(null, ddof=1)) if n_permutations > 1 else float("nan"),
                "n_nonzero": int((fit.weights > 0).sum()),
            }
        )
    table = pd.DataFrame(rows, columns=["l1_bound", "gap", "gap_sd", "n_nonzero"])
    return _pick_bound(table, rule), table, results


@_single_threaded
def choose_l1_bound(
    x: np.ndarray,
    k: int,
    bounds: Sequence[float] | None = None,
    n_permutations: int = 20,
    seed: int = 0,
    *,
    n_init: int = 20,
    rule: str = "one_sd",
) -> tuple[float, pd.DataFrame]:
    """The sparse k-means L1 bound by the permutation gap (Witten & Tibshirani 2010).

    For each bound s: O(s) is the sparse k-means objective on ``x`` (n, p); O_b(s) the
    objective on a copy with every feature permuted independently (b = 1..n_permutations,
    the same copies for every s); gap(s) = log O(s) - mean_b log O_b(s), gap_sd = sd_b of
    log O_b(s) (ddof=1).

    Rule ``"one_sd"`` (default) picks the smallest s whose gap is within one gap_sd (taken at
    the maximum) of the largest gap, i.e. the sparsest model about as good as the best, as
    the paper suggests; ``"max"`` picks the argmax (what the R package sparcl does).
    Default bounds: 10 values spaced geometrically from 1.1 to sqrt(p).

    Returns (chosen bound, table with columns l1_bound, gap, gap_sd, n_nonzero).
    """
    arr = _as_matrix(x)
    if rule not in L1_RULES:
        raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(L1_RULES)}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    k = _check_k(k, 2, arr.shape[0] - 1)
    grid = _default_bounds(arr.shape[1]) if bounds is None else np.asarray(bounds, dtype=float)
    grid = np.array([_check_l1_bound(float(bound), arr.shape[1]) for bound in grid])
    if grid.size == 0:
        raise ValueError("bounds is empty")
    best, table, _ = _permutation_gap(arr, k, grid, n_permutations, seed, n_init, rule)
    return best, table


# ---------------------------------------------------------------------------- gap statistic


def _pca_box_reference(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A reference sample (n, p): uniform over the box spanned by ``x``'s principal
    components (Tibshirani et al. 2001, reference distribution (b)), rotated back and
    recentred."""
    centre = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - centre, full_matrices=False)
    rotated = (x - centre) @ vt.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    draw = rng.uniform(low, high, size=rotated.shape)
    return draw @ vt + centre


def _log_w(x: np.ndarray, ks: Sequence[int], seed: int, n_init: int) -> np.ndarray:
    """log W_k (len(ks),) for k-means on ``x`` (n, p); W_1 is the total sum of squares."""
    out = np.empty(len(ks))
    for i, k in enumerate(ks):
        if k == 1:
            w = _within_ss(x, np.zeros(x.shape[0], dtype=np.int64))
        else:
            w = _within_ss(x, _fit_kmeans(x, k, seed, n_init, None).labels_)
        out[i] = np.log(w) if w > 0 else np.nan
    return out


@_single_threaded
def gap_statistic(
    x: np.ndarray, ks: Sequence[int], n_references: int = 20, seed: int = 0, *, n_init: int = 20
) -> pd.DataFrame:
    """The gap statistic of Tibshirani, Walther & Hastie (2001), JRSS B 63:411-423.

    W_k is the pooled within-cluster sum of squares of k-means on ``x`` (n, p) (k = 1: the
    total sum of squares). Reference data sets (n, p) are uniform over the box aligned with
    the principal components of ``x``. gap(k) = mean_b log W*_kb - log W_k and
    gap_sd = s_k = sd_b(log W*_kb) * sqrt(1 + 1/B) (sd with 1/B, as in the paper).
    k outside [1, n - 1] gives a NaN row. Returns columns k, gap, gap_sd, sorted by k.
    """
    return _gap_table(_as_matrix(x), ks, n_references, seed, n_init)


def _gap_table(x: np.ndarray, ks: Sequence[int], n_references: int, seed: int, n_init: int) -> pd.DataFrame:
    """The gap table for a checked ``x`` (n, p); see :func:`gap_statistic`."""
    if n_references < 1:
        raise ValueError(f"n_references must be at least 1, got {n_references}")
    n = x.shape[0]
    all_ks = sorted({int(k) for k in ks})
    valid = [k for k in all_ks if 1 <= k < n]
    rng = np.random.default_rng(seed)
    observed = _log_w(x, valid, seed, n_init)
    reference = np.array([_log_w(_pca_box_reference(x, rng), valid, seed, n_init) for _ in range(n_references)])
    gap = pd.Series(reference.mean(axis=0) - observed, index=valid)
    sd = pd.Series(reference.std(axis=0) * np.sqrt(1 + 1 / n_references), index=valid).where(gap.notna())
    return pd.DataFrame({"k": all_ks, "gap": gap.reindex(all_ks).to_numpy(), "gap_sd": sd.reindex(all_ks).to_numpy()})


def gap_choice(table: pd.DataFrame) -> int:
    """K by the rule of Tibshirani et al. (2001): the smallest k with
    gap(k) >= gap(k') - s_k', where k' is the next larger k in the table; if none, the argmax
    of the gap. ``table`` needs columns k, gap, gap_sd; NaN rows are ignored."""
    valid = table.dropna(subset=["gap", "gap_sd"]).sort_values("k").reset_index(drop=True)
    if valid.empty:
        raise ValueError("the gap statistic is undefined for every k in the table")
    for i in range(len(valid) - 1):
        if valid.loc[i, "gap"] >= valid.loc[i + 1, "gap"] - valid.loc[i + 1, "gap_sd"]:
            return int(valid.loc[i, "k"])
    return int(valid.loc[valid["gap"].idxmax(), "k"])


# ---------------------------------------------------------------------------- K selection


def _standardise(x: np.ndarray) -> np.ndarray:
    """Column z-scores of ``x`` (n, p) (population sd); constant columns become 0."""
    centred = x - x.mean(axis=0)
    sd = x.std(axis=0)
    safe = np.where(sd > 0, sd, 1.0)
    return np.where(sd > 0, centred / safe, 0.0)


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean Euclidean silhouette of ``labels`` (n,) on ``x`` (n, p); NaN unless there are
    between 2 and n - 1 non-empty clusters."""
    n_clusters = len(np.unique(labels))
    if not 2 <= n_clusters <= x.shape[0] - 1:
        return float("nan")
    return float(silhouette_score(x, labels, metric="euclidean"))


def _n_distinct_rows(x: np.ndarray) -> int:
    """Number of distinct rows of ``x`` (n, p)."""
    return int(np.unique(x, axis=0).shape[0])


def _empty_row(k: int) -> dict[str, float]:
    """A result row with every value NaN, for a k that cannot be fitted."""
    return {column: np.nan for column in TABLE_COLUMNS} | {"k": k}


def _row_for_k(
    x: np.ndarray, z: np.ndarray, k: int, seed: int, n_init: int, n_permutations: int, resampling: Resampling
) -> dict[str, float]:
    """Every criterion for one k: k-means, its silhouette and the resampling criteria on
    ``x`` (n, p) as given, sparse k-means on its column z-scores ``z`` (the lasso weights
    compare features only on a common scale)."""
    labels = _fit_kmeans(x, k, seed, n_init, None).labels_
    bounds = _default_bounds(z.shape[1])
    bound, _, fits = _permutation_gap(z, k, bounds, n_permutations, seed, n_init, "one_sd")
    fit = fits[bound]
    stable = _resampling_row(x, k, seed, resampling)
    return {
        "k": k,
        "silhouette_kmeans": silhouette(x, labels),
        "silhouette_sparse_kmeans": silhouette(z * np.sqrt(fit.weights), fit.labels),
        "l1_bound": bound,
        "n_features_used": int((fit.weights > 0).sum()),
        "stability": stable.stability,
        "stability_sd": stable.stability_sd,
        "prediction_strength": stable.prediction_strength,
        "prediction_strength_sd": stable.prediction_strength_sd,
        "pac": stable.pac,
    } | _check_values(x, labels, k, seed, resampling)


def smallest_cluster_share(labels: np.ndarray, k: int) -> float:
    """Share of the samples in the smallest of ``k`` clusters of ``labels`` (n,) in [0, k)
    (0.0 when a cluster is empty)."""
    return float(np.bincount(np.asarray(labels), minlength=k).min() / len(labels))


def _check_values(x: np.ndarray, labels: np.ndarray, k: int, seed: int, resampling: Resampling) -> dict[str, float]:
    """The columns that decide whether the resampling rules consider ``k`` (see
    :func:`_admissible`), for the k-means ``labels`` (n,) of ``x`` (n, p)."""
    return {
        "smallest_cluster": smallest_cluster_share(labels, k),
        "split_p": weakest_split_p(
            x, labels, k, seed=seed, null=resampling.split_null, statistic=resampling.split_statistic
        ),
    }


def _resampling_row(x: np.ndarray, k: int, seed: int, resampling: Resampling) -> StabilityRow:
    """The resampling criteria of ``k`` clusters on ``x`` (n, p), on the seeded subsamples
    that every k (and :func:`lungclam.stability.replica_confidence`) shares."""
    subsets = subsample_indices(x.shape[0], resampling.n_replicas, resampling.fraction, seed)
    return stability_criteria(x, k, subsets, seed, resampling.n_init, resampling.n_splits)[0]


@_single_threaded
def resampling_table(
    features: np.ndarray, ks: Sequence[int], seed: int = 0, resampling: Resampling = Resampling(), n_init: int = 20
) -> pd.DataFrame:
    """Only the resampling columns of :func:`select_k` (k, stability, stability_sd,
    prediction_strength, prediction_strength_sd, pac), smallest_cluster and split_p for ``ks``, on
    ``features`` (n, p) as given; NaN for a k outside [2, n - 1]. Cheaper than
    :func:`select_k` on large n, where sparse k-means' permutations dominate."""
    x = _as_matrix(features, "features")
    rows = []
    for k in sorted({int(k) for k in ks}):
        if not 2 <= k < x.shape[0]:
            rows.append({"k": k} | dict.fromkeys((*RESAMPLING_COLUMNS, *_CHECK_COLUMNS), np.nan))
            continue
        labels = _fit_kmeans(x, k, seed, n_init, None).labels_
        row = vars(_resampling_row(x, k, seed, resampling))
        rows.append(row | _check_values(x, labels, k, seed, resampling))
    return pd.DataFrame(rows, columns=["k", *RESAMPLING_COLUMNS, *_CHECK_COLUMNS])


def _row_for_k_single_threaded(args: tuple) -> dict[str, float]:
    """:func:`_row_for_k` on an argument tuple, OpenMP at one thread (a worker's task)."""
    return _single_threaded(_row_for_k)(*args)


def _rows_for_ks(
    x: np.ndarray,
    z: np.ndarray,
    ks: Sequence[int],
    seed: int,
    n_init: int,
    n_permutations: int,
    resampling: Resampling,
    workers: int,
) -> Iterator[dict[str, float]]:
    """:func:`_row_for_k` for each k of ``ks``, in order, from ``workers`` forked processes
    when :func:`lungclam.runtime.forked_pool` gives them (the largest k, the slowest, first)."""
    tasks = [(x, z, k, seed, n_init, n_permutations, resampling) for k in ks]
    pool = forked_pool(workers, len(tasks))
    if pool is None:
        yield from (_row_for_k(*task) for task in tasks)  # select_k holds OpenMP at one thread
        return
    with pool:
        futures = {task[2]: pool.submit(_row_for_k_single_threaded, task) for task in reversed(tasks)}
        for k in ks:
            yield futures[k].result()


def _progress_line(row: dict[str, float]) -> str:
    """One line summarising a row of the :func:`select_k` table."""
    return (
        f"k={int(row['k'])}: silhouette {row['silhouette_kmeans']:.2f} (k-means), "
        f"{row['silhouette_sparse_kmeans']:.2f} (sparse k-means, {row['n_features_used']:.0f} features, "
        f"L1 bound {row['l1_bound']:.2f}), gap {row['gap']:.3f} +/- {row['gap_sd']:.3f}, "
        f"stability {row['stability']:.3f}, prediction strength {row['prediction_strength']:.3f}, "
        f"PAC {row['pac']:.3f}"
    )


@_single_threaded
def select_k(
    features: np.ndarray,
    ks: Sequence[int] = range(2, 9),
    seed: int = 0,
    n_init: int = 20,
    n_permutations: int = 10,
    n_references: int = 20,
    progress: Callable[[str], None] | None = None,
    standardise: bool = False,
    resampling: Resampling = Resampling(),
    workers: int = 1,
) -> pd.DataFrame:
    """Criteria for choosing K on ``features`` (n, p), one row per k in ``ks`` (sorted).

    k-means, its silhouette, the gap statistic and the resampling criteria work on the
    features as they are (as the clustering layer sees them) unless ``standardise``;
    z-scoring gives every embedding dimension equal say, so near-constant noise dimensions
    can outvote the informative ones. Sparse k-means always works on column z-scores
    (constant columns become 0). Columns:

    - k; silhouette_kmeans (Euclidean silhouette of k-means);
    - silhouette_sparse_kmeans (silhouette of sparse k-means, on the features scaled by
      sqrt(weights)); l1_bound (the sparse k-means bound for that k, chosen by the
      permutation gap with the one-sd rule, see :func:`choose_l1_bound`); n_features_used
      (non-zero weights);
    - gap and gap_sd (gap statistic, :func:`gap_statistic`);
    - stability and stability_sd (mean and sd of the ARI between k-means of pairs of
      subsamples, each labelling every sample by its nearest centroid), prediction_strength
      and prediction_strength_sd, pac (see :mod:`lungclam.stability`; sizes from
      ``resampling``).
    - smallest_cluster (share of the samples in the smallest cluster of the k-means above;
      the resampling rules skip a k below ``min_cluster_share``, see :func:`choose`);
    - split_p (the largest p-value of :func:`lungclam.splittest.weakest_split_p` over
      that k-means' neighbouring cluster pairs: small when every split is more than one
      group shows, ``resampling.split_null`` and ``split_statistic``; the resampling rules
      skip a k above ``max_split_p``).

    A k below 2 has NaN silhouettes, sparse and resampling columns (the gap is still given
    for k = 1); a k >= n, or above the number of distinct samples, gives a NaN row.
    ``progress(msg)`` is called once per k with a one-line summary. ``workers`` processes
    compute the rows of different k side by side; every k has its own seeded draws, so the
    table is the same for any ``workers``.
    """
    z = _standardise(_as_matrix(features, "features"))
    x = z if standardise else _as_matrix(features, "features")
    n = z.shape[0]
    distinct = _n_distinct_rows(z)
    all_ks = sorted({int(k) for k in ks})
    gap = _gap_table(x, [k for k in all_ks if k <= distinct], n_references, seed, n_init).set_index("k")
    fitted = [k for k in all_ks if 2 <= k < n and k <= distinct]
    computed = _rows_for_ks(x, z, fitted, seed, n_init, n_permutations, resampling, workers)
    rows = []
    for k in all_ks:
        row = next(computed) if k in fitted else _empty_row(k)
        row["gap"] = gap["gap"].get(k, np.nan)
        row["gap_sd"] = gap["gap_sd"].get(k, np.nan)
        rows.append(row)
        if progress is not None:
            progress(_progress_line(row))
    computed.close()  # shuts the workers down now, not when the generator is collected
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.astype({"k": np.int64, **{c: float for c in TABLE_COLUMNS[1:]}})


@dataclass(frozen=True)
class KChoice:
    """The K a criterion chose from a :func:`select_k` table, and how close the call was.

    runner_up: the K the criterion would pick next (-1 if there is none). margin: how far
    the deciding quantity is from flipping the choice to ``runner_up``, in the criterion's
    own units (silhouette: best minus second best; gap: gap(k) - gap(k+1) + sd(k+1);
    threshold rules: the smaller of the chosen K's distance above its threshold and the
    best larger K's distance below it). A small margin means a near tie.
    """

    method: str
    k: int
    runner_up: int
    margin: float


def _argmax_choice(method: str, ks: np.ndarray, values: np.ndarray) -> KChoice:
    """Largest value wins, ties (to 1e-9) to the smaller k; the runner-up is the next in
    that order."""
    rounded = np.round(values, 9)
    order = sorted(range(len(ks)), key=lambda i: (-rounded[i], ks[i]))
    best = order[0]
    if len(order) == 1:
        return KChoice(method, int(ks[best]), -1, float("nan"))
    second = order[1]
    return KChoice(method, int(ks[best]), int(ks[second]), float(values[best] - values[second]))


def _threshold_choice(method: str, ks: np.ndarray, values: np.ndarray, threshold: float) -> KChoice:
    """Largest k whose value clears ``threshold`` (>=); if none does, the largest value.

    A larger k that fails the threshold splits a cluster that does not reproduce; a smaller
    one that passes merges clusters that do, so the finest reproducible K is the answer
    (the rule of Tibshirani & Walther 2005 for the prediction strength).
    """
    passing = [i for i in range(len(ks)) if values[i] >= threshold]
    if not passing:
        return _argmax_choice(method, ks, values)
    best = max(passing, key=lambda i: ks[i])
    above = float(values[best] - threshold)
    larger = [i for i in range(len(ks)) if ks[i] > ks[best]]
    below = [i for i in passing if ks[i] < ks[best]]
    closest_larger = max(larger, key=lambda i: values[i]) if larger else None
    gap_larger = float(threshold - values[closest_larger]) if closest_larger is not None else float("inf")
    if gap_larger <= above or not below:
        runner = int(ks[closest_larger]) if closest_larger is not None else -1
        margin = min(above, gap_larger)
    else:
        runner, margin = int(ks[max(below, key=lambda i: ks[i])]), above
    return KChoice(method, int(ks[best]), runner, margin)


def choose(table: pd.DataFrame, method: str, thresholds: dict[str, float] | None = None) -> KChoice:
    """K chosen from a :func:`select_k` table by one criterion, with runner-up and margin.

    - "silhouette_kmeans", "silhouette_sparse_kmeans": the largest silhouette (ties to the
      smaller k; the paper's rule);
    - "gap": :func:`gap_choice` (Tibshirani et al. 2001);
    - "stability": the largest k whose mean pairwise ARI between subsample clusterings is
      at least ``thresholds["stability"]`` (default 0.9);
    - "prediction_strength": the largest k with prediction strength at least
      ``thresholds["prediction_strength"]`` (default 0.8, as Tibshirani & Walther 2005);
    - "most_stable": the largest k whose stability is within ``thresholds["most_stable"]``
      (default 0.03) of the largest stability: the most reproducible clustering (Lange et
      al. 2004 choose the k of least instability), and of those that reproduce as well,
      the finest. A merge of two true clusters reproduces as well as the truth or better
      (1.0 against 0.978 on a simulation embedding), so exact ties, or a tolerance of 0,
      would take the merge; an over-split K usually loses more (0.036 or more in the
      cohorts measured, README "Choosing K");
    - "pac": the largest k whose PAC is at most ``thresholds["pac"]`` (default 0.05).
      Senbabaoglu et al. take the smallest PAC; on well-separated data every K up to the
      true one has PAC near 0, so the smallest is a tie, broken here towards the finest K;
    - "stable_split": the "stability" rule where the split test passes some K, else the
      "most_stable" rule. The split test decides whether neighbouring clusters are
      distinct, so stability only needs to say whether a K reproduces at all: judged
      against the most stable K instead, two real but overlapping clusters lose to their
      merge, which reproduces better (simulation at the paper's epochs, intensity K = 4:
      0.93-0.98 against 1.0 at K = 2). Where no K passes the test, nothing vets an
      over-split, and the level alone let one through (a 4-pattern cohort: K = 6), so the
      relative rule decides (README "Choosing K").

    The resampling rules (stability, most_stable, stable_split, prediction_strength, pac)
    consider only the Ks whose smallest k-means cluster (the table's ``smallest_cluster``,
    when it has one) holds at least ``thresholds["min_cluster_share"]`` of the samples
    (default 0.1; 0 turns it off): a few outlying subjects form a cluster that every subsample finds
    again, so it reproduces as well as a true subtype (phantom seed 2: K = 5 with clusters
    of 2 subjects at stability 0.989, README "Choosing K"), but a cluster of two
    subjects is an outlier group, not a subtype. If no K is large enough, all are.
    Of those, they consider only the Ks whose ``split_p`` (the weakest neighbouring
    split, :mod:`lungclam.splittest`) is at most ``thresholds["max_split_p"]`` (default
    0.05; 1.0 turns it off): a cut through one group at a gap in its severities
    reproduces at stability 1.0 too, but its two halves are no more apart than those of
    one group spread evenly along the split (``split_null: uniform``, the default) or of
    one Gaussian group (``gaussian``). If no K passes, the size check alone decides.

    NaN rows are ignored. ValueError for an unknown method or a column that is missing or
    all NaN.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    limits = THRESHOLDS | (thresholds or {})
    column = DERIVED_METHODS.get(method, method)
    if column not in table.columns:
        raise ValueError(f"the table has no {column} column")
    if method == "gap":
        k = gap_choice(table)
        rows = table.dropna(subset=["gap", "gap_sd"]).set_index("k")
        if k + 1 in rows.index and k in rows.index:
            margin = float(rows.loc[k, "gap"] - rows.loc[k + 1, "gap"] + rows.loc[k + 1, "gap_sd"])
            return KChoice(method, k, k + 1, margin)
        return KChoice(method, k, -1, float("nan"))
    ordered = table.dropna(subset=[column]).sort_values("k", kind="stable")
    if ordered.empty:
        raise ValueError(f"column {column} is NaN for every k")
    if method == "stable_split":
        inner = choose(table, "stability" if _some_split_is_real(ordered, limits) else "most_stable", thresholds)
        return KChoice(method, inner.k, inner.runner_up, inner.margin)
    if method in CHECKED_METHODS:
        ordered = _admissible(ordered, limits)
    ks, values = ordered["k"].to_numpy(), ordered[column].to_numpy(dtype=float)
    if method == "most_stable":
        return _threshold_choice(method, ks, values, float(values.max()) - limits["most_stable"] - _TIE)
    if method in SILHOUETTE_METHODS:
        return _argmax_choice(method, ks, values)
    if method == "pac":  # small is good: flip the sign to reuse the threshold rule
        return _threshold_choice(method, ks, -values, -limits["pac"])
    return _threshold_choice(method, ks, values, limits[method])


def _admissible(table: pd.DataFrame, limits: dict[str, float]) -> pd.DataFrame:
    """The rows of ``table`` whose ``smallest_cluster`` is at least
    ``limits["min_cluster_share"]``, and of those the rows whose ``split_p`` is at most
    ``limits["max_split_p"]``. Each check keeps every row it is given when the table has
    no such column (written before it existed) or no row passes."""
    return _keep_passing(_sized(table, limits), "split_p", lambda v: split_is_real(v, limits["max_split_p"]))


def _sized(table: pd.DataFrame, limits: dict[str, float]) -> pd.DataFrame:
    """The size check of :func:`_admissible` alone."""
    return _keep_passing(table, "smallest_cluster", lambda v: v >= limits["min_cluster_share"] - _TIE)


def _keep_passing(table: pd.DataFrame, column: str, passes: Callable[[pd.Series], Any]) -> pd.DataFrame:
    """The rows of ``table`` whose ``column`` ``passes``; all of them when the table has no
    such column or no row passes."""
    if column not in table.columns:
        return table
    keep = passes(table[column])
    return table[keep] if keep.any() else table


def _some_split_is_real(table: pd.DataFrame, limits: dict[str, float]) -> bool:
    """Whether the split test passes some K of ``table`` that the size check keeps; False
    for a table without ``split_p`` or with the test off (``max_split_p`` 1.0), where no
    K's split is vetted."""
    if "split_p" not in table.columns or limits["max_split_p"] >= 1.0:
        return False
    return not no_split_is_real(_sized(table, limits)["split_p"], limits["max_split_p"])


def chosen_k(table: pd.DataFrame, method: str = "silhouette_kmeans", thresholds: dict[str, float] | None = None) -> int:
    """K chosen from a :func:`select_k` table by ``method`` (see :func:`choose`)."""
    return choose(table, method, thresholds).k


#: The criterion that decides when the configured one cannot (e.g. too few subjects).
FALLBACK_METHOD = "silhouette_kmeans"


def skipped_ks(table: pd.DataFrame, thresholds: dict[str, float] | None = None) -> list[int]:
    """The Ks of ``table`` that the resampling rules skip: their smallest k-means cluster
    is below ``min_cluster_share`` or their weakest split's p-value above ``max_split_p``
    (none if :func:`_admissible` keeps them all)."""
    present = [c for c in _CHECK_COLUMNS if c in table.columns]
    if not present:
        return []
    defined = table.dropna(subset=present)
    kept = set(_admissible(defined, THRESHOLDS | (thresholds or {}))["k"])
    return sorted(int(k) for k in defined["k"] if k not in kept)


def choices_table(table: pd.DataFrame, default: str, thresholds: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per criterion that the table supports: ``method, k, runner_up, margin,
    default, skipped_k``. ``default`` is True on the row of the method ``n_clusters: auto``
    follows: ``default`` itself, or :data:`FALLBACK_METHOD` when ``default`` is undefined
    for every K (a resampling criterion on a cohort too small to split). ``skipped_k``
    lists (comma-separated) the Ks that the checked rules (:data:`CHECKED_METHODS`) did not
    consider (:func:`skipped_ks`)."""
    skipped = ",".join(str(k) for k in skipped_ks(table, thresholds))
    rows = []
    for method in METHODS:
        try:
            choice = choose(table, method, thresholds)
        except ValueError:
            continue
        rows.append(
            {
                "method": method,
                "k": choice.k,
                "runner_up": choice.runner_up,
                "margin": choice.margin,
                "default": method == default,
                "skipped_k": skipped if method in CHECKED_METHODS else "",
            }
        )
    out = pd.DataFrame(rows, columns=["method", "k", "runner_up", "margin", "default", "skipped_k"])
    if not out["default"].any():
        out["default"] = out["method"] == FALLBACK_METHOD
    if not out["default"].any():
        raise ValueError("no criterion for K is defined on this table (too few distinct subjects?)")
    return out


def resampling_from_config(section: dict[str, Any]) -> Resampling:
    """:class:`Resampling` from the config's ``choose_k`` section (absent keys: defaults)."""
    default = Resampling()
    return Resampling(
        n_replicas=int(section.get("n_replicas", default.n_replicas)),
        fraction=float(section.get("subsample_fraction", default.fraction)),
        n_splits=int(section.get("n_splits", default.n_splits)),
        n_init=int(section.get("resampling_n_init", default.n_init)),
        split_null=str(section.get("split_null", default.split_null)),
        split_statistic=str(section.get("split_statistic", default.split_statistic)),
    )


def resolve_n_clusters(setting: int | str, table: pd.DataFrame) -> int:
    """K to fit: the config's integer, or for ``auto`` the row ``table`` marks ``chosen``.

    ``table`` is ``k_selection.tsv`` as written by the ``choose_k`` rule (a ``chosen``
    column of booleans next to the columns of :func:`select_k`).
    """
    if setting != "auto":
        k = int(setting)
        if k < 2:
            raise ValueError(f"n_clusters must be at least 2, got {k}")
        return k
    if "chosen" not in table.columns or not table["chosen"].astype(bool).any():
        raise ValueError("k_selection table has no row marked 'chosen'; rerun the choose_k rule")
    return int(table.loc[table["chosen"].astype(bool), "k"].iloc[0])
