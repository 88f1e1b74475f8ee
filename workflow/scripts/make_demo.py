"""Snakemake glue: write the seeded synthetic demo cohort as DICOM plus sheets."""

from pathlib import Path

from lungclam.phantom import write_demo_cohort
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821

run_job(
    "demo",
    lambda: write_demo_cohort(
        Path(smk.params.out_dir),
        n_subjects=smk.params.n_subjects,
        patterns=smk.params.patterns,
        seed=smk.params.seed,
        workers=smk.threads,
        **dict(smk.params.phantom),
    ),
    smk.log[0],
    smk.threads,
)
