"""Snakemake glue: silhouette / sparse k-means / gap over K on the pretrained features."""

import logging

import pandas as pd

from lungclam.errors import LungclamError
from lungclam.atomic import write_table
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.kselect import chosen_k, plot_k_selection, select_k

    log = logging.getLogger("lungclam.choose_k")
    c = smk.params.settings
    features = pd.read_csv(smk.input.features, sep="\t").drop(columns="subject").to_numpy()
    ks = range(c["k_min"], min(c["k_max"], len(features) - 1) + 1)
    if not len(ks):
        raise LungclamError(
            f"choosing K needs at least {c['k_min'] + 1} subjects (k_min {c['k_min']} clusters plus one); "
            f"this cohort has {len(features)}"
        )
    table = select_k(features, ks, seed=smk.params.seed, n_init=c["n_init"],
                     n_permutations=c["n_permutations"], n_references=c["n_references"], progress=log.info)
    best = chosen_k(table, c["method"])
    table["chosen"] = table["k"] == best
    log.info("K by %s: %d", c["method"], best)
    write_table(table, smk.output.table, float_format="%.6g")
    plot_k_selection(table, smk.output.plot, chosen=best)


run_job("choose_k", main, smk.log[0], smk.threads)
