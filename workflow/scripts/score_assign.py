"""Snakemake glue: assign scored subjects to the study's clusters and write their CLAMs."""

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
    subjects = list(smk.params.subjects)
    volumes = {subject: read_image(path) for subject, path in zip(subjects, smk.input.volumes, strict=True)}
    q, maps = score_volumes(study, volumes, device=smk.params.device)
    reference = read_image(study.files["grid_template"])
    for own, path in zip(maps, smk.output.maps, strict=True):
        write_map(own, reference, path)
    table = clusters_table(subjects, q)
    write_table(table, smk.output.clusters, float_format="%.6g")  # as the study's clusters.tsv
    sizes = table["cluster"].value_counts().to_dict()
    logging.getLogger("lungclam.score").info(
        "scored %d subject(s) against the study %s (K=%d, lungclam %s): per cluster %s",
        len(subjects),
        study.folder,
        study.n_clusters,
        study.lungclam_version,
        {k: int(sizes.get(k, 0)) for k in range(1, study.n_clusters + 1)},
    )


run_job("score_assign", main, smk.log[0], smk.threads)
