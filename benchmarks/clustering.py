"""Quality of clusters and CLAMs on the demo cohort, against the phantom's truth; prints tables.

Run after `make demo` (or any run on the demo cohort):

    .venv/bin/python benchmarks/clustering.py [RESULTS_DIR]

or, for several finished runs on demo-like cohorts (one row each; the truth is
RESULTS/demo/truth.tsv unless given as NAME=RESULTS:TRUTH):

    .venv/bin/python benchmarks/clustering.py --table demo_s0=/tmp/runs/demo_s0/results ...
        [--agree demo_s0 demo_s0_seed1]

which prints cohort, subjects, true K, chosen K, the K criterion's runner-up and margin, ARI
against the truth, the stability at the chosen K and the stability figure's verdict (``*``:
with the caveat that pretraining ended at its epoch maximum while still improving); with
``--agree A B`` also the ARI between two runs' clusters on the subjects they share (two
runs that differ only in ``seed``).

Reads `truth.tsv` (which the pipeline never reads) and measures:

- the adjusted Rand index (ARI) and normalised mutual information of `clusters.tsv` against
  the true disease patterns, with the cluster-by-pattern contingency table;
- whether `n_clusters: auto` chose the true number of patterns (`model/k_selection.tsv`);
- where the cluster-mean CLAMs put their mass: each subject's true disease mask is warped
  into template space with that subject's own registration transforms and resampled onto
  the model grid; a pattern's region is where at least 25 % of its subjects have disease.
  For each cluster (matched to the pattern most of its members carry) we report the share
  of its mean CLAM's mass inside that region, next to the region's share of the lung
  (what a flat map would score) and their ratio, the enrichment (1 = no better than flat).
  Targets: ARI >= 0.9; chosen K = number of patterns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ants
import numpy as np
import pandas as pd
import SimpleITK as sitk
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

REGION_SHARE = 0.25  # a voxel belongs to a pattern's region when this share of its subjects has disease there


def warped_disease(results: Path, demo: Path, subject: str, disease_mask: str, grid: ants.ANTsImage) -> np.ndarray:
    """Fraction ``(z, y, x)`` of each model-grid voxel covered by the subject's true disease."""
    moving = ants.from_sitk(sitk.Cast(sitk.ReadImage(str(demo / disease_mask)), sitk.sitkFloat32))
    transforms = [str(results / "transforms" / subject / name) for name in ("1Warp.nii.gz", "0GenericAffine.mat")]
    warped = ants.apply_transforms(grid, moving, transforms, interpolator="linear", defaultvalue=0.0)
    return sitk.GetArrayFromImage(ants.to_sitk(warped))


def pattern_regions(results: Path, truth: pd.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per pattern, the boolean model-grid region where its disease lies; and the lung mask."""
    demo = results / "demo"
    grid_image = sitk.ReadImage(str(results / "template" / "grid_mask.nii.gz"))
    lung = sitk.GetArrayFromImage(grid_image) > 0
    grid = ants.from_sitk(sitk.Cast(grid_image, sitk.sitkFloat32))
    regions = {}
    for pattern, rows in truth.groupby("pattern"):
        share = np.mean(
            [warped_disease(results, demo, r.subject, r.disease_mask, grid) > 0.5 for r in rows.itertuples()], axis=0
        )
        regions[pattern] = (share >= REGION_SHARE) & lung
    return regions, lung


def clam_mass(results: Path, clusters: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster: its majority pattern, share of CLAM mass in that pattern's region."""
    regions, lung = pattern_regions(results, truth)
    merged = clusters.merge(truth[["subject", "pattern"]], on="subject")
    rows = []
    for k, members in merged.groupby("cluster"):
        pattern = members["pattern"].value_counts().idxmax()
        path = results / "clam" / f"cluster_{k}_mean.nii.gz"
        clam = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) if path.is_file() else None
        region = regions[pattern]
        row = {
            "cluster": k,
            "n": len(members),
            "majority_pattern": pattern,
            "purity": float((members["pattern"] == pattern).mean()),
            "region_ml": float(region.sum() * np.prod(sitk.ReadImage(str(path)).GetSpacing()) / 1000)
            if clam is not None
            else np.nan,
            "region_share_of_lung": float(region.sum() / lung.sum()),
        }
        if clam is not None and region.any():
            in_lung = clam[lung].sum()
            row["clam_mass_in_region"] = float(clam[region].sum() / clam.sum())
            row["lung_clam_mass_in_region"] = float(clam[region].sum() / in_lung)
            # > 1: the map is denser in the pattern's region than elsewhere in the lungs.
            row["enrichment"] = row["lung_clam_mass_in_region"] / row["region_share_of_lung"]
        rows.append(row)
    return pd.DataFrame(rows)


def run_summary(name: str, spec: str, threshold: float, patience: int) -> dict:
    """One row of the ``--table``: K choice, ARI against the truth and stability of a finished run."""
    from lungclam.figures import stability_verdict
    from lungclam.train import stopped_before_maximum

    results, _, truth_path = spec.partition(":")
    results = Path(results)
    truth = pd.read_csv(truth_path or results / "demo" / "truth.tsv", sep="\t")
    clusters = pd.read_csv(results / "clusters.tsv", sep="\t")
    merged = clusters.merge(truth[["subject", "pattern"]], on="subject")
    criteria = pd.read_csv(results / "model" / "k_criteria.tsv", sep="\t")
    used = criteria.loc[criteria["default"].astype(bool)].iloc[0]
    stability = pd.read_csv(results / "model" / "stability.tsv", sep="\t")
    chosen = len([c for c in clusters.columns if c.startswith("q_")])
    pretrain = pd.read_csv(results / "model" / "pretrain_loss.tsv", sep="\t")
    plateaued = stopped_before_maximum(pretrain, patience)
    solid, _ = stability_verdict(stability, clusters, threshold, plateaued)
    kept = pretrain.loc[pretrain["best"].astype(bool), "epoch"] if "best" in pretrain else pretrain["epoch"].tail(1)
    return {
        "cohort": name,
        "subjects": len(merged),
        "true_k": truth["pattern"].nunique(),
        "chosen_k": chosen,
        "method": used["method"],
        "runner_up": int(used["runner_up"]),
        "margin": float(used["margin"]),
        "ari": adjusted_rand_score(merged["pattern"], merged["cluster"]),
        "stability": float(stability.loc[stability["k"] == chosen, "stability"].iloc[0]),
        "confident": float((clusters["confidence"] >= 0.9).mean()),
        "verdict": ("SOLID" if solid else "SHAKY") + ("*" if plateaued is False else ""),
        "pretrain_epochs": f"{int(kept.iloc[0])}/{len(pretrain)}",
    }


def summary(specs: list[str], agree: list[list[str]]) -> int:
    """Print the ``--table`` of several runs (NAME=RESULTS[:TRUTH] each), then run agreements."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    threshold = float(config["choose_k"]["thresholds"]["stability"])
    named = dict(spec.split("=", 1) for spec in specs)
    rows = [run_summary(name, spec, threshold, int(config["train"]["patience"])) for name, spec in named.items()]
    pd.set_option("display.width", 200)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for a, b in agree:
        tables = [pd.read_csv(Path(named[n].partition(":")[0]) / "clusters.tsv", sep="\t") for n in (a, b)]
        both = tables[0].merge(tables[1], on="subject")
        print(
            f"agreement {a} vs {b}: ARI {adjusted_rand_score(both['cluster_x'], both['cluster_y']):.3f} "
            f"on {len(both)} shared subjects"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", type=Path)
    parser.add_argument("--table", nargs="+", default=None, metavar="NAME=RESULTS[:TRUTH]")
    parser.add_argument("--agree", nargs=2, action="append", default=[], metavar=("A", "B"))
    args = parser.parse_args(argv)
    if args.table:
        return summary(args.table, args.agree)
    results: Path = args.results
    truth_path = results / "demo" / "truth.tsv"
    if not truth_path.is_file():
        print(f"no {truth_path}: run the demo first (make demo)", file=sys.stderr)
        return 2
    truth = pd.read_csv(truth_path, sep="\t")
    clusters = pd.read_csv(results / "clusters.tsv", sep="\t")
    merged = clusters.merge(truth, on="subject")
    ari = adjusted_rand_score(merged["pattern"], merged["cluster"])
    nmi = normalized_mutual_info_score(merged["pattern"], merged["cluster"])
    pd.set_option("display.width", 160)
    print("clusters against true patterns (counts):")
    print(pd.crosstab(merged["cluster"], merged["pattern"]).to_string())
    print(f"\nARI {ari:.3f}   NMI {nmi:.3f}   (target ARI >= 0.9)")
    ksel = pd.read_csv(results / "model" / "k_selection.tsv", sep="\t")
    print("\nK selection:")
    print(ksel.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    true_k = truth["pattern"].nunique()
    chosen = int(ksel.loc[ksel["chosen"].astype(bool), "k"].iloc[0])
    print(f"\nchosen K {chosen}, true number of patterns {true_k}: {'match' if chosen == true_k else 'MISMATCH'}")
    print("\ncluster-mean CLAM mass inside the region where the cluster's pattern places disease:")
    print(clam_mass(results, clusters, truth).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    seconds = {}
    for stage in ("train", "choose_k", "cluster", "clam"):
        path = results / "benchmarks" / f"{stage}.tsv"
        if path.is_file():
            seconds[stage] = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
    print("\nseconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
