"""Peak memory of each stage: on the demo run, and on a real 512x512 chest CT at 1 mm.

    .venv/bin/python benchmarks/memory.py [--results results] [--scan DIR] [--quick]

Part 1 reads Snakemake's benchmark tables of a finished run (``results/benchmarks/``,
column ``max_rss`` in MB): the largest peak of each rule over its jobs.

Part 2 runs the per-subject stages on one real scan (default: the first subject of
``../shared/data/real-ct/lung-pet-ct-dx``, 512x512 slices) at the paper's settings
(config/paper.yaml: 1 mm resampling and SyN, 3 mm 88^3 model grid), each stage in a
fresh Python process that reports its own peak resident memory (``getrusage``
``ru_maxrss``), so stages do not inherit each other's peaks. The registration is SyN of
the 1 mm image to a 5 %-scaled copy of the subject itself, with shortened iteration counts:
memory is set by the grid (images, gradients and displacement fields at each level), not
by how many iterations run, and the full schedule takes over 15 minutes single-threaded.
It runs twice: with the warp estimated on a 2 mm grid (``register.syn_spacing_mm: 2``, the
default) and on the 1 mm grid itself (``syn_spacing_mm: 1``); both write 1 mm outputs. The
model stages run the paper's 3D CAE on an 88^3 grid (train: one epoch, batch 4; clam: one
subject); their memory does not depend on the scan. ``import`` is the floor: Python with
the libraries a stage loads. Writes nothing under results/.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

DEFAULT_SCAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct" / "lung-pet-ct-dx"
STAGES = ("import", "convert", "resample", "segment", "register", "register_syn1mm", "downsample", "train", "clam")
PAPER = {
    "spacing_mm": 1.0,
    "syn_spacing_mm": 2.0,
    "margin_mm": 12.0,
    "grid_mm": 3.0,
    "grid": (88, 88, 88),
    "batch_size": 4,
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_stage(stage: str, scan: Path, work: Path, quick: bool) -> dict:
    """One stage, reading the previous stage's files from ``work``; runs in its own process."""
    from lungclam.runtime import set_threads

    set_threads(1)
    import SimpleITK as sitk

    from lungclam.imageio import read_image, write_image

    detail = ""
    started = time.perf_counter()
    if stage == "import":
        import ants  # noqa: F401
        import torch  # noqa: F401

        import lungclam.segment  # noqa: F401
    elif stage == "convert":
        from lungclam.dicom import convert_subject

        sidecar = convert_subject(scan, "bench", work / "nifti.nii.gz", work / "nifti.json")
        size = read_image(work / "nifti.nii.gz").GetSize()
        detail = f"{sidecar['n_files']} files -> {size[0]}x{size[1]}x{size[2]}"
    elif stage == "resample":
        from lungclam.resample import resample_ct

        image = resample_ct(read_image(work / "nifti.nii.gz"), PAPER["spacing_mm"])
        write_image(image, work / "resampled.nii.gz")
        detail = "x".join(map(str, image.GetSize())) + f" at {PAPER['spacing_mm']:g} mm"
    elif stage == "segment":
        from lungclam.segment import lung_volumes_ml, segment_lungs

        labels = segment_lungs(read_image(work / "resampled.nii.gz"), subject="bench")
        write_image(labels, work / "lungmask.nii.gz")
        volumes = lung_volumes_ml(labels)
        detail = f"lungs {volumes.get(1, 0):.0f} + {volumes.get(2, 0):.0f} mL"
    elif stage in ("register", "register_syn1mm"):
        from lungclam.register import prepare_moving, register_to_template, syn_grid_spacing

        syn_spacing = PAPER["syn_spacing_mm"] if stage == "register" else PAPER["spacing_mm"]
        name = "registered.nii.gz" if stage == "register" else "registered_syn1mm.nii.gz"

        image, labels = read_image(work / "resampled.nii.gz"), read_image(work / "lungmask.nii.gz")
        target, target_labels = prepare_moving(image, labels, PAPER["spacing_mm"], PAPER["margin_mm"])
        scale = sitk.ScaleTransform(3, (1.05, 1.05, 1.05))
        centre = target.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in target.GetSize()])
        scale.SetCenter(centre)
        target = sitk.Resample(target, target, scale, sitk.sitkLinear, -1024.0)
        target_labels = sitk.Resample(target_labels, target_labels, scale, sitk.sitkNearestNeighbor, 0)
        iterations = (4, 2, 1) if quick else (10, 5, 2)
        result = register_to_template(
            image,
            labels,
            target,
            target_labels,
            work / f"transforms_{stage}",
            reg_iterations=iterations,
            margin_mm=PAPER["margin_mm"],
            syn_spacing_mm=syn_spacing,
            seed=0,
        )
        write_image(result.warped, work / name)
        write_image(target_labels, work / "target_labels.nii.gz")
        grid = syn_grid_spacing(PAPER["spacing_mm"], syn_spacing)
        syn_size = "x".join(str(round(n * PAPER["spacing_mm"] / grid)) for n in target.GetSize())
        detail = (
            f"SyN grid {syn_size} at {grid:g} mm, outputs "
            + "x".join(map(str, target.GetSize()))
            + f" at 1 mm, iterations {iterations}, lung Dice {result.lung_dice:.3f}"
        )
    elif stage == "downsample":
        from lungclam.downsample import downsample_to_grid, grid_mask, lung_grid

        template_labels = read_image(work / "target_labels.nii.gz")
        reference = lung_grid(template_labels, PAPER["grid_mm"], PAPER["grid"])
        out = downsample_to_grid(
            read_image(work / "registered.nii.gz"), grid_mask(template_labels, reference), reference
        )
        detail = "x".join(map(str, out.GetSize())) + f" at {PAPER['grid_mm']:g} mm"
    elif stage in ("train", "clam"):
        import numpy as np
        import torch

        from lungclam.model import ConvAutoencoder, ModelSpec

        torch.set_num_threads(1)
        spec = ModelSpec(PAPER["grid"], strides=(2, 2, 2))
        model = ConvAutoencoder(spec)
        rng = np.random.default_rng(0)
        n = 8 if stage == "train" else 1
        images = rng.random((n, 1, *PAPER["grid"]), dtype=np.float32)
        if stage == "train":
            from lungclam.train import pretrain

            pretrain(model, images, epochs=1, batch_size=PAPER["batch_size"])
            detail = f"paper CAE, 88^3, {n} volumes, batch {PAPER['batch_size']}, 1 epoch"
        else:
            from lungclam.clam import iter_clam
            from lungclam.dec import ClusteringModel

            k = 3
            clustering = ClusteringModel(model, torch.zeros(k, spec.latent_dim))
            for _ in iter_clam(clustering, images):
                pass
            detail = f"paper CAE, 88^3, K={k}, chunk size auto (1 on the CPU)"
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return {
        "stage": stage,
        "peak_mb": round(_peak_mb()),
        "seconds": round(time.perf_counter() - started, 1),
        "detail": detail,
    }


def demo_table(results: Path) -> pd.DataFrame:
    """Largest max_rss (MB) and seconds of each rule in a run's benchmark tables."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = path.parent.name if path.parent.name != "benchmarks" else path.stem
        table = pd.read_csv(path, sep="\t")
        rows.append({"rule": rule, "max_rss_mb": float(table["max_rss"].max()), "s": float(table["s"].max())})
    if not rows:
        return pd.DataFrame(columns=["rule", "jobs", "peak_mb", "max_s"])
    frame = pd.DataFrame(rows)
    return (
        frame.groupby("rule", sort=False)
        .agg(jobs=("s", "size"), peak_mb=("max_rss_mb", "max"), max_s=("s", "max"))
        .round(0)
        .astype(int)
        .reset_index()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--scan", type=Path, default=None, help="a subject's DICOM folder")
    parser.add_argument("--quick", action="store_true", help="fewer SyN iterations (same grids)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:  # child process
        print(json.dumps(run_stage(args.stage, args.scan, args.work, args.quick)))
        return 0

    demo = demo_table(args.results)
    print(f"Demo run ({args.results}/benchmarks, Snakemake max_rss per rule):")
    print(demo.to_string(index=False) if len(demo) else "  (no benchmark tables: run `make demo` first)")

    scan = args.scan
    if scan is None:
        subjects = sorted(p for p in DEFAULT_SCAN.glob("*") if p.is_dir()) if DEFAULT_SCAN.is_dir() else []
        scan = subjects[0] if subjects else None
    if scan is None or not scan.is_dir():
        print(f"\nno real scan found (looked in {DEFAULT_SCAN}); skipping part 2")
        return 0
    print(f"\nReal CT {scan.name} at the paper's settings, one process per stage (peak RSS):")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lungclam-memory-") as work:
        for stage in STAGES:
            command = [sys.executable, __file__, "--stage", stage, "--scan", str(scan), "--work", work]
            if args.quick:
                command.append("--quick")
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{stage} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {stage}: {rows[-1]['peak_mb']} MB, {rows[-1]['seconds']} s", file=sys.stderr)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
