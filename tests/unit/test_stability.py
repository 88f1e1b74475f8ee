"""Resampling criteria for K (stability, prediction strength, PAC), the rules that turn
them into a K with a margin, label alignment and per-subject confidence. Small synthetic
data with a known number of clusters; the file runs in well under a minute."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungclam.kselect import Resampling, choices_table, choose, resampling_table, select_k, skipped_ks
from lungclam.stability import (
    align_labels,
    confidence,
    consensus_matrix,
    pac,
    prediction_strength,
    replica_confidence,
    replicate_kmeans,
    stability_criteria,
    subsample_indices,
)


def blobs(k: int, per: int = 12, p: int = 6, separation: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` spherical Gaussian clusters of ``per`` points in ``p`` dimensions (unit sd),
    centres ``separation`` apart on the coordinate axes. Returns (x (n, p), truth (n,))."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(k), per)
    centres = np.zeros((k, p))
    for c in range(k):
        centres[c, c % p] = separation * (1 + c // p)
    return centres[truth] + rng.normal(size=(len(truth), p)), truth


SMALL = Resampling(n_replicas=12, fraction=0.8, n_splits=4, n_init=3)


@pytest.mark.parametrize("true_k", [2, 3, 4])
def test_resampling_criteria_find_the_true_k_of_separated_blobs(true_k: int) -> None:
    x, _ = blobs(true_k, per=20)
    subsets = subsample_indices(len(x), SMALL.n_replicas, SMALL.fraction, seed=0)
    rows = [stability_criteria(x, k, subsets, n_init=SMALL.n_init, n_splits=SMALL.n_splits)[0] for k in range(2, 7)]
    table = pd.DataFrame([vars(row) for row in rows])
    for method in ("stability", "prediction_strength", "pac"):
        assert choose(table, method).k == true_k, (method, table)
    at_true = table.set_index("k").loc[true_k]
    assert at_true["stability"] > 0.95 and at_true["prediction_strength"] > 0.9 and at_true["pac"] < 0.05
    # one more cluster than there is splits a blob arbitrarily: it does not reproduce
    above = table.set_index("k").loc[true_k + 1]
    assert above["stability"] < at_true["stability"] and above["prediction_strength"] < 0.8


def test_criteria_are_seeded_and_see_no_structure_in_noise() -> None:
    x = np.random.default_rng(3).normal(size=(40, 5))
    subsets = subsample_indices(40, 10, 0.8, seed=1)
    first, _ = stability_criteria(x, 4, subsets, seed=1, n_init=3, n_splits=3)
    again, _ = stability_criteria(x, 4, subsample_indices(40, 10, 0.8, seed=1), seed=1, n_init=3, n_splits=3)
    assert first == again
    assert first.prediction_strength < 0.8 and first.pac > 0.05


def test_subsamples_are_seeded_distinct_draws() -> None:
    a = subsample_indices(20, 5, 0.75, seed=2)
    assert [len(s) for s in a] == [15] * 5 and all(len(set(s)) == 15 and s.max() < 20 for s in a)
    assert all(np.array_equal(s, t) for s, t in zip(a, subsample_indices(20, 5, 0.75, seed=2)))
    assert not all(np.array_equal(s, t) for s, t in zip(a, subsample_indices(20, 5, 0.75, seed=3)))
    with pytest.raises(ValueError, match="fraction"):
        subsample_indices(20, 5, 0.0, seed=0)


def test_consensus_and_pac_by_hand() -> None:
    # 4 samples, 2 subsamples; labels -1 = not drawn
    replicas = replicate_kmeans(np.array([[0.0], [0.1], [5.0], [5.1]]), 2, [np.array([0, 1, 2]), np.array([1, 2, 3])])
    m = consensus_matrix(replicas)
    assert m[0, 1] == 1.0 and m[1, 2] == 0.0 and m[2, 3] == 1.0
    assert np.isnan(m[0, 3])  # never drawn together
    assert pac(np.array([[1, 0.5, 0.95], [0.5, 1, 0.05], [0.95, 0.05, 1]])) == pytest.approx(1 / 3)


def test_prediction_strength_is_one_for_one_cluster_and_low_for_a_split() -> None:
    x, _ = blobs(2, per=20)
    assert prediction_strength(x, 1) == (1.0, 0.0)
    assert prediction_strength(x, 2, n_splits=3, n_init=3)[0] > 0.95
    assert prediction_strength(x, 4, n_splits=3, n_init=3)[0] < 0.8


def test_align_labels_undoes_a_permutation_and_numbers_extra_clusters() -> None:
    reference = np.array([0, 0, 1, 1, 2, 2])
    assert np.array_equal(align_labels(reference, np.array([2, 2, 0, 0, 1, 1])), reference)
    # one sample disagrees: the majority still decides the mapping
    assert np.array_equal(align_labels(reference, np.array([5, 5, 7, 7, 9, 7])), [0, 0, 1, 1, 2, 1])
    # more clusters than the reference: the unmatched one gets a new number
    out = align_labels(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 2, 1, 1, 1]))
    assert np.array_equal(out, [0, 0, 2, 1, 1, 1])


def test_confidence_counts_the_agreeing_replicas() -> None:
    reference = np.array([0, 0, 1, 1])
    replicas = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1]])
    np.testing.assert_allclose(confidence(reference, replicas), [1.0, 1.0, 1.0, 0.75])


def test_replica_confidence_is_high_for_blobs_and_low_for_a_point_between() -> None:
    x, truth = blobs(2, per=15)
    x = np.vstack([x, (x[truth == 0].mean(0) + x[truth == 1].mean(0)) / 2])  # a point half-way
    labels = np.append(truth, 0)
    conf = replica_confidence(x, labels, 2, SMALL, seed=0)
    assert conf[:-1].min() == 1.0 and conf[-1] < 0.9


def _table(**columns: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"k": [2, 3, 4, 5], **columns})


def test_threshold_rule_takes_the_finest_reproducible_k_and_reports_the_margin() -> None:
    table = _table(stability=[1.0, 0.97, 0.85, 0.6])
    choice = choose(table, "stability")
    assert (choice.k, choice.runner_up) == (3, 4)
    assert choice.margin == pytest.approx(0.05)  # 0.9 - 0.85 is closer than 0.97 - 0.9
    choice = choose(_table(stability=[1.0, 0.92, 0.5, 0.4]), "stability")
    assert (choice.k, choice.runner_up) == (3, 2) and choice.margin == pytest.approx(0.02)
    # nothing reaches the threshold: the most stable K, flagged by its runner-up margin
    assert choose(_table(stability=[0.5, 0.7, 0.6, 0.2]), "stability").k == 3
    assert choose(_table(stability=[0.5, 0.7, 0.6, 0.2]), "stability", {"stability": 0.55}).k == 4


def test_most_stable_rule_takes_the_finest_k_within_the_tolerance_of_the_best() -> None:
    # a merge of two true clusters reproduces perfectly (K = 2, 3), the true K = 4 nearly
    # (a simulation embedding): within 0.03 of the best, the finest K wins
    stability = [1.0, 1.0, 0.978, 0.862]
    choice = choose(_table(stability=stability), "most_stable")
    assert (choice.k, choice.runner_up) == (4, 3) and choice.margin == pytest.approx(0.008)
    # with no tolerance only exact ties count: the finest perfect K
    assert choose(_table(stability=stability), "most_stable", {"most_stable": 0.0}).k == 3
    # an over-split K that still passes the threshold rule's 0.9, but 0.036 below the best,
    # is not taken (the "stability" rule would take K = 5 here); its distance is the margin
    choice = choose(_table(stability=[0.938, 0.953, 0.915, 0.917]), "most_stable")
    assert (choice.k, choice.runner_up) == (3, 5) and choice.margin == pytest.approx(0.006)
    assert choose(_table(stability=[0.938, 0.953, 0.915, 0.917]), "stability").k == 5
    # the best K is taken however low the stability (the verdict, not the rule, says shaky)
    assert choose(_table(stability=[0.5, 0.7, 0.6, 0.2]), "most_stable").k == 3


def test_reproducibility_rules_skip_a_k_that_isolates_a_few_outliers() -> None:
    # three blobs of 12 and a pair of outliers: K = 4 gives the pair its own cluster,
    # which every subsample finds again (stability 1.0), but it holds 2 of 38 subjects
    x, _ = blobs(3, per=12)
    pair = np.zeros((2, x.shape[1]))
    pair[:, 5] = [9.0, 9.5]
    x = np.vstack([x, pair])
    table = resampling_table(x, range(2, 7), seed=0, resampling=SMALL, n_init=5)
    shares = table.set_index("k")["smallest_cluster"]
    assert shares[3] == pytest.approx(12 / 38) and shares[4] == pytest.approx(2 / 38)
    for method in ("stability", "most_stable", "prediction_strength", "pac"):
        assert choose(table, method).k == 3, method
        assert choose(table, method, {"min_cluster_share": 0.0}).k == 4, method
    # if no K is large enough, every K is considered
    assert choose(table, "most_stable", {"min_cluster_share": 0.5}).k == 4
    # k_criteria.tsv names the skipped Ks on the size-checked rules only (the silhouettes
    # and the gap are the papers' rules)
    assert skipped_ks(table) == [4, 5, 6]
    choices = choices_table(table, "most_stable").set_index("method")
    assert (choices.loc[["stability", "most_stable", "prediction_strength", "pac"], "skipped_k"] == "4,5,6").all()
    assert choices.loc["most_stable", "default"] and choices.loc["most_stable", "k"] == 3


def test_pac_rule_and_silhouette_margin() -> None:
    assert choose(_table(pac=[0.0, 0.01, 0.2, 0.3]), "pac").k == 3
    choice = choose(_table(silhouette_kmeans=[0.728, 0.713, 0.5, 0.4]), "silhouette_kmeans")
    assert (choice.k, choice.runner_up) == (2, 3) and choice.margin == pytest.approx(0.015)


def test_choices_table_marks_the_default() -> None:
    x, _ = blobs(3)
    table = select_k(x, ks=range(2, 6), n_init=3, n_permutations=2, n_references=3, resampling=SMALL)
    choices = choices_table(table, "stability")
    assert set(choices["method"]) == {
        "silhouette_kmeans",
        "silhouette_sparse_kmeans",
        "gap",
        "stability",
        "most_stable",
        "stable_split",
        "prediction_strength",
        "pac",
    }
    assert choices.loc[choices["default"], "method"].tolist() == ["stability"]
    assert (choices["k"] == 3).all()
