"""Snakemake glue: the stability figure (stability per K, each subject's confidence)."""

import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.figures import stability_figure
    from lungclam.train import stopped_before_maximum

    stability = pd.read_csv(smk.input.stability, sep="\t")
    clusters = pd.read_csv(smk.input.clusters, sep="\t")
    plateaued = stopped_before_maximum(pd.read_csv(smk.input.pretraining, sep="\t"), smk.params.patience)
    params = smk.params
    stability_figure(
        stability, clusters, params.threshold, smk.output[0], plateaued, params.min_cluster_share, params.max_split_p
    )


run_job("figure_stability", main, smk.log[0], smk.threads)
