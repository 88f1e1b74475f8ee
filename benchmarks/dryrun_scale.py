"""How long `snakemake -n` takes on a large cohort (no data, no Slurm, no GPU needed).

    .venv/bin/python benchmarks/dryrun_scale.py [--subjects 10 100 1000] [--repeats 3] [--profile profiles/slurm]
        [--files-per-subject 0]

Writes a samples sheet of N subjects whose DICOM folders exist but are empty (a dry run
reads no image; --files-per-subject puts that many empty files in each, as a real series
would: every file is an input of its subject's convert job) and a clinical table, in a temporary folder, then times
`snakemake -n --quiet` (parse, sheet validation and the whole DAG: every per-subject job
up to the choice of K) and `--rulegraph`. Prints a table with the best and median of the
repeats and, for the dry runs, the cost of each job beyond the smallest cohort's
(start-up, parse and the cohort-level jobs): if that stays flat as the cohort grows, no
per-job work grows badly with it. The target is at most 15 s for 1,000 subjects on a
2-core machine. This machine's speed varies by 10-20 % from run to run, so compare
medians of several repeats.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def write_cohort(folder: Path, n: int, files_per_subject: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    subjects = [f"S{i:05d}" for i in range(1, n + 1)]
    for subject in subjects:
        (folder / "dicom" / subject).mkdir(parents=True)
        for i in range(files_per_subject):
            (folder / "dicom" / subject / f"IM{i:05d}.dcm").touch()
    samples = folder / "samples.tsv"
    pd.DataFrame({"subject": subjects, "dicom": [f"dicom/{s}" for s in subjects]}).to_csv(
        samples, sep="\t", index=False
    )
    clinical = folder / "clinical.tsv"
    pd.DataFrame(
        {
            "subject": subjects,
            "age": rng.integers(20, 80, n),
            "sex": rng.choice(["F", "M"], n),
            "race": rng.choice(["A", "B"], n),
            "bmi": rng.normal(27, 4, n).round(1),
            "fev1_pct": rng.normal(85, 15, n).round(1),
            "fvc_pct": rng.normal(90, 15, n).round(1),
            "dlco_pct": rng.normal(80, 15, n).round(1),
            "cd4": rng.normal(700, 200, n).round(),
            "crp": rng.gamma(2, 2, n).round(2),
            "sobq": rng.normal(30, 10, n).round(),
            "sf12_physical": rng.normal(45, 8, n).round(1),
            "scadding": rng.integers(0, 5, n),
        }
    ).to_csv(clinical, sep="\t", index=False)
    return samples, clinical


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default=None, help="also pass --profile (e.g. profiles/slurm)")
    parser.add_argument("--files-per-subject", type=int, default=0, help="empty files in each DICOM folder")
    args = parser.parse_args()
    rows = []
    for n in args.subjects:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            samples, clinical = write_cohort(tmp / "cohort", n, args.files_per_subject)
            work = tmp / "work"
            work.mkdir()
            base = [
                sys.executable,
                "-m",
                "snakemake",
                "--snakefile",
                str(ROOT / "Snakefile"),
                "-d",
                str(work),
                "--config",
                f"samples={samples}",
                f"clinical={clinical}",
            ]
            if args.profile:
                base += ["--profile", str(ROOT / args.profile)]
            for label, extra in (("snakemake -n", ["-n", "--quiet", "rules"]), ("--rulegraph", ["--rulegraph"])):
                seconds = []
                for _ in range(args.repeats):
                    s, done = timed(base + extra, work)
                    if done.returncode != 0:
                        sys.exit(f"{label} failed for {n} subjects:\n{done.stderr[-3000:]}")
                    seconds.append(s)
                jobs = ""
                if label == "snakemake -n":
                    total = [line for line in done.stdout.splitlines() if line.startswith("total")]
                    jobs = total[0].split()[-1] if total else "?"
                rows.append(
                    {
                        "subjects": n,
                        "files_each": args.files_per_subject,
                        "command": label,
                        "jobs": jobs,
                        "best_s": round(min(seconds), 2),
                        "median_s": round(float(np.median(seconds)), 2),
                    }
                )
    table = pd.DataFrame(rows)
    print(add_ms_per_job(table).to_string(index=False))


def add_ms_per_job(table: pd.DataFrame) -> pd.DataFrame:
    """Median milliseconds per dry-run job beyond the smallest cohort's (blank for the
    smallest cohort itself and for --rulegraph rows)."""
    table = table.copy()
    dry = table[(table["command"] == "snakemake -n") & (table["jobs"] != "?")]
    table["ms_per_extra_job"] = ""
    if len(dry) > 1:
        base = dry.loc[dry["subjects"].idxmin()]
        for index, row in dry.iterrows():
            extra_jobs = int(row["jobs"]) - int(base["jobs"])
            if extra_jobs > 0:
                table.loc[index, "ms_per_extra_job"] = f"{1000 * (row['median_s'] - base['median_s']) / extra_jobs:.2f}"
    return table


if __name__ == "__main__":
    main()
