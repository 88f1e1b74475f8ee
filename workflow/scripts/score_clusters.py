"""Snakemake glue: the scored subjects' assignments, one table in the sheet's order."""

import logging

import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.atomic import write_table

    # Read and written as text: the rows stay exactly as each subject's job wrote them.
    table = pd.concat([pd.read_csv(path, sep="\t", dtype=str) for path in smk.input.assigned], ignore_index=True)
    write_table(table, smk.output.clusters)
    sizes = table["cluster"].astype(int).value_counts().to_dict()
    logging.getLogger("lungclam.score").info(
        "scored %d subject(s) against the study %s (K=%d, lungclam %s): per cluster %s",
        len(table),
        smk.params.study,
        smk.params.n_clusters,
        smk.params.lungclam_version,
        {k: int(sizes.get(k, 0)) for k in range(1, smk.params.n_clusters + 1)},
    )


run_job("score_clusters", main, smk.log[0], smk.threads)
