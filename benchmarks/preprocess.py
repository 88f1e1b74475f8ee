"""Quality and speed of the imaging chain on the demo cohort; prints a table.

Run after `make demo` (or any run on the demo cohort):

    .venv/bin/python benchmarks/preprocess.py [RESULTS_DIR]

Measures, per subject: Dice of each segmented lung against the phantom's true lung masks
(the truth resampled by nearest neighbour onto the segmentation's grid); lung Dice of the
registered subject's warped mask against the template mask; and the seconds each stage took
(from Snakemake's `benchmark:` files). Targets: mean per-lung segmentation Dice >= 0.95,
mean registered lung Dice >= 0.95.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lungclam.metrics import dice, per_label_dice

STAGES = ("convert", "resample", "segment", "register", "downsample")


def stage_seconds(results: Path, stage: str, subject: str) -> float:
    """Wall-clock seconds of one job from its Snakemake benchmark file (NaN if absent)."""
    path = results / "benchmarks" / stage / f"{subject}.tsv"
    if not path.is_file():
        return float("nan")
    return float(pd.read_csv(path, sep="\t")["s"].iloc[0])


def segmentation_dice(results: Path, truth_mask: Path, subject: str) -> dict[int, float]:
    """Per-lung Dice of the pipeline's lung labels against the true labels."""
    labels = sitk.ReadImage(str(results / "lungmask" / f"{subject}.nii.gz"))
    truth = sitk.ReadImage(str(truth_mask))
    truth_on_grid = sitk.Resample(truth, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return per_label_dice(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(truth_on_grid))


def registration_dice(results: Path, template_mask: np.ndarray, subject: str) -> float:
    """Lung (union) Dice of the warped subject mask with the template mask."""
    path = results / "registered" / "lungmask" / f"{subject}.nii.gz"
    if not path.is_file():
        return float("nan")
    return dice(sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0, template_mask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default="results", type=Path)
    args = parser.parse_args(argv)
    results: Path = args.results
    truth_tsv = results / "demo" / "truth.tsv"
    if not truth_tsv.is_file():
        print(f"no demo truth at {truth_tsv}: run `make demo` first", file=sys.stderr)
        return 2
    truth = pd.read_csv(truth_tsv, sep="\t", dtype={"subject": str})
    template_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(results / "template" / "template_mask.nii.gz"))) > 0
    rows = []
    for _, row in truth.iterrows():
        subject = row["subject"]
        seg = segmentation_dice(results, results / "demo" / row["lung_mask"], subject)
        entry = {
            "subject": subject,
            "pattern": row["pattern"],
            "seg_dice_right": seg[1],
            "seg_dice_left": seg[2],
            "reg_lung_dice": registration_dice(results, template_mask, subject),
        }
        entry.update({f"s_{stage}": stage_seconds(results, stage, subject) for stage in STAGES})
        rows.append(entry)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    numeric = table.drop(columns=["subject", "pattern"])
    print("\nmean over subjects:")
    print(numeric.mean().to_frame("mean").T.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nminimum over subjects:")
    print(numeric.min().to_frame("min").T.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name in ("demo", "template"):
        path = results / "benchmarks" / f"{name}.tsv"
        if path.is_file():
            print(f"\n{name}: {float(pd.read_csv(path, sep=chr(9))['s'].iloc[0]):.1f} s (one job)")
    seg_mean = float(np.nanmean(table[["seg_dice_right", "seg_dice_left"]].to_numpy()))
    reg_mean = float(np.nanmean(table["reg_lung_dice"]))
    print(
        f"\nsegmentation Dice mean {seg_mean:.4f} (target >= 0.95); "
        f"registered lung Dice mean {reg_mean:.4f} (target >= 0.95)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
