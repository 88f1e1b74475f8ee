"""Scoring new subjects against a finished study, on the demo cohort; prints a table.

Trains a study on the demo with some subjects left out (``exclude``), then scores those
subjects with ``snakemake score`` against it, and reports:

- the ARI of their assigned clusters against their true patterns (``truth.tsv``, which the
  pipeline never reads), next to the study's own ARI;
- the wall time of the study run, of scoring, and (``--full-rerun``) of a run of the whole
  cohort with the left-out subjects added, the only way to place them without scoring.

    .venv/bin/python benchmarks/scoring.py --out /tmp/scoring [--leave-out 10] [--full-rerun]

Each step is a real ``snakemake --cores CORES`` run in its own folder under --out; a folder
that already holds a finished step is reused (delete it to time that step again).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import adjusted_rand_score

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def run(args: list[str], workdir: Path, log: Path) -> float:
    """Run snakemake with ``args`` in ``workdir`` (logging to ``log``); its wall time in s."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(
            [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode:
        sys.exit(f"snakemake failed in {workdir}; see {log}")
    return time.perf_counter() - started


def left_out(truth: pd.DataFrame, n: int) -> list[str]:
    """``n`` subjects spread over the patterns (round robin, in subject order)."""
    by_pattern = [rows["subject"].tolist() for _, rows in truth.groupby("pattern")]
    chosen: list[str] = []
    while len(chosen) < n:
        for subjects in by_pattern:
            if subjects and len(chosen) < n:
                chosen.append(subjects.pop(0))
    return sorted(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--leave-out", type=int, default=10)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--full-rerun", action="store_true", help="also time a run of the whole cohort")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    study, scored = out / "study", out / "score"
    # the demo rule writes the cohort (truth included) before any subject is excluded
    run(["--cores", args.cores, "results/demo/samples.tsv"], study, out / "demo.log")
    truth = pd.read_csv(study / "results" / "demo" / "truth.tsv", sep="\t")
    new = left_out(truth, args.leave_out)
    seconds = {"study": float("nan"), "score": float("nan"), "full": float("nan")}
    seconds["study"] = run(["--cores", args.cores, "--config", f"exclude={','.join(new)}"], study, out / "study.log")
    samples = pd.read_csv(study / "results" / "demo" / "samples.tsv", sep="\t")
    sheet = samples.loc[samples["subject"].isin(new)].assign(
        dicom=lambda t: [str(study / "results" / "demo" / d) for d in t["dicom"]]
    )
    scored.mkdir(parents=True, exist_ok=True)
    sheet.to_csv(scored / "samples.tsv", sep="\t", index=False)
    seconds["score"] = run(
        ["score", "--cores", args.cores, "--config", f"study={study / 'results'}", f"samples={scored / 'samples.tsv'}"],
        scored,
        out / "score.log",
    )
    if args.full_rerun:  # the cohort is written first, untimed, as for the study
        run(["--cores", args.cores, "results/demo/samples.tsv"], out / "full", out / "full_demo.log")
        seconds["full"] = run(["--cores", args.cores], out / "full", out / "full.log")
    study_clusters = pd.read_csv(study / "results" / "clusters.tsv", sep="\t").merge(truth, on="subject")
    new_clusters = pd.read_csv(scored / "results" / "score" / "clusters.tsv", sep="\t").merge(truth, on="subject")
    both = pd.concat([study_clusters, new_clusters])
    rows = [
        {
            "subjects": "study (trained on)",
            "n": len(study_clusters),
            "ari": adjusted_rand_score(study_clusters["pattern"], study_clusters["cluster"]),
            "seconds": seconds["study"],
        },
        {
            "subjects": "left out, scored",
            "n": len(new_clusters),
            "ari": adjusted_rand_score(new_clusters["pattern"], new_clusters["cluster"]),
            "seconds": seconds["score"],
        },
        {
            "subjects": "study + scored, study's numbering",
            "n": len(both),
            "ari": adjusted_rand_score(both["pattern"], both["cluster"]),
            "seconds": float("nan"),
        },
        {
            "subjects": "whole cohort rerun (--full-rerun)",
            "n": len(truth),
            "ari": float("nan"),
            "seconds": seconds["full"],
        },
    ]
    pd.set_option("display.width", 160)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nscored subjects by true pattern and assigned cluster:")
    print(pd.crosstab(new_clusters["pattern"], new_clusters["cluster"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
