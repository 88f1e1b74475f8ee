"""Running torch models on a device: seeding and determinism, batches, bf16 autocast, inference.

Images are ``(N, C, *spatial)`` float32 tensors or arrays throughout (channel-first).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch and make CPU kernels deterministic (same seed -> same numbers)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        # cuDNN picks among algorithms by timing; pin them where we can (see README).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Index batches covering ``range(n)``, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked; never on the CPU (18-46x slower without bf16 units)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.inference_mode()
def batched_inference(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                      images: np.ndarray, batch_size: int = 16, device: torch.device | None = None) -> np.ndarray:
    """``forward`` over ``(N, 1, *spatial)`` images in batches, ``model`` in eval mode on
    ``device``; the per-image outputs stacked as float64 ``(N, ...)``."""
    device = device or torch.device("cpu")
    model.to(device).eval()
    data = torch.from_numpy(np.ascontiguousarray(images))
    out = [forward(data[idx].to(device)).float().cpu() for idx in batches(len(data), batch_size)]
    return torch.cat(out).double().numpy()
