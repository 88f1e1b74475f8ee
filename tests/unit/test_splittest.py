"""The split test (lungclam.splittest) and the resampling rules' use of it: hand-made data
where a split is real (separated blobs) or is a cut through one group (a Gaussian, a
continuum with a gap no wider than its noise). Runs in a few seconds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from lungclam.kselect import Resampling, choices_table, choose, resampling_from_config, resampling_table, skipped_ks
from lungclam.splittest import (
    axis_index,
    neighbour_pairs,
    soft_thresholded_variances,
    split_p_value,
    two_means_index,
    weakest_split_p,
)

SMALL = Resampling(n_replicas=12, fraction=0.8, n_splits=4, n_init=3)
#: The smallest p-value of 100 references, doubled when "both" statistics are tested.
SMALLEST_P = 2 / 101 + 1e-12
STATISTICS = ["total", "axis", "both"]


def two_blobs(separation: float, per: int = 40, p: int = 10, seed: int = 0) -> np.ndarray:
    """Two unit-sd Gaussian blobs of ``per`` points in ``p`` dimensions, ``separation``
    apart on the first axis: (2 * per, p)."""
    x = np.random.default_rng(seed).normal(size=(2 * per, p))
    x[:per, 0] += separation
    return x


def test_two_means_index_by_hand() -> None:
    # two tight pairs far apart: the split leaves almost nothing within
    x = np.array([[0.0, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1]])
    assert two_means_index(x) == pytest.approx(0.01 / (0.01 + 100), rel=1e-6)
    # an even 1-D grid: halves leave a quarter of the variance (n^2 - 4) / (4 (n^2 - 1))
    grid = np.linspace(0, 1, 200)[:, None]
    assert two_means_index(grid) == pytest.approx((200**2 - 4) / (4 * (200**2 - 1)), rel=1e-6)
    assert two_means_index(np.ones((5, 3))) == 1.0  # nothing to split


@pytest.mark.parametrize("statistic", STATISTICS)
def test_separated_blobs_split_and_one_gaussian_does_not(statistic: str) -> None:
    assert split_p_value(two_blobs(8.0), 100, 0, statistic=statistic) <= SMALLEST_P
    for seed in range(5):
        one = np.random.default_rng(seed).normal(size=(40, 5))
        assert split_p_value(one, 100, seed, statistic=statistic) > 0.1, seed
    assert split_p_value(np.zeros((2, 3))) == 1.0  # too few samples to test


def flat_spread(seed: int, gap: float = 0.0, n: int = 300) -> np.ndarray:
    """``n`` points spread evenly over [0, 1] on the first axis (the severity of one
    pattern, say), with a gap of ``gap`` opened at 0.5, and a little noise on three more."""
    g = np.random.default_rng(seed)
    x = np.column_stack([g.uniform(0, 1, n), 0.05 * g.normal(size=(n, 3))])
    x[x[:, 0] > 0.5, 0] += gap
    return x


@pytest.mark.parametrize("statistic", STATISTICS)
def test_the_uniform_null_needs_a_gap_where_the_gaussian_splits_an_even_spread(statistic: str) -> None:
    for seed in range(5):
        flat = flat_spread(seed)
        # an even spread has a smaller 2-means index than any Gaussian sample of its size
        assert split_p_value(flat, 100, seed, statistic=statistic) <= SMALLEST_P, seed
        assert split_p_value(flat, 100, seed, null="uniform", statistic=statistic) > 0.2, seed
        gap = flat_spread(seed, gap=0.3)
        assert split_p_value(gap, 100, seed, null="uniform", statistic=statistic) <= SMALLEST_P, seed
        one = np.random.default_rng(seed).normal(size=(40, 5))
        assert split_p_value(one, 100, seed, null="uniform", statistic=statistic) > 0.2, seed
    assert split_p_value(two_blobs(8.0), 100, 0, null="uniform", statistic=statistic) <= SMALLEST_P
    with pytest.raises(ValueError, match="unknown split-test null 'flat'"):
        split_p_value(flat_spread(0), null="flat")
    with pytest.raises(ValueError, match="unknown split-test statistic 'sum'"):
        split_p_value(flat_spread(0), statistic="sum")


def hidden_split(seed: int, separation: float = 1.5, per: int = 50, p: int = 40) -> np.ndarray:
    """Two groups of ``per`` points ``2 * separation`` apart on the first axis (sd 0.3
    within), unit-sd noise on ``p - 1`` more axes: the split holds 6 % of the variance, so
    the 2-means index over all features barely shows it (2 * per, p)."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(2 * per, p))
    x[:, 0] = np.repeat([-separation, separation], per) + 0.3 * g.normal(size=2 * per)
    return x


def test_axis_index_by_hand() -> None:
    # one axis: the same as the 2-means index, a quarter for an even grid
    grid = np.linspace(0, 1, 200)[:, None]
    assert axis_index(grid) == pytest.approx(two_means_index(grid), rel=1e-9)
    assert axis_index(np.ones((5, 3))) == 1.0
    # two tight groups along an axis with 6 % of the variance
    x = hidden_split(0)
    assert axis_index(x) < 0.15 < 0.9 < two_means_index(x)


@pytest.mark.parametrize("null", ["gaussian", "uniform"])
def test_the_axis_statistic_finds_a_split_the_total_index_misses(null: str) -> None:
    for seed in range(2):
        x = hidden_split(seed)
        assert split_p_value(x, 100, seed, null, "axis") == pytest.approx(1 / 101), seed
        assert split_p_value(x, 100, seed, null, "both") == pytest.approx(2 / 101), seed
        assert split_p_value(x, 100, seed, null, "total") > 0.5, seed
        # the same features with no split: one group
        one = hidden_split(seed, separation=0.0)
        assert min(split_p_value(one, 100, seed, null, statistic) for statistic in ("axis", "both")) > 0.1, seed


def test_auto_tests_along_the_axis_only_where_samples_outnumber_features() -> None:
    many = hidden_split(0)  # 100 points, 40 features
    few = hidden_split(0, per=10, p=40)  # 20 points
    for x, chosen in ((many, "axis"), (few, "total")):
        assert split_p_value(x, 50, 3, "uniform", "auto") == split_p_value(x, 50, 3, "uniform", chosen)
    assert split_p_value(many, 50, 3, "uniform", "auto") != split_p_value(many, 50, 3, "uniform", "total")


def test_soft_thresholded_variances_undo_the_spread_of_noise_eigenvalues() -> None:
    noise = np.random.default_rng(0).normal(size=(20, 60))  # n < p: sample eigenvalues 0 to ~5
    centred = noise - noise.mean(axis=0)
    variances = soft_thresholded_variances(centred)
    assert variances.shape == (60,)
    assert variances.sum() == pytest.approx(float((centred**2).sum()) / 20)  # total kept
    assert variances.max() / variances.min() < 1.2  # nearly isotropic, as the source
    # a real direction of large variance stays above the floor
    spiked = centred.copy()
    spiked[:, 0] += np.repeat([-5.0, 5.0], 10)
    spiked_variances = soft_thresholded_variances(spiked - spiked.mean(axis=0))
    assert spiked_variances[0] > 10 * np.median(spiked_variances)


def test_the_split_statistic_reaches_the_table_from_the_config() -> None:
    x = np.vstack([hidden_split(0, per=30, p=20), hidden_split(1, per=30, p=20) + 6.0])  # four groups
    split_p = {}
    for statistic in ("total", "axis"):
        resampling = resampling_from_config({"split_statistic": statistic, "n_replicas": 12, "n_splits": 4})
        assert resampling.split_statistic == statistic
        split_p[statistic] = resampling_table(x, [4], seed=0, resampling=resampling).set_index("k")["split_p"]
    assert split_p["axis"][4] <= 0.05 < split_p["total"][4]
    assert resampling_from_config({}).split_statistic == Resampling().split_statistic


def test_the_split_null_reaches_the_table_from_the_config() -> None:
    x = np.vstack([flat_spread(0, n=60), flat_spread(1, n=60) + [3.0, 0, 0, 0]])  # two even spreads
    by_null = {}
    for null in ("gaussian", "uniform"):
        resampling = resampling_from_config(
            {"split_null": null, "split_statistic": "total", "n_replicas": 12, "n_splits": 4}
        )
        assert resampling.split_null == null
        by_null[null] = resampling_table(x, [2, 4], seed=0, resampling=resampling).set_index("k")["split_p"]
    # K = 2 are the two spreads; K = 4 cuts each of them in half, a cut only the Gaussian takes
    assert by_null["gaussian"][2] == by_null["uniform"][2] == pytest.approx(1 / 101)
    assert by_null["gaussian"][4] <= 0.05 < by_null["uniform"][4]
    assert resampling_from_config({}).split_null == Resampling().split_null == "uniform"


def test_split_p_value_is_seeded() -> None:
    x = two_blobs(3.0)
    assert split_p_value(x, 50, 7) == split_p_value(x, 50, 7)


def test_neighbour_pairs_are_the_nearest_centroids() -> None:
    centres = np.array([[0.0], [1.0], [5.0], [5.5]])
    assert neighbour_pairs(centres) == [(0, 1), (2, 3)]
    assert neighbour_pairs(np.array([[0.0], [1.0], [3.0]])) == [(0, 1), (1, 2)]
    assert neighbour_pairs(np.zeros((1, 2))) == []


@pytest.mark.parametrize("statistic", STATISTICS)
def test_weakest_split_finds_a_cut_through_one_blob(statistic: str) -> None:
    x = np.vstack([two_blobs(10.0, per=20, p=6), np.random.default_rng(1).normal(size=(20, 6)) + 20.0])
    truth = np.repeat([0, 1, 2], 20)
    assert weakest_split_p(x, truth, 3, statistic=statistic) <= SMALLEST_P
    # cut the third blob in two along its first axis: that pair is no more apart than
    # one Gaussian group
    cut = truth.copy()
    third = np.flatnonzero(truth == 2)
    cut[third[x[third, 0] > np.median(x[third, 0])]] = 3
    assert weakest_split_p(x, cut, 4, statistic=statistic) > 0.05
    assert np.isnan(weakest_split_p(x, np.zeros(60, dtype=int), 1))


def blobs_and_continuum(seed: int = 6) -> np.ndarray:
    """Two unit-sd blobs of 12 (6 dimensions, 8 apart) and a continuum of 16 points along
    the fourth axis from -6 to 6 with a gap of 2 in the middle, unit-sd noise on every
    axis: the gap is real in the sample, so k-means at K = 4 cuts the continuum there in
    every subsample, but the halves are no more apart than one Gaussian group's."""
    rng = np.random.default_rng(seed)
    x = np.zeros((40, 6))
    x[12:24, 1] = 8.0
    x[:12, 0] = 8.0
    x[24:, 2] = 8.0
    x[24:, 3] = np.r_[np.linspace(-6, -1, 8), np.linspace(1, 6, 8)]
    return x + rng.normal(size=x.shape)


@pytest.mark.parametrize("null", ["gaussian", "uniform"])
@pytest.mark.parametrize("statistic", STATISTICS)
def test_reproducibility_rules_skip_a_cut_through_a_continuum(null: str, statistic: str) -> None:
    resampling = dataclasses.replace(SMALL, split_null=null, split_statistic=statistic)
    table = resampling_table(blobs_and_continuum(), range(2, 6), seed=6, resampling=resampling, n_init=5)
    rows = table.set_index("k")
    assert rows.loc[3, "split_p"] <= 0.05 < rows.loc[4, "split_p"]
    assert rows.loc[4, "stability"] >= 0.99  # the cut reproduces as well as the truth
    for method in ("most_stable", "prediction_strength"):
        assert choose(table, method).k == 3, method
        assert choose(table, method, {"max_split_p": 1.0}).k == 4, method
    assert {4, 5} <= set(skipped_ks(table)) and 3 not in skipped_ks(table)
    assert skipped_ks(table, {"max_split_p": 1.0}) == []
    choices = choices_table(table, "most_stable").set_index("method")
    assert choices.loc["most_stable", "skipped_k"] == ",".join(map(str, skipped_ks(table)))


def test_split_check_falls_back_when_no_k_passes_and_ignores_old_tables() -> None:
    base = {"k": [2, 3, 4], "stability": [0.99, 0.97, 1.0], "smallest_cluster": [0.3, 0.2, 0.15]}
    # no K passes the split test: the size check alone decides
    assert choose(pd.DataFrame(base | {"split_p": [0.2, 0.3, 0.4]}), "most_stable").k == 4
    assert skipped_ks(pd.DataFrame(base | {"split_p": [0.2, 0.3, 0.4]})) == []
    # the size check comes first: K = 4's cluster is too small, K = 3 is a weak split
    table = pd.DataFrame(base | {"smallest_cluster": [0.3, 0.2, 0.05], "split_p": [0.01, 0.3, 0.01]})
    assert choose(table, "most_stable").k == 2 and skipped_ks(table) == [3, 4]
    # a table written before the column existed: as before
    assert choose(pd.DataFrame(base), "most_stable").k == 4


def three_groups_and_a_close_pair(seed: int = 1) -> np.ndarray:
    """Four unit-sd Gaussian blobs of 60 points in 10 dimensions: three 12 apart, and a
    fourth 4 from the third, close enough that subsamples disagree on a few points
    between them, so their merge reproduces better than the pair: (240, 10)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((4, 10))
    centres[1, 0] = 12.0
    centres[2:, 1] = 12.0
    centres[3, 2] = 4.0
    return np.vstack([centre + rng.normal(size=(60, 10)) for centre in centres])


def test_stable_split_keeps_a_real_pair_that_reproduces_less_well_than_its_merge() -> None:
    table = resampling_table(three_groups_and_a_close_pair(), range(2, 6), seed=1, resampling=SMALL, n_init=3)
    rows = table.set_index("k")
    # the premise: K = 4 passes the split test and reproduces, but below most_stable's line
    assert rows.loc[4, "split_p"] <= 0.05 < rows.loc[5, "split_p"]
    assert 0.9 <= rows.loc[4, "stability"] < rows.loc[[2, 3], "stability"].max() - 0.03
    assert choose(table, "most_stable").k == 3  # the merge
    assert choose(table, "stable_split").k == choose(table, "stability").k == 4
    choices = choices_table(table, "stable_split").set_index("method")
    assert choices.loc["stable_split", "default"] and choices.loc["stable_split", "k"] == 4


def test_stable_split_follows_most_stable_where_no_split_is_vetted() -> None:
    base = {"k": [2, 3, 4, 5], "stability": [1.0, 0.99, 0.95, 0.92], "smallest_cluster": [0.5, 0.3, 0.2, 0.15]}
    vetted = pd.DataFrame(base | {"split_p": [0.01, 0.01, 0.01, 0.3]})
    assert choose(vetted, "stable_split").k == choose(vetted, "stability").k == 4
    # no K passes the test: nothing vets an over-split, so the tolerance below the best decides
    unvetted = pd.DataFrame(base | {"split_p": [0.2, 0.3, 0.4, 0.5]})
    assert choose(unvetted, "stability").k == 5
    assert choose(unvetted, "stable_split").k == choose(unvetted, "most_stable").k == 3
    # the test turned off, or a table written before it existed: the same
    assert choose(vetted, "stable_split", {"max_split_p": 1.0}).k == 3
    assert choose(pd.DataFrame(base), "stable_split").k == 3
    # a K the size check skips does not count as a passed split
    sized = pd.DataFrame(base | {"smallest_cluster": [0.5, 0.3, 0.2, 0.05], "split_p": [0.2, 0.3, 0.4, 0.01]})
    assert choose(sized, "stability").k == 4
    assert choose(sized, "stable_split").k == choose(sized, "most_stable").k == 3
