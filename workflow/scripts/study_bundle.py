"""Snakemake glue: copy the finished study into the portable bundle results/study/."""

import logging
from pathlib import Path

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.study import load_bundle, write_bundle

    i = smk.input
    manifest = write_bundle(
        Path(smk.output.manifest).parent,
        template=i.template,
        template_mask=i.template_mask,
        grid_template=i.grid_template,
        grid_mask=i.grid_mask,
        model=i.model,
        clusters=i.clusters,
        config=dict(smk.params.config),
        associations=i.associations[0] if i.associations else None,
    )
    study = load_bundle(manifest.parent)  # what scoring will check, checked once here
    logging.getLogger("lungclam.study").info(
        "study bundle %s: K=%d, cluster sizes %s, model format %d",
        study.folder,
        study.n_clusters,
        study.cluster_sizes,
        study.model_format,
    )


run_job("study_bundle", main, smk.log[0], smk.threads)
