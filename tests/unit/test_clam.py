"""CLAM: the batched implementation against a literal per-channel loop, edge cases, and a
saliency sanity check (a trained model's maps must differ from a randomised model's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungclam.clam import assigned_maps, clam_image, iter_clam, upsample
from lungclam.dec import ClusteringModel, fit_clusters
from lungclam.device import seed_everything
from lungclam.model import ConvAutoencoder, ModelSpec
from lungclam.train import pretrain


def _loop_clam(model: ClusteringModel, x: torch.Tensor, k: int) -> torch.Tensor:
    """DESIGN.md's CLAM, one channel and one forward pass at a time, no shortcuts."""
    spatial = tuple(x.shape[1:])
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    with torch.no_grad():
        acts = model.autoencoder.encode_maps(x[None])[0]
        total = torch.zeros(spatial, dtype=torch.float64, device=x.device)
        for h in range(acts.shape[0]):
            up = F.interpolate(acts[h][None, None], size=spatial, mode=mode, align_corners=False)[0, 0]
            span = up.max() - up.min()
            constant = bool(acts[h].max() == acts[h].min())
            mask = (up - up.min()) / span if span > 0 and not constant else torch.zeros_like(up)
            alpha = model.assign((x * mask)[None])[0, k]
            total += float(alpha) * up.double()
        total = torch.relu(total)
        span = total.max() - total.min()
        return ((total - total.min()) / span if span > 0 else torch.zeros_like(total)).float()


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec((24, 24), channels=(8, 16, 24), strides=(2, 1, 2), latent_dim=6),
        ModelSpec((20, 24, 16), channels=(4, 8, 12), strides=(2, 2, 2), latent_dim=5),
    ],
    ids=["2d", "3d"],
)
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_batched_clam_equals_channel_loop(spec: ModelSpec, chunk: int) -> None:
    torch.manual_seed(1)
    model = ClusteringModel(ConvAutoencoder(spec), torch.randn(3, spec.latent_dim) * 0.5).eval()
    for _ in range(2):
        x = torch.rand(1, *spec.input_shape)
        maps, q = clam_image(model, x, chunk_size=chunk)
        assert maps.shape == (3, *spec.input_shape)
        torch.testing.assert_close(q, model.assign(x[None])[0])
        for k in range(3):
            expected = _loop_clam(model, x, k)
            assert float((maps[k] - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("channels_last,in_channels", [(False, 1), (True, 1), (False, 2)])
@pytest.mark.parametrize("chunk", [7, 24, 60])
def test_chunks_that_span_several_images_give_each_image_its_own_maps(
    chunk: int, channels_last: bool, in_channels: int
) -> None:
    """A chunk over H (= 12 here) puts chunk // H images' masks in one pass, and a chunk
    boundary can fall inside an image: every image still gets the channel loop's maps."""
    spec = ModelSpec((20, 24, 16), channels=(4, 8, 12), strides=(2, 2, 2), latent_dim=5, in_channels=in_channels)
    torch.manual_seed(2)
    model = ClusteringModel(ConvAutoencoder(spec), torch.randn(3, spec.latent_dim) * 0.5).eval()
    images = np.random.default_rng(2).random((5, in_channels, *spec.input_shape), dtype=np.float32)
    seen = []
    for i, maps, q in iter_clam(model, images, chunk_size=chunk, channels_last=channels_last):
        seen.append(i)
        x = torch.from_numpy(images[i])
        np.testing.assert_allclose(q, model.assign(x[None])[0].detach().double().numpy(), atol=1e-6)
        for k in range(3):
            assert np.abs(maps[k] - _loop_clam(model, x, k).numpy()).max() <= 1e-5
    assert seen == list(range(5))


def test_constant_channels_give_zero_maps_not_nan() -> None:
    spec = ModelSpec((16, 16), channels=(4, 6), strides=(2, 2), latent_dim=3)
    torch.manual_seed(0)
    model = ClusteringModel(ConvAutoencoder(spec), torch.randn(2, 3))
    last = model.autoencoder.encoder_convs[-2]
    with torch.no_grad():
        last.weight.zero_()  # every channel of A is now its constant bias
    maps, q = clam_image(model.eval(), torch.rand(1, 16, 16))
    assert torch.isfinite(maps).all() and torch.isfinite(q).all()
    assert float(maps.abs().max()) == 0.0


def _disc_images(n_per_group: int = 10, size: int = 24, seed: int = 0):
    """Noisy images with a bright disc on the left (group 0) or the right (group 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.2, 0.03, (2 * n_per_group, 1, size, size)).astype(np.float32)
    truth = np.repeat([0, 1], n_per_group)
    discs = []
    for g in (0, 1):
        cx = 6 if g == 0 else size - 7
        discs.append((xx - cx) ** 2 + (yy - size // 2) ** 2 <= 9)
    for i, g in enumerate(truth):
        images[i, 0][discs[g]] += 0.6
    return images, truth, discs


def _disc_mass(maps: np.ndarray, truth: np.ndarray, discs: list[np.ndarray]) -> np.ndarray:
    """Share of each image's CLAM mass that lies on its own disc."""
    return np.array([maps[i][discs[g]].sum() / maps[i].sum() for i, g in enumerate(truth)])


def test_trained_clam_differs_from_randomised_model() -> None:
    """Saliency sanity check (Adebayo et al. 2018): randomising the weights must change the
    maps; the trained model's maps sit on the disc that separates the groups."""
    images, truth, discs = _disc_images()
    seed_everything(0, torch.device("cpu"))
    spec = ModelSpec((24, 24), channels=(8, 16), strides=(2, 2), latent_dim=4)
    model = ConvAutoencoder(spec)
    pretrain(model, images, epochs=30, batch_size=5, learning_rate=3e-3)
    fit = fit_clusters(model, images, 2, max_epochs=10, batch_size=5, update_interval=4)
    trained = assigned_maps(np.stack([m for _, m, _ in iter_clam(fit.model, images)]), fit.q)
    torch.manual_seed(123)
    random_model = ClusteringModel(ConvAutoencoder(spec), fit.model.centroids.detach())
    randomised = assigned_maps(np.stack([m for _, m, _ in iter_clam(random_model, images)]), fit.q)
    assert float(np.abs(trained - randomised).mean()) > 0.05
    disc_area = float(discs[0].mean())
    own = _disc_mass(trained, truth, discs)
    assert own.mean() > 3 * disc_area
    assert own.mean() > 1.5 * _disc_mass(randomised, truth, discs).mean()


def test_assigned_maps_picks_the_most_probable_cluster_for_one_image_or_a_batch() -> None:
    maps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (N=2, K=3, s=4)
    q = np.array([[0.2, 0.5, 0.3], [0.4, 0.1, 0.4]])  # the second image ties: the first wins
    batch = assigned_maps(maps, q)
    assert np.array_equal(batch, np.stack([maps[0, 1], maps[1, 0]]))
    for i in range(2):
        assert np.array_equal(assigned_maps(maps[i], q[i]), batch[i])


def test_restrict_to_mask_rescales_inside_and_zeros_outside() -> None:
    from lungclam.clam import restrict_to_mask

    maps = np.array([[[0.2, 0.4, 0.9, 1.0]], [[0.5, 0.5, 0.5, 0.1]]], dtype=np.float32)  # (2, 1, 4)
    mask = np.array([[True, True, True, False]])
    out = restrict_to_mask(maps, mask)
    np.testing.assert_allclose(out[0, 0], [0.0, 2 / 7, 1.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(out[1, 0], [0.0, 0.0, 0.0, 0.0])  # constant inside -> zero, no NaN


@pytest.mark.parametrize(
    "shape, size",
    [
        ((1, 5, 11, 11, 11), (88, 88, 88)),
        ((2, 3, 7, 9, 5), (30, 40, 22)),
        ((1, 4, 16, 16), (64, 64)),
        ((3, 2, 5, 7), (13, 29)),
        ((1, 2, 6, 6), (3, 3)),
    ],
)
def test_separable_upsample_equals_torch_interpolate(shape, size) -> None:
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    mode = "bilinear" if len(shape) == 4 else "trilinear"
    reference = F.interpolate(maps, size=size, mode=mode, align_corners=False)
    assert torch.allclose(upsample(maps, size), reference, atol=1e-6)
    channels_last = maps.to(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    assert torch.allclose(upsample(channels_last, size), reference, atol=1e-6)
