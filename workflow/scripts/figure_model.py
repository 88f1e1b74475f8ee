"""Snakemake glue: feature PCA before and after clustering (Fig 3) and loss curves."""

import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.figures import loss_figure, pca_figure

    read = lambda p: pd.read_csv(p, sep="\t", dtype={"subject": str})  # noqa: E731
    pca_figure(read(smk.input.before), read(smk.input.after), read(smk.input.clusters), smk.output.pca)
    loss_figure(read(smk.input.pretrain_loss), read(smk.input.cluster_loss), smk.output.loss)


run_job("figure_model", main, smk.log[0], smk.threads)
