"""Snakemake glue: the study's outcome associations beside those refitted on the scored subjects."""

import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.atomic import write_table
    from lungclam.stats import compare_associations

    study, scored = (pd.read_csv(path, sep="\t") for path in (smk.input.study, smk.input.scored))
    write_table(compare_associations(study, scored), smk.output[0], float_format="%.6g")


run_job("score_vs_study", main, smk.log[0], smk.threads)
