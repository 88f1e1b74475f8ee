"""The speed benchmark's baseline (benchmarks/clam_speed.py's per-channel loop) must compute
what lungclam's CLAM computes, or its speed comparison would not be of equal work."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import torch

from lungclam.clam import clam_image
from lungclam.dec import ClusteringModel
from lungclam.model import ConvAutoencoder, ModelSpec

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "clam_speed.py"


@functools.cache
def _load_script():
    spec = importlib.util.spec_from_file_location("clam_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["clam_speed"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_naive_loop_matches_lungclam_clam() -> None:
    bench = _load_script()
    spec = ModelSpec((16, 16), channels=(4, 8), strides=(2, 2), latent_dim=3)
    torch.manual_seed(0)
    model = ClusteringModel(ConvAutoencoder(spec), torch.randn(3, 3) * 0.5).eval()
    for _ in range(3):
        x = torch.rand(1, 16, 16)
        expected, q_expected = clam_image(model, x, chunk_size=3)
        maps, q = bench.naive_clam(model, x)
        assert maps.shape == expected.shape == (3, 16, 16)
        assert float((maps - expected).abs().max()) <= 1e-5
        assert float((q - q_expected).abs().max()) <= 1e-6


def test_cluster_scores_wrapper_gives_q_and_hooks_the_last_activation() -> None:
    """The peers' view of the model: same q, and a hook on ``last_act`` fires once, with
    the last conv's activations."""
    bench = _load_script()
    spec = ModelSpec((16, 16), channels=(4, 8), strides=(2, 2), latent_dim=3)
    torch.manual_seed(0)
    model = ClusteringModel(ConvAutoencoder(spec), torch.randn(3, 3)).eval()
    wrapper = bench.ClusterScores(model)
    seen = []
    wrapper.last_act.register_forward_hook(lambda _m, _i, out: seen.append(out))
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), model.assign(x))
        assert len(seen) == 1
        torch.testing.assert_close(seen[0], model.autoencoder.encode_maps(x))
