"""Snakemake glue: demographics by cluster, outcome associations, variance explained."""

import logging

import pandas as pd

from lungclam.atomic import write_table
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.stats import associations, column_kinds, demographics, merge_clusters, variance_explained

    log = logging.getLogger("lungclam.stats")
    s = smk.params.settings
    clusters = pd.read_csv(smk.input.clusters, sep="\t", dtype={"subject": str})
    clinical = pd.read_csv(smk.input.clinical, sep="\t", dtype={"subject": str})
    merged, report = merge_clusters(clusters[["subject", "cluster"]], clinical)
    log.info("%d subjects with a cluster and a clinical row", report["n_merged"])
    if report["clusters_without_clinical"]:
        log.warning("no clinical row for: %s", ", ".join(report["clusters_without_clinical"]))
    if report["clinical_without_cluster"]:
        log.warning("clinical rows without a scan or cluster: %s", ", ".join(report["clinical_without_cluster"]))
    covariates, outcomes = list(smk.params.covariates), list(smk.params.outcomes)
    comparator = smk.params.comparator or None
    columns = covariates + ([comparator] if comparator else []) + outcomes
    kinds = column_kinds(merged, columns, s.get("column_types") or None)
    # Scoring passes the study's clusters 1..K: each keeps its column and contrasts, even
    # with none of the scored subjects in it.
    labels = smk.params.get("cluster_labels")
    reference = s.get("reference_cluster")
    if labels:
        present = set(merged["cluster"])
        empty = [k for k in labels if k not in present]
        if empty:
            log.warning(
                "cluster(s) %s hold none of these %d subjects: their columns are NA and their contrasts not estimated",
                ", ".join(map(str, empty)),
                len(merged),
            )
        if reference in empty:
            log.warning(
                "the reference cluster %s holds none of them: no contrast can be fitted against it, so each "
                "outcome's associations row is NaN with that note",
                reference,
            )
    write_table(demographics(merged, columns, kinds, labels=labels), smk.output.demographics)
    write_table(
        associations(merged, outcomes, covariates, kinds, reference=reference, labels=labels),
        smk.output.associations,
        float_format="%.6g",
    )
    write_table(
        variance_explained(merged, outcomes, covariates, comparator, kinds), smk.output.variance, float_format="%.6g"
    )


run_job("stats", main, smk.log[0], smk.threads)
