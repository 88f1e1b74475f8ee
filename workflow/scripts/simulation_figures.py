"""Snakemake glue: the simulation study's figures (paper Figs 2-6) for the largest true K."""

import logging

import numpy as np

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.simulation import figures as sf

    log = logging.getLogger("lungclam.simulation")
    cases = {scenario: dict(np.load(path)) for scenario, path in zip(smk.params.scenarios, smk.input.arrays)}
    sf.examples_figure(cases, smk.output.examples)
    for scenario, path in zip(smk.params.scenarios, smk.output.pca):
        k = int(cases[scenario]["truth"].max()) + 1
        sf.pca_grid_figure(
            cases[scenario],
            smk.params.fitted_ks,
            f"{scenario} scenario, true K = {k}: embeddings before and after clustering",
            path,
        )
    sf.population_clam_figure(cases, smk.output.population)
    sf.cluster_clam_figure(cases, smk.output.clusters)
    sf.single_clam_figure(cases, smk.output.single)
    log.info("wrote the simulation figures for %s", ", ".join(cases))


run_job("simulation_figures", main, smk.log[0], smk.threads)
