"""Snakemake glue: a registered scan on the coarse model grid, outside-lung set constant
(and, with ``fill_outside_lungs``, outside the subject's own lungs set to its median lung HU)."""

from lungclam.downsample import downsample_to_grid
from lungclam.errors import SubjectError
from lungclam.imageio import read_image, write_image
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    mask = read_image(smk.input.mask)
    # Studies bundled before fill_outside_lungs existed keep their inputs as they were.
    settings = smk.params.settings
    lungs = read_image(smk.input.lungs) if settings.get("fill_outside_lungs", False) else None
    try:
        image = downsample_to_grid(
            read_image(smk.input.registered),
            mask,
            mask,
            settings["background_hu"],
            lungs=lungs,
            fill_depth_mm=settings.get("fill_depth_mm"),
        )
    except ValueError as exc:  # an empty or mismatched registered lung mask
        raise SubjectError(
            smk.wildcards.subject,
            f"cannot fill outside its registered lungs ({exc}); see its registration QC page, "
            "or set downsample.fill_outside_lungs: false",
            smk.input.lungs,
        ) from exc
    write_image(image, smk.output[0])


run_job("downsample", main, smk.log[0], smk.threads)
