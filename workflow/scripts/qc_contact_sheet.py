"""Snakemake glue: every subject's QC page on one sheet."""

from pathlib import Path

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.figures import contact_sheet

    contact_sheet(list(smk.input), smk.output[0], labels=[Path(p).stem.replace(".nii", "") for p in smk.input])


run_job("qc_contact_sheet", main, smk.log[0], smk.threads)
