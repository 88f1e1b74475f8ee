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
    write_table(demographics(merged, columns, kinds), smk.output.demographics)
    write_table(
        associations(merged, outcomes, covariates, kinds, reference=s.get("reference_cluster")),
        smk.output.associations,
        float_format="%.6g",
    )
    write_table(
        variance_explained(merged, outcomes, covariates, comparator, kinds), smk.output.variance, float_format="%.6g"
    )


run_job("stats", main, smk.log[0], smk.threads)
