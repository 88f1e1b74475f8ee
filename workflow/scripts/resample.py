"""Snakemake glue: resample a converted CT to isotropic spacing."""

from lungclam.imageio import read_image, write_image
from lungclam.resample import resample_ct
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    image = read_image(smk.input[0])
    write_image(resample_ct(image, smk.params.spacing_mm), smk.output[0])


run_job("resample", main, smk.log[0], smk.threads)
