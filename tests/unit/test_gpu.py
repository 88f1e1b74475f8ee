"""The model stages on a CUDA GPU: the same maps as the literal loop, bf16 close to fp32,
deterministic pretraining that repeats bit for bit, and device auto picking the GPU.
Marked gpu; skipped, saying so, where torch sees no CUDA GPU (run with -m gpu there)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from lungclam import clam, clam_cuda
from lungclam.clam import _is_constant, clam_image, iter_clam
from lungclam.dec import ClusteringModel
from lungclam.device import seed_everything
from lungclam.model import ConvAutoencoder, ModelSpec, resolve_device
from lungclam.train import pretrain
from tests.unit.test_clam import _loop_clam

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU visible to torch (torch.cuda.is_available() is False)"
    ),
]

CUDA = torch.device("cuda")
PAPER_2D = ModelSpec((64, 64))
PAPER_3D = ModelSpec((88, 88, 88), strides=(2, 2, 2))


@contextlib.contextmanager
def _full_fp32():
    """TF32 off for cuDNN and matmuls (on by default for convolutions on Ampere and later,
    which round inputs to 10 mantissa bits): fp32 on both sides of a 1e-5 comparison."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _random_model(spec: ModelSpec, k: int = 3) -> ClusteringModel:
    """Random CAE weights; centroids at the embeddings of k random images (q not uniform)."""
    torch.manual_seed(0)
    autoencoder = ConvAutoencoder(spec).eval()
    with torch.inference_mode():
        centroids = autoencoder.encode(torch.rand(k, 1, *spec.input_shape))
    return ClusteringModel(autoencoder, centroids.clone()).eval().to(CUDA)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec((24, 24), channels=(8, 16, 24), strides=(2, 1, 2), latent_dim=6),
        ModelSpec((20, 24, 16), channels=(4, 8, 12), strides=(2, 2, 2), latent_dim=5),
    ],
    ids=["2d", "3d"],
)
@pytest.mark.parametrize("chunk", [1, 5, 128])
def test_batched_clam_equals_channel_loop_on_cuda(spec: ModelSpec, chunk: int) -> None:
    model = _random_model(spec)
    with _full_fp32():
        for _ in range(2):
            x = torch.rand(1, *spec.input_shape, device=CUDA)
            maps, _ = clam_image(model, x, chunk_size=chunk)
            for k in range(3):
                assert float((maps[k] - _loop_clam(model, x, k)).abs().max()) <= 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
def test_clam_of_several_images_per_pass_equals_channel_loop_on_cuda(channels_last: bool) -> None:
    spec = ModelSpec((24, 24), channels=(8, 16, 24), strides=(2, 1, 2), latent_dim=6)
    model = _random_model(spec)
    images = np.random.default_rng(1).random((5, 1, *spec.input_shape), dtype=np.float32)
    with _full_fp32():
        for i, maps, _ in iter_clam(model, images, 60, CUDA, channels_last=channels_last):
            x = torch.from_numpy(images[i]).to(CUDA)
            for k in range(3):
                assert np.abs(maps[k] - _loop_clam(model, x, k).cpu().numpy()).max() <= 1e-5


@pytest.mark.parametrize("spec,n", [(PAPER_2D, 4), (PAPER_3D, 1)], ids=["2d", "3d"])
def test_bf16_maps_within_0_03_of_fp32(spec: ModelSpec, n: int) -> None:
    model = _random_model(spec)
    images = np.random.default_rng(0).random((n, 1, *spec.input_shape), dtype=np.float32)
    fp32 = np.stack([maps for _, maps, _ in iter_clam(model, images, device=CUDA)])
    bf16 = np.stack([maps for _, maps, _ in iter_clam(model, images, device=CUDA, mixed_precision=True)])
    assert np.abs(bf16 - fp32).max() <= 0.03


needs_fused_masks = pytest.mark.skipif(
    not clam_cuda.enabled(), reason="Triton not importable here (or LUNGCLAM_FUSED_MASKS=0): no fused kernel to test"
)


@needs_fused_masks
@pytest.mark.parametrize(
    "small,big,in_channels",
    [((11, 11, 11), (88, 88, 88), 1), ((16, 16), (64, 64), 1), ((5, 6, 7), (20, 18, 35), 2)],
    ids=["paper-3d", "paper-2d", "uneven-2ch"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_masked_inputs_equal_the_operators_on_cuda(
    small: tuple[int, ...], big: tuple[int, ...], in_channels: int, dtype: torch.dtype, monkeypatch
) -> None:
    generator = torch.Generator(device=CUDA).manual_seed(0)
    acts = torch.randn(8, 1, *small, device=CUDA, generator=generator).to(dtype)
    acts[4] = 0.5  # a constant channel gives a zero mask
    images = torch.rand(2, in_channels, *big, device=CUDA, generator=generator)
    constant = _is_constant(acts, tuple(range(2, acts.ndim))).flatten()
    rows = range(3, 7)  # across the two images' channels (H = 4)
    fused = clam_cuda.masked_inputs(images, rows, acts[3:7], constant[3:7], 4)
    monkeypatch.setitem(clam._fused_masks, "usable", False)
    with _full_fp32():
        reference = clam._masked_inputs(images, rows, acts[3:7].float(), constant[3:7], 4)
    assert fused.dtype == dtype and fused.shape == reference.shape
    assert float(fused[1].abs().max()) == 0.0  # the constant channel
    # fp32: rounding only; bf16: the result rounded to 8 bits (values in [0, 1])
    assert float((fused.float() - reference).abs().max()) <= (1e-6 if dtype == torch.float32 else 4e-3)


@needs_fused_masks
def test_clam_falls_back_to_the_operators_when_the_fused_kernel_fails(monkeypatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(clam_cuda, "masked_inputs", broken)
    monkeypatch.setitem(clam._fused_masks, "usable", True)
    spec = ModelSpec((24, 24), channels=(8, 16, 24), strides=(2, 1, 2), latent_dim=6)
    model = _random_model(spec)
    x = torch.rand(1, *spec.input_shape, device=CUDA)
    with _full_fp32():
        with pytest.warns(RuntimeWarning, match="fused CUDA kernel"):
            maps, _ = clam_image(model, x, chunk_size=5)
        assert clam._fused_masks["usable"] is False
        for k in range(3):
            assert float((maps[k] - _loop_clam(model, x, k)).abs().max()) <= 1e-5


def test_deterministic_pretraining_repeats_bit_for_bit_on_cuda() -> None:
    images = np.random.default_rng(0).random((8, 1, 32, 32, 32), dtype=np.float32)
    runs = []
    for _ in range(2):
        seed_everything(0, CUDA)
        model = ConvAutoencoder(ModelSpec((32, 32, 32), channels=(8, 16, 32), strides=(2, 2, 2), latent_dim=8))
        history = pretrain(model, images, epochs=3, batch_size=4, seed=0, device=CUDA)
        runs.append((history["loss"].tolist(), [t.detach().cpu() for t in model.state_dict().values()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_device_auto_picks_cuda() -> None:
    assert resolve_device("auto").type == "cuda"
