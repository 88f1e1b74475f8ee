"""lungclam.cluster_means: the per-cluster mean maps the rules write and the figures draw."""

from __future__ import annotations

import numpy as np

from lungclam.cluster_means import cluster_mean, cluster_means


def test_cluster_mean_is_the_voxel_wise_mean_of_the_members() -> None:
    rng = np.random.default_rng(0)
    members = [rng.random((2, 3, 4), dtype=np.float32) for _ in range(3)]
    mean = cluster_mean(members, (2, 3, 4))
    assert mean.dtype == np.float32
    assert np.allclose(mean, (members[0] + members[1] + members[2]) / 3, atol=1e-7)


def test_an_empty_cluster_is_a_zero_map_of_the_given_shape() -> None:
    empty = cluster_mean([], (2, 3, 4))
    assert empty.shape == (2, 3, 4) and not empty.any()


def test_cluster_means_reports_every_cluster_asked_for_in_order() -> None:
    arrays = {"a": np.full((2, 2), 1.0), "b": np.full((2, 2), 3.0), "c": np.full((2, 2), 8.0)}
    labels = {"a": 2, "b": 2, "c": 3}
    means = cluster_means(arrays, labels, [1, 2, 3])
    assert list(means) == [1, 2, 3]
    assert not means[1].any()
    assert np.array_equal(means[2], np.full((2, 2), 2.0)) and np.array_equal(means[3], arrays["c"])
