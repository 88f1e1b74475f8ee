"""Clustering layer: eq. 4 and eq. 7 on hand-computed cases, and the clustering phase."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from lungclam.dec import (
    ClusterGuard,
    clusters_table,
    fit_clusters,
    soft_assignment,
    target_distribution,
    within_cluster_scale,
)
from lungclam.device import seed_everything
from lungclam.model import ConvAutoencoder, ModelSpec
from lungclam.train import embed_images, pretrain, reconstruction_error


def test_soft_assignment_hand_computed() -> None:
    # distances^2 to the two centroids: 0 and 1 -> kernels 1 and 1/2 -> q = 2/3, 1/3
    q = soft_assignment(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(q, torch.tensor([[2 / 3, 1 / 3]]))
    # equidistant from both centroids -> 1/2 each; three centroids at d^2 = 0, 1, 3
    q = soft_assignment(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
    torch.testing.assert_close(q, torch.tensor([[0.5, 0.5]]))
    q = soft_assignment(torch.tensor([[0.0]]), torch.tensor([[0.0], [1.0], [3.0**0.5]]))
    kernels = torch.tensor([1.0, 1 / 2, 1 / 4])
    torch.testing.assert_close(q[0], kernels / kernels.sum())


def test_target_distribution_hand_computed() -> None:
    q = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    # cluster frequencies 1.5 and 0.5; q^2/f = [.54, .02] and [.24, .32]; rows renormalised
    expected = torch.tensor([[0.54 / 0.56, 0.02 / 0.56], [0.24 / 0.56, 0.32 / 0.56]])
    p = target_distribution(q)
    torch.testing.assert_close(p, expected)
    # sharpening: a confident row gets more confident
    assert p[0, 0] > q[0, 0]


def _two_group_images(n_per_group: int = 12, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with a bright 4x4 block top-left (group 0) or bottom-right (group 1)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.2, 0.05, (2 * n_per_group, 1, size, size)).astype(np.float32)
    truth = np.repeat([0, 1], n_per_group)
    for i, g in enumerate(truth):
        r = slice(2, 6) if g == 0 else slice(size - 6, size - 2)
        images[i, 0, r, r] += 0.7
    return images, truth


def _fit(seed: int = 0):
    images, truth = _two_group_images()
    device = torch.device("cpu")
    seed_everything(seed, device)
    model = ConvAutoencoder(ModelSpec((16, 16), channels=(4, 8), strides=(2, 2), latent_dim=4))
    history = pretrain(model, images, epochs=25, batch_size=8, learning_rate=3e-3, seed=seed)
    fit = fit_clusters(model, images, 2, max_epochs=15, batch_size=8, update_interval=3, seed=seed)
    return images, truth, history, fit


def test_clustering_phase_recovers_groups_and_repeats_exactly() -> None:
    images, truth, history, fit = _fit()
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert adjusted_rand_score(truth, fit.labels) == 1.0
    np.testing.assert_allclose(fit.q.sum(1), 1.0, atol=1e-6)
    assert {"epoch", "reconstruction", "kl", "loss", "label_change"} <= set(fit.history.columns)
    _, _, history2, fit2 = _fit()
    np.testing.assert_array_equal(history["loss"].to_numpy(), history2["loss"].to_numpy())
    np.testing.assert_allclose(fit.q, fit2.q, atol=1e-6)


def test_pretrain_features_and_cluster_table() -> None:
    images, _ = _two_group_images(4)
    model = ConvAutoencoder(ModelSpec((16, 16), channels=(4,), strides=(2,), latent_dim=3))
    feats = embed_images(model, images)
    assert feats.shape == (8, 3) and np.isfinite(feats).all()
    q = np.array([[0.2, 0.8], [0.7, 0.3]])
    table = clusters_table(["a", "b"], q)
    assert table["cluster"].tolist() == [2, 1]
    assert list(table.columns) == ["subject", "cluster", "q_1", "q_2"]


@pytest.mark.parametrize("bad", [(-1.0, -1.0), (0.0, -5.0)])
def test_normalize_hu_rejects_empty_window(bad) -> None:
    from lungclam.intensity import normalize_hu

    with pytest.raises(ValueError):
        normalize_hu(np.zeros(3), *bad)


def test_embedding_scale_makes_assignments_independent_of_the_embedding_scale() -> None:
    from lungclam.dec import ClusteringModel, embedding_scale

    # pairwise distances 1, 3, 2 -> median 2
    assert embedding_scale(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)
    assert embedding_scale(np.zeros((3, 2))) == 1.0
    torch.manual_seed(0)
    model = ConvAutoencoder(ModelSpec((16, 16), channels=(4,), strides=(2,), latent_dim=3))
    x = torch.rand(5, 1, 16, 16)
    z = model.encode(x).detach().numpy()
    s = embedding_scale(z)
    centroids = torch.from_numpy(z[:2] / s).float()
    q = ClusteringModel(model, centroids, scale=s).assign(x)
    with torch.no_grad():  # the same network with a 10x larger embedding
        model.embedding.weight *= 10
        model.embedding.bias *= 10
    q10 = ClusteringModel(model, centroids, scale=10 * s).assign(x)
    torch.testing.assert_close(q, q10, rtol=1e-4, atol=1e-6)


def test_within_cluster_scale_is_the_mean_distance_to_the_centroid() -> None:
    # Two groups of four points on squares of half-side 1 around (0, 0) and (100, 0): every
    # point lies sqrt(2) from its group's centroid, whatever the distance between groups.
    square = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    features = np.vstack([square, square + [100.0, 0.0]])
    assert within_cluster_scale(features, 2) == pytest.approx(np.sqrt(2.0))
    assert within_cluster_scale(3.0 * features, 2) == pytest.approx(3.0 * np.sqrt(2.0))
    assert within_cluster_scale(np.zeros((5, 3)), 2) == 1.0


def test_guard_violation_rules() -> None:
    guard = ClusterGuard()
    start = np.array([10, 10, 10])
    assert guard.violation(np.array([12, 9, 9]), start, 0.010, 0.008) == ""
    assert "cluster(s) 2 lost" in guard.violation(np.array([20, 0, 10]), start, 0.008, 0.008)
    # a cluster that was empty from the start is not a collapse
    assert guard.violation(np.array([20, 0, 10]), np.array([20, 0, 10]), 0.008, 0.008) == ""
    assert "1.51x the pretrained" in guard.violation(start, start, 0.01208, 0.008)
    assert ClusterGuard(max_reconstruction_growth=None).violation(start, start, 1.0, 0.008) == ""
    assert ClusterGuard(keep_clusters=False).violation(np.array([30, 0, 0]), start, 0.008, 0.008) == ""
    assert ClusterGuard.from_config({"keep_clusters": False, "max_reconstruction_growth": None}) == ClusterGuard(
        keep_clusters=False, max_reconstruction_growth=None
    )
    assert ClusterGuard.from_config({}) == ClusterGuard()
    moved = ClusterGuard(max_moved=0.05)
    assert moved.violation(start, start, 0.008, 0.008, 0.05) == ""
    assert "0.067 of the images left their k-means start" in moved.violation(start, start, 0.008, 0.008, 2 / 30)
    assert ClusterGuard.from_config({"max_moved": 0.1}).max_moved == 0.1


@pytest.fixture(scope="module")
def pretrained_two_groups():
    images, truth = _two_group_images()
    seed_everything(0, torch.device("cpu"))
    model = ConvAutoencoder(ModelSpec((16, 16), channels=(4, 8), strides=(2, 2), latent_dim=4))
    pretrain(model, images, epochs=25, batch_size=8, learning_rate=3e-3, seed=0)
    return model, images, truth


def _aggressive_fit(model, images, learning_rate, gamma, guard):
    import copy

    kwargs = {} if guard == "default" else {"guard": guard}
    fit = fit_clusters(
        copy.deepcopy(model),
        images,
        2,
        max_epochs=15,
        batch_size=8,
        update_interval=3,
        seed=0,
        learning_rate=learning_rate,
        gamma=gamma,
        scale=1.0,
        **kwargs,
    )
    error = reconstruction_error(fit.model.autoencoder, torch.from_numpy(images), 16, torch.device("cpu"))
    return fit, error


def test_guard_keeps_every_cluster_when_the_kl_term_collapses_them(pretrained_two_groups) -> None:
    model, images, truth = pretrained_two_groups
    # a learning rate 1000x the pipeline's lets the KL term pull every image to one centroid
    unguarded, _ = _aggressive_fit(model, images, 0.1, 1.0, None)
    assert np.bincount(unguarded.labels, minlength=2).min() == 0
    guarded, _ = _aggressive_fit(model, images, 0.1, 1.0, "default")
    assert guarded.stop_reason.startswith("guard: cluster(s)")
    assert not guarded.converged
    assert adjusted_rand_score(truth, guarded.labels) == 1.0


def test_guard_stops_before_the_reconstruction_degrades(pretrained_two_groups) -> None:
    model, images, _ = pretrained_two_groups
    before = reconstruction_error(model, torch.from_numpy(images), 16, torch.device("cpu"))
    _, unguarded_error = _aggressive_fit(model, images, 0.05, 10.0, None)
    assert unguarded_error > 1.5 * before
    guarded, guarded_error = _aggressive_fit(model, images, 0.05, 10.0, "default")
    assert "reconstruction MSE rose" in guarded.stop_reason
    assert guarded_error <= 1.5 * before


def test_guard_stops_before_too_many_images_leave_their_start_cluster(pretrained_two_groups) -> None:
    model, images, _ = pretrained_two_groups
    # the collapsing fit above moves half the images off their k-means start
    unguarded, _ = _aggressive_fit(model, images, 0.1, 1.0, None)
    assert (unguarded.labels != unguarded.start_labels).mean() > 0.2
    guard = ClusterGuard(keep_clusters=False, max_reconstruction_growth=None, max_moved=0.1)
    guarded, _ = _aggressive_fit(model, images, 0.1, 1.0, guard)
    assert "left their k-means start cluster" in guarded.stop_reason
    assert (guarded.labels != guarded.start_labels).mean() <= 0.1
    assert guarded.history["moved"].max() <= 0.1
    assert np.bincount(guarded.labels, minlength=2).min() > 0
