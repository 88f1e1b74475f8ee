"""The imaging chain on the real chest CTs of ../shared/data, registered to a study template.

Run after `make demo` (its template is the default target):

    .venv/bin/python benchmarks/real_ct.py [--template-dir results/template] [--spacing-mm 2]
        [--config config/config.yaml [overlay.yaml ...]] [--syn-spacing-mm 2]
        [--data ../shared/data/real-ct/lung-pet-ct-dx]

The paper's settings: build their 1 mm template first (``snakemake --configfile
config/paper.yaml -d WORK WORK/results/template/template.nii.gz``), then
``--template-dir WORK/results/template --config config/config.yaml config/paper.yaml``.

For each subject folder: conversion (which series was chosen), resampling, lung
segmentation (right and left volume in mL; right must be the patient's right, i.e. the
smaller LPS x), SyN registration to the template with the config's `register` settings,
and the lung-mask Dice of the warped subject against the template mask. Prints a table
with seconds per step. Works in a temporary folder; writes nothing under results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml
from snakemake.utils import update_config

from lungclam.dicom import convert_subject
from lungclam.imageio import read_image
from lungclam.register import register_to_template
from lungclam.resample import resample_ct
from lungclam.segment import lung_volumes_ml, segment_lungs

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-ct" / "lung-pet-ct-dx"


def lung_centroid_x(labels: sitk.Image, label: int) -> float:
    """Mean LPS x (mm) of one label: smaller x is the patient's right."""
    lps = sitk.DICOMOrient(labels, "LPS")
    z, y, x = np.nonzero(sitk.GetArrayFromImage(lps) == label)
    if not len(x):
        return float("nan")
    return float(lps.TransformContinuousIndexToPhysicalPoint((float(x.mean()), float(y.mean()), float(z.mean())))[0])


def run_subject(
    folder: Path,
    work: Path,
    template: sitk.Image,
    template_mask: sitk.Image,
    spacing_mm: float,
    register: dict,
    seed: int,
) -> dict:
    subject = folder.name.replace(".", "_")
    row: dict = {"subject": subject}
    t = time.perf_counter()
    sidecar = convert_subject(folder, subject, work / f"{subject}.nii.gz", work / f"{subject}.json")
    row["series"] = f"{sidecar.get('SeriesDescription', '?')} ({sidecar['n_files']} files)"
    row["s_convert"] = time.perf_counter() - t
    t = time.perf_counter()
    image = resample_ct(read_image(work / f"{subject}.nii.gz"), spacing_mm)
    row["s_resample"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = segment_lungs(image, subject=subject)
    row["s_segment"] = time.perf_counter() - t
    volumes = lung_volumes_ml(labels)
    row["right_ml"], row["left_ml"] = volumes.get(1, 0.0), volumes.get(2, 0.0)
    row["sides_ok"] = lung_centroid_x(labels, 1) < lung_centroid_x(labels, 2)
    t = time.perf_counter()
    result = register_to_template(
        image,
        labels,
        template,
        template_mask,
        work / subject / "transforms",
        transform=register["transform"],
        reg_iterations=tuple(register["reg_iterations"]),
        margin_mm=register["margin_mm"],
        syn_spacing_mm=register.get("syn_spacing_mm"),
        seed=seed,
    )
    row["s_register"] = time.perf_counter() - t
    row["reg_lung_dice"] = result.lung_dice
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template-dir", type=Path, default=Path("results/template"))
    parser.add_argument(
        "--config",
        type=Path,
        nargs="+",
        default=[Path("config/config.yaml")],
        help="config files, later ones overlaid on earlier ones (as --configfile does)",
    )
    parser.add_argument("--syn-spacing-mm", type=float, default=None, help="override register.syn_spacing_mm")
    parser.add_argument("--spacing-mm", type=float, default=None, help="resampling (default: the config's)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no real data at {args.data}", file=sys.stderr)
        return 2
    config: dict = {}
    for path in args.config:
        update_config(config, yaml.safe_load(path.read_text()))
    if args.syn_spacing_mm is not None:
        config["register"]["syn_spacing_mm"] = args.syn_spacing_mm
    spacing = args.spacing_mm or float(config["resample"]["spacing_mm"])
    template = read_image(args.template_dir / "template.nii.gz")
    template_mask = read_image(args.template_dir / "template_mask.nii.gz")
    folders = sorted(p for p in args.data.iterdir() if p.is_dir())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            print(f"{folder.name} ...", file=sys.stderr, flush=True)
            rows.append(
                run_subject(
                    folder, Path(tmp), template, template_mask, spacing, config["register"], int(config.get("seed", 0))
                )
            )
    pd.set_option("display.width", 200)
    print(
        f"template {args.template_dir} (spacing {template.GetSpacing()[0]:.1f} mm); resampled to {spacing} mm; "
        f"register {config['register']['transform']} {config['register']['reg_iterations']}, "
        f"SyN grid {config['register'].get('syn_spacing_mm')} mm (never finer than the template)"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
