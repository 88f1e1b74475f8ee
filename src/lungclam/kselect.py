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

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

SILHOUETTE_METHODS = ("silhouette_kmeans", "silhouette_sparse_kmeans")
METHODS = (*SILHOUETTE_METHODS, "gap")
L1_RULES = ("one_sd", "max")
TABLE_COLUMNS = ("k", *SILHOUETTE_METHODS, "l1_bound", "n_features_used", "gap", "gap_sd")
_BISECTION_STEPS = 100

F = TypeVar("F", bound=Callable[..., Any])


def _single_threaded(func: F) -> F:
    """Run ``func`` with OpenMP (used by sklearn's k-means) limited to one thread."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="openmp"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------- checks


def _as_matrix(x: np.ndarray, name: str = "x") -> np.ndarray:
    """``x`` as a float64 (n, p) array; ValueError if not 2-D, not finite or n < 3."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples x features), got shape {arr.shape}")
    n, p = arr.shape
    if n < 3:
        raise ValueError(f"{name} needs at least 3 samples to cluster, got {n}")
    if p < 1:
        raise ValueError(f"{name} has no features (shape {arr.shape})")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(arr).sum())} values)")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains inf ({int(np.isinf(arr).sum())} values)")
    return arr


def _check_k(k: int, minimum: int, maximum: int) -> int:
    """``k`` as an int in [minimum, maximum]; ValueError otherwise."""
    if int(k) != k or not minimum <= k <= maximum:
        raise ValueError(f"k must be an integer in [{minimum}, {maximum}] for this data, got {k}")
    return int(k)


def _check_l1_bound(l1_bound: float, p: int) -> float:
    """``l1_bound`` as a float in [1, sqrt(p)]; ValueError otherwise."""
    top = float(np.sqrt(p))
    if not np.isfinite(l1_bound) or not 1.0 <= l1_bound <= top * (1 + 1e-12):
        raise ValueError(
            f"l1_bound must lie in [1, sqrt(p)] = [1, {top:.4g}] for p={p} features, got {l1_bound}"
        )
    return float(min(l1_bound, top))


# ---------------------------------------------------------------------------- k-means


def _fit_kmeans(x: np.ndarray, k: int, seed: int, n_init: int, init: np.ndarray | None) -> KMeans:
    """sklearn KMeans on ``x`` (n, p); ``init`` (k, p) starts a single run from given centres.

    Fewer distinct points than ``k`` leaves fewer non-empty clusters; sklearn warns about
    that and the callers handle it, so that warning is silenced here.
    """
    model = KMeans(
        n_clusters=k,
        init="k-means++" if init is None else init,
        n_init=n_init if init is None else 1,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x)
    return model


@_single_threaded
def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Lloyd's algorithm, k-means++ starts; sklearn KMeans) with ``n_init`` restarts.

    x: (n, p) float. Returns labels (n,) int64 in [0, k) and centres (k, p); the restart with
    the smallest within-cluster sum of squares wins.
    """
    arr = _as_matrix(x)
    k = _check_k(k, 1, arr.shape[0])
    model = _fit_kmeans(arr, k, seed, n_init, None)
    return model.labels_.astype(np.int64), np.asarray(model.cluster_centers_, dtype=float)


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
    Tibshirani 2010). The upper end of the bisection is kept, so the bound always holds. If only ties at the maximum are left, all weight goes to the first.
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
    return {
        "k": k,
        "silhouette_kmeans": np.nan,
        "silhouette_sparse_kmeans": np.nan,
        "l1_bound": np.nan,
        "n_features_used": np.nan,
    }


def _row_for_k(x: np.ndarray, z: np.ndarray, k: int, seed: int, n_init: int,
               n_permutations: int) -> dict[str, float]:
    """Silhouettes for one k: k-means on ``x`` (n, p) as given, sparse k-means on its
    column z-scores ``z`` (the lasso weights compare features only on a common scale)."""
    labels = _fit_kmeans(x, k, seed, n_init, None).labels_
    bounds = _default_bounds(z.shape[1])
    bound, _, fits = _permutation_gap(z, k, bounds, n_permutations, seed, n_init, "one_sd")
    fit = fits[bound]
    return {
        "k": k,
        "silhouette_kmeans": silhouette(x, labels),
        "silhouette_sparse_kmeans": silhouette(z * np.sqrt(fit.weights), fit.labels),
        "l1_bound": bound,
        "n_features_used": int((fit.weights > 0).sum()),
    }


def _progress_line(row: dict[str, float]) -> str:
    """One line summarising a row of the :func:`select_k` table."""
    return (
        f"k={int(row['k'])}: silhouette {row['silhouette_kmeans']:.2f} (k-means), "
        f"{row['silhouette_sparse_kmeans']:.2f} (sparse k-means, {row['n_features_used']:.0f} features, "
        f"L1 bound {row['l1_bound']:.2f}), gap {row['gap']:.3f} +/- {row['gap_sd']:.3f}"
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
) -> pd.DataFrame:
    """Criteria for choosing K on ``features`` (n, p), one row per k in ``ks`` (sorted).

    k-means, its silhouette and the gap statistic work on the features as they are (as
    the clustering layer sees them) unless ``standardise``; z-scoring gives every embedding
    dimension equal say, so near-constant noise dimensions can outvote the informative
    ones. Sparse k-means always works on column z-scores (constant columns become 0). Columns:
    k; silhouette_kmeans (Euclidean silhouette of k-means); silhouette_sparse_kmeans
    (silhouette of sparse k-means, on the features scaled by sqrt(weights)); l1_bound (the
    sparse k-means bound for that k, chosen by the permutation gap with the one-sd rule, see
    :func:`choose_l1_bound`); n_features_used (non-zero weights); gap and gap_sd (gap
    statistic, :func:`gap_statistic`).

    A k below 2 has NaN silhouettes and sparse columns (the gap is still given for k = 1);
    a k >= n, or above the number of distinct samples, gives a NaN row. ``progress(msg)`` is
    called once per k with a one-line summary.
    """
    z = _standardise(_as_matrix(features, "features"))
    x = z if standardise else _as_matrix(features, "features")
    n = z.shape[0]
    distinct = _n_distinct_rows(z)
    all_ks = sorted({int(k) for k in ks})
    gap = _gap_table(x, [k for k in all_ks if k <= distinct], n_references, seed, n_init).set_index("k")
    rows = []
    for k in all_ks:
        fits = 2 <= k < n and k <= distinct
        row = _row_for_k(x, z, k, seed, n_init, n_permutations) if fits else _empty_row(k)
        row["gap"] = gap["gap"].get(k, np.nan)
        row["gap_sd"] = gap["gap_sd"].get(k, np.nan)
        rows.append(row)
        if progress is not None:
            progress(_progress_line(row))
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.astype({"k": np.int64, **{c: float for c in TABLE_COLUMNS[1:]}})


def chosen_k(table: pd.DataFrame, method: str = "silhouette_kmeans") -> int:
    """K chosen from a :func:`select_k` table.

    ``method`` "silhouette_kmeans" or "silhouette_sparse_kmeans": the k with the largest
    silhouette (ties go to the smaller k, NaN ignored); "gap": :func:`gap_choice`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "gap":
        return gap_choice(table)
    ordered = table.dropna(subset=[method]).sort_values("k", kind="stable")
    if ordered.empty:
        raise ValueError(f"column {method} is NaN for every k")
    values = ordered[method].to_numpy()
    return int(ordered["k"].to_numpy()[int(np.argmax(values))])


def plot_k_selection(table: pd.DataFrame, path: str | Path, chosen: int | None = None) -> None:
    """Save a PNG (120 dpi) of a :func:`select_k` table: silhouettes of k-means and sparse
    k-means vs K (left) and the gap statistic with +/- gap_sd error bars vs K (right); the
    ``chosen`` K, if given, is marked by a dashed vertical line. Parent folders are created.

    Drawn with matplotlib's Agg canvas directly (no pyplot, no display, global backend left
    unchanged).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lungclam.atomic import save_png

    out = Path(path)
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    data = table.sort_values("k")
    left.plot(data["k"], data["silhouette_kmeans"], "o-", label="k-means")
    left.plot(data["k"], data["silhouette_sparse_kmeans"], "s--", label="sparse k-means")
    left.set(xlabel="number of clusters K", ylabel="mean silhouette", title="Silhouette")
    left.legend()
    right.errorbar(data["k"], data["gap"], yerr=data["gap_sd"], fmt="o-", capsize=3)
    right.set(xlabel="number of clusters K", ylabel="gap", title="Gap statistic")
    for ax in (left, right):
        ax.set_xticks(data["k"].to_numpy())
        if chosen is not None:
            ax.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen K = {chosen}")
    if chosen is not None:
        left.legend()
    fig.suptitle("Choosing the number of clusters")
    fig.tight_layout()
    save_png(fig, out, 120)


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
