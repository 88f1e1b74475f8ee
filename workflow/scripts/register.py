"""Snakemake glue: SyN registration of one subject to the study template, and the
subject's QC page (lung mask on the scan; registered scan with the template's lung
outline), drawn here from the images already in memory rather than by a job of its own."""

from pathlib import Path

from lungclam.imageio import read_image, write_image
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.register import register_to_template  # after the thread count is set

    s = smk.params.settings
    image, labels = read_image(smk.input.image), read_image(smk.input.labels)
    template_mask = read_image(smk.input.template_mask)
    result = register_to_template(
        image,
        labels,
        read_image(smk.input.template),
        template_mask,
        Path(smk.output.affine).parent,
        transform=s["transform"],
        reg_iterations=tuple(s["reg_iterations"]),
        margin_mm=s["margin_mm"],
        syn_spacing_mm=s.get("syn_spacing_mm"),
        seed=smk.params.seed,
    )
    write_image(result.warped, smk.output.registered)
    write_image(result.warped_labels, smk.output.lungmask)
    draw_qc_page(image, labels, result.warped, template_mask)


def draw_qc_page(image, labels, registered, template_mask) -> None:
    import SimpleITK as sitk

    from lungclam.figures import qc_figure
    from lungclam.imageio import to_lps

    image, labels, registered, template_mask = (to_lps(x) for x in (image, labels, registered, template_mask))
    qc_figure(
        sitk.GetArrayFromImage(image),
        sitk.GetArrayFromImage(labels),
        sitk.GetArrayFromImage(registered),
        sitk.GetArrayFromImage(template_mask),
        smk.output.qc,
        smk.wildcards.subject,
        spacing=image.GetSpacing(),
        registered_spacing=registered.GetSpacing(),
    )


run_job("register", main, smk.log[0], smk.threads)
