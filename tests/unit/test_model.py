"""CAE shapes, checkpoints and device choice."""

from __future__ import annotations

import pytest
import torch

from lungclam.errors import LungclamError
from lungclam.model import (
    ConvAutoencoder,
    ModelSpec,
    build_autoencoder,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)


@pytest.mark.parametrize(
    ("spec", "map_shape"),
    [
        (ModelSpec((64, 64)), (128, 16, 16)),  # the paper's 2D model
        (ModelSpec((88, 88, 88), strides=(2, 2, 2)), (128, 11, 11, 11)),  # the paper's 3D model
        (ModelSpec((37, 50), strides=(2, 1, 2), kernel=3), (128, 8, 11)),
        (ModelSpec((20, 24, 18), channels=(4, 8), strides=(2, 2), latent_dim=5), (8, 5, 6, 4)),
    ],
)
def test_autoencoder_shapes(spec: ModelSpec, map_shape: tuple[int, ...]) -> None:
    model = ConvAutoencoder(spec)
    x = torch.randn(2, 1, *spec.input_shape)
    assert model.encode_maps(x).shape[1:] == map_shape
    z, recon = model(x)
    assert z.shape == (2, spec.latent_dim)
    assert recon.shape == x.shape


def test_spec_rejects_impossible_settings() -> None:
    with pytest.raises(LungclamError, match="too small"):
        ModelSpec((4, 4), strides=(2, 2, 2))
    with pytest.raises(LungclamError, match="same length"):
        ModelSpec((32, 32), channels=(8, 16), strides=(2,))
    with pytest.raises(LungclamError, match="2 or 3"):
        ModelSpec((32,))


def test_checkpoint_roundtrip_with_weights_only(tmp_path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec((16, 16), channels=(4, 8), strides=(2, 2), latent_dim=3)
    model = ConvAutoencoder(spec)
    centroids = torch.randn(3, 3)
    save_checkpoint(tmp_path / "m.pt", model, centroids, meta={"epochs": 2})
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.spec == spec and ckpt.meta == {"epochs": 2}
    torch.testing.assert_close(ckpt.centroids, centroids)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(build_autoencoder(ckpt)(x)[1], model(x)[1])


def test_checkpoint_bytes_repeat(tmp_path) -> None:
    """Two saves of one model are the same file (runs compare by checksum, and the study
    bundle's manifest holds one)."""
    torch.manual_seed(0)
    model = ConvAutoencoder(ModelSpec((16, 16), channels=(4, 8), strides=(2, 2), latent_dim=3))
    for name in ("a.pt", "b.pt"):
        save_checkpoint(tmp_path / name, model, torch.ones(2, 3), meta={"epochs": 2})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_checkpoint_refuses_pickled_code(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"spec": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(LungclamError, match="cannot read model checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_device_auto_falls_back_to_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(LungclamError, match="no CUDA"):
            resolve_device("cuda")
