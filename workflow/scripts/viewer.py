"""Snakemake glue: the offline NiiVue viewer page of the model-grid scans and CLAMs."""

import logging
from pathlib import Path

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.viewer import ViewerInputs, is_split, read_assignments, write_viewer

    assignments = read_assignments(smk.input.clusters)
    subjects = list(smk.params.subjects)
    inputs = ViewerInputs(
        template=Path(smk.input.template),
        mask=Path(smk.input.mask),
        # clam_cluster_means() lists cluster_1_mean .. cluster_K_mean in order
        cluster_means={k: Path(p) for k, p in enumerate(smk.input.cluster_means, start=1)},
        population_mean=Path(smk.input.population_mean),
        scans=dict(zip(subjects, map(Path, smk.input.scans), strict=True)),
        clams=dict(zip(subjects, map(Path, smk.input.clams), strict=True)),
        assignments=assignments,
    )
    limit = int(smk.params.max_subjects_per_page)
    split = is_split(len(assignments), limit)
    if split != ("subject_pages" in smk.output.keys()):
        raise ValueError(
            f"{smk.input.clusters} lists {len(assignments)} subjects, the workflow "
            f"{len(subjects)}: they disagree on whether the viewer is split "
            f"(viewer.max_subjects_per_page: {limit})"
        )
    size = write_viewer(inputs, smk.input.niivue, smk.output.page, limit)
    logging.getLogger("lungclam.viewer").info(
        "%s: %d subjects, %d clusters, %s, %.2f MB in all",
        smk.output.page,
        len(assignments),
        len(inputs.cluster_means),
        "a page per subject in subjects/" if split else "one page",
        size / 1e6,
    )


run_job("viewer", main, smk.log[0], smk.threads)
