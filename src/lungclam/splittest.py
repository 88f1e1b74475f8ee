"""Is a split of two neighbouring clusters more than one group would show?

A K that cuts one group at a gap in a continuous quantity (the severity of a pattern, say)
reproduces in every subsample as well as a true subtype does, so the resampling criteria
cannot tell the two apart. This module tests each split directly, in the manner of
SigClust (Liu, Hayes, Nobel & Marron 2008, "Statistical significance of clustering for
high-dimension, low-sample-size data", JASA 103:1281-1293): the statistic is the 2-means
cluster index of the union of two clusters (within-cluster sum of squares of its best
2-means split over its total sum of squares; small means well split), and its null
distribution comes from samples of one group with the union's own covariance eigenvalues.
Unlike SigClust the eigenvalues are taken as they are, without its background-noise
floor: with n < p the reference then concentrates more variance in its leading directions
than the union does, so the test errs towards calling a split insignificant.

Two nulls (``null``): "gaussian", SigClust's, where every axis is Gaussian; and "uniform",
where the leading axis is uniform (the others stay Gaussian). A Gaussian is not the hardest
one-mode group to split: any group spread evenly along one axis (the severity of a pattern
drawn from a range, say) has a smaller 2-means index, so with enough samples it is called
two clusters against a Gaussian although it has no gap. Among one-mode (unimodal)
symmetric distributions the uniform has the smallest index: a unimodal X is U * Y with U
uniform on (0, 1) and independent of Y (Khinchine), so (E|X|)^2 / E[X^2] = 3/4 (E|Y|)^2 /
E[Y^2] <= 3/4, and the one-dimensional index 1 - (E|X|)^2 / E[X^2] is at least 1/4, the
uniform's. Against the uniform, a split counts only where the union has two modes along
it, as in Hartigan & Hartigan's dip test ("The dip test of unimodality", Ann Stat 13:70-84,
1985), which takes the uniform as its least favourable unimodal null too. It has less power
on clusters that overlap. "Neighbouring" means each cluster and the one whose centroid is nearest;
farther pairs are split more clearly, so the weakest split is among the neighbours.

Arrays are samples x features (n, p); every random draw follows the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Monte Carlo references per pair: the smallest p-value is 1 / (n_references + 1).
N_REFERENCES = 100
#: The null groups :func:`split_p_value` can compare a split with (module docstring).
NULLS = ("gaussian", "uniform")
_MAX_LLOYD_STEPS = 100


def two_means_index(x: np.ndarray) -> float:
    """2-means cluster index of ``x`` (n, p): within-cluster sum of squares of a 2-means
    split over the total sum of squares, in [0, 1]; 1.0 when ``x`` cannot be split (fewer
    than 2 distinct rows).

    The split starts from the sign of the first principal component score (the cut a
    one-dimensional gap would give) and follows Lloyd's iterations to convergence; the
    same deterministic start on observed and reference data keeps the two comparable.
    """
    data = np.asarray(x, dtype=float)
    centred = data - data.mean(axis=0)
    total = float((centred**2).sum())
    if centred.shape[0] < 2 or total <= 0:
        return 1.0
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    side = centred @ vt[0] > 0
    for _ in range(_MAX_LLOYD_STEPS):
        if side.all() or not side.any():
            return 1.0
        to_first = ((centred - centred[side].mean(axis=0)) ** 2).sum(axis=1)
        to_second = ((centred - centred[~side].mean(axis=0)) ** 2).sum(axis=1)
        moved = to_first < to_second
        if np.array_equal(moved, side):
            break
        side = moved
    if side.all() or not side.any():
        return 1.0
    within = sum(float(((part - part.mean(axis=0)) ** 2).sum()) for part in (centred[side], centred[~side]))
    return within / total


def _check_null(null: str) -> None:
    if null not in NULLS:
        raise ValueError(f"unknown split-test null {null!r}; valid: {', '.join(NULLS)}")


def _reference(generator: np.random.Generator, n: int, sd: np.ndarray, null: str) -> np.ndarray:
    """n points (n, len(sd)) of one centred group with axis standard deviations ``sd``
    (descending): Gaussian on every axis, or with ``null="uniform"`` uniform on the first."""
    points = generator.standard_normal((n, sd.size)) * sd
    if null == "uniform":
        points[:, 0] = generator.uniform(-np.sqrt(3.0), np.sqrt(3.0), n) * sd[0]
    return points


def split_p_value(
    x: np.ndarray, n_references: int = N_REFERENCES, rng: np.random.Generator | int = 0, null: str = "gaussian"
) -> float:
    """Monte Carlo p-value that ``x`` (n, p) is one group rather than two clusters.

    The references are ``n_references`` samples of n points from a centred group whose
    axes have the variances of ``x``'s principal components (the first min(n - 1, p)),
    Gaussian, or with ``null="uniform"`` uniform along the leading one (module docstring);
    the p-value is (1 + references whose :func:`two_means_index` is at most ``x``'s) /
    (1 + n_references). 1.0 for fewer than 3 samples (nothing to test). ValueError for an
    unknown ``null``.
    """
    _check_null(null)
    data = np.asarray(x, dtype=float)
    n = data.shape[0]
    if n < 3:
        return 1.0
    generator = np.random.default_rng(rng)
    centred = data - data.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    sd = singular[: n - 1] / np.sqrt(n)
    observed = two_means_index(centred)
    references = (two_means_index(_reference(generator, n, sd, null)) for _ in range(n_references))
    as_split = sum(index <= observed for index in references)
    return float((1 + as_split) / (1 + n_references))


def split_is_real(split_p: Sequence[float] | float, max_split_p: float) -> np.ndarray:
    """Per K, whether its weakest-split p-value (``split_p``, NaN allowed: not real) is at
    most ``max_split_p``, to a tolerance of 1e-9: the test the K rules apply
    (:func:`lungclam.kselect.choose`) and the stability verdict repeats."""
    return np.asarray(split_p, dtype=float) <= max_split_p + 1e-9


def no_split_is_real(split_p: Sequence[float], max_split_p: float) -> bool:
    """True when no K's weakest-split p-value (``split_p``, one per K, NaN allowed) is at
    most ``max_split_p``: no K splits the samples more clearly than the null group would."""
    return not bool(split_is_real(split_p, max_split_p).any())


def neighbour_pairs(centres: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of rows of ``centres`` (k, p) where one is the other's nearest
    (Euclidean), sorted; empty for fewer than 2 centres."""
    c = np.asarray(centres, dtype=float)
    if c.shape[0] < 2:
        return []
    distance = ((c[:, None, :] - c[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(distance, np.inf)
    return sorted({(min(i, j), max(i, j)) for i, j in enumerate(distance.argmin(axis=1).tolist())})


def weakest_split_p(
    x: np.ndarray,
    labels: np.ndarray,
    k: int,
    n_references: int = N_REFERENCES,
    seed: int = 0,
    null: str = "gaussian",
) -> float:
    """The largest :func:`split_p_value` (against ``null``) over the neighbouring pairs of
    the ``k`` clusters of ``labels`` (n,) in [0, k) on ``x`` (n, p): small when every split
    is real. NaN for fewer than 2 non-empty clusters. Every pair's references follow
    ``seed`` and the pair."""
    _check_null(null)
    data = np.asarray(x, dtype=float)
    labels = np.asarray(labels)
    present = [c for c in range(k) if (labels == c).any()]
    if len(present) < 2:
        return float("nan")
    centres = np.stack([data[labels == c].mean(axis=0) for c in present])
    p_values = [
        split_p_value(
            data[(labels == present[i]) | (labels == present[j])],
            n_references,
            np.random.default_rng([seed, present[i], present[j]]),
            null,
        )
        for i, j in neighbour_pairs(centres)
    ]
    return max(p_values)
