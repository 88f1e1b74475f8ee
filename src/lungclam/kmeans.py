"""k-means (Lloyd's algorithm with k-means++ starts, scikit-learn's KMeans), seeded and
single-threaded: on the small matrices clustered here (tens to hundreds of subjects by
tens of features) one thread is faster than OpenMP's start-up, and runs repeat exactly.

Used by :mod:`lungclam.kselect` (criteria for K), :mod:`lungclam.stability` (resampling
criteria) and :mod:`lungclam.dec` (initial centroids).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

F = TypeVar("F", bound=Callable[..., Any])


def single_threaded(func: F) -> F:
    """Run ``func`` with OpenMP (used by sklearn's k-means) limited to one thread.

    Entering the limit costs a few milliseconds; functions that call k-means many times
    should take it once around the loop (decorating the outer function is enough).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with threadpool_limits(limits=1, user_api="openmp"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def as_matrix(x: np.ndarray, name: str = "x") -> np.ndarray:
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


def check_k(k: int, minimum: int, maximum: int) -> int:
    """``k`` as an int in [minimum, maximum]; ValueError otherwise."""
    if int(k) != k or not minimum <= k <= maximum:
        raise ValueError(f"k must be an integer in [{minimum}, {maximum}] for this data, got {k}")
    return int(k)


def fit_kmeans(x: np.ndarray, k: int, seed: int, n_init: int, init: np.ndarray | None = None) -> KMeans:
    """sklearn KMeans on ``x`` (n, p) without argument checks; ``init`` (k, p) starts a
    single run from given centres.

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


@single_threaded
def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """k-means with ``n_init`` restarts on ``x`` (n, p).

    Returns labels (n,) int64 in [0, k) and centres (k, p); the restart with the smallest
    within-cluster sum of squares wins.
    """
    arr = as_matrix(x)
    k = check_k(k, 1, arr.shape[0])
    model = fit_kmeans(arr, k, seed, n_init, None)
    return model.labels_.astype(np.int64), np.asarray(model.cluster_centers_, dtype=float)
