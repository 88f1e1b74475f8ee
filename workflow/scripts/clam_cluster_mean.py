"""Snakemake glue: the voxel-wise mean CLAM of one cluster's members."""

import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.cluster_means import cluster_mean
    from lungclam.imageio import read_array, read_image, write_map

    k = int(smk.wildcards.k)
    clusters = pd.read_csv(smk.input.clusters, sep="\t")
    members = [p for p, c in zip(smk.input.maps, clusters["cluster"], strict=True) if c == k]
    reference = read_image(smk.input.maps[0])
    # An empty cluster (DEC can leave one) gets a zero map rather than failing the run.
    write_map(cluster_mean([read_array(p) for p in members], reference.GetSize()[::-1]), reference, smk.output[0])


run_job("clam_cluster_mean", main, smk.log[0], smk.threads)
