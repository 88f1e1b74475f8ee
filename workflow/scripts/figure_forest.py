"""Snakemake glue: cluster effects on each outcome with 95 % CIs (Fig 10)."""

import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.figures import forest_figure

    forest_figure(pd.read_csv(smk.input[0], sep="\t"), smk.output[0])


run_job("figure_forest", main, smk.log[0], smk.threads)
