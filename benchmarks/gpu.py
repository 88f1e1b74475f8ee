"""One command for any GPU machine: lungclam's model stages timed on one device, one table.

Run (at most about 5 minutes on a recent GPU; ``--quick`` is a smoke test of seconds)::

    python benchmarks/gpu.py                      # CUDA when visible, else the CPU
    python benchmarks/gpu.py --device cpu --quick  # small models: checks the script (in the tests)

It prints one table, a row per measurement:

- ``pretrain``: ``lungclam.train.pretrain`` on the paper's 3D CAE at 88^3 (batch 4), ms per
  volume-epoch (median over epochs after a warm-up epoch), in fp32 and bf16 autocast, each
  with deterministic cuDNN (the pipeline's default, ``lungclam.device.seed_everything``) and
  with cuDNN autotuning (``cudnn.benchmark``). bf16 is CUDA only (the CPU rows say so);
- ``cluster``: ``lungclam.dec.fit_clusters`` (K = 3, targets refreshed once an epoch, no
  early stop and no guard: every epoch runs) on the same volumes, ms per volume-epoch, fp32 and bf16;
- ``clam``: ``lungclam.clam.iter_clam`` (the pipeline's call, chunk size and memory format
  auto, and several chunk sizes, masked inputs per pass, in either format) in volumes
  (3D, 88^3) or images (2D, 64 x 64, the paper's 2D CAE) per second, fp32 and bf16,
  against the floor: the encoder + clustering layer's best
  throughput over batch sizes and memory formats divided by its H = 128 channels
  (CLAM needs H masked passes an image); ``x floor`` is the ratio;
- ``simulation``: one case of the simulation study (intensity, true K = 3, the study's
  2D CAE) at the CPU config (``config/simulation.yaml``) and at the paper's epochs
  (``config/paper.yaml``) as maxima, cut to the pretraining (stopping by itself, as the
  study's), one clustering phase at K = true K and
  the CLAMs (seconds each, ms per Adam step, accuracy), with a whole-case estimate of
  pretraining + one clustering phase per fitted K + CLAMs;
- ``reproducibility``: two deterministic fp32 pretraining runs from one seed; the largest
  weight difference and whether the logged losses agree (0 and yes: bit-identical);
- ``peak MiB``: ``torch.cuda.max_memory_allocated`` over each row's work (CUDA only).

``--profile-clam PATH`` also writes torch.profiler's operator table (sorted by self device
time on CUDA, self CPU time on the CPU) of the pipeline's 3D CLAM call to PATH.

Models have random weights for the CLAM rows (speed does not depend on training) and
images are random in [0, 1], except in the simulation rows. Only torch, numpy, pandas,
scipy, scikit-learn and pyyaml are needed besides lungclam's model modules, so it runs on
a bare CUDA image: the simulation's base slice is the built-in phantom's when SimpleITK is
installed, else a drawn pair of elliptic lungs (the row says which).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from simulation_study import QUICK_SIMULATION  # noqa: E402

from lungclam.clam import auto_channels_last, auto_chunk_size, iter_clam  # noqa: E402
from lungclam.dec import ClusteringModel, fit_clusters  # noqa: E402
from lungclam.device import autocast, seed_everything  # noqa: E402
from lungclam.model import ConvAutoencoder, ModelSpec, resolve_device  # noqa: E402
from lungclam.simulation.cases import (  # noqa: E402
    StudySettings,
    _clam_subset,
    _kernel_scale,
    pretrain_case,
    simulate_case,
)
from lungclam.simulation.data import (  # noqa: E402
    BACKGROUND_HU,
    BaseSlice,
    best_match_accuracy,
    load_base,
)
from lungclam.train import embed_images, kept_epoch, pretrain  # noqa: E402

SEED = 0
K = 3
COLUMNS = ("section", "setting", "value", "unit", "x floor", "peak MiB", "note")


@dataclasses.dataclass
class Sizes:
    """What one run measures: full sizes on a GPU, tiny ones with --quick."""

    shape_3d: tuple[int, ...] = (88, 88, 88)
    shape_2d: tuple[int, ...] = (64, 64)
    channels: tuple[int, ...] = (32, 64, 128)
    volumes: int = 64  # pretraining and clustering
    epochs: int = 5  # timed epochs, after one warm-up epoch
    batch: int = 4
    clam_3d: int = 16
    clam_2d: int = 128
    clam_chunks_3d: tuple[int, ...] = (128, 256, 512)  # masked inputs per pass
    clam_chunks_2d: tuple[int, ...] = (512, 2048, 4096)
    floor_batches_3d: tuple[int, ...] = (32, 64, 128, 256)
    floor_batches_2d: tuple[int, ...] = (256, 1024, 4096)
    floor_calls: int = 3
    rounds: int = 3
    simulation: dict | None = None  # overrides of the study's settings (None: the configs')


QUICK = Sizes(
    shape_3d=(24, 24, 24),
    shape_2d=(32, 32),
    channels=(8, 16, 32),
    volumes=8,
    epochs=2,
    clam_3d=2,
    clam_2d=4,
    clam_chunks_3d=(16, 64),
    clam_chunks_2d=(32, 64),
    floor_batches_3d=(4, 8),
    floor_batches_2d=(8, 16),
    floor_calls=1,
    rounds=1,
    simulation=QUICK_SIMULATION,
)


class Table:
    """Rows of the printed table (and their values, for the caller)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[tuple[str, ...]] = []

    def add(
        self,
        section: str,
        setting: str,
        value: float | str,
        unit: str,
        floor: float | None = None,
        peak: float | None = None,
        note: str = "",
    ) -> None:
        text = value if isinstance(value, str) else f"{value:.4g}"
        cells = (
            section,
            setting,
            text,
            unit,
            "" if floor is None else f"{floor:.2f}",
            "" if peak is None else f"{peak:.0f}",
            note,
        )
        self.rows.append(cells)
        print("| " + " | ".join(cells) + " |", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _set_determinism(device: torch.device, deterministic: bool) -> None:
    """Deterministic: the pipeline's settings (seed_everything). Else cuDNN autotuning and,
    on the CPU, no deterministic-algorithm checks."""
    seed_everything(SEED, device)
    if not deterministic:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def _spec_3d(sizes: Sizes) -> ModelSpec:
    return ModelSpec(sizes.shape_3d, channels=sizes.channels, strides=(2, 2, 2))


def _spec_2d(sizes: Sizes) -> ModelSpec:
    return ModelSpec(sizes.shape_2d, channels=sizes.channels, strides=(2, 1, 2))


def _volumes(n: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(SEED).random((n, 1, *shape), dtype=np.float32)


def _precisions(device: torch.device) -> list[tuple[str, bool]]:
    return [("fp32", False), ("bf16", True)]


def bench_training(table: Table, sizes: Sizes, device: torch.device) -> None:
    """Pretraining and the clustering phase, ms per volume-epoch."""
    images = _volumes(sizes.volumes, sizes.shape_3d)
    spec = _spec_3d(sizes)
    grid = "x".join(map(str, sizes.shape_3d))
    pretrained = None
    for precision, amp in _precisions(device):
        for deterministic in (True, False):
            mode = (
                "deterministic"
                if deterministic
                else ("cudnn.benchmark" if device.type == "cuda" else "nondeterministic")
            )
            setting = f"{grid}, batch {sizes.batch}, {precision}, {mode}"
            if amp and device.type != "cuda":
                table.add("pretrain", setting, "n/a", "ms/volume-epoch", note="bf16 autocast is CUDA only")
                continue
            _set_determinism(device, deterministic)
            model = ConvAutoencoder(spec)
            _reset_peak(device)
            history = pretrain(
                model, images, sizes.epochs + 1, sizes.batch, seed=SEED, device=device, mixed_precision=amp
            )
            ms = statistics.median(history["seconds"].iloc[1:]) / len(images) * 1e3
            table.add(
                "pretrain",
                setting,
                ms,
                "ms/volume-epoch",
                peak=_peak(device),
                note=f"{len(images)} volumes, median of {sizes.epochs} epochs",
            )
            if deterministic and not amp:
                pretrained = model
    _set_determinism(device, True)
    steps = math.ceil(len(images) / sizes.batch)
    for precision, amp in _precisions(device):
        setting = f"{grid}, K = {K}, batch {sizes.batch}, {precision}"
        if amp and device.type != "cuda":
            table.add("cluster", setting, "n/a", "ms/volume-epoch", note="bf16 autocast is CUDA only")
            continue
        _reset_peak(device)
        fit = fit_clusters(
            copy.deepcopy(pretrained),
            images,
            K,
            max_epochs=sizes.epochs + 1,
            batch_size=sizes.batch,
            update_interval=steps,
            tol=0.0,
            n_init=2,
            seed=SEED,
            device=device,
            mixed_precision=amp,
            guard=None,
        )
        ms = statistics.median(fit.history["seconds"].iloc[1:]) / len(images) * 1e3
        table.add(
            "cluster",
            setting,
            ms,
            "ms/volume-epoch",
            peak=_peak(device),
            note=f"targets refreshed once an epoch; median of {len(fit.history) - 1} epochs",
        )


def _clustering_model(spec: ModelSpec, device: torch.device) -> ClusteringModel:
    """Random-weight CAE + clustering layer; centroids at the embeddings of K random images."""
    torch.manual_seed(SEED)
    autoencoder = ConvAutoencoder(spec).eval()
    with torch.inference_mode():
        centroids = autoencoder.encode(torch.rand(K, spec.in_channels, *spec.input_shape))
    return ClusteringModel(autoencoder, centroids.clone()).eval().to(device)


def _rate(work: Callable[[], int], device: torch.device, rounds: int) -> float:
    """Median items per second of ``work`` (returns how many it did) after one warm-up call."""
    work()
    rates = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        n = work()
        _sync(device)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def _floor(
    model: ClusteringModel,
    spec: ModelSpec,
    batches: tuple[int, ...],
    calls: int,
    device: torch.device,
    amp: bool,
    rounds: int,
) -> tuple[float, str]:
    """Best encoder + clustering layer passes per second over batch sizes and memory formats."""
    layout = torch.channels_last if spec.ndim == 2 else torch.channels_last_3d
    best, where = 0.0, ""
    for fmt_name, fmt in (("", torch.contiguous_format), (", channels-last", layout)):
        net = copy.deepcopy(model).to(memory_format=fmt)
        for b in batches:
            x = torch.rand(b, spec.in_channels, *spec.input_shape, device=device)

            def passes(x: torch.Tensor = x, net: ClusteringModel = net) -> int:
                with torch.inference_mode(), autocast(device, amp):
                    for _ in range(calls):
                        net.assign(x)
                return calls * len(x)

            rate = _rate(passes, device, rounds)
            if rate > best:
                best, where = rate, f"batch {b}{fmt_name}"
    return best, where


def bench_clam(table: Table, sizes: Sizes, device: torch.device) -> None:
    """CLAM items per second against the encoder floor, 2D and 3D, fp32 and bf16."""
    for spec, n, floor_batches, unit in (
        (_spec_2d(sizes), sizes.clam_2d, sizes.floor_batches_2d, "images/s"),
        (_spec_3d(sizes), sizes.clam_3d, sizes.floor_batches_3d, "volumes/s"),
    ):
        model = _clustering_model(spec, device)
        channels = spec.channels[-1]
        images = _volumes(n, spec.input_shape)
        grid = f"{spec.ndim}D {'x'.join(map(str, spec.input_shape))}"
        for precision, amp in _precisions(device):
            if amp and device.type != "cuda":
                table.add("clam", f"{grid}, {precision}", "n/a", unit, note="bf16 autocast is CUDA only")
                continue
            _reset_peak(device)
            passes, where = _floor(model, spec, floor_batches, sizes.floor_calls, device, amp, sizes.rounds)
            floor = passes / channels
            table.add(
                "clam",
                f"{grid}, {precision}, floor",
                floor,
                unit,
                1.0,
                _peak(device),
                note=f"encoder + clustering layer at {where} / H = {channels}",
            )
            chunks = sizes.clam_chunks_2d if spec.ndim == 2 else sizes.clam_chunks_3d
            variants = [(None, None)] + [(c, cl) for c in chunks for cl in (False, True)]
            for chunk, channels_last in variants:
                net = copy.deepcopy(model)
                _reset_peak(device)

                def run(net: ClusteringModel = net, chunk: int | None = chunk, cl: bool | None = channels_last) -> int:
                    return sum(1 for _ in iter_clam(net, images, chunk, device, amp, channels_last=cl))

                rate = _rate(run, device, sizes.rounds)
                if chunk is None:
                    layout = ", channels-last" if auto_channels_last(device, spec.ndim, amp) else ""
                    auto = auto_chunk_size(spec.ndim, device, math.prod(spec.input_shape))
                    label = f"auto (the pipeline's: chunk {auto}{layout})"
                else:
                    label = f"chunk {chunk}{', channels-last' if channels_last else ''}"
                table.add(
                    "clam",
                    f"{grid}, {precision}, {label}",
                    rate,
                    unit,
                    rate / floor,
                    _peak(device),
                    note=f"iter_clam on {n}, maps of all K = {K} clusters",
                )


def bench_reproducibility(table: Table, sizes: Sizes, device: torch.device) -> None:
    """Two deterministic fp32 pretraining runs from one seed: same weights and losses?"""
    images = _volumes(min(sizes.volumes, 8), sizes.shape_3d)
    runs = []
    for _ in range(2):
        _set_determinism(device, True)
        model = ConvAutoencoder(_spec_3d(sizes))
        history = pretrain(model, images, 2, sizes.batch, seed=SEED, device=device)
        runs.append((history["loss"].tolist(), {k: v.detach().cpu() for k, v in model.state_dict().items()}))
    (loss_a, weights_a), (loss_b, weights_b) = runs
    diff = max(float((weights_a[k].double() - weights_b[k].double()).abs().max()) for k in weights_a)
    same = loss_a == loss_b and diff == 0.0
    table.add(
        "reproducibility",
        "two deterministic fp32 pretraining runs",
        diff,
        "max abs weight difference",
        note=f"losses {'identical' if loss_a == loss_b else 'differ'}; "
        f"{'bit-identical' if same else 'NOT bit-identical'}",
    )


def _ellipse_base(size: int = 64, pixel_mm: float = 3.0) -> BaseSlice:
    """Two elliptic lungs of -850 HU on the null background, Gaussian noise of 60 HU: a
    stand-in base slice where SimpleITK (the built-in phantom's resampling) is missing."""
    rows, cols = np.mgrid[:size, :size]
    lungs = np.zeros((size, size), dtype=bool)
    for centre in (0.3 * size, 0.7 * size):
        lungs |= ((rows - size / 2) / (0.36 * size)) ** 2 + ((cols - centre) / (0.16 * size)) ** 2 <= 1
    hu = np.where(lungs, -850.0, BACKGROUND_HU).astype(np.float32)
    noise = np.random.default_rng(SEED).normal(0.0, 60.0, 20000).astype(np.float32)
    return BaseSlice(hu=hu, lungs=lungs, noise=noise, pixel_mm=pixel_mm, labels=lungs.astype(np.uint8))


def _base(path: str | None = None) -> tuple[BaseSlice, str]:
    if path:
        return load_base(path), f"base slice from {Path(path).name}"
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return _ellipse_base(), "elliptic stand-in base (no SimpleITK)"
    from lungclam.simulation.data import builtin_base

    return builtin_base(seed=SEED), "built-in phantom base"


def _study_settings(overlay: str | None, overrides: dict | None) -> StudySettings:
    section = yaml.safe_load((ROOT / "config" / "simulation.yaml").read_text())["simulation"]
    if overlay:
        section.update(yaml.safe_load((ROOT / "config" / overlay).read_text()).get("simulation", {}))
    section.update(overrides or {})
    return StudySettings.from_config(
        {k: v for k, v in section.items() if k not in ("scenarios", "true_ks", "threads")}, SEED
    )


def bench_simulation(table: Table, sizes: Sizes, device: torch.device, base: BaseSlice, base_note: str) -> None:
    """One simulation case (intensity, true K = 3), cut to the pretraining, one clustering
    phase at K = true K and the CLAMs, at the CPU config and at the paper's epochs."""
    for label, overlay in (("CPU config", None), ("paper epochs", "paper.yaml")):
        settings = _study_settings(overlay, sizes.simulation)
        _, truth, _, x = simulate_case("intensity", K, base, settings)
        _set_determinism(device, True)  # the pipeline's cuDNN settings; pretrain_case seeds again
        _reset_peak(device)
        started = time.perf_counter()
        model, history = pretrain_case(x, base.shape, settings, device)
        pretrain_s = time.perf_counter() - started
        steps = len(history) * math.ceil(len(x) / settings.batch_size)
        started = time.perf_counter()
        features = embed_images(model, x, device=device)
        scale = _kernel_scale(settings.kernel_scale, features, K, settings)
        fit = fit_clusters(
            model,
            x,
            K,
            max_epochs=settings.cluster_max_epochs,
            scale=scale,
            batch_size=settings.batch_size,
            learning_rate=settings.cluster_learning_rate,
            gamma=settings.gamma,
            update_interval=settings.update_interval,
            tol=settings.tol,
            n_init=settings.n_init,
            seed=settings.seed,
            device=device,
        )
        cluster_s = time.perf_counter() - started
        started = time.perf_counter()
        subset = _clam_subset(truth, settings.clam_images, settings.seed)
        for _ in iter_clam(fit.model, x[subset], settings.clam_chunk, device):
            pass
        clam_s = time.perf_counter() - started
        accuracy, _ = best_match_accuracy(truth, fit.labels)
        peak = _peak(device)
        setting = f"{label}, {settings.n_images} images"
        table.add(
            "simulation",
            f"{setting}: pretraining, {len(history)} epochs (kept {kept_epoch(history)})",
            pretrain_s,
            "s",
            peak=peak,
            note=f"{pretrain_s / steps * 1e3:.3g} ms per Adam step ({steps} steps); {base_note}",
        )
        table.add(
            "simulation",
            f"{setting}: clustering at K = true K = {K}",
            cluster_s,
            "s",
            note=f"{len(fit.history)} epochs{', converged' if fit.converged else ''}; accuracy {accuracy:.3f}",
        )
        table.add(
            "simulation", f"{setting}: CLAM of {len(subset)} images", clam_s, "s", note=f"chunk {settings.chunk_size}"
        )
        estimate = pretrain_s + len(settings.fitted_ks) * cluster_s + clam_s
        table.add(
            "simulation",
            f"{setting}: whole case, estimated",
            estimate,
            "s",
            note=f"pretraining + {len(settings.fitted_ks)} clustering phases (fitted Ks) as the one measured "
            "+ CLAMs; the K criteria not included",
        )


def _profile_sort_key(device: torch.device) -> str:
    """The operator table's sort column: self device time on CUDA (named so since torch
    2.4; ``self_cuda_time_total`` before), self CPU time on the CPU."""
    if device.type != "cuda":
        return "self_cpu_time_total"
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return "self_device_time_total" if (major, minor) >= (2, 4) else "self_cuda_time_total"


def profile_clam(sizes: Sizes, device: torch.device, path: Path, rows: int = 30) -> None:
    """torch.profiler's operator table for the pipeline's 3D CLAM call (auto chunk and
    memory format) in each precision, written to ``path``: where the time above the
    encoder's floor goes (issue 16's next step). One warm-up call first."""
    from torch.profiler import ProfilerActivity, profile

    spec = _spec_3d(sizes)
    model = _clustering_model(spec, device)
    images = _volumes(sizes.clam_3d, spec.input_shape)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sections = []
    for precision, amp in _precisions(device):
        if amp and device.type != "cuda":
            continue
        sum(1 for _ in iter_clam(model, images[:2], None, device, amp))
        _sync(device)
        with profile(activities=activities) as prof:
            sum(1 for _ in iter_clam(model, images, None, device, amp))
            _sync(device)
        table = prof.key_averages().table(sort_by=_profile_sort_key(device), row_limit=rows)
        sections.append(
            f"# iter_clam, 3D {'x'.join(map(str, spec.input_shape))}, {len(images)} volumes, {precision}\n{table}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(sections) + "\n")
    print(f"CLAM profile written to {path}")


def main(argv: list[str] | None = None) -> Table:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="small models and few epochs (a smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument(
        "--base", help="the simulation's base slice, an .npz of benchmarks/simulation_study.py --save-base"
    )
    parser.add_argument(
        "--profile-clam",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write torch.profiler's operator table of the 3D CLAM call to PATH",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["training", "clam", "simulation", "reproducibility"],
        help="leave out a section",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sizes = QUICK if args.quick else Sizes()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"lungclam GPU check: torch {torch.__version__}, device {device} ({name}){', quick' if args.quick else ''}")
    started = time.perf_counter()
    table = Table(device)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    if "training" not in args.skip:
        bench_training(table, sizes, device)
    if "clam" not in args.skip:
        bench_clam(table, sizes, device)
    if "simulation" not in args.skip:
        bench_simulation(table, sizes, device, *_base(args.base))
    if "reproducibility" not in args.skip:
        bench_reproducibility(table, sizes, device)
    if args.profile_clam is not None:
        profile_clam(sizes, device, args.profile_clam)
    print(f"total {time.perf_counter() - started:.0f} s")
    return table


if __name__ == "__main__":
    main()
