"""Snakemake glue: build the study template from the sampled subjects."""

from lungclam.atomic import write_table
from lungclam.imageio import read_image, write_image
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.template import build_template  # after run_job has set the thread count

    t, r = smk.params.settings, smk.params.register
    template = build_template(
        [read_image(p) for p in smk.input.images],
        [read_image(p) for p in smk.input.labels],
        spacing_mm=r["spacing_mm"],
        margin_mm=r["margin_mm"],
        max_iterations=t["max_iterations"],
        dice_stop=t["dice_stop"],
        gradient_step=t["gradient_step"],
        blending_weight=t["blending_weight"],
        transform=r["transform"],
        reg_iterations=tuple(r["reg_iterations"]),
        syn_spacing_mm=r.get("syn_spacing_mm"),
        seed=smk.params.seed,
        names=list(smk.params.subjects),
    )
    write_image(template.image, smk.output.template)
    write_image(template.labels, smk.output.mask)
    write_table(template.iterations, smk.output.iterations)


run_job("template", main, smk.log[0], smk.threads)
