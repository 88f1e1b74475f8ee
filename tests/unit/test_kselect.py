"""Choosing K: sparse k-means, the permutation gap for its L1 bound, the gap statistic,
and silhouettes per K (its figure is tested in test_figures.py). Small synthetic data
only, so the file runs in seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from lungclam.kmeans import kmeans
from lungclam.kselect import (
    Resampling,
    _pca_box_reference,
    choose_l1_bound,
    chosen_k,
    gap_choice,
    gap_statistic,
    select_k,
    sparse_kmeans,
)

#: Resampling criteria at a size that runs in seconds (they are tested in test_stability.py).
FEW = Resampling(n_replicas=4, n_splits=1, n_init=2)


def informative_first_five(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """90 x 50 matrix, 3 clusters of 30 that differ only in features 0-4 (means -3, 0, +3
    in units of the noise sd); features 5-49 are pure noise. Returns (x, true labels)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 50))
    x[:, :5] += np.array([-3.0, 0.0, 3.0])[truth][:, None]
    return x, truth


def blobs(k: int, n_per: int, p: int, seed: int, spread: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` unit-variance Gaussian blobs of ``n_per`` points in ``p`` dimensions whose
    centres lie ``spread`` apart along separate axes. Returns (x (k*n_per, p), labels)."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(k), n_per)
    centres = np.zeros((k, p))
    for c in range(k):
        centres[c, c % p] = spread * (1 + c // p)
    return centres[truth] + rng.normal(size=(k * n_per, p)), truth


def test_kmeans_recovers_blobs_and_shapes() -> None:
    x, truth = blobs(3, 20, 4, seed=1)
    labels, centres = kmeans(x, 3, seed=0, n_init=5)
    assert labels.shape == (60,) and centres.shape == (3, 4)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_sparse_kmeans_with_chosen_bound_finds_the_informative_features() -> None:
    x, truth = informative_first_five()
    bound, table = choose_l1_bound(x, 3, n_permutations=5, seed=0, n_init=5)
    assert list(table.columns) == ["l1_bound", "gap", "gap_sd", "n_nonzero"]
    assert bound in table["l1_bound"].tolist()
    fit = sparse_kmeans(x, 3, bound, seed=0, n_init=5)
    assert fit.weights[:5].sum() / fit.weights.sum() > 0.8
    assert adjusted_rand_score(truth, fit.labels) >= 0.95
    # The default rule: the smallest bound whose gap is within one sd (at the maximum) of
    # the maximum gap. Bounds too small to keep all five informative features lose gap.
    best = table["gap"].idxmax()
    within = table["gap"] >= table.loc[best, "gap"] - table.loc[best, "gap_sd"]
    assert bound == table.loc[within, "l1_bound"].min()
    assert table.loc[best, "n_nonzero"] >= 5
    assert table.loc[0, "gap"] < table.loc[best, "gap"] - 3 * table.loc[best, "gap_sd"]
    by_max, _ = choose_l1_bound(x, 3, bounds=table["l1_bound"], n_permutations=5, seed=0, n_init=5, rule="max")
    assert by_max == table.loc[best, "l1_bound"]


def test_sparse_kmeans_ranks_informative_features_first_at_a_tight_bound() -> None:
    x, _ = informative_first_five(seed=3)
    fit = sparse_kmeans(x, 3, 2.0, seed=0, n_init=5)
    nonzero = np.flatnonzero(fit.weights > 0)
    assert set(nonzero) <= set(range(5))


def test_permutation_gap_is_near_zero_without_clusters() -> None:
    # Pure noise looks like its own permutations: log O(s) falls inside the null spread.
    x = np.random.default_rng(0).normal(size=(40, 10))
    _, table = choose_l1_bound(x, 2, bounds=[1.5, 3.0], n_permutations=10, seed=0, n_init=3)
    assert (table["gap_sd"] > 0).all()
    assert (table["gap"].abs() < 3 * table["gap_sd"]).all()


def test_sparse_silhouette_is_measured_on_the_weighted_features() -> None:
    # 45 noise features swamp the k-means silhouette; sparse k-means drops or down-weights them.
    x, _ = informative_first_five(seed=1)
    row = select_k(x, ks=[3], n_init=5, n_permutations=3, n_references=3, resampling=FEW).iloc[0]
    assert row["silhouette_sparse_kmeans"] > row["silhouette_kmeans"] + 0.3


@pytest.mark.parametrize("bound", [1.0, 1.3, 2.5, 4.0, np.sqrt(20)])
def test_sparse_kmeans_weights_satisfy_the_constraints(bound: float) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 20))
    x[:20, :3] += 2.0
    fit = sparse_kmeans(x, 2, bound, seed=1, n_init=3)
    assert fit.weights.shape == (20,) and fit.labels.shape == (40,)
    assert (fit.weights >= 0).all()
    assert np.linalg.norm(fit.weights) == pytest.approx(1.0, abs=1e-9)
    assert fit.weights.sum() <= bound + 1e-6
    # Either the L1 bound is active (soft-thresholding with delta > 0) or it is slack, and
    # then delta = 0 and every feature with between-cluster spread keeps a weight.
    assert fit.weights.sum() == pytest.approx(bound, abs=1e-6) or (fit.weights > 0).all()
    assert fit.l1_bound == pytest.approx(bound)
    centred = x - x.mean(axis=0)
    within = sum(((x[fit.labels == c] - x[fit.labels == c].mean(axis=0)) ** 2).sum(axis=0) for c in (0, 1))
    assert fit.objective == pytest.approx(float(fit.weights @ ((centred**2).sum(axis=0) - within)))


@pytest.mark.parametrize("bound", [0.99, 0.0, -1.0, np.sqrt(20) + 0.01, float("nan")])
def test_sparse_kmeans_rejects_bounds_outside_one_to_sqrt_p(bound: float) -> None:
    x = np.random.default_rng(0).normal(size=(30, 20))
    with pytest.raises(ValueError, match="l1_bound"):
        sparse_kmeans(x, 2, bound)
    with pytest.raises(ValueError, match="l1_bound"):
        choose_l1_bound(x, 2, bounds=[1.5, bound], n_permutations=2)


def test_gap_statistic_finds_four_separated_blobs() -> None:
    x, _ = blobs(4, 20, 5, seed=2)
    table = gap_statistic(x, range(1, 7), n_references=10, seed=0, n_init=5)
    assert list(table.columns) == ["k", "gap", "gap_sd"]
    assert table["k"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (table["gap_sd"] > 0).all()
    assert gap_choice(table) == 4


def test_gap_reference_box_follows_the_principal_axes() -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, 100)
    diagonal = np.c_[t, t + 0.01 * rng.normal(size=100)]
    reference = _pca_box_reference(diagonal, np.random.default_rng(1))
    assert reference.shape == diagonal.shape
    # An axis-aligned box would fill the square [-1, 1]^2; the rotated one hugs the diagonal.
    assert np.abs(reference[:, 0] - reference[:, 1]).max() < 0.1
    assert reference[:, 0].min() < -0.8 and reference[:, 0].max() > 0.8


def test_gap_is_near_zero_for_k1_on_uniform_data() -> None:
    # Data uniform in a box with distinct side lengths: the reference has the same law, so
    # log W*_1 - log W_1 is about 0 (a reference box of the wrong size shifts it by 2 log c).
    x = np.random.default_rng(0).uniform(size=(100, 3)) * np.array([4.0, 2.0, 1.0])
    table = gap_statistic(x, [1], n_references=10, seed=0, n_init=3)
    assert abs(table.loc[0, "gap"]) < 0.3


def test_gap_statistic_picks_one_cluster_on_a_single_gaussian() -> None:
    x = np.random.default_rng(4).normal(size=(80, 5))
    table = gap_statistic(x, range(1, 6), n_references=10, seed=0, n_init=5)
    assert gap_choice(table) == 1


def test_gap_choice_rule_and_argmax_fallback() -> None:
    # gap(2) = 1.0 >= gap(3) - s_3 = 1.05 - 0.1, and gap(1) = 0.2 < gap(2) - s_2: choose 2.
    table = pd.DataFrame({"k": [1, 2, 3], "gap": [0.2, 1.0, 1.05], "gap_sd": [0.1, 0.1, 0.1]})
    assert gap_choice(table) == 2
    # Strictly rising by more than s: no k passes, so the argmax (the largest k) is chosen.
    rising = pd.DataFrame({"k": [3, 1, 2], "gap": [3.0, 1.0, 2.0], "gap_sd": [0.1, 0.1, 0.1]})
    assert gap_choice(rising) == 3


def test_select_k_table_choice_and_reproducibility() -> None:
    x, _ = blobs(4, 15, 6, seed=5)
    messages: list[str] = []
    kwargs = dict(ks=range(2, 6), seed=3, n_init=5, n_permutations=3, n_references=5, resampling=FEW)
    table = select_k(x, progress=messages.append, **kwargs)
    expected = [
        "k",
        "silhouette_kmeans",
        "silhouette_sparse_kmeans",
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
    ]
    assert list(table.columns) == expected
    assert table["k"].tolist() == [2, 3, 4, 5]
    assert table.set_index("k")["smallest_cluster"][4] == pytest.approx(0.25)  # four blobs of 15
    assert table.set_index("k")["split_p"][4] <= 0.05  # every neighbouring pair of blobs is a real split
    assert len(messages) == 4 and messages[1].startswith("k=3:")
    assert table["silhouette_sparse_kmeans"].between(-1, 1).all()
    assert ((table["n_features_used"] >= 1) & (table["n_features_used"] <= 6)).all()
    assert ((table["l1_bound"] >= 1) & (table["l1_bound"] <= np.sqrt(6) + 1e-9)).all()
    assert chosen_k(table) == 4
    assert chosen_k(table, "silhouette_sparse_kmeans") in {2, 3, 4, 5}
    assert chosen_k(table, "gap") == gap_choice(table[["k", "gap", "gap_sd"]])
    with pytest.raises(ValueError, match="silhouette_kmeans"):
        chosen_k(table, "elbow")
    pd.testing.assert_frame_equal(table, select_k(x, **kwargs))
    # Worker processes (one per k, finishing out of order) give the same table and messages.
    in_workers: list[str] = []
    pd.testing.assert_frame_equal(table, select_k(x, progress=in_workers.append, workers=3, **kwargs), check_exact=True)
    assert in_workers == messages
    # Shifting changes nothing; with standardise=True neither does rescaling columns, and
    # sparse k-means z-scores its input either way.
    shifted = select_k(x - 7.0, **kwargs)
    pd.testing.assert_frame_equal(table, shifted, check_exact=False, rtol=1e-6)
    scale = np.array([1e3, 1.0, 0.01, 5.0, 1.0, 2.0])
    pd.testing.assert_frame_equal(
        select_k(x, standardise=True, **kwargs),
        select_k(x * scale - 7.0, standardise=True, **kwargs),
        check_exact=False,
        rtol=1e-6,
    )
    rescaled = select_k(x * scale, **kwargs)
    sparse_cols = ["silhouette_sparse_kmeans", "l1_bound", "n_features_used"]
    assert not np.allclose(rescaled["silhouette_kmeans"], table["silhouette_kmeans"])
    pd.testing.assert_frame_equal(rescaled[sparse_cols], table[sparse_cols], check_exact=False, rtol=1e-6)


def test_chosen_k_breaks_ties_towards_the_smaller_k() -> None:
    table = pd.DataFrame({"k": [5, 2, 3], "silhouette_kmeans": [0.5, np.nan, 0.5]})
    assert chosen_k(table) == 3


def test_select_k_skips_impossible_k_without_crashing() -> None:
    x, _ = blobs(2, 4, 3, seed=6)  # n = 8
    x[:, 2] = 1.0  # a constant column
    table = select_k(x, ks=[1, 2, 8, 9], seed=0, n_init=2, n_permutations=2, n_references=3, resampling=FEW)
    assert table["k"].tolist() == [1, 2, 8, 9]
    by_k = table.set_index("k")
    assert np.isfinite(by_k.loc[2, "silhouette_kmeans"])
    assert np.isnan(by_k.loc[1, "silhouette_kmeans"]) and np.isfinite(by_k.loc[1, "gap"])
    assert by_k.loc[[8, 9]].isna().all().all()


def test_identical_samples_give_nan_not_an_error() -> None:
    table = select_k(np.ones((6, 3)), ks=[2, 3], n_init=2, n_permutations=2, n_references=2, resampling=FEW)
    assert table[["silhouette_kmeans", "silhouette_sparse_kmeans"]].isna().all().all()


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.nan, "NaN"), (np.inf, "inf")],
)
def test_non_finite_input_raises(bad: float, message: str) -> None:
    x = np.random.default_rng(0).normal(size=(20, 4))
    x[3, 2] = bad
    with pytest.raises(ValueError, match=message):
        select_k(x, ks=[2, 3])
    with pytest.raises(ValueError, match=message):
        sparse_kmeans(x, 2, 1.5)
    with pytest.raises(ValueError, match=message):
        gap_statistic(x, [1, 2])


def test_too_few_samples_raise() -> None:
    with pytest.raises(ValueError, match="at least 3 samples"):
        kmeans(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="at least 3 samples"):
        select_k(np.arange(6.0).reshape(2, 3))


def test_resolve_n_clusters_follows_config_then_table() -> None:
    from lungclam.kselect import resolve_n_clusters

    table = pd.DataFrame({"k": [2, 3, 4], "chosen": [False, True, False]})
    assert resolve_n_clusters("auto", table) == 3
    assert resolve_n_clusters(5, table) == 5
    with pytest.raises(ValueError, match="chosen"):
        resolve_n_clusters("auto", table.assign(chosen=False))
    with pytest.raises(ValueError, match="at least 2"):
        resolve_n_clusters(1, table)
