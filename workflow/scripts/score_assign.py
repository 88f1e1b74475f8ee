"""Snakemake glue: assign one scored subject to the study's clusters and write its CLAM."""

import logging

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.atomic import write_table
    from lungclam.dec import clusters_table
    from lungclam.imageio import read_image, write_map
    from lungclam.score import score_volumes
    from lungclam.study import load_bundle

    study = load_bundle(smk.params.study)  # verified again, now with its model
    subject = smk.wildcards.subject
    q, maps = score_volumes(study, {subject: read_image(smk.input.volume)}, device=smk.params.device)
    write_map(maps[0], read_image(study.files["grid_template"]), smk.output.clam)
    table = clusters_table([subject], q)
    write_table(table, smk.output.assigned, float_format="%.6g")  # as the study's clusters.tsv
    logging.getLogger("lungclam.score").info(
        "subject %s: cluster %d of K=%d (q %s) against the study %s (lungclam %s)",
        subject,
        table["cluster"].iloc[0],
        study.n_clusters,
        ", ".join(f"{value:.3f}" for value in q[0]),
        study.folder,
        study.lungclam_version,
    )


run_job("score_assign", main, smk.log[0], smk.threads)
