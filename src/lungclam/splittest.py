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

Two statistics (``statistic``): "total", SigClust's index over all features; and "axis"
(:func:`axis_index`), the index along the split's own axis (the line through its two
centroids). The total index dilutes a split along an axis that holds a small share of the
variance: in a 60-feature embedding, two patterns 8 % of whose union's variance lies
between them have a total index above 0.9, as much as one group, though along their axis
they have two clear modes (index 0.1, against 1/4 for an even spread). The axis index is
found by searching the data for its best cut, which also finds cuts in noise, and more
so the more elongated the data; so its references are drawn with SigClust's
soft-thresholded eigenvalues (:func:`soft_thresholded_variances`) instead of the sample's,
whose spread with n near p is mostly noise. Where the union has no more samples than
features, a search for the best cut finds nearly as clean a cut in the references as in
two real groups, and the axis index loses its power; "auto" (the pipeline's default) tests
along the axis only where the samples outnumber the features, over all features otherwise.

Arrays are samples x features (n, p); every random draw follows the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Monte Carlo references per pair: the smallest p-value is 1 / (n_references + 1).
N_REFERENCES = 100
#: The null groups :func:`split_p_value` can compare a split with (module docstring).
NULLS = ("gaussian", "uniform")
#: The statistics :func:`split_p_value` can test: :func:`two_means_index` ("total"),
#: :func:`axis_index` ("axis"), both, the smaller p-value doubled ("both"), or "auto":
#: "axis" where the samples outnumber the features, else "total".
STATISTICS = ("total", "axis", "both", "auto")
#: Principal axes whose signs start :func:`axis_index`'s 2-means.
N_STARTS = 5
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
    side = _lloyd_two_means(centred, centred @ vt[0] > 0)
    return 1.0 if side is None else _within_ss(centred, side) / total


def _lloyd_two_means(centred: np.ndarray, side: np.ndarray) -> np.ndarray | None:
    """Lloyd's iterations of 2-means on ``centred`` (n, p) from the boolean split ``side``
    (n,) to convergence; None when a side empties."""
    for _ in range(_MAX_LLOYD_STEPS):
        if side.all() or not side.any():
            return None
        to_first = ((centred - centred[side].mean(axis=0)) ** 2).sum(axis=1)
        to_second = ((centred - centred[~side].mean(axis=0)) ** 2).sum(axis=1)
        moved = to_first < to_second
        if np.array_equal(moved, side):
            break
        side = moved
    return None if side.all() or not side.any() else side


def _within_ss(centred: np.ndarray, side: np.ndarray) -> float:
    return sum(float(((part - part.mean(axis=0)) ** 2).sum()) for part in (centred[side], centred[~side]))


def _index_along_split(centred: np.ndarray, side: np.ndarray) -> float:
    """Within-side over total sum of squares of ``centred`` (n, p) projected on the line
    through the centroids of the split ``side`` (n,): its cluster index along that axis."""
    axis = centred[side].mean(axis=0) - centred[~side].mean(axis=0)
    along = (centred @ (axis / np.linalg.norm(axis)))[:, None]
    total = float(((along - along.mean()) ** 2).sum())
    return _within_ss(along, side) / total if total > 0 else 1.0


def axis_index(x: np.ndarray, n_starts: int = N_STARTS) -> float:
    """The smallest 2-means cluster index of ``x`` (n, p) along a split's own axis, in
    [0, 1]: for each 2-means split found, project ``x`` onto the line through its two
    centroids and take the within-side sum of squares of the projections over their total;
    1.0 when ``x`` cannot be split.

    The splits are Lloyd's iterations started from the sign of each of the first
    ``n_starts`` principal component scores (no random starts, so observed and reference
    data are searched alike). Unlike :func:`two_means_index`, the index does not grow with
    the variance of features that the split does not use: two groups apart along an axis
    with 8 % of 60 features' variance have 0.1 here and above 0.9 there, and a larger
    spread along another axis cannot hide them (each start's split is scored on its own).
    One group spread evenly has 1/4 along any axis it is cut on (module docstring).
    """
    data = np.asarray(x, dtype=float)
    centred = data - data.mean(axis=0)
    if centred.shape[0] < 2 or float((centred**2).sum()) <= 0:
        return 1.0
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    splits = (_lloyd_two_means(centred, centred @ axis > 0) for axis in vt[:n_starts])
    return min((_index_along_split(centred, side) for side in splits if side is not None), default=1.0)


def _check_options(null: str, statistic: str) -> None:
    if null not in NULLS:
        raise ValueError(f"unknown split-test null {null!r}; valid: {', '.join(NULLS)}")
    if statistic not in STATISTICS:
        raise ValueError(f"unknown split-test statistic {statistic!r}; valid: {', '.join(STATISTICS)}")


def _reference(generator: np.random.Generator, n: int, sd: np.ndarray, null: str) -> np.ndarray:
    """n points (n, len(sd)) of one centred group with axis standard deviations ``sd``
    (descending): Gaussian on every axis, or with ``null="uniform"`` uniform on the first."""
    points = generator.standard_normal((n, sd.size)) * sd
    if null == "uniform":
        points[:, 0] = generator.uniform(-np.sqrt(3.0), np.sqrt(3.0), n) * sd[0]
    return points


def soft_thresholded_variances(centred: np.ndarray) -> np.ndarray:
    """Population axis variances (p,), descending, estimated from ``centred`` (n, p) as
    SigClust's soft thresholding does (Huang, Liu, Yuan & Marron 2015, "Statistical
    significance of clustering with multidimensional scaling", JCGS 24:975-993): the
    background noise variance is the squared MAD of all entries over 0.6745, and the
    sample eigenvalues (zeros beyond rank) are lowered by one common amount tau, but not
    below that floor, with tau such that the total variance is kept.

    With n near or below p the sample eigenvalues of even isotropic noise spread widely
    (Marchenko-Pastur); a reference drawn with them is far more elongated than the data's
    source, and :func:`axis_index` then finds more structure in the data than in the
    references (a false split 30 % of the time on 150 points of pure noise in 60 features).
    """
    n, p = centred.shape
    eigen = np.zeros(p)
    singular = np.linalg.svd(centred, compute_uv=False)
    eigen[: singular.size] = singular**2 / n
    floor = float((np.median(np.abs(centred - np.median(centred))) / 0.6745) ** 2)
    total = float(eigen.sum())
    if floor * p >= total:
        return np.full(p, total / p)
    low, high = 0.0, float(eigen[0])
    for _ in range(100):
        tau = (low + high) / 2
        if np.maximum(eigen - tau, floor).sum() > total:
            low = tau
        else:
            high = tau
    return np.maximum(eigen - high, floor)


def split_p_value(
    x: np.ndarray,
    n_references: int = N_REFERENCES,
    rng: np.random.Generator | int = 0,
    null: str = "gaussian",
    statistic: str = "total",
) -> float:
    """Monte Carlo p-value that ``x`` (n, p) is one group rather than two clusters.

    The references are ``n_references`` samples of n points from a centred group whose
    axes have the variances of ``x``'s principal components (the first min(n - 1, p)),
    Gaussian, or with ``null="uniform"`` uniform along the leading one (module docstring);
    the p-value is (1 + references whose index is at most ``x``'s) / (1 + n_references),
    the index being :func:`two_means_index` (``statistic="total"``) or :func:`axis_index`
    (``"axis"``, with soft-thresholded variances); ``"both"`` runs the two and returns the
    smaller p-value doubled (at most 1); ``"auto"`` is ``"axis"`` when ``x`` has more
    samples than features and ``"total"`` otherwise. 1.0 for fewer than 3 samples.
    ValueError for an unknown ``null`` or ``statistic``.
    """
    _check_options(null, statistic)
    data = np.asarray(x, dtype=float)
    n = data.shape[0]
    if n < 3:
        return 1.0
    generator = np.random.default_rng(rng)
    if statistic == "auto":  # the axis search overfits, and loses its power, with n <= p
        statistic = "axis" if n > data.shape[1] else "total"
    if statistic == "both":  # Bonferroni over the two tests
        p_values = [split_p_value(data, n_references, generator, null, one) for one in ("total", "axis")]
        return min(1.0, 2 * min(p_values))
    centred = data - data.mean(axis=0)
    if statistic == "total":
        cluster_index, sd = two_means_index, np.linalg.svd(centred, compute_uv=False)[: n - 1] / np.sqrt(n)
    else:
        cluster_index, sd = axis_index, np.sqrt(soft_thresholded_variances(centred))
    observed = cluster_index(centred)
    references = (cluster_index(_reference(generator, n, sd, null)) for _ in range(n_references))
    as_split = sum(reference <= observed for reference in references)
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
    statistic: str = "total",
) -> float:
    """The largest :func:`split_p_value` (against ``null``, of ``statistic``) over the
    neighbouring pairs of the ``k`` clusters of ``labels`` (n,) in [0, k) on ``x`` (n, p):
    small when every split is real. NaN for fewer than 2 non-empty clusters. Every pair's
    references follow ``seed`` and the pair."""
    _check_options(null, statistic)
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
            statistic,
        )
        for i, j in neighbour_pairs(centres)
    ]
    return max(p_values)
