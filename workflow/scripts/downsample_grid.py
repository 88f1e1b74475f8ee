"""Snakemake glue: the coarse model grid centred on the template lungs."""

import logging

from lungclam.downsample import downsample_to_grid, grid_mask, lung_coverage, lung_grid
from lungclam.imageio import read_image, write_image
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    s = smk.params.settings
    labels = read_image(smk.input.mask)
    reference = lung_grid(labels, s["spacing_mm"], tuple(s["size"]))
    coverage = lung_coverage(labels, reference)
    log = logging.getLogger("lungclam.downsample")
    log.info("grid %s at %.1f mm holds %.1f%% of the template lungs", s["size"], s["spacing_mm"], 100 * coverage)
    if coverage < 0.98:
        log.warning("the grid cuts off %.1f%% of the template lungs: increase downsample.size", 100 * (1 - coverage))
    mask = grid_mask(labels, reference)
    write_image(mask, smk.output.mask)
    write_image(
        downsample_to_grid(read_image(smk.input.template), mask, reference, s["background_hu"]), smk.output.template
    )


run_job("downsample_grid", main, smk.log[0], smk.threads)
