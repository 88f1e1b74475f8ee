"""Snakemake glue: mean scan and CLAM per cluster (Fig 7) and example subjects (Figs 8/9)."""

import numpy as np
import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.figures import choose_examples, mean_maps_figure, subject_examples_figure
    from lungclam.imageio import read_array

    clusters = pd.read_csv(smk.input.clusters, sep="\t", dtype={"subject": str})
    mask = read_array(smk.input.mask) > 0
    cts = {s: read_array(p) for s, p in zip(clusters["subject"], smk.input.volumes, strict=True)}
    clams = {s: read_array(p) for s, p in zip(clusters["subject"], smk.input.maps, strict=True)}
    ct_means = {"population": np.mean(list(cts.values()), axis=0)}
    clam_means = {"population": np.mean([np.mean([clams[s] for s in g["subject"]], axis=0)
                                         for _, g in clusters.groupby("cluster")], axis=0)}
    for k, group in clusters.groupby("cluster"):
        ct_means[f"cluster {k} (n={len(group)})"] = np.mean([cts[s] for s in group["subject"]], axis=0)
        clam_means[f"cluster {k} (n={len(group)})"] = np.mean([clams[s] for s in group["subject"]], axis=0)
    mean_maps_figure(ct_means, clam_means, mask, smk.output.means, title="Mean scan and mean CLAM per cluster")
    chosen = choose_examples(clusters, smk.params.per_cluster, smk.params.seed)
    labels = dict(zip(clusters["subject"], clusters["cluster"].astype(int)))
    subject_examples_figure({s: cts[s] for s in chosen}, {s: clams[s] for s in chosen},
                            {s: labels[s] for s in chosen}, mask, smk.output.examples)


run_job("figure_maps", main, smk.log[0], smk.threads)
