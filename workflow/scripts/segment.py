"""Snakemake glue: left/right lung labels (1 right, 2 left) of a resampled CT."""

import logging

from lungclam.errors import SubjectError
from lungclam.imageio import read_image, write_image
from lungclam.runtime import run_job
from lungclam.segment import lung_volumes_ml, segment_lungs

smk = snakemake  # noqa: F821


def main() -> None:
    try:
        labels = segment_lungs(read_image(smk.input[0]), subject=smk.wildcards.subject)
    except SubjectError as err:  # name the scan the segmentation looked at
        raise SubjectError(err.subject, err.cause, err.path or smk.input[0]) from err
    volumes = lung_volumes_ml(labels)
    logging.getLogger("lungclam.segment").info(
        "subject %s: right lung %.0f mL, left lung %.0f mL",
        smk.wildcards.subject,
        volumes.get(1, 0.0),
        volumes.get(2, 0.0),
    )
    write_image(labels, smk.output[0])


run_job("segment", main, smk.log[0], smk.threads)
