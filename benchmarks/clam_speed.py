"""Speed of lungclam's CLAM against its floor, a naive per-channel loop and Score-CAM peers.

CLAM (``lungclam.clam.clam_image``) needs one forward pass of the encoder and clustering
layer per activation channel of the last encoder convolution (H = 128 in the paper's
models), so an image can never cost less than H encoder passes. This script measures, on
random weights and random images in [0, 1] (speed does not depend on training):

- ``encoder floor``: images/s of ``model.assign`` (encoder + clustering layer, inference
  mode) at several batch sizes, with default and ``channels_last`` weights; the best,
  divided by H, is the most CLAM images/s the hardware could give with this network (the
  "floor" on cost);
- ``naive loop``: CLAM written literally, one masked input and one forward pass per
  channel, summing upsampled channels at full resolution (``naive_clam`` below). Its maps
  are checked against lungclam's (max abs difference is printed), so both rows do the
  same work;
- ``lungclam CLAM`` at several chunk sizes (masked inputs per forward pass), also with
  ``torch.channels_last`` weights for one chunk size; one call gives the maps of all K
  clusters;
- ``grad-cam ScoreCAM`` (pip ``grad-cam``, default batch 16) and ``torchcam ScoreCAM``
  (pip ``torchcam``, batch 32) on the same network, the cluster probabilities q (N, K)
  standing in for class scores, hooked at the last encoder activation (after the leaky
  ReLU, which is what CLAM uses), for each image's assigned cluster. These are speed
  peers only: both weight channels by a softmax over channel scores (torchcam also
  subtracts a baseline score), so they do not compute CLAM, and they give one cluster's
  map per call where lungclam gives all K. A peer that is not installed, or fails its
  warm-up call, is skipped with the reason printed.

Methods run in interleaved rounds (every method once per round, the order rotating), after
one warm-up call each (``time.perf_counter``; CUDA is synchronised before each reading);
the table gives the median images/s over rounds with min-max, the ratio to the floor, the
same per second of process CPU time (all threads; steadier when other jobs share the
cores) with its ratio, and the bytes of the batch of masked inputs one forward pass holds
(intermediate activations come on top: a multiple of that).

2D uses the paper's 64 x 64 model (conv 32 s2, 64 s1, 128 s2, kernel 4, embedding 60);
3D the paper's 88^3 model (strides 2, 2, 2). In 3D only torchcam is timed among the peers
(grad-cam's ScoreCAM upsamples with UpsamplingBilinear2d and is 2D only).

Run (CPU; a CUDA GPU, when present, is timed too)::

    .venv/bin/python benchmarks/clam_speed.py [--dims 2|3|both] [--images N] [--naive-images N] [--volumes N]
        [--rounds R] [--rounds-3d R] [--threads T] [--amp] [--no-torchvision-shim]

The peers install with ``pip install -e .[bench]`` (see pyproject.toml for the torchvision
pairing). PyPI's torchvision wheels are CUDA builds whose C++ ops do not load beside a CPU
torch; ``import torchvision`` then fails inside its own fake-kernel registrations. Unless
``--no-torchvision-shim`` is given, the script then declares the two op schemas
(``torchvision::nms``, ``torchvision::qnms``) so torchvision's pure-Python part imports;
grad-cam imports torchvision but its ScoreCAM never calls a torchvision op.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import glob
import importlib.metadata
import importlib.util
import io
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lungclam.clam import auto_chunk_size, clam_image
from lungclam.dec import ClusteringModel
from lungclam.model import ConvAutoencoder, ModelSpec

K = 3
SEED = 0


# --------------------------------------------------------------------------------------
# the baseline: CLAM as a literal per-channel loop


@torch.inference_mode()
def naive_clam(model: ClusteringModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAM maps ``(K, *spatial)`` and ``q (K,)`` of ``x (C, *spatial)``, one channel at a time.

    For each channel h of the last conv activations A: upsample A_h to the input size,
    min-max it to a mask (a constant channel gives a zero mask), run one forward pass of the
    masked input for ``alpha_h = q(x * mask)`` (all K clusters), and add ``alpha_hk * up(A_h)``
    to the full-resolution sum; then ReLU and min-max per cluster. No batching, no
    linearity shortcut.
    """
    spatial = tuple(x.shape[1:])
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    acts = model.autoencoder.encode_maps(x[None])[0]  # (H, *s)
    q = model.assign_from_maps(acts[None])[0]
    total = torch.zeros((model.n_clusters, *spatial), dtype=torch.float32, device=x.device)
    for h in range(acts.shape[0]):
        up = F.interpolate(acts[h][None, None], size=spatial, mode=mode, align_corners=False)[0, 0].float()
        span = up.max() - up.min()
        constant = bool(acts[h].max() == acts[h].min())
        mask = (up - up.min()) / span if float(span) > 0 and not constant else torch.zeros_like(up)
        alpha = model.assign((x * mask.to(x.dtype))[None])[0].float()  # (K,)
        total += alpha.view(-1, *([1] * len(spatial))) * up
    total = torch.relu(total)
    flat = total.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).view(-1, *([1] * len(spatial)))
    lo = lo.view_as(span)
    maps = torch.where(span > 0, (total - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(total))
    return maps, q


# --------------------------------------------------------------------------------------
# models and data


def build_model(spec: ModelSpec, device: torch.device) -> ClusteringModel:
    """Random-weight CAE + clustering layer; centroids = embeddings of K random images."""
    torch.manual_seed(SEED)
    autoencoder = ConvAutoencoder(spec).eval()
    with torch.inference_mode():
        centroids = autoencoder.encode(torch.rand(K, spec.in_channels, *spec.input_shape))
    return ClusteringModel(autoencoder, centroids.clone()).eval().to(device)


class ClusterScores(nn.Module):
    """The clustering model as a "classifier": ``x -> q (N, K)``, for the CAM libraries.

    The CAE reuses one LeakyReLU module after every conv (and in the decoder), so a hook on
    it would fire three times per pass. This wrapper shares the conv weights but gives each
    activation its own module; ``last_act`` is the one after the last conv.
    """

    def __init__(self, model: ClusteringModel):
        super().__init__()
        layers = []
        for module in model.autoencoder.encoder_convs:
            layers.append(nn.LeakyReLU(module.negative_slope) if isinstance(module, nn.LeakyReLU) else module)
        self.convs = nn.Sequential(*layers)
        self.last_act = self.convs[-1]
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.assign_from_maps(self.convs(x))


# --------------------------------------------------------------------------------------
# peers


def _torchvision_ops_ok() -> str | None:
    """None when torchvision's C++ ops load (or torchvision is absent), else the reason."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    libs = glob.glob(str(Path(spec.origin).parent / "_C*.so")) + glob.glob(str(Path(spec.origin).parent / "_C*.pyd"))
    if not libs:
        return "torchvision has no _C extension"
    try:
        torch.ops.load_library(libs[0])
        return None
    except (OSError, RuntimeError) as exc:
        return str(exc).splitlines()[0]


def _declare_torchvision_ops() -> None:
    """Declare the op schemas torchvision registers fake kernels for at import time."""
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_torchvision_ops.lib = lib  # keep the registration alive


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def load_gradcam(shim: bool) -> tuple[type | None, str]:
    """grad-cam's ScoreCAM class and a note (version, or why it is skipped)."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return None, "grad-cam not installed (pip install -e .[bench])"
    note = f"grad-cam {_version('grad-cam')}, torchvision {_version('torchvision')}"
    problem = _torchvision_ops_ok()
    if problem is not None:
        if not shim:
            return None, f"{note}: torchvision's C++ ops do not load ({problem}); --no-torchvision-shim given"
        _declare_torchvision_ops()
        note += " (C++ ops unloadable beside this torch: nms/qnms schemas declared so it imports; unused)"
    try:
        from pytorch_grad_cam import ScoreCAM
    except Exception as exc:  # torchvision raises RuntimeError, not ImportError, on a bad pairing
        return None, f"{note}: import failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return ScoreCAM, note


def load_torchcam() -> tuple[type | None, str]:
    """torchcam's ScoreCAM class and a note (version, or why it is skipped)."""
    if importlib.util.find_spec("torchcam") is None:
        return None, "torchcam not installed (pip install -e .[bench])"
    try:
        from torchcam.methods import ScoreCAM
    except Exception as exc:
        return None, f"torchcam import failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return ScoreCAM, f"torchcam {_version('torchcam')}"


# --------------------------------------------------------------------------------------
# timing


@dataclass
class Method:
    """One row: ``run(images)`` does the work and returns how many images it covered."""

    name: str
    setting: str
    run: Callable[[torch.Tensor], int]
    inputs: torch.Tensor | None = None  # what ``run`` gets each round
    batch_bytes: int | None = None  # bytes of masked inputs held for one forward pass
    floor_batch: int | None = None  # set for encoder-floor rows
    warm: Callable[[], object] | None = None  # warm-up call; default: ``run`` on one image
    rates: list[float] = field(default_factory=list)  # images per wall-clock second, one per round
    cpu_rates: list[float] = field(default_factory=list)  # images per process CPU second (all threads)
    skipped: str | None = None
    last: object = None  # last output, for the equality check


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_methods(methods: list[Method], rounds: int, device: torch.device, amp: bool) -> None:
    """Warm up every method once, then ``rounds`` interleaved timed rounds in rotating order."""
    for m in methods:
        try:
            with _amp(device, amp):
                m.warm() if m.warm is not None else m.run(m.inputs[:1])
            _sync(device)
        except Exception as exc:  # a peer that cannot run this model is reported, not fatal
            m.skipped = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    live = [m for m in methods if m.skipped is None]
    for r in range(rounds):
        shift = r % len(live) if live else 0
        for m in live[shift:] + live[:shift]:
            _sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            with _amp(device, amp):
                n = m.run(m.inputs)
            _sync(device)
            m.rates.append(n / (time.perf_counter() - start))
            m.cpu_rates.append(n / max(time.process_time() - cpu_start, 1e-9))


# --------------------------------------------------------------------------------------
# the benchmark


def _mb(n_bytes: int | None) -> str:
    if n_bytes is None:
        return ""
    return f"{n_bytes / 2**10:.0f} KiB" if n_bytes < 2**20 else f"{n_bytes / 2**20:.1f} MiB"


def _rate(rates: list[float]) -> tuple[float, str]:
    med = statistics.median(rates)
    fmt = (lambda v: f"{v:.3g}") if med < 100 else (lambda v: f"{v:.0f}")
    return med, f"{fmt(med)} ({fmt(min(rates))}-{fmt(max(rates))})"


def run_dims(ndim: int, args: argparse.Namespace, device: torch.device) -> None:
    if ndim == 2:
        spec = ModelSpec((64, 64))
        n_images, floor_batches, chunks, naive_n, floor_work = (
            args.images,
            (1, 16, 32, 64, 128),
            (16, 32, 64, 128),
            args.naive_images,
            256,
        )
    else:
        spec = ModelSpec((88, 88, 88), strides=(2, 2, 2))
        n_images, floor_batches, chunks, naive_n, floor_work = args.volumes, (1, 4, 8, 16), (1, 8, 16, 32), 1, 16
    model = build_model(spec, device)
    H = spec.channels[-1]
    voxels = math.prod(spec.input_shape)
    input_bytes = spec.in_channels * voxels * 4
    gen = torch.Generator().manual_seed(SEED + 1)
    images = torch.rand(n_images, spec.in_channels, *spec.input_shape, generator=gen).to(device)
    rounds = args.rounds if ndim == 2 or args.rounds_3d is None else args.rounds_3d
    label = f"{ndim}D {'x'.join(map(str, spec.input_shape))}"
    print(
        f"\n=== {label}, H = {H} channels, K = {K}, device {device}"
        f"{' (bf16 autocast)' if args.amp and device.type == 'cuda' else ''}, "
        f"{torch.get_num_threads()} threads, {rounds} rounds ==="
    )
    started = time.perf_counter()
    methods: list[Method] = []

    fmt = torch.channels_last if ndim == 2 else torch.channels_last_3d
    cl_model = copy.deepcopy(model).to(memory_format=fmt)

    # encoder floor, in both memory formats
    for net, fmt_name in ((model, ""), (cl_model, ", channels_last")):
        for b in floor_batches:
            batch = torch.rand(b, spec.in_channels, *spec.input_shape, generator=gen).to(device)
            calls = max(1, math.ceil(floor_work / b))

            def floor(x: torch.Tensor, calls: int = calls, net: ClusteringModel = net) -> int:
                with torch.inference_mode():
                    for _ in range(calls):
                        net.assign(x)
                return calls * x.shape[0]

            methods.append(
                Method(
                    "encoder floor",
                    f"batch {b}{fmt_name}",
                    floor,
                    batch,
                    b * input_bytes,
                    floor_batch=b,
                    warm=lambda x=batch, f=floor: f(x, 1),
                )
            )

    # naive loop
    def naive(x: torch.Tensor) -> int:
        naive_method.last = [naive_clam(model, xi) for xi in x]
        return len(x)

    naive_method = Method("naive loop", "1 channel per pass", naive, images[:naive_n], input_bytes)
    methods.append(naive_method)

    # lungclam CLAM
    def ours_for(net: ClusteringModel, chunk: int, holder: list) -> Callable[[torch.Tensor], int]:
        def run(x: torch.Tensor) -> int:
            holder[:] = [clam_image(net, xi, chunk) for xi in x]
            return len(x)

        return run

    ours: list[tuple[Method, list]] = []
    for c in chunks:
        holder: list = []
        m = Method("lungclam CLAM", f"chunk {c}", ours_for(model, c, holder), images, c * input_bytes)
        ours.append((m, holder))
    # what the pipeline runs (iter_clam): channels-last weights at the automatic chunk size
    cl_chunk = auto_chunk_size(ndim, device)
    holder = []
    ours.append(
        (
            Method(
                "lungclam CLAM",
                f"chunk {cl_chunk} (auto), channels_last",
                ours_for(cl_model, cl_chunk, holder),
                images,
                cl_chunk * input_bytes,
            ),
            holder,
        )
    )
    methods += [m for m, _ in ours]

    # peers
    notes: list[str] = []
    peer_images = images if ndim == 2 else images[:1]
    if ndim == 2:
        cls, note = load_gradcam(not args.no_torchvision_shim)
        notes.append(note)
        if cls is not None:
            wrapper = ClusterScores(model).eval()
            extractor = cls(model=wrapper, target_layers=[wrapper.last_act])

            def gradcam(x: torch.Tensor, extractor=extractor) -> int:
                # its ScoreCAM draws a tqdm bar per image on stderr (torch imports tqdm before
                # we could set TQDM_DISABLE); keep it off the table
                with contextlib.redirect_stderr(io.StringIO()):
                    extractor(input_tensor=x, targets=None)  # None: each image's top cluster
                return len(x)

            methods.append(
                Method(
                    "grad-cam ScoreCAM", "batch 16 (default)", gradcam, peer_images, len(peer_images) * H * input_bytes
                )
            )
        else:
            methods.append(Method("grad-cam ScoreCAM", "batch 16 (default)", lambda x: 0, skipped=note))
    else:
        notes.append("grad-cam: skipped in 3D (its ScoreCAM upsamples with UpsamplingBilinear2d: 2D only)")
    cls, note = load_torchcam()
    notes.append(note)
    if cls is not None:
        wrapper = ClusterScores(model).eval()
        extractor = cls(
            wrapper, target_layer=wrapper.last_act, batch_size=32, input_shape=(spec.in_channels, *spec.input_shape)
        )

        def torchcam(x: torch.Tensor, wrapper=wrapper, extractor=extractor) -> int:
            with torch.inference_mode():
                q = wrapper(x)
            extractor(class_idx=q.argmax(1).tolist())
            return len(x)

        methods.append(Method("torchcam ScoreCAM", "batch 32", torchcam, peer_images, 32 * input_bytes))
    else:
        methods.append(Method("torchcam ScoreCAM", "batch 32", lambda x: 0, skipped=note))

    time_methods([m for m in methods if m.skipped is None], rounds, device, args.amp)
    elapsed = time.perf_counter() - started

    # equality check: lungclam against the naive loop, on the images both did
    if naive_method.last is not None:
        diffs = []
        for m, holder in ours:
            if m.skipped is None and holder:
                d = max(float((a[0].float() - b[0]).abs().max()) for a, b in zip(holder, naive_method.last))
                dq = max(float((a[1].float() - b[1].float()).abs().max()) for a, b in zip(holder, naive_method.last))
                diffs.append(f"{m.setting}: maps {d:.1e}, q {dq:.1e}")
        print(
            f"lungclam vs naive loop, max |difference| over {len(naive_method.last)} "
            f"{'image' if ndim == 2 else 'volume'}(s) x {K} clusters: " + "; ".join(diffs)
        )

    # encoder table; the floor is the best encoder rate (median over rounds) over batch sizes
    # and memory formats, on wall-clock and, separately, on CPU time
    floor_rows = [m for m in methods if m.floor_batch is not None and m.rates]
    best = max(floor_rows, key=lambda m: statistics.median(m.rates)) if floor_rows else None
    best_cpu = max(floor_rows, key=lambda m: statistics.median(m.cpu_rates)) if floor_rows else None
    floor_ips = statistics.median(best.rates) / H if best else float("nan")
    floor_cpu = statistics.median(best_cpu.cpu_rates) / H if best_cpu else float("nan")
    print("\nEncoder + clustering layer (model.assign, inference mode)")
    print(
        f"{'setting':<24}  {'encoder passes/s, median (min-max)':<36}  {'/ H = CLAM images/s':>20}  "
        f"{'passes per CPU-s':>16}  {'input batch':>12}"
    )
    for m in floor_rows:
        med, txt = _rate(m.rates)
        print(
            f"{m.setting:<24}  {txt:<36}  {med / H:>20.3g}  {statistics.median(m.cpu_rates):>16.3g}  "
            f"{_mb(m.batch_bytes):>12}"
        )

    # main table
    unit = "images" if ndim == 2 else "volumes"
    print(
        f"\nCLAM {unit}/s ({label}; lungclam on {len(images)} {unit}, naive loop on {naive_n}, "
        f"peers on {len(peer_images)})"
    )
    header = (
        f"{'method':<18}  {'setting':<34}  {unit + '/s, median (min-max)':<29}  {'x floor':>7}  "
        f"{'per CPU-s':>9}  {'x floor':>7}  {'masked-input batch':>18}"
    )
    print(header)
    print("-" * len(header))
    if best is not None:
        setting = f"encoder / {H}: {best.setting.replace('batch ', 'b')}"
        print(
            f"{'CLAM floor':<18}  {setting:<34}  {f'{floor_ips:.3g}':<29}  {1.0:>7.2f}  "
            f"{floor_cpu:>9.3g}  {1.0:>7.2f}  {'':>18}"
        )
    for m in methods:
        if m.floor_batch is not None:
            continue
        if m.skipped is not None or not m.rates:
            print(f"{m.name:<18}  {m.setting:<34}  skipped: {m.skipped}")
            continue
        med, txt = _rate(m.rates)
        cpu = statistics.median(m.cpu_rates)
        print(
            f"{m.name:<18}  {m.setting:<34}  {txt:<29}  {med / floor_ips:>7.2f}  "
            f"{cpu:>9.3g}  {cpu / floor_cpu:>7.2f}  {_mb(m.batch_bytes):>18}"
        )
    print("\nNotes:")
    print(
        "- CLAM floor: the best encoder rate (median over rounds; any batch size or memory format) / H, i.e. "
        "H encoder passes per image; x floor: the row's rate over it (wall-clock, then CPU time)."
    )
    print(
        "- per CPU-s: per second of this process's CPU time (all threads), median over rounds; steadier than "
        "wall-clock rates when other jobs share the cores (on CUDA it is host time only). A ratio above 1 "
        "means faster than H separate encoder passes (e.g. a chunk that fits the cache better)."
    )
    print(
        "- masked-input batch: bytes of the masked inputs one forward pass holds (float32); activations add a "
        "multiple of it. grad-cam builds all H masked inputs of every image in the call at once."
    )
    print(
        "- lungclam gives the maps of all K clusters per image; the naive loop too. The peers give the map of each "
        "image's top cluster only, and weight channels by a softmax over channel scores (torchcam after "
        "subtracting a baseline score): Score-CAM, not CLAM. They are speed peers only."
    )
    print(f"- peers: {'; '.join(notes)}")
    print(f"- section wall time {elapsed:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", choices=["2", "3", "both"], default="2")
    parser.add_argument("--images", type=int, default=16, help="2D images per round (default 16)")
    parser.add_argument("--volumes", type=int, default=2, help="3D volumes per round for lungclam (default 2)")
    parser.add_argument(
        "--naive-images", type=int, default=4, help="2D images per round for the naive loop (default 4; 3D: 1 volume)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rounds-3d", type=int, default=None, help="rounds for 3D (default: --rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored on the CPU)")
    parser.add_argument(
        "--no-torchvision-shim",
        action="store_true",
        help="skip grad-cam when torchvision's C++ ops do not load, instead of declaring their schemas",
    )
    parser.add_argument("--cpu-only", action="store_true", help="do not time on CUDA even when a GPU is present")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}; CPU threads {args.threads}; devices {', '.join(map(str, devices))}")
    dims = [2, 3] if args.dims == "both" else [int(args.dims)]
    for device in devices:
        for ndim in dims:
            run_dims(ndim, args, device)


if __name__ == "__main__":
    main()
