"""Snakemake glue: mean scan and CLAM per cluster (Fig 7) and example subjects (Figs 8/9).

The CLAM means are the maps the clam_*_mean rules wrote; the mean scans use the same
definition (lungclam.cluster_means), so an empty cluster is a zero map in both.
"""

import numpy as np
import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.cluster_means import cluster_means
    from lungclam.figures import choose_examples, mean_maps_figure, subject_examples_figure
    from lungclam.imageio import read_array

    clusters = pd.read_csv(smk.input.clusters, sep="\t", dtype={"subject": str})
    mask = read_array(smk.input.mask) > 0
    cts = {s: read_array(p) for s, p in zip(clusters["subject"], smk.input.volumes, strict=True)}
    clams = {s: read_array(p) for s, p in zip(clusters["subject"], smk.input.maps, strict=True)}
    labels = dict(zip(clusters["subject"], clusters["cluster"].astype(int)))
    # clam_cluster_means() lists cluster_1_mean .. cluster_K_mean, in order
    ks = range(1, len(smk.input.cluster_means) + 1)
    sizes = clusters["cluster"].value_counts()
    names = {k: f"cluster {k} (n={sizes.get(k, 0)})" for k in ks}
    ct_means = {"population": np.mean(list(cts.values()), axis=0)}
    ct_means |= {names[k]: mean for k, mean in cluster_means(cts, labels, ks).items()}
    clam_means = {"population": read_array(smk.input.population_mean)}
    clam_means |= {names[k]: read_array(path) for k, path in zip(ks, smk.input.cluster_means, strict=True)}
    mean_maps_figure(ct_means, clam_means, mask, smk.output.means, title="Mean scan and mean CLAM per cluster")
    chosen = choose_examples(clusters, smk.params.per_cluster, smk.params.seed)
    subject_examples_figure(
        {s: cts[s] for s in chosen},
        {s: clams[s] for s in chosen},
        {s: labels[s] for s in chosen},
        mask,
        smk.output.examples,
    )


run_job("figure_maps", main, smk.log[0], smk.threads)
