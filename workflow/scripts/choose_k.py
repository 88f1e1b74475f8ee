"""Snakemake glue: every criterion for K on the pretrained features, and the choice."""

import logging

import pandas as pd

from lungclam.atomic import write_table
from lungclam.errors import LungclamError
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.figures import k_selection_figure
    from lungclam.kselect import THRESHOLDS, choices_table, resampling_from_config, select_k, skipped_ks
    from lungclam.splittest import no_split_is_real

    log = logging.getLogger("lungclam.choose_k")
    c = smk.params.settings
    features = pd.read_csv(smk.input.features, sep="\t").drop(columns="subject").to_numpy()
    ks = range(c["k_min"], min(c["k_max"], len(features) - 1) + 1)
    if not len(ks):
        raise LungclamError(
            f"choosing K needs at least {c['k_min'] + 1} subjects (k_min {c['k_min']} clusters plus one); "
            f"this cohort has {len(features)}"
        )
    resampling = resampling_from_config(c)
    table = select_k(
        features,
        ks,
        seed=smk.params.seed,
        n_init=c["n_init"],
        n_permutations=c["n_permutations"],
        n_references=c["n_references"],
        progress=log.info,
        resampling=resampling,
        workers=smk.threads,
    )
    limits = THRESHOLDS | c["thresholds"]
    choices = choices_table(table, c["method"], limits)
    skipped = skipped_ks(table, limits)
    if skipped:
        log.info(
            "K = %s skipped by the reproducibility rules: their smallest k-means cluster holds less than %.0f%% "
            "of the %d subjects, or their weakest split has p > %g (k_selection.tsv: smallest_cluster, split_p)",
            ", ".join(map(str, skipped)),
            100 * limits["min_cluster_share"],
            len(features),
            limits["max_split_p"],
        )
    if no_split_is_real(table["split_p"], limits["max_split_p"]):
        log.warning(
            "no K splits these subjects more clearly than one %s group would (split_p > %g at every K): "
            "the embedding may hold no distinct clusters; read k_selection.png and the stability figure before "
            "trusting any K",
            "Gaussian" if resampling.split_null == "gaussian" else "evenly spread",
            limits["max_split_p"],
        )
    for row in choices.itertuples():
        log.info(
            "K by %s: %d (runner-up %d, margin %.3g)%s",
            row.method,
            row.k,
            row.runner_up,
            row.margin,
            " <- used" if row.default else "",
        )
    used = choices.loc[choices["default"]].iloc[0]
    if used["method"] != c["method"]:
        log.warning(
            "K by %s is undefined for this cohort (%d subjects); using %s instead",
            c["method"],
            len(features),
            used["method"],
        )
    best = int(used["k"])
    table["chosen"] = table["k"] == best
    write_table(table, smk.output.table, float_format="%.6g")
    write_table(choices, smk.output.choices, float_format="%.6g")
    stability = table[["k", "stability", "stability_sd", "smallest_cluster", "split_p"]].assign(
        n_replicas=c["n_replicas"], chosen=table["chosen"], skipped=table["k"].isin(skipped)
    )
    write_table(stability, smk.output.stability, float_format="%.6g")
    k_selection_figure(table, smk.output.plot, choices=choices, thresholds=limits, skipped=skipped)


run_job("choose_k", main, smk.log[0], smk.threads)
