"""Cluster activation maps (CLAM), Ryan et al., "Cluster Activation Mapping with
Applications to Medical Imaging" (a Score-CAM variant; Score-CAM: Wang et al. 2020).

For an image x, with A the ``H`` activation channels of the last encoder convolution:

1. each channel is upsampled to the input size (bilinear in 2D, trilinear in 3D) and
   min-max normalised to ``[0, 1]`` (a constant channel gives a zero mask): ``A'_h``;
2. the channel weight is ``alpha_hk = q_k(x * A'_h)``, the cluster-k probability of the
   masked input through the encoder and clustering layer only. Unlike Score-CAM there is
   no baseline subtraction and no softmax over channels;
3. ``M_k = minmax(ReLU(sum_h alpha_hk * up(A_h)))``.

Upsampling is linear, so ``sum_h alpha_hk * up(A_h) = up(sum_h alpha_hk * A_h)``: the sum is
formed at the activation resolution and upsampled once. One set of ``H`` forward passes
yields ``alpha`` for every cluster at once, so maps for all K clusters cost nothing extra.
Masked inputs go through the network in chunks of ``chunk_size`` under inference mode.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lungclam.dec import ClusteringModel
from lungclam.device import autocast

Progress = Callable[[str], None]


def minmax(maps: torch.Tensor, dims: tuple[int, ...], constant: torch.Tensor | None = None) -> torch.Tensor:
    """Scale to ``[0, 1]`` over ``dims``; where max == min the result is 0 (never NaN).

    ``constant`` (broadcastable bool) marks maps to zero regardless: interpolating a
    constant low-resolution map leaves rounding ripples that min-max would blow up to 0..1.
    """
    lo = maps.amin(dim=dims, keepdim=True)
    hi = maps.amax(dim=dims, keepdim=True)
    span = hi - lo
    valid = span > 0
    if constant is not None:
        valid = valid & ~constant
    return torch.where(valid, (maps - lo) / torch.where(valid, span, 1.0), torch.zeros_like(maps))


def _is_constant(maps: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Bool ``(N, 1, ...)``: whether each map over ``dims`` holds a single value."""
    return maps.amax(dim=dims, keepdim=True) == maps.amin(dim=dims, keepdim=True)


def source_neighbours(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1D linear interpolation from ``n_in`` to ``n_out`` samples, corners not aligned.

    Output sample ``i`` sits at input coordinate ``(i + 0.5) * n_in / n_out - 0.5``, clamped
    to ``[0, n_in - 1]`` (PyTorch's convention for ``align_corners=False``), and takes its
    ``lower`` and ``upper`` input neighbours with weights ``1 - w`` and ``w``. Returns
    ``(lower, upper, w)``, each ``(n_out,)``: int64, int64, float64.
    """
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    lower = src.floor().long().clamp_max(n_in - 1)
    upper = (lower + 1).clamp_max(n_in - 1)
    return lower, upper, src - lower


@functools.lru_cache(maxsize=32)
def _linear_weights(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1D linear interpolation (:func:`source_neighbours`)."""
    lower, upper, w = source_neighbours(n_in, n_out)
    rows = torch.arange(n_out)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights.index_put_((rows, lower), 1.0 - w, accumulate=True)
    weights.index_put_((rows, upper), w, accumulate=True)
    return weights.to(dtype=dtype, device=device)


def separable(maps: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """``maps (N, C, *s)`` times one ``(m_i, s_i)`` matrix per spatial axis: ``(N, C, *m)``."""
    n, c, *spatial = maps.shape
    out = maps.contiguous()
    out = torch.matmul(out, weights[-1].T)  # last axis: (..., s_x) -> (..., m_x)
    out = torch.matmul(weights[-2], out)  # second last: (..., s_y, m_x) -> (..., m_y, m_x)
    if len(spatial) == 3:  # first axis over the flattened (Y, X) plane
        out = torch.matmul(weights[0], out.reshape(n * c, spatial[0], -1))
    return out.reshape(n, c, *(len(w) for w in weights))


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``(N, C, *s)`` -> ``(N, C, *size)``, bilinear (2D) or trilinear (3D), corners not aligned.

    The same numbers as ``F.interpolate(..., mode="bilinear"/"trilinear",
    align_corners=False)`` (to float rounding), computed as one small matrix product per
    axis, since (bi/tri)linear interpolation is separable: about five times faster on the
    CPU for a 3D CLAM's masks, where upsampling was most of the cost beyond the encoder.
    """
    spatial = maps.shape[2:]
    return separable(maps, [_linear_weights(i, o, maps.dtype, maps.device) for i, o in zip(spatial, size)])


# Whether lungclam.clam_cuda's kernel may still be tried (False after it failed once).
_fused_masks = {"usable": True}


def _masked_inputs(
    images: torch.Tensor, rows: range, acts: torch.Tensor, constant: torch.Tensor, n_channels: int
) -> torch.Tensor:
    """``image * minmax(up(channel))`` for one chunk of masked inputs, ``(len(rows), C, *size)``.

    Row ``r`` of the ``B * H`` masked inputs of ``images (B, C, *size)`` is channel
    ``r % H`` of image ``r // H``; ``acts (n, 1, *s)`` holds the chunk's channels and
    ``constant (n,)`` marks those whose mask is zero. The same numbers as ``minmax``
    followed by a product (to the bit on valid channels), but the upsampled masks are
    rescaled and multiplied in place, min and max come from one pass (on CUDA), and each image
    multiplies its own rows by broadcasting: fewer trips through memory, which is what
    bounds this step on a GPU.
    """
    if acts.is_cuda and _fused_masks["usable"]:
        from lungclam import clam_cuda  # imports this module: not at the top

        if clam_cuda.enabled():
            try:
                return clam_cuda.masked_inputs(images, rows, acts, constant, n_channels)
            except Exception as error:  # Triton's compiler and launcher can fail in many ways
                _fused_masks["usable"] = False
                warnings.warn(
                    f"CLAM: the fused CUDA kernel for masked inputs failed ({type(error).__name__}: {error}); "
                    "using PyTorch operators instead (slower, same maps)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    n = len(acts)
    masks = upsample(acts, tuple(images.shape[2:]))  # a fresh tensor: safe to change in place
    if masks.is_cuda:  # one pass for both
        lo, hi = torch.aminmax(masks.view(n, -1), dim=1)
    else:  # torch's CPU aminmax over a flattened row is ~20x slower than amin and amax
        dims = tuple(range(1, masks.ndim))
        lo, hi = masks.amin(dim=dims), masks.amax(dim=dims)
    span = hi - lo
    valid = (span > 0) & ~constant
    shape = (n,) + (1,) * (masks.ndim - 1)
    # (m - lo) / inf is 0 for the channels that give no mask, without a host sync to ask
    masks.sub_(lo.view(shape)).div_(torch.where(valid, span, torch.full_like(span, torch.inf)).view(shape))
    # One input channel: the product lands in the mask buffer. Under bf16 autocast that
    # rounds it to bf16 once, as the first convolution would have done to an fp32 product.
    in_place = images.shape[1] == 1
    out = masks if in_place else masks.new_empty((n, *images.shape[1:]), dtype=torch.result_type(images, masks))
    for image in range(rows.start // n_channels, (rows.stop - 1) // n_channels + 1):
        a = max(image * n_channels, rows.start) - rows.start
        b = min((image + 1) * n_channels, rows.stop) - rows.start
        if in_place:
            masks[a:b].mul_(images[image])
        else:
            torch.mul(images[image], masks[a:b], out=out[a:b])
    return out


@torch.inference_mode()
def clam_batch(
    model: ClusteringModel,
    images: torch.Tensor,
    chunk_size: int = 32,
    encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAMs of ``images (B, C, *spatial)`` for every cluster.

    Returns ``maps (B, K, *spatial)`` in ``[0, 1]`` and the images' own ``q (B, K)``. The
    ``B * H`` masked inputs go through the encoder ``chunk_size`` at a time, across image
    boundaries, so a chunk larger than ``H`` fills one pass with several images' masks.
    ``encoded`` gives the images' activation maps ``(B, H, *s)`` and ``q`` when the caller
    has them already (:func:`iter_clam` encodes many images in one pass on CUDA).
    """
    spatial = tuple(images.shape[2:])
    dims = tuple(range(2, 2 + len(spatial)))
    if encoded is None:
        acts = model.autoencoder.encode_maps(images)  # (B, H, *s)
        q = model.assign_from_maps(acts)  # (B, K)
    else:
        acts, q = encoded
    n_images, n_channels = acts.shape[:2]
    channels = acts.reshape(n_images * n_channels, 1, *acts.shape[2:])  # one map per row
    constant = _is_constant(channels, dims).flatten()  # (B * H,)
    alphas = []
    for start in range(0, len(channels), chunk_size):
        rows = range(start, min(start + chunk_size, len(channels)))
        # Only this chunk's masks exist at once: memory ~ chunk_size input-sized tensors.
        masked = _masked_inputs(images, rows, channels[start : rows.stop], constant[start : rows.stop], n_channels)
        alphas.append(model.assign(masked))  # (chunk, K)
    alpha = torch.cat(alphas).reshape(n_images, n_channels, -1)  # (B, H, K)
    return weighted_maps(alpha, acts, spatial), q


def weighted_maps(alpha: torch.Tensor, acts: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Step 3 of the module docstring: ``minmax(ReLU(up(sum_h alpha_hk * A_h)))``, ``(B, K,
    *spatial)``, from the channel weights ``alpha (B, H, K)`` and ``acts (B, H, *s)``."""
    dims = tuple(range(2, 2 + len(spatial)))
    weighted = torch.einsum("bhk,bh...->bk...", alpha.to(acts.dtype), acts)  # (B, K, *s)
    maps = F.relu(upsample(weighted, spatial))
    return minmax(maps, dims, _is_constant(F.relu(weighted), dims))


def clam_image(
    model: ClusteringModel,
    x: torch.Tensor,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAMs of one image ``x (C, *spatial)`` for every cluster.

    Returns ``maps (K, *spatial)`` in ``[0, 1]`` and the image's own ``q (K,)``.
    """
    maps, q = clam_batch(model, x.unsqueeze(0), chunk_size)
    return maps[0], q[0]


# Bytes of GPU memory a masked 3D input takes through the encoder, per voxel: measured
# 27 MiB per masked 88^3 input at chunk 256 (benchmarks/gpu.py, fp32), with headroom.
_CUDA_BYTES_PER_MASKED_VOXEL = 48


def auto_chunk_size(ndim: int, device: torch.device, voxels: int | None = None) -> int:
    """Masked inputs per forward pass that measured fastest (benchmarks/clam_speed.py on
    the CPU, benchmarks/gpu.py on an H200).

    On a 2-core CPU the paper's 2D encoder peaks at batches of 32, while its 3D encoder
    (88^3) runs fastest one volume at a time: bigger batches fall out of the cache. GPUs
    want large batches: on CUDA a pass holds the masks of 32 2D images or two 3D volumes
    (H = 128), fewer when a quarter of the free GPU memory would not hold them (``voxels``
    per input).
    """
    if device.type != "cuda":
        return 32 if ndim == 2 else 1
    preferred = 4096 if ndim == 2 else 256
    if voxels:
        free, _ = torch.cuda.mem_get_info(device)
        preferred = min(preferred, max(1, free // 4 // (_CUDA_BYTES_PER_MASKED_VOXEL * voxels)))
    return preferred


def auto_channels_last(device: torch.device, ndim: int, mixed_precision: bool = False) -> bool:
    """Whether CLAM runs the model in channels-last memory format: on the CPU, where it
    measured 12-50 % faster (benchmarks/clam_speed.py); on CUDA (an H200, benchmarks/gpu.py)
    for 2D, and for 3D in bf16 only: cuDNN's fp32 3D convolutions ran 7-10 % faster in the
    default layout."""
    return device.type != "cuda" or ndim == 2 or mixed_precision


def _to_host(maps: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]:
    """Start copying ``maps`` (float32) and ``q`` (float64) to the host. On CUDA the copy
    goes to pinned memory without waiting, and the returned event marks its end, so the
    next batch's passes can be queued before this one is read."""
    if maps.device.type != "cuda":
        return maps.float(), q.double(), None
    maps_host = torch.empty(maps.shape, dtype=torch.float32, pin_memory=True)
    q_host = torch.empty(q.shape, dtype=torch.float64, pin_memory=True)
    maps_host.copy_(maps, non_blocking=True)
    q_host.copy_(q, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return maps_host, q_host, done


# On CUDA, images encoded unmasked in one pass: this many times fewer than a chunk's
# masked inputs (256 images a pass in 2D at chunk 4096, 16 volumes in 3D at chunk 256).
_UNMASKED_PER_CHUNK = 16


def prepare_model(model: ClusteringModel, device: torch.device, ndim: int, channels_last: bool) -> None:
    """Move ``model`` to ``device`` in eval mode, in channels-last (2D or 3D, per ``ndim``)
    or contiguous memory format."""
    layout = torch.channels_last if ndim == 2 else torch.channels_last_3d
    model.to(device).eval()
    model.to(memory_format=layout if channels_last else torch.contiguous_format)


def iter_clam(
    model: ClusteringModel,
    images: np.ndarray,
    chunk_size: int | None = None,
    device: torch.device | None = None,
    mixed_precision: bool = False,
    progress: Progress | None = None,
    channels_last: bool | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(index, maps (K, *spatial) float32, q (K,))`` for each of ``images (N, C, *spatial)``.

    Memory is bounded by ``chunk_size`` masked inputs (``None``: :func:`auto_chunk_size`);
    when it exceeds the encoder's ``H`` channels, ``chunk_size // H`` images share a pass.
    ``channels_last`` (``None``: :func:`auto_channels_last`) runs the model in channels-last
    memory format. ``mixed_precision`` runs the forward passes in bf16 on CUDA (ignored on
    the CPU). On CUDA the unmasked images go through the encoder ``chunk_size // 16`` at a
    time (at least one pass's worth), the masked inputs are built by
    :mod:`lungclam.clam_cuda`'s kernel, and each batch's maps are read back while the next
    batch runs.
    """
    device = device or torch.device("cpu")
    ndim = images.ndim - 2
    chunk_size = chunk_size or auto_chunk_size(ndim, device, int(np.prod(images.shape[2:])))
    if channels_last is None:
        channels_last = auto_channels_last(device, ndim, mixed_precision)
    prepare_model(model, device, ndim, channels_last)
    group = max(1, chunk_size // model.autoencoder.spec.channels[-1])
    # On CUDA the unmasked pass (one an image) runs for many images at once: at a pass of
    # a few images it cost as much as all the mask building in 2D (H200).
    block = group if device.type != "cuda" else max(group, chunk_size // _UNMASKED_PER_CHUNK)
    n = len(images)
    pending: tuple[int, torch.Tensor, torch.Tensor, torch.cuda.Event | None] | None = None
    for start in range(0, n, block):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + block]))
        if device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        # Each context closes before a yield: inference mode and autocast are thread-wide.
        with torch.inference_mode(), autocast(device, mixed_precision):
            acts = model.autoencoder.encode_maps(batch)  # (block, H, *s)
            q_all = model.assign_from_maps(acts)
        for offset in range(0, len(batch), group):
            part = slice(offset, offset + group)
            with autocast(device, mixed_precision):
                maps, q = clam_batch(model, batch[part], chunk_size, (acts[part], q_all[part]))
            if pending is not None:  # CUDA: the previous batch, read while this one runs
                yield from _emit(*pending, n, progress)
            pending = (start + offset, *_to_host(maps, q))
            if device.type != "cuda":
                yield from _emit(*pending, n, progress)
                pending = None
    if pending is not None:
        yield from _emit(*pending, n, progress)


def _emit(
    first: int,
    maps: torch.Tensor,
    q: torch.Tensor,
    done: torch.cuda.Event | None,
    n: int,
    progress: Progress | None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    if done is not None:
        done.synchronize()
    maps_np, q_np = maps.numpy(), q.numpy()
    for j in range(len(maps_np)):
        if progress:
            progress(f"CLAM {first + j + 1}/{n}")
        yield first + j, maps_np[j], q_np[j]


def assigned_maps(maps_all: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Each image's map for its assigned (most probable; the first on a tie) cluster.

    One image: ``maps_all (K, *s)`` with ``q (K,)`` -> ``(*s)``; a batch: ``(N, K, *s)``
    with ``q (N, K)`` -> ``(N, *s)``.
    """
    if q.ndim == 1:
        return maps_all[q.argmax()]
    return maps_all[np.arange(len(q)), q.argmax(1)]


def restrict_to_mask(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero ``maps (..., *s)`` outside ``mask (*s)`` and min-max them again inside it.

    Outside the template lungs every input is the constant background, so importance
    there says nothing about the scan; rescaling inside keeps each map's range ``[0, 1]``.
    """
    inside = np.asarray(mask, dtype=bool)
    out = np.zeros_like(maps, dtype=np.float32)
    flat = maps[..., inside]  # (..., n_inside)
    lo = flat.min(axis=-1, keepdims=True)
    span = flat.max(axis=-1, keepdims=True) - lo
    out[..., inside] = np.where(span > 0, (flat - lo) / np.where(span > 0, span, 1.0), 0.0)
    return out
