"""Snakemake glue: SyN registration of one subject to the study template."""

from pathlib import Path

from lungclam.imageio import read_image, write_image
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.register import register_to_template  # after the thread count is set

    s = smk.params.settings
    result = register_to_template(
        read_image(smk.input.image),
        read_image(smk.input.labels),
        read_image(smk.input.template),
        read_image(smk.input.template_mask),
        Path(smk.output.affine).parent,
        transform=s["transform"],
        reg_iterations=tuple(s["reg_iterations"]),
        margin_mm=s["margin_mm"],
        syn_spacing_mm=s.get("syn_spacing_mm"),
        seed=smk.params.seed,
    )
    write_image(result.warped, smk.output.registered)
    write_image(result.warped_labels, smk.output.lungmask)


run_job("register", main, smk.log[0], smk.threads)
