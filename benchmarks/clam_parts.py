"""Where batched CLAM's time goes on one device, and what faster mask building would buy.

Run on a GPU machine (under a minute on an H200; ``--quick`` is a CPU smoke test)::

    python benchmarks/clam_parts.py
    python benchmarks/clam_parts.py --device cpu --quick

Part 1, ``phase``: one batch of ``lungclam.clam.clam_batch`` at the pipeline's auto chunk and
memory format, split into its phases, each timed alone (median of repeats, synchronised),
ms per volume (3D) or image (2D): the unmasked pass (``encode_maps`` + ``assign_from_maps``),
building every masked input (``_masked_inputs``: upsample, min-max, product), the encoder
passes over them (``model.assign``), and the weighted sum, upsample and min-max of the K
maps; then the whole ``clam_batch`` and the floor (the encoder passes alone, as in
``benchmarks/gpu.py``).

Part 2: ``iter_clam`` end to end with either mask builder (``lungclam.clam_cuda``'s fused
kernel, the default on CUDA, and the PyTorch operators), items/s against the floor and the
largest difference of the maps. Each phase is timed with either builder too. On the CPU
both rows run the operators (the kernel is CUDA only).

Tried on an H200 (2026-11-28) before the fused kernel and left out: ``F.interpolate``
instead of the separable products (slower: 3D fp32 0.85x against 0.88x), the operators
under ``torch.compile`` (no faster in 3D), and building the next chunk's masks on a second
stream during the encoder pass (no faster: the convolutions fill the GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402

from lungclam import clam as C  # noqa: E402
from lungclam.device import autocast  # noqa: E402
from lungclam.model import resolve_device  # noqa: E402


def _median_s(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    fn()
    gpu._sync(device)
    times = []
    for _ in range(reps):
        gpu._sync(device)
        start = time.perf_counter()
        fn()
        gpu._sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def phases(model, images: np.ndarray, device: torch.device, amp: bool, reps: int) -> dict[str, float]:
    """ms per image of each phase of one clam_batch call on ``images`` (one batch)."""
    ndim = images.ndim - 2
    chunk = C.auto_chunk_size(ndim, device, int(np.prod(images.shape[2:])))
    C.prepare_model(model, device, ndim, C.auto_channels_last(device, ndim, amp))
    n_channels = model.autoencoder.spec.channels[-1]
    group = max(1, chunk // n_channels)
    x = torch.from_numpy(np.ascontiguousarray(images[:group])).to(device)
    spatial = tuple(x.shape[2:])
    dims = tuple(range(2, 2 + ndim))
    out: dict[str, float] = {"chunk": chunk, "group": group}
    with autocast(device, amp):
        acts = model.autoencoder.encode_maps(x)
        channels = acts.reshape(group * n_channels, 1, *acts.shape[2:])
        constant = C._is_constant(channels, dims).flatten()
        starts = list(range(0, len(channels), chunk))

        def unmasked() -> None:
            a = model.autoencoder.encode_maps(x)
            model.assign_from_maps(a)

        def masks() -> None:
            for s in starts:
                rows = range(s, min(s + chunk, len(channels)))
                C._masked_inputs(x, rows, channels[s : rows.stop], constant[s : rows.stop], n_channels)

        first_rows = range(0, min(chunk, len(channels)))
        masked = C._masked_inputs(x, first_rows, channels[:chunk], constant[:chunk], n_channels)

        def passes() -> None:
            for _ in starts:
                model.assign(masked)

        alpha = torch.rand(group, n_channels, 3, device=device)

        def final() -> None:
            C.weighted_maps(alpha, acts, spatial)

        def whole() -> None:
            C.clam_batch(model, x, chunk)

        for name, fn in (
            ("unmasked pass", unmasked),
            ("mask building", masks),
            ("encoder passes", passes),
            ("K maps", final),
            ("clam_batch", whole),
        ):
            out[name] = 1000 * _median_s(fn, device, reps) / group
    return out


MASK_BUILDERS = (("fused kernel", True), ("PyTorch operators", False))


def variants(model, images: np.ndarray, device: torch.device, amp: bool, rounds: int) -> list[tuple[str, float, float]]:
    """(mask builder, items/s, max |maps - the operators' maps|), iter_clam end to end."""
    results = []
    maps = {}
    for name, fused in MASK_BUILDERS:
        C._fused_masks["usable"] = fused
        maps[name] = np.stack([m for _, m, _ in C.iter_clam(model, images, None, device, amp)])
        if fused and device.type == "cuda" and not C._fused_masks["usable"]:
            name += " (FAILED: fell back to the operators)"

        def run() -> int:
            return sum(1 for _ in C.iter_clam(model, images, None, device, amp))

        results.append((name, gpu._rate(run, device, rounds)))
    C._fused_masks["usable"] = True
    reference = maps[MASK_BUILDERS[-1][0]]
    return [(name, rate, float(np.abs(m - reference).max())) for (name, rate), m in zip(results, maps.values())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["2d", "3d"], default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    sizes = gpu.QUICK if args.quick else gpu.Sizes()
    reps = 3 if args.quick else 10
    print(f"torch {torch.__version__}, {device}", flush=True)
    table = []
    for spec, n, floor_batches, unit in (
        (gpu._spec_2d(sizes), sizes.clam_2d, sizes.floor_batches_2d, "images/s"),
        (gpu._spec_3d(sizes), sizes.clam_3d, sizes.floor_batches_3d, "volumes/s"),
    ):
        if args.only and args.only != f"{spec.ndim}d":
            continue
        model = gpu._clustering_model(spec, device)
        images = gpu._volumes(n, spec.input_shape)
        for precision, amp in gpu._precisions(device):
            if amp and device.type != "cuda":
                continue
            tag = f"{spec.ndim}D {precision}"
            passes, where = gpu._floor(model, spec, floor_batches, sizes.floor_calls, device, amp, sizes.rounds)
            floor = passes / spec.channels[-1]
            print(f"{tag}: floor {floor:.1f} {unit} ({where})", flush=True)
            for name, rate, diff in variants(model, images, device, amp, sizes.rounds):
                table.append((tag, f"iter_clam, {name}", rate, rate / floor, diff))
            table.append((tag, f"floor ({where})", floor, 1.0, 0.0))
            for builder, fused in MASK_BUILDERS:
                C._fused_masks["usable"] = fused
                parts = phases(model, images, device, amp, reps)
                for name in ("unmasked pass", "mask building", "encoder passes", "K maps", "clam_batch"):
                    table.append((tag, f"{builder}: {name}, ms per item", parts[name], float("nan"), float("nan")))
            C._fused_masks["usable"] = True
    print("| grid | what | value | x floor | max diff from the operators |")
    print("|---|---|---|---|---|")
    for tag, name, value, ratio, diff in table:
        print(f"| {tag} | {name} | {value:.3f} | {ratio:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
