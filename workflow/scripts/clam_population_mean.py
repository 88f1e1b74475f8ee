"""Snakemake glue: the population CLAM, the mean of the K cluster-mean maps."""

import numpy as np

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.imageio import read_array, read_image, write_map

    means = [read_array(p) for p in smk.input.cluster_means]
    write_map(np.mean(means, axis=0), read_image(smk.input.cluster_means[0]), smk.output[0])


run_job("clam_population_mean", main, smk.log[0], smk.threads)
