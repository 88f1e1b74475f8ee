"""CLAM's masked inputs built in one pass on CUDA: upsample, min-max and product fused
into one Triton kernel.

Each masked input is ``image * minmax(up(A_h))`` (:mod:`lungclam.clam`), an input-sized
tensor per channel: 128 of them an 88^3 volume, 350 MB in fp32. Built from PyTorch
operators that takes six trips through memory (upsample, min/max, subtract, divide,
multiply); measured on an H200 it was 8 % of batched 3D CLAM in fp32 and 14 % in bf16, the
largest cost beyond the encoder. Here the kernel reads the small activation map and the
image and writes each masked input once.

The min and max of the upsampled map need no upsampled map. Along one axis, every output
sample between the same two input neighbours is the same affine function of its weight
``w``, and ``w`` grows with the sample's index, so over such a run the extremes lie at its
first or last sample. Applying this axis by axis, the extremes of the whole (bi/tri)linear
upsample lie on the grid of run ends: about two samples an input voxel and axis (22^3
instead of 88^3 for an 11^3 map), computed exactly as the full upsample would compute them.

Triton compiles the kernel on first use (it needs a C compiler for its launcher); if
anything in that fails, :func:`masked_inputs` raises and :mod:`lungclam.clam` falls back
to the PyTorch operators, once warned. Set ``LUNGCLAM_FUSED_MASKS=0`` to use the
operators from the start. The CPU never uses this module's kernel.
"""

from __future__ import annotations

import functools
import os

import torch

from lungclam.clam import separable, source_neighbours

try:  # Triton ships with PyTorch's CUDA wheels for Linux; the CPU wheels lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch
    triton = None


def enabled() -> bool:
    """Whether the fused kernel may be tried: Triton importable, not switched off."""
    return triton is not None and os.environ.get("LUNGCLAM_FUSED_MASKS", "1") != "0"


@functools.lru_cache(maxsize=32)
def _run_end_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Rows of the ``(n_out, n_in)`` interpolation matrix at the first and last output
    sample of each run with the same lower input neighbour, float32 ``(m, n_in)``."""
    lower, upper, w = source_neighbours(n_in, n_out)
    changes = torch.nonzero(lower[1:] != lower[:-1]).flatten()
    ends = torch.unique(torch.cat([torch.tensor([0, n_out - 1]), changes, changes + 1]))
    rows = torch.arange(len(ends))
    weights = torch.zeros(len(ends), n_in, dtype=torch.float64)
    weights.index_put_((rows, lower[ends]), 1.0 - w[ends], accumulate=True)
    weights.index_put_((rows, upper[ends]), w[ends], accumulate=True)
    return weights.to(dtype=torch.float32, device=device)


def upsampled_extremes(maps: torch.Tensor, size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max, ``(N,)`` float32 each, of every upsampled ``maps (N, 1, *s)`` at ``size``
    (bi/trilinear, corners not aligned), from the run ends alone (module docstring)."""
    spatial = maps.shape[2:]
    weights = [_run_end_weights(i, o, maps.device) for i, o in zip(spatial, size)]
    ends = separable(maps.float(), weights).reshape(len(maps), -1)
    return torch.aminmax(ends, dim=1)


if triton is not None:
    # Linear interpolation along x within one row of a map (Triton inlines it).
    @triton.jit
    def _along_x(line, x0, x1, wx, inside):
        left = tl.load(line + x0, mask=inside, other=0.0).to(tl.float32)
        right = tl.load(line + x1, mask=inside, other=0.0).to(tl.float32)
        return (1.0 - wx) * left + wx * right

    @triton.autotune(
        configs=[
            triton.Config({"BLOCK": 1024}, num_warps=4),
            triton.Config({"BLOCK": 2048}, num_warps=8),
            triton.Config({"BLOCK": 4096}, num_warps=8),
        ],
        key=["D", "H", "W", "d", "h", "w"],
    )
    @triton.jit
    def _masked_inputs_kernel(
        acts,  # (n, d, h, w): the chunk's activation maps, contiguous
        images,  # (B, C, D, H, W) contiguous, D = d = 1 for 2D
        lo,  # (n,) float32: each upsampled map's minimum
        scale,  # (n,) float32: 1 / (max - min), 0 where the mask is zero
        out,  # (n, C, D, H, W) contiguous
        row_start,
        n_channels,
        in_channels,
        # Sizes are compile-time constants: index arithmetic by constants costs a few
        # instructions where a run-time division costs dozens (it bounded the first version).
        d: tl.constexpr,
        h: tl.constexpr,
        w: tl.constexpr,
        D: tl.constexpr,
        H: tl.constexpr,
        W: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(1)
        channel = tl.program_id(2)
        voxels: tl.constexpr = D * H * W
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < voxels
        x = offsets % W
        y = (offsets // W) % H
        z = offsets // (W * H)
        # Source coordinates as PyTorch's align_corners=False interpolation computes them.
        sx = tl.maximum((x.to(tl.float32) + 0.5) * (w / W) - 0.5, 0.0)
        sy = tl.maximum((y.to(tl.float32) + 0.5) * (h / H) - 0.5, 0.0)
        sz = tl.maximum((z.to(tl.float32) + 0.5) * (d / D) - 0.5, 0.0)
        x0 = tl.minimum(sx.to(tl.int32), w - 1)
        y0 = tl.minimum(sy.to(tl.int32), h - 1)
        z0 = tl.minimum(sz.to(tl.int32), d - 1)
        x1 = tl.minimum(x0 + 1, w - 1)
        y1 = tl.minimum(y0 + 1, h - 1)
        z1 = tl.minimum(z0 + 1, d - 1)
        wx = sx - x0.to(tl.float32)
        wy = sy - y0.to(tl.float32)
        wz = sz - z0.to(tl.float32)
        base = acts + row * (d * h * w)  # the chunk's maps are small: int32 offsets suffice
        a00 = _along_x(base + (z0 * h + y0) * w, x0, x1, wx, inside)
        a01 = _along_x(base + (z0 * h + y1) * w, x0, x1, wx, inside)
        a10 = _along_x(base + (z1 * h + y0) * w, x0, x1, wx, inside)
        a11 = _along_x(base + (z1 * h + y1) * w, x0, x1, wx, inside)
        value = (1.0 - wz) * ((1.0 - wy) * a00 + wy * a01) + wz * ((1.0 - wy) * a10 + wy * a11)
        mask = (value - tl.load(lo + row)) * tl.load(scale + row)
        image = (row_start + row) // n_channels
        source = images + (image.to(tl.int64) * in_channels + channel) * voxels
        pixel = tl.load(source + offsets, mask=inside, other=0.0).to(tl.float32)
        target = out + (row.to(tl.int64) * in_channels + channel) * voxels  # chunks can pass 2^31 values
        tl.store(target + offsets, (mask * pixel).to(out.dtype.element_ty), mask=inside)


def masked_inputs(
    images: torch.Tensor, rows: range, acts: torch.Tensor, constant: torch.Tensor, n_channels: int
) -> torch.Tensor:
    """:func:`lungclam.clam._masked_inputs` in one kernel: ``(len(rows), C, *size)`` in the
    activations' dtype (bf16 under autocast, as the operator path gives), values computed
    in float32. ``images (B, C, *size)``, ``acts (n, 1, *s)``, ``constant (n,)`` bool."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    size = tuple(images.shape[2:])
    n = len(acts)
    lo, hi = upsampled_extremes(acts, size)
    span = hi - lo
    scale = torch.where((span > 0) & ~constant, 1.0 / torch.where(span > 0, span, 1.0), 0.0)
    maps = acts.reshape(n, *acts.shape[2:]).contiguous()
    images = images.contiguous()
    out = torch.empty((n, *images.shape[1:]), dtype=acts.dtype, device=acts.device)
    small = (1,) * (3 - len(size)) + tuple(maps.shape[1:])
    big = (1,) * (3 - len(size)) + size
    voxels = out[0, 0].numel()

    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(voxels, meta["BLOCK"]), n, images.shape[1])

    _masked_inputs_kernel[grid](maps, images, lo, scale, out, rows.start, n_channels, images.shape[1], *small, *big)
    return out
