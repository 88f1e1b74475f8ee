"""The simulation study's results against the paper's (Ryan et al., section 4); prints tables.

Run after `snakemake simulation` (any config):

    .venv/bin/python benchmarks/simulation.py [RESULTS_DIR]

Reads `simulation/accuracy.tsv`, `k_choice.tsv`, `localization.tsv`, `clam_tests.tsv` and
the jobs' benchmark files, and prints:

- per case (scenario, true K): accuracy, ARI and cluster sizes at fitted K = true K, the
  silhouette's K before and after the clustering phase, the clustering-phase epochs, and
  the job's wall time;
- the study against the paper's targets: accuracy 100 % at fitted K = true K in all 9
  cases; the silhouette before clustering finds the true K in >= 7 of 9 (the paper: 7,
  after clustering 3); in the location scenario most CLAM mass lies inside the
  abnormality;
- localization per scenario (share of CLAM mass inside the disc, inside the disc + 2 px,
  CLAM maximum inside) and the paper's CLAM tests (active area, mean HU across clusters).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        sys.exit(f"{path} is missing: run `snakemake simulation` first")
    return pd.read_csv(path, sep="\t")


def case_table(accuracy: pd.DataFrame, k_choice: pd.DataFrame, times: pd.DataFrame) -> pd.DataFrame:
    """One row per (scenario, true K) with the numbers at fitted K = true K."""
    at_true = accuracy[accuracy["fitted_k"] == accuracy["true_k"]]
    cols = ["scenario", "true_k", "accuracy", "ari", "cluster_sizes", "epochs"]
    table = at_true[cols].merge(k_choice, on=["scenario", "true_k"], how="outer")
    if not times.empty:
        table = table.merge(times, on=["scenario", "true_k"], how="left")
    return table.sort_values(["scenario", "true_k"]).reset_index(drop=True)


def job_times(benchmarks: Path) -> pd.DataFrame:
    """Wall seconds of each case job from Snakemake's benchmark files."""
    rows = []
    for path in sorted(benchmarks.glob("*_k*.tsv")):
        scenario, k = path.stem.rsplit("_k", 1)
        rows.append({"scenario": scenario, "true_k": int(k), "job_s": float(_read(path)["s"].iloc[0])})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", type=Path)
    args = parser.parse_args()
    sim = args.results / "simulation"
    accuracy, k_choice = _read(sim / "accuracy.tsv"), _read(sim / "k_choice.tsv")
    times = job_times(args.results / "benchmarks" / "simulation")
    cases = case_table(accuracy, k_choice, times)
    pd.set_option("display.width", 160)
    print("Per case, at fitted K = true K\n")
    print(cases.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    n = len(cases)
    perfect = int((cases["accuracy"] >= 1 - 1e-9).sum())
    before = int((cases["k_silhouette_before"] == cases["true_k"]).sum())
    after = int((cases["k_silhouette_after"] == cases["true_k"]).sum())
    loc = _read(sim / "localization.tsv")
    inside = loc.loc[loc["scenario"] == "location", "mass_inside"]
    inside_margin = loc.loc[loc["scenario"] == "location", "mass_inside_margin"]
    summary = pd.DataFrame(
        [
            {"measure": "accuracy 100 % at fitted K = true K", "ours": f"{perfect} of {n}", "paper": "9 of 9"},
            {
                "measure": "lowest accuracy at fitted K = true K",
                "ours": f"{cases['accuracy'].min():.3f}",
                "paper": "1.000",
            },
            {"measure": "silhouette finds true K before clustering", "ours": f"{before} of {n}", "paper": "7 of 9"},
            {"measure": "silhouette finds true K after clustering", "ours": f"{after} of {n}", "paper": "3 of 9"},
            *[
                {
                    "measure": f"{column[2:-7].replace('_', ' ')} finds true K before clustering",
                    "ours": f"{int((cases[column] == cases['true_k']).sum())} of {n}",
                    "paper": "-",
                }
                for column in (
                    "k_stability_before",
                    "k_prediction_strength_before",
                    "k_pac_before",
                    "k_most_stable_before",
                    "k_stable_split_before",
                )
                if column in cases
            ],
            {
                "measure": "location: mean CLAM mass inside the disc",
                "ours": f"{inside.mean():.3f}" if len(inside) else "n/a",
                "paper": "'mostly inside'",
            },
            {
                "measure": "location: mean CLAM mass inside disc + 2 px",
                "ours": f"{inside_margin.mean():.3f}" if len(inside_margin) else "n/a",
                "paper": "-",
            },
        ]
    )
    if not times.empty:
        summary.loc[len(summary)] = {
            "measure": "sum of case job times (s)",
            "ours": f"{times['job_s'].sum():.0f}",
            "paper": "-",
        }
    print("\nAgainst the paper\n")
    print(summary.to_string(index=False))
    print("\nLocalization (CLAM at K = true K)\n")
    print(loc.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    tests = _read(sim / "clam_tests.tsv")
    if not tests.empty:
        print("\nCLAM active area and mean HU across clusters (the paper's tests)\n")
        cols = [c for c in ["scenario", "true_k", "measure", "anova_f", "anova_p", "kruskal_p", "means"] if c in tests]
        print(tests[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
